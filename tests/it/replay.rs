//! `replay` of the recorded lab scenarios: the exact CTI sequence a person expects, and
//! Zammad's invariants on the production streams from cacofonisk.
//!
//! The lab (tests/fixtures/ami-transcripts/README.md): the external caller is
//! +15555550100 (country code 1, so `from` is `15555550100`); phones 201 Alice (Zammad
//! knows her phone as 4930123456201), 202 Bob, 203 Carol, 204 Dave. The callId is the
//! Linkedid of each call's first channel, read off the transcript by hand.

use crate::support::{assert_invariants, fixture, lab_config};
use asterisk_zammad_bridge::commands::replay::replay_files;
use asterisk_zammad_bridge::config::Config;
use serde_json::Value;

/// The requests `replay` prints for one fixture (path under `tests/fixtures`), in order.
pub(crate) fn replay(config: &Config, rel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    replay_files(config, &[fixture(rel)], &mut out).expect("replay succeeds");
    String::from_utf8(out)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[track_caller]
fn check(scenario: &str, expected: &[&str]) {
    let got = replay(&lab_config(), &format!("ami-transcripts/{scenario}.txt"));
    let want: Vec<Value> = expected
        .iter()
        .map(|e| serde_json::from_str(e).expect("valid expected JSON"))
        .collect();
    assert_eq!(got, want, "scenario {scenario}");
    assert_invariants(&got, scenario);
}

#[test]
fn inbound_answered() {
    // DID 201 rings Alice's phone; she answers after 2 s; the caller hangs up after 4 s.
    // newCall names Alice as the ringing agent; the answer names her and the number Zammad
    // knows her by; the call was talked, so normalClearing.
    check(
        "inbound-answered",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596369.0","from":"15555550100","to":"201","user":"Alice"}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596369.0","from":"15555550100","to":"201","user":"Alice","answeringNumber":"4930123456201"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596369.0","from":"15555550100","to":"201","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn inbound_busy() {
    // Bob's phone is busy (DialEnd BUSY, the trunk ends with cause 17): a busy call that
    // rang nobody, reported as missed with cause busy.
    check(
        "inbound-busy",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596377.4","from":"15555550100","to":"202","user":"Bob"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596377.4","from":"15555550100","to":"202","cause":"busy"}"#,
        ],
    );
}

#[test]
fn inbound_caller_gives_up() {
    // Carol's phone rings; the caller hangs up after 6 s (HangupRequest on the trunk while
    // the leg rings, DialEnd CANCEL). Cause 19 on the trunk is only the Local channel
    // passing the originate timeout on: the caller gave up, so cancel.
    check(
        "inbound-noanswer-caller-hangup",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596378.8","from":"15555550100","to":"203","user":"Carol"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596378.8","from":"15555550100","to":"203","cause":"cancel"}"#,
        ],
    );
}

#[test]
fn inbound_no_answer_timeout() {
    // Dial gives up after 5 s (DialEnd NOANSWER), the dialplan hangs up with cause 19:
    // nobody answered, so noAnswer.
    check(
        "inbound-noanswer-timeout",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596385.12","from":"15555550100","to":"203","user":"Carol"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596385.12","from":"15555550100","to":"203","cause":"noAnswer"}"#,
        ],
    );
}

