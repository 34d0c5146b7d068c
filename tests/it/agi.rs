//! Zammad decides (docs/dialplan.md): the real daemon between a FastAGI peer playing
//! Asterisk's side (`standins::agi`), the scripted AMI peer and the stand-in Zammad with a
//! block list and a routing table.
//!
//! Each FastAGI test checks the commands byte for byte; each call must still reach Zammad
//! as exactly one `newCall` and one `hangup`. Recorded AMI traffic of the same calls is
//! split where the dialplan would have run the AGI.

use crate::support::encode;
use crate::support::harness::Harness;
use crate::support::{assert_invariants, fixture, lab_config};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::calls::TrackerSettings;
use asterisk_zammad_bridge::commands::replay::replay_bytes;
use asterisk_zammad_bridge::standins::agi::{AgiTranscript, FakeAgiCall};
use asterisk_zammad_bridge::standins::zammad::{FakeZammadConfig, Route};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CALLER: &str = "15555550100";
const HOSTILE: &str = "4930\r\nAction: Originate\r\nChannel: Local/666@evil\r\n";

fn transcript(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("ami-transcripts/{name}.txt"))).unwrap()
}

/// Splits recorded bytes before the first frame for which `at` holds.
fn split_before(bytes: &[u8], at: impl Fn(&str) -> bool) -> (&[u8], &[u8]) {
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |p| start + p + 4);
        if at(&String::from_utf8_lossy(&bytes[start..end])) {
            return (&bytes[..start], &bytes[start..]);
        }
        start = end;
    }
    panic!("no frame to split at");
}

fn bodies(h: &Harness) -> Vec<Value> {
    h.zammad.requests().into_iter().map(|r| r.params).collect()
}

/// What `replay` prints for recorded bytes: what the AMI path alone would post.
fn replayed(bytes: &[u8]) -> Vec<Value> {
    let settings = TrackerSettings::from_config(&lab_config());
    replay_bytes(settings, bytes)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.to_json()).unwrap())
        .collect()
}

/// The actions the daemon sent to AMI, other than its own housekeeping.
fn call_actions(h: &Harness) -> Vec<AmiMessage> {
    h.ami
        .actions()
        .into_iter()
        .filter(|a| {
            !matches!(
                a.get("Action"),
                Some("Login" | "Challenge" | "Ping" | "Events" | "CoreShowChannels")
            )
        })
        .collect()
}

