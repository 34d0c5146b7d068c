//! Tracker rules the lab transcripts do not cover, on hand-written event sequences:
//! transfers that re-link a channel, pickups, late caller IDs, withheld callers, voicemail,
//! internal calls.

use crate::support::lab_config;
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::cti::CtiRequest;
use asterisk_zammad_bridge::tracker::{Tracker, TrackerSettings};
use serde_json::{Value, json};

struct Pbx {
    tracker: Tracker,
    out: Vec<CtiRequest>,
}

impl Pbx {
    fn new() -> Self {
        Pbx {
            tracker: Tracker::new(TrackerSettings::from_config(&lab_config()).unwrap()),
            out: Vec::new(),
        }
    }

    /// One event with a channel block: (channel, uniqueid, linkedid, state, context, exten,
    /// caller) plus extra headers.
    fn ev(
        &mut self,
        event: &str,
        ch: (&str, &str, &str, u8, &str, &str, &str),
        extra: &[(&str, &str)],
    ) {
        let state = ch.3.to_string();
        let mut pairs = vec![
            ("Event", event),
            ("Channel", ch.0),
            ("ChannelState", state.as_str()),
            ("CallerIDNum", ch.6),
            ("Context", ch.4),
            ("Exten", ch.5),
            ("Uniqueid", ch.1),
            ("Linkedid", ch.2),
        ];
        pairs.extend_from_slice(extra);
        self.tracker
            .handle(&AmiMessage::from_pairs(pairs), &mut self.out);
    }

    fn sent(&mut self) -> Vec<Value> {
        self.out
            .drain(..)
            .map(|r| serde_json::from_str(&r.to_json()).unwrap())
            .collect()
    }
}

fn names(sent: &[Value]) -> Vec<String> {
    sent.iter()
        .map(|v| v["event"].as_str().unwrap().to_string())
        .collect()
}

const T: &str = "PJSIP/trunk-01";

#[test]
fn caller_id_arriving_after_the_channel_is_used_not_anonymous() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "1.1", "1.1", 4, "from-trunk", "201", "<unknown>"),
        &[],
    );
    pbx.ev(
        "NewCallerid",
        (T, "1.1", "1.1", 4, "from-trunk", "201", "+4930555"),
        &[],
    );
    pbx.ev(
        "Newchannel",
        (
            "PJSIP/201-02",
            "1.2",
            "1.1",
            0,
            "from-internal",
            "s",
            "<unknown>",
        ),
        &[],
    );
    pbx.ev(
        "DialBegin",
        (T, "1.1", "1.1", 4, "from-trunk", "201", "+4930555"),
        &[
            ("DestChannel", "PJSIP/201-02"),
            ("DestUniqueid", "1.2"),
            ("DestLinkedid", "1.1"),
            ("DestChannelState", "0"),
        ],
    );
    pbx.ev(
        "Newstate",
        ("PJSIP/201-02", "1.2", "1.1", 5, "from-internal", "s", "201"),
        &[],
    );
    let sent = pbx.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["from"], "4930555");
    assert_eq!(sent[0]["user"], "Alice");
}

#[test]
fn withheld_caller_is_anonymous_and_a_hangup_in_the_ivr_is_still_reported() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "2.1", "2.1", 4, "from-trunk", "4930100", ""),
        &[],
    );
    pbx.ev(
        "HangupRequest",
        (T, "2.1", "2.1", 6, "ivr", "s", ""),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (T, "2.1", "2.1", 6, "ivr", "s", ""),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "hangup"]);
    assert_eq!(sent[0]["from"], "anonymous");
    assert_eq!(sent[0]["to"], "4930100");
    // The caller hung up before anybody rang: a missed call, cause cancel.
    assert_eq!(sent[1]["cause"], "cancel");
}