#[test]
fn queue_answered() {
    // Queue 'support' rings Alice and Carol (ringall); Alice answers. newCall names both
    // ringing members as an array and the queue; the answer names Alice alone.
    check(
        "queue-answered",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596409.24","from":"15555550100","to":"700","user":["Alice","Carol"],"queue":"support"}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596409.24","from":"15555550100","to":"700","user":"Alice","answeringNumber":"4930123456201"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596409.24","from":"15555550100","to":"700","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn ring_group() {
    // Dial(Local/201&Local/203) rings both in parallel; Alice answers, Carol's leg is
    // cancelled with cause 26 (answered elsewhere), which must not turn into a miss.
    check(
        "ring-group",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596417.30","from":"15555550100","to":"600","user":["Alice","Carol"]}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596417.30","from":"15555550100","to":"600","user":"Alice","answeringNumber":"4930123456201"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596417.30","from":"15555550100","to":"600","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn agi_routed_inbound() {
    // DID 800 runs a FastAGI script that routes the call to 204 (Dave), who answers.
    check(
        "agi-inbound",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596443.48","from":"15555550100","to":"800","user":"Dave"}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596443.48","from":"15555550100","to":"800","user":"Dave","answeringNumber":"204"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596443.48","from":"15555550100","to":"800","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn pjsip_inbound_answered() {
    // A real SIP trunk channel (PJSIP/trunk-...) whose caller ID is there from the start;
    // the far end's own channel (context 'pstn') is a separate call nobody reports.
    check(
        "pjsip-inbound-answered",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596456.61","from":"15555550100","to":"201","user":"Alice"}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596456.61","from":"15555550100","to":"201","user":"Alice","answeringNumber":"4930123456201"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596456.61","from":"15555550100","to":"201","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn pjsip_rejected_by_ami_hangup() {
    // While Carol's phone rings, AMI hangs the trunk channel up with Cause 17: the caller
    // gets 486 Busy Here, and Zammad must see busy, not the cancelled ringing leg.
    check(
        "pjsip-inbound-reject-busy",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596464.65","from":"15555550100","to":"203","user":"Carol"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596464.65","from":"15555550100","to":"203","cause":"busy"}"#,
        ],
    );
}

#[test]
fn local_rejected_by_ami_hangup() {
    // Same rejection on a Local trunk; the Setvar of CALLERID(num) comes after newCall was
    // sent, so Zammad keeps the original caller.
    check(
        "ami-actions-ringing",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596455.56","from":"15555550100","to":"203","user":"Carol"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596455.56","from":"15555550100","to":"203","cause":"busy"}"#,
        ],
    );
}

#[test]
fn answered_then_hung_up_by_ami() {
    // Alice answered; the later AMI Hangup with Cause 17 ends a talked call: normalClearing.
    check(
        "ami-actions-answered",
        &[
            r#"{"event":"newCall","direction":"in","callId":"1795596451.52","from":"15555550100","to":"201","user":"Alice"}"#,
            r#"{"event":"answer","direction":"in","callId":"1795596451.52","from":"15555550100","to":"201","user":"Alice","answeringNumber":"4930123456201"}"#,
            r#"{"event":"hangup","direction":"in","callId":"1795596451.52","from":"15555550100","to":"201","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn outbound_answered() {
    // Alice (201) dials +15555550199 from from-internal; it answers after 2 s. `from` is
    // the number Zammad knows her by, `user` her name; the answer carries no `user`
    // (on outbound calls it would overwrite the customer's name in Zammad).
    check(
        "outbound-answered",
        &[
            r#"{"event":"newCall","direction":"out","callId":"1795596391.16","from":"4930123456201","to":"15555550199","user":"Alice"}"#,
            r#"{"event":"answer","direction":"out","callId":"1795596391.16","from":"4930123456201","to":"15555550199"}"#,
            r#"{"event":"hangup","direction":"out","callId":"1795596391.16","from":"4930123456201","to":"15555550199","cause":"normalClearing"}"#,
        ],
    );
}

#[test]
fn all_transcripts_in_one_replay_keep_the_invariants() {
    let mut paths: Vec<_> = std::fs::read_dir(fixture("ami-transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".txt") && !name.ends_with(".sent.txt") && !name.starts_with("agi-agi")
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    replay_files(&lab_config(), &paths, &mut out).unwrap();
    let requests: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(assert_invariants(&requests, "all transcripts"), 12);
}

/// cacofonisk's production streams (Asterisk 13, SIP channels, a foreign dialplan): the
/// provider's calls arrive in `voipgrid_in`, phones dial from `osvpi_account`. Every stream
/// must replay without a panic and every reported call must keep Zammad's invariants.
#[test]
fn cacofonisk_streams_keep_zammads_invariants() {
    let config = Config::from_toml_str(
        r#"
        [calls]
        inbound_contexts = ["voipgrid_in"]
        outbound_contexts = ["osvpi_account", "osvpi_account_call_int"]
        extension_pattern = "^[0-9]{2,5}$"
        "#,
    )
    .unwrap();
    let mut paths: Vec<_> = std::fs::read_dir(fixture("cacofonisk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ami"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 34);
    let mut reported = 0;
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let requests = replay(&config, &format!("cacofonisk/{name}"));
        let calls = assert_invariants(&requests, &name);
        eprintln!(
            "{name}: {calls} calls reported, {} requests",
            requests.len()
        );
        reported += calls;
    }
    // Most streams are calls between two of the platform's own accounts (internal, not
    // reported); the calls from and to the outside world must be there.
    assert!(
        reported >= 10,
        "only {reported} calls reported from 34 streams"
    );
}