async fn wait_for_action(h: &Harness, name: &str) -> AmiMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = call_actions(h)
            .into_iter()
            .find(|a| a.get("Action") == Some(name))
        {
            return a;
        }
        assert!(Instant::now() < deadline, "no {name} action arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The recorded AGI scenario's trunk channel (`agi-agi-inbound.txt`): the caller dials
/// DID 800 and the channel runs the AGI before any Dial.
fn recorded_inbound_agi() -> FakeAgiCall {
    let mut call = FakeAgiCall::inbound("1795596443.48", "1795596443.49", "+15555550100", "800");
    call.channel = "Local/800@from-trunk-00000018;2".into();
    call
}

/// Hangup events for the inbound AGI call's two channels, with `cause`.
fn inbound_agi_hangups(cause: &str) -> bytes::Bytes {
    let hangup = |channel: &str, uniqueid: &str| {
        AmiMessage::from_pairs([
            ("Event", "Hangup"),
            ("Privilege", "call,all"),
            ("Channel", channel),
            ("ChannelState", "4"),
            ("CallerIDNum", "+15555550100"),
            ("Context", "from-trunk"),
            ("Exten", "800"),
            ("Uniqueid", uniqueid),
            ("Linkedid", "1795596443.48"),
            ("Cause", cause),
        ])
    };
    encode(&[
        hangup("Local/800@from-trunk-00000018;2", "1795596443.49"),
        hangup("Local/800@from-trunk-00000018;1", "1795596443.48"),
    ])
}

/// Runs the session after Asterisk's `Newchannel` for its channel, as Asterisk orders them.
async fn run_agi(h: &Harness, call: &FakeAgiCall) -> AgiTranscript {
    assert!(h.ami.send_raw(encode(&[call.newchannel()])));
    run_unannounced(h, call).await
}

/// Runs the session with nothing said on AMI about its channel.
async fn run_unannounced(h: &Harness, call: &FakeAgiCall) -> AgiTranscript {
    tokio::time::timeout(Duration::from_secs(10), call.run(h.agi))
        .await
        .expect("the session ends")
        .expect("the session runs")
}

async fn wait_for_requests(h: &Harness, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done: Vec<_> = h
            .zammad
            .requests()
            .into_iter()
            .filter(|r| r.status.is_some())
            .collect();
        if done.len() >= n {
            return bodies(h);
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests answered",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn blocked_caller_is_rejected_through_fastagi() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    // Asterisk announces the channels, then the dialplan runs the AGI before its Dial.
    let bytes = transcript("agi-inbound");
    let (before_dial, _) = split_before(&bytes, |f| f.starts_with("Event: DialBegin"));
    h.ami.send_events(before_dial).unwrap();
    let t = run_agi(&h, &recorded_inbound_agi()).await;
    assert_eq!(
        t.commands,
        [
            r#"GET VARIABLE "CHANNEL(linkedid)""#,
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
            r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#,
            r#"EXEC "Hangup" "17""#,
        ]
    );
    assert_eq!(t.hangup_cause.as_deref(), Some("17"));
    // The hangup the EXEC caused reaches the tracker over AMI.
    assert!(h.ami.send_raw(inbound_agi_hangups("17")));
    let got = wait_for_requests(&h, 2).await;
    assert_eq!(
        got,
        [
            json!({"event":"newCall","direction":"in","callId":"1795596443.48","from":CALLER,"to":"800"}),
            json!({"event":"hangup","direction":"in","callId":"1795596443.48","from":CALLER,"to":"800","cause":"busy"}),
        ]
    );
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    // The AGI did the reject: nothing went over AMI.
    assert_eq!(call_actions(&h), Vec::<AmiMessage>::new());
    h.stop().await;
}

#[tokio::test]
async fn reject_as_variable_leaves_the_hangup_to_the_dialplan() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            ..FakeZammadConfig::default()
        },
        |c| c.agi.reject = asterisk_zammad_bridge::config::RejectMode::Variable,
    )
    .await;
    let t = run_agi(&h, &recorded_inbound_agi()).await;
    assert_eq!(
        t.commands[1..],
        [
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
            r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#,
        ]
    );
    assert_eq!(t.hangup_cause, None);
    h.stop().await;
}