#[test]
fn attended_transfer_relinks_the_target_without_a_second_answer_or_hangup() {
    let mut pbx = Pbx::new();
    let a = ("PJSIP/201-02", "3.2", "3.1", 0, "from-internal", "s", "201");
    pbx.ev(
        "Newchannel",
        (T, "3.1", "3.1", 4, "from-trunk", "201", "+4930555"),
        &[],
    );
    pbx.ev("Newchannel", a, &[]);
    let dest = [
        ("DestChannel", "PJSIP/201-02"),
        ("DestUniqueid", "3.2"),
        ("DestLinkedid", "3.1"),
    ];
    pbx.ev(
        "DialBegin",
        (T, "3.1", "3.1", 4, "from-trunk", "201", "+4930555"),
        &dest,
    );
    let mut end = dest.to_vec();
    end.push(("DialStatus", "ANSWER"));
    pbx.ev(
        "DialEnd",
        (T, "3.1", "3.1", 4, "from-trunk", "201", "+4930555"),
        &end,
    );
    // Alice consults Bob on a second line: an internal call with its own Linkedid.
    let a2 = (
        "PJSIP/201-03",
        "4.1",
        "4.1",
        4,
        "from-internal",
        "202",
        "201",
    );
    let b = ("PJSIP/202-04", "4.2", "4.1", 0, "from-internal", "s", "202");
    pbx.ev("Newchannel", a2, &[]);
    pbx.ev("Newchannel", b, &[]);
    let bdest = [
        ("DestChannel", "PJSIP/202-04"),
        ("DestUniqueid", "4.2"),
        ("DestLinkedid", "4.1"),
    ];
    pbx.ev("DialBegin", a2, &bdest);
    let mut bend = bdest.to_vec();
    bend.push(("DialStatus", "ANSWER"));
    pbx.ev("DialEnd", a2, &bend);
    // The transfer completes: Bob's channel joins the customer's bridge and takes its
    // (older) Linkedid; Alice's two channels hang up.
    pbx.ev(
        "BridgeEnter",
        ("PJSIP/202-04", "4.2", "3.1", 6, "from-internal", "s", "202"),
        &[],
    );
    pbx.ev(
        "Hangup",
        ("PJSIP/201-02", "3.2", "3.1", 6, "from-internal", "s", "201"),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (
            "PJSIP/201-03",
            "4.1",
            "4.1",
            6,
            "from-internal",
            "202",
            "201",
        ),
        &[("Cause", "16")],
    );
    assert_eq!(names(&pbx.sent()), ["newCall", "answer"]);
    // The customer talks to Bob until the customer hangs up: one hangup, original callId.
    pbx.ev(
        "Hangup",
        (T, "3.1", "3.1", 6, "from-trunk", "201", "+4930555"),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        ("PJSIP/202-04", "4.2", "3.1", 6, "from-internal", "s", "202"),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(sent[0]["callId"], "3.1");
    assert_eq!(sent[0]["cause"], "normalClearing");
    assert_eq!(pbx.tracker.active_calls(), 0, "nothing left behind");
}

#[test]
fn pickup_answers_for_the_picking_agent() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "5.1", "5.1", 4, "from-trunk", "203", "+4930555"),
        &[],
    );
    pbx.ev(
        "Newchannel",
        ("PJSIP/203-02", "5.2", "5.1", 0, "from-internal", "s", "203"),
        &[],
    );
    let dest = [
        ("DestChannel", "PJSIP/203-02"),
        ("DestUniqueid", "5.2"),
        ("DestLinkedid", "5.1"),
    ];
    pbx.ev(
        "DialBegin",
        (T, "5.1", "5.1", 4, "from-trunk", "203", "+4930555"),
        &dest,
    );
    pbx.ev(
        "Newstate",
        ("PJSIP/203-02", "5.2", "5.1", 5, "from-internal", "s", "203"),
        &[],
    );
    // Bob (202) dials *8 and picks Carol's ringing phone up.
    pbx.ev(
        "Newchannel",
        (
            "PJSIP/202-03",
            "6.1",
            "6.1",
            4,
            "from-internal",
            "*8",
            "202",
        ),
        &[],
    );
    pbx.ev(
        "Pickup",
        (
            "PJSIP/202-03",
            "6.1",
            "6.1",
            6,
            "from-internal",
            "*8",
            "202",
        ),
        &[
            ("TargetChannel", "PJSIP/203-02"),
            ("TargetUniqueid", "5.2"),
            ("TargetLinkedid", "5.1"),
            ("TargetChannelState", "5"),
        ],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer"]);
    assert_eq!(sent[1]["user"], "Bob");
    assert_eq!(sent[1]["answeringNumber"], "202");
}

#[test]
fn voicemail_answers_as_voicemail() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "7.1", "7.1", 4, "from-trunk", "203", "+4930555"),
        &[],
    );
    pbx.ev(
        "Newexten",
        (T, "7.1", "7.1", 4, "from-trunk", "203", "+4930555"),
        &[("Application", "VoiceMail"), ("AppData", "203@default")],
    );
    pbx.ev(
        "Hangup",
        (T, "7.1", "7.1", 6, "from-trunk", "203", "+4930555"),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer", "hangup"]);
    assert_eq!(
        sent[1],
        json!({"event":"answer","direction":"in","callId":"7.1","from":"4930555","to":"203","user":"voicemail"})
    );
}

#[test]
fn internal_calls_are_not_reported() {
    let mut pbx = Pbx::new();
    // Alice dials Bob from a phone: outbound context, but the number is an extension.
    let a = (
        "PJSIP/201-01",
        "8.1",
        "8.1",
        4,
        "from-internal",
        "202",
        "201",
    );
    pbx.ev("Newchannel", a, &[]);
    pbx.ev(
        "Newchannel",
        ("PJSIP/202-02", "8.2", "8.1", 0, "from-internal", "s", "202"),
        &[],
    );
    let dest = [
        ("DestChannel", "PJSIP/202-02"),
        ("DestUniqueid", "8.2"),
        ("DestLinkedid", "8.1"),
    ];
    pbx.ev("DialBegin", a, &dest);
    let mut end = dest.to_vec();
    end.push(("DialStatus", "ANSWER"));
    pbx.ev("DialEnd", a, &end);
    pbx.ev("Hangup", a, &[("Cause", "16")]);
    pbx.ev(
        "Hangup",
        ("PJSIP/202-02", "8.2", "8.1", 6, "from-internal", "s", "202"),
        &[("Cause", "16")],
    );
    assert!(pbx.sent().is_empty());
    assert_eq!(pbx.tracker.active_calls(), 0);
}