#[tokio::test]
async fn routed_outbound_call_gets_zammads_caller_id_through_fastagi() {
    let h = Harness::start(
        FakeZammadConfig {
            routes: vec![Route::new("1555*", "493023125877")],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    let bytes = transcript("outbound-answered");
    // The phone's channel runs the AGI before the Dial that leaves the PBX.
    let (before, after) = split_before(&bytes, |f| {
        f.starts_with("Event: DialBegin") && f.contains("\r\nChannel: ")
    });
    h.ami.send_events(before).unwrap();
    let mut call = FakeAgiCall::outbound("1795596391.16", "1795596391.17", "201", "+15555550199");
    call.channel = "Local/+15555550199@from-internal-00000008;2".into();
    let t = run_agi(&h, &call).await;
    assert_eq!(
        t.commands,
        [
            r#"GET VARIABLE "CHANNEL(linkedid)""#,
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596391.16""#,
            r#"EXEC "MSet" "CALLERID(num)=493023125877,ZAMMAD_CALLERID=493023125877,ZAMMAD_ACTION=dial""#,
        ]
    );
    assert_eq!(t.variables["CALLERID(num)"], "493023125877");
    assert_eq!(t.variables["ZAMMAD_CALLERID"], "493023125877");
    assert_eq!(t.variables["ZAMMAD_ACTION"], "dial");
    h.ami.send_events(after).unwrap();
    let got = wait_for_requests(&h, 3).await;
    // The same call as the AMI path alone reports it: one newCall, answer, hangup.
    assert_eq!(got, replayed(&bytes));
    assert_eq!(got[0]["from"], "4930123456201");
    assert_eq!(got[0]["user"], "Alice");
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    assert_eq!(call_actions(&h), Vec::<AmiMessage>::new());
    h.stop().await;
}

#[tokio::test]
async fn an_empty_answer_means_continue() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    let t = run_agi(&h, &recorded_inbound_agi()).await;
    assert_eq!(
        t.commands[1..],
        [
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#,
            r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#,
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_slow_zammad_holds_the_call_no_longer_than_the_timeout() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            delay: Duration::from_millis(1500),
            ..FakeZammadConfig::default()
        },
        |c| c.agi.decision_timeout = Duration::from_millis(300),
    )
    .await;
    let t = run_agi(&h, &recorded_inbound_agi()).await;
    assert!(
        t.elapsed < Duration::from_millis(400),
        "the call waited {:?}",
        t.elapsed
    );
    assert!(t.elapsed >= Duration::from_millis(300), "{:?}", t.elapsed);
    assert_eq!(
        t.commands.last().unwrap(),
        r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#
    );
    // The newCall is still delivered, and the call still ends in Zammad.
    h.ami.send_raw(inbound_agi_hangups("16"));
    let got = wait_for_requests(&h, 2).await;
    let events: Vec<&str> = got.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["newCall", "hangup"]);
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_hostile_caller_id_changes_nothing_on_fastagi() {
    let h = Harness::start(
        FakeZammadConfig {
            routes: vec![Route::new("1555*", HOSTILE)],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    let call = FakeAgiCall::outbound("1795596391.16", "1795596391.17", "201", "+15555550199");
    let t = run_agi(&h, &call).await;
    assert_eq!(
        t.commands,
        [
            r#"GET VARIABLE "CHANNEL(linkedid)""#,
            r#"SET VARIABLE "ZAMMAD_CALLID" "1795596391.16""#,
            r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#,
        ]
    );
    assert!(!t.variables.contains_key("CALLERID(num)"));
    h.stop().await;
}

#[tokio::test]
async fn blocked_caller_seen_only_on_ami_is_hung_up_with_cause_17() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    // Recorded: the call rings at 203, then (the lab's) AMI Hangup with Cause 17 ends it.
    let bytes = transcript("pjsip-inbound-reject-busy");
    let (ringing, rest) = split_before(&bytes, |f| {
        f.starts_with("Event: SoftHangupRequest")
            || f.starts_with("Event: HangupRequest")
            || f.starts_with("Event: Hangup\r\n")
    });
    h.ami.send_events(ringing).unwrap();
    let hangup = wait_for_action(&h, "Hangup").await;
    let trunk = hangup.get("Channel").unwrap().to_string();
    assert!(trunk.starts_with("PJSIP/trunk-"), "{trunk}");
    assert_eq!(hangup.get("Cause"), Some("17"));
    // The channel named is the caller's: the one in from-trunk in the recording.
    let text = String::from_utf8_lossy(ringing);
    assert!(text.contains(&format!("Channel: {trunk}\r\nChannelState: 4")));
    // Asterisk carries it out.
    h.ami.send_events(rest).unwrap();
    let got = wait_for_requests(&h, 2).await;
    assert_eq!(got, replayed(&bytes));
    assert_eq!(got[1]["cause"], "busy");
    assert_invariants(&got, "blocked on AMI");
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    assert_eq!(call_actions(&h).len(), 1, "one action: the Hangup");
    h.stop().await;
}

#[tokio::test]
async fn routed_outbound_call_seen_only_on_ami_gets_a_setvar() {
    let h = Harness::start(
        FakeZammadConfig {
            routes: vec![Route::new("1555*", "493023125877")],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    let bytes = transcript("outbound-answered");
    h.ami.send_events(&bytes).unwrap();
    let setvar = wait_for_action(&h, "Setvar").await;
    assert_eq!(
        setvar
            .iter()
            .filter(|(k, _)| *k != "ActionID")
            .collect::<Vec<_>>(),
        [
            ("Action", "Setvar"),
            ("Channel", "Local/+15555550199@from-internal-00000008;2"),
            ("Variable", "CALLERID(num)"),
            ("Value", "493023125877"),
        ]
    );
    let got = wait_for_requests(&h, 3).await;
    assert_eq!(got, replayed(&bytes));
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_hostile_caller_id_never_reaches_ami() {
    let h = Harness::start(
        FakeZammadConfig {
            routes: vec![Route::new("1555*", HOSTILE)],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    let bytes = transcript("outbound-answered");
    h.ami.send_events(&bytes).unwrap();
    let got = wait_for_requests(&h, 3).await;
    assert_eq!(got, replayed(&bytes));
    // Give a wrongly sent action time to arrive, then check none did.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call_actions(&h), Vec::<AmiMessage>::new());
    h.stop().await;
}

/// Reads until the server closes the connection; the bytes it sent. A reset counts as
/// closed: the kernel resets a socket closed with our unread bytes still in it.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection");
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read: {e}"),
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn bad_sessions_are_closed_and_others_go_on() {
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.agi.idle_timeout = Duration::from_millis(300)
    })
    .await;
    // Garbage: an HTTP request is not a FastAGI session; closed without a word.
    let mut garbage = TcpStream::connect(h.agi).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut garbage).await, "");
    // Silent after half an environment: closed after the idle timeout.
    let mut silent = TcpStream::connect(h.agi).await.unwrap();
    silent.write_all(b"agi_network: yes\n").await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A line longer than Asterisk's 8 KiB limit.
    let mut long = TcpStream::connect(h.agi).await.unwrap();
    let _ = long.write_all(&vec![b'a'; 20_000]).await;
    assert_eq!(read_to_close(&mut long).await, "");
    // Asterisk hangs up mid-way (the caller left while we waited): the session ends.
    let mut gone = recorded_inbound_agi();
    gone.close_at_command = Some(1);
    let t = run_agi(&h, &gone).await;
    assert_eq!(t.commands.len(), 2);
    // A bare HANGUP line where a reply is expected is skipped.
    let mut hung = recorded_inbound_agi();
    hung.linkedid = "1795596443.60".into();
    hung.uniqueid = "1795596443.61".into();
    hung.hangup_before_command = Some(1);
    let t = run_agi(&h, &hung).await;
    assert_eq!(
        t.commands.last().unwrap(),
        r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#
    );
    // And a good session still works.
    let mut fine = recorded_inbound_agi();
    fine.linkedid = "1795596443.70".into();
    fine.uniqueid = "1795596443.71".into();
    let t = run_agi(&h, &fine).await;
    assert_eq!(
        t.commands[1],
        r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.70""#
    );
    h.stop().await;
}

async fn metrics(h: &Harness) -> String {
    reqwest::get(format!("http://{}/metrics", h.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_beyond_the_limit_are_closed_at_once() {
    let h = Harness::start(
        FakeZammadConfig {
            delay: Duration::from_secs(3),
            ..FakeZammadConfig::default()
        },
        |c| c.agi.max_sessions = 1,
    )
    .await;
    // A session AMI confirms keeps its slot (here while it waits for a slow Zammad).
    let call = recorded_inbound_agi();
    assert!(h.ami.send_raw(encode(&[call.newchannel()])));
    let mut first = TcpStream::connect(h.agi).await.unwrap();
    first
        .write_all(call.environment(h.agi).as_bytes())
        .await
        .unwrap();
    let mut line = [0u8; 64];
    let n = first.read(&mut line).await.unwrap();
    assert!(line[..n].starts_with(b"GET VARIABLE"));
    first
        .write_all(format!("200 result=1 ({})\n", call.linkedid).as_bytes())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.zammad.requests().is_empty() {
        assert!(Instant::now() < deadline, "the claim reaches Zammad");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = TcpStream::connect(h.agi).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut second).await, "");
    assert!(started.elapsed() < Duration::from_secs(1));
    let text = metrics(&h).await;
    assert!(
        text.lines()
            .any(|l| l == r#"azb_agi_sessions_total{outcome="overloaded"} 1"#),
        "{text}"
    );
    drop(first);
    h.stop().await;
}

#[tokio::test]
async fn a_session_still_sending_its_environment_gives_its_slot_to_a_new_one() {
    let h = Harness::start(FakeZammadConfig::default(), |c| c.agi.max_sessions = 1).await;
    let mut slow = TcpStream::connect(h.agi).await.unwrap();
    slow.write_all(b"agi_network: yes\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = run_agi(&h, &recorded_inbound_agi()).await;
    assert_eq!(
        t.commands[1],
        r#"SET VARIABLE "ZAMMAD_CALLID" "1795596443.48""#
    );
    assert_eq!(read_to_close(&mut slow).await, "");
    let text = metrics(&h).await;
    for want in [
        r#"azb_agi_sessions_total{outcome="failed"} 1"#,
        r#"azb_agi_sessions_total{outcome="overloaded"} 0"#,
        r#"azb_agi_sessions_total{outcome="continue"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == want), "{want}\n{text}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_claim_waits_for_ami_to_show_its_channel() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            ..FakeZammadConfig::default()
        },
        |_| {},
    )
    .await;
    // The session comes first; its channel's Newchannel 300 ms later.
    let call = recorded_inbound_agi();
    let session = tokio::spawn({
        let (call, agi) = (call.clone(), h.agi);
        async move { call.run(agi).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        h.zammad.requests().is_empty(),
        "nothing before AMI confirms"
    );
    assert!(h.ami.send_raw(encode(&[call.newchannel()])));
    let t = session.await.unwrap();
    assert_eq!(t.commands[2], r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#);
    assert!(t.elapsed < Duration::from_secs(2), "{:?}", t.elapsed);
    h.ami.send_raw(inbound_agi_hangups("17"));
    let got = wait_for_requests(&h, 2).await;
    let events: Vec<&str> = got.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["newCall", "hangup"]);
    h.stop().await;
}

#[tokio::test]
async fn a_claim_ami_never_confirms_goes_on_as_continue_and_ami_reports_the_call() {
    let h = Harness::start(
        FakeZammadConfig {
            blocked: vec![CALLER.into()],
            ..FakeZammadConfig::default()
        },
        |c| c.agi.decision_timeout = Duration::from_millis(400),
    )
    .await;
    // Claims naming a channel AMI never showed, or a live one under another name or
    // Linkedid, take nothing: each session waits out agi.decision_timeout, gets continue.
    let bytes = transcript("agi-inbound");
    let (before_dial, after) = split_before(&bytes, |f| f.starts_with("Event: DialBegin"));
    h.ami.send_events(before_dial).unwrap();
    let real = recorded_inbound_agi();
    let mut unknown = real.clone();
    unknown.uniqueid = "1795596443.999".into();
    let mut renamed = real.clone();
    renamed.channel = "PJSIP/evil-00000001".into();
    let mut relinked = real.clone();
    relinked.linkedid = "1795596443.1".into();
    for forged in [&unknown, &renamed, &relinked] {
        let t = run_unannounced(&h, forged).await;
        assert!(t.elapsed >= Duration::from_millis(400), "{:?}", t.elapsed);
        assert_eq!(
            t.commands.last().unwrap(),
            r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#,
            "{forged:?}"
        );
    }
    assert!(
        h.zammad.requests().is_empty(),
        "a forged claim reached Zammad"
    );
    let text = metrics(&h).await;
    assert!(
        text.lines()
            .any(|l| l == r#"azb_agi_sessions_total{outcome="unconfirmed"} 3"#),
        "{text}"
    );
    // The call itself is reported from AMI, exactly as without any FastAGI session (and
    // its blocked caller hung up over AMI).
    h.ami.send_events(after).unwrap();
    let want = replayed(&bytes);
    let got = wait_for_requests(&h, want.len()).await;
    assert_eq!(got, want);
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    let hangup = wait_for_action(&h, "Hangup").await;
    assert_eq!(hangup.get("Cause"), Some("17"));
    h.stop().await;
}
