//! Tracker rules the lab transcripts do not cover, on hand-written event sequences:
//! transfers that re-link a channel, pickups, late caller IDs, withheld callers, voicemail,
//! internal calls.

use crate::support::lab_config;
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::calls::{CallClaim, ClaimOutcome, Tracker, TrackerSettings};
use asterisk_zammad_bridge::config::Config;
use asterisk_zammad_bridge::zammad::cti::{CallId, CtiRequest, Direction};
use serde_json::{Value, json};

struct Pbx {
    tracker: Tracker,
    out: Vec<CtiRequest>,
}

impl Pbx {
    fn new() -> Self {
        Pbx {
            tracker: Tracker::new(TrackerSettings::from_config(&lab_config())),
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

    /// An inbound call on the trunk whose channel `uid` (also its Linkedid) a FastAGI
    /// session claimed, so that it is reported; its channel block, for later events.
    fn claimed_trunk_call<'a>(
        &mut self,
        uid: &'a str,
    ) -> (&'a str, &'a str, &'a str, u8, &'a str, &'a str, &'a str) {
        let trunk = (T, uid, uid, 4, "from-trunk", "4930100", "+4930555");
        self.ev("Newchannel", trunk, &[]);
        let claimed = self
            .tracker
            .claim(&claim(uid, uid, "from-trunk", "4930100", "+4930555"));
        assert!(matches!(claimed, ClaimOutcome::New(_)));
        trunk
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

fn claim(linkedid: &str, uniqueid: &str, context: &str, exten: &str, caller: &str) -> CallClaim {
    CallClaim {
        linkedid: linkedid.into(),
        uniqueid: uniqueid.into(),
        channel: T.into(),
        context: context.into(),
        exten: exten.into(),
        caller_num: Some(caller.into()),
        ..CallClaim::default()
    }
}

/// Asterisk's `Newchannel` for the channel a claim names (it comes before the dialplan
/// runs the AGI): what makes the tracker take the claim.
fn announce(pbx: &mut Pbx, c: &CallClaim) {
    let caller = c.caller_num.as_deref().unwrap_or("");
    pbx.ev(
        "Newchannel",
        (
            &c.channel,
            &c.uniqueid,
            &c.linkedid,
            4,
            &c.context,
            &c.exten,
            caller,
        ),
        &[],
    );
}

/// [`announce`], then the claim.
fn seen_and_claimed(pbx: &mut Pbx, c: &CallClaim) -> ClaimOutcome {
    announce(pbx, c);
    pbx.tracker.claim(c)
}

fn body(outcome: ClaimOutcome) -> Value {
    match outcome {
        ClaimOutcome::New(r) => serde_json::from_str(&r.to_json()).unwrap(),
        other => panic!("expected a newCall, got {other:?}"),
    }
}

#[test]
fn a_claim_counts_once_ami_shows_its_channel_and_is_the_calls_only_newcall() {
    let mut pbx = Pbx::new();
    // The FastAGI session is faster than the AMI events of its own channel: nothing yet.
    let mut c = claim("9.1", "9.2", "from-trunk", "4930100", "+4930555");
    c.users = vec!["Alice".into(), "Carol".into()];
    c.queue = Some("support".into());
    assert_eq!(pbx.tracker.claim(&c), ClaimOutcome::Unconfirmed);
    assert_eq!(pbx.tracker.active_calls(), 0);
    // AMI catches up with the channel; a claim naming it under another name or Linkedid
    // still takes nothing, the session's own does.
    pbx.ev(
        "Newchannel",
        (T, "9.2", "9.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    let mut renamed = c.clone();
    renamed.channel = "PJSIP/evil-01".into();
    let mut relinked = c.clone();
    relinked.linkedid = "9.0".into();
    let mut unknown = c.clone();
    unknown.uniqueid = "9.9".into();
    for forged in [&renamed, &relinked, &unknown] {
        assert_eq!(pbx.tracker.claim(forged), ClaimOutcome::Unconfirmed);
    }
    assert_eq!(
        body(pbx.tracker.claim(&c)),
        json!({"event":"newCall","direction":"in","callId":"9.1","from":"4930555","to":"4930100",
               "user":["Alice","Carol"],"queue":"support"})
    );
    // Then a leg that rings and answers, the hangup.
    pbx.ev(
        "Newchannel",
        ("PJSIP/201-03", "9.3", "9.1", 0, "from-internal", "s", "201"),
        &[],
    );
    let dest = [
        ("DestChannel", "PJSIP/201-03"),
        ("DestUniqueid", "9.3"),
        ("DestLinkedid", "9.1"),
    ];
    pbx.ev(
        "DialBegin",
        (T, "9.2", "9.1", 4, "from-trunk", "4930100", "+4930555"),
        &dest,
    );
    pbx.ev(
        "Newstate",
        ("PJSIP/201-03", "9.3", "9.1", 5, "from-internal", "s", "201"),
        &[],
    );
    let mut answered = dest.to_vec();
    answered.push(("DialStatus", "ANSWER"));
    pbx.ev(
        "DialEnd",
        (T, "9.2", "9.1", 4, "from-trunk", "4930100", "+4930555"),
        &answered,
    );
    pbx.ev(
        "Hangup",
        ("PJSIP/201-03", "9.3", "9.1", 6, "from-internal", "s", "201"),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (T, "9.2", "9.1", 6, "from-trunk", "4930100", "+4930555"),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["answer", "hangup"], "no second newCall");
    assert_eq!(sent[0]["user"], "Alice");
    assert_eq!(sent[1]["cause"], "normalClearing");
    assert_eq!(pbx.tracker.active_calls(), 0);
}

#[test]
fn a_claim_for_a_call_already_reported_sends_nothing() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "8.1", "8.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    pbx.ev(
        "HangupRequest",
        (T, "8.1", "8.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    // Not reported yet (nobody rang): a claim now is the newCall.
    let first = pbx
        .tracker
        .claim(&claim("8.1", "8.1", "from-trunk", "4930100", "+4930555"));
    assert!(matches!(first, ClaimOutcome::New(_)));
    // A second AGI on the same call (e.g. after a transfer) finds it known.
    let again = pbx
        .tracker
        .claim(&claim("8.1", "8.1", "from-trunk", "4930100", "+4930555"));
    assert_eq!(again, ClaimOutcome::Known(CallId("8.1".into())));
    assert_eq!(pbx.sent(), Vec::<Value>::new());
}

#[test]
fn claims_follow_direction_and_internal_rules() {
    let mut pbx = Pbx::new();
    // Outbound by context: Alice's configured number is the from, her name the user.
    let out = body(seen_and_claimed(
        &mut pbx,
        &claim("7.1", "7.2", "from-internal", "+15555550199", "201"),
    ));
    assert_eq!(
        out,
        json!({"event":"newCall","direction":"out","callId":"7.1","from":"4930123456201",
               "to":"15555550199","user":"Alice"})
    );
    // FreePBX's predial hook: EXTEN is "s", the number and the agent come as parameters.
    let mut hook = claim(
        "7.5",
        "7.6",
        "macro-dialout-trunk-predial-hook",
        "s",
        "4930999",
    );
    hook.direction = Some(Direction::Out);
    hook.to = Some("0301234".into());
    hook.from = Some("202".into());
    let out = body(seen_and_claimed(&mut pbx, &hook));
    assert_eq!(out["from"], "202");
    assert_eq!(
        out["to"], "1301234",
        "national prefix 0 replaced by country code 1"
    );
    assert_eq!(out["user"], "Bob");
    // An outbound "call" to an internal extension is not reported.
    assert_eq!(
        seen_and_claimed(
            &mut pbx,
            &claim("6.1", "6.2", "from-internal", "203", "201")
        ),
        ClaimOutcome::NotReported(CallId("6.1".into()))
    );
    // A context that is neither inbound nor outbound, without direction=: not reported.
    assert_eq!(
        seen_and_claimed(&mut pbx, &claim("5.1", "5.2", "ivr", "4930100", "+4930555")),
        ClaimOutcome::NotReported(CallId("5.1".into()))
    );
    // The same with direction=in is an inbound call.
    let mut forced = claim("4.1", "4.2", "ivr", "4930100", "+4930555");
    forced.direction = Some(Direction::In);
    assert_eq!(body(seen_and_claimed(&mut pbx, &forced))["direction"], "in");
    assert_eq!(pbx.sent(), Vec::<Value>::new());
}

#[test]
fn a_claim_after_the_call_ended_on_ami_does_not_bring_it_back() {
    let mut pbx = Pbx::new();
    // The caller hangs up while the FastAGI session is still asking for the linkedid.
    pbx.ev(
        "Newchannel",
        (T, "10.1", "10.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    pbx.ev(
        "Hangup",
        (T, "10.1", "10.1", 6, "from-trunk", "4930100", "+4930555"),
        &[("Cause", "16")],
    );
    assert_eq!(names(&pbx.sent()), ["newCall", "hangup"]);
    let late = pbx
        .tracker
        .claim(&claim("10.1", "10.1", "from-trunk", "4930100", "+4930555"));
    assert_eq!(late, ClaimOutcome::NotReported(CallId("10.1".into())));
    assert_eq!(pbx.tracker.active_calls(), 0);
    assert_eq!(pbx.tracker.active_channels(), 0);
}

#[test]
fn a_channel_list_taken_before_a_hangup_does_not_bring_the_call_back() {
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (T, "11.1", "11.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    // The daemon asks for the channel list now...
    let since = pbx.tracker.events_seen();
    // ...the caller hangs up before the list arrives...
    pbx.ev(
        "Hangup",
        (T, "11.1", "11.1", 6, "from-trunk", "4930100", "+4930555"),
        &[("Cause", "16")],
    );
    assert_eq!(names(&pbx.sent()), ["newCall", "hangup"]);
    // ...and the list, taken earlier, still shows the channel up.
    let stale = AmiMessage::from_pairs([
        ("Event", "CoreShowChannel"),
        ("Channel", T),
        ("ChannelState", "6"),
        ("CallerIDNum", "+4930555"),
        ("Context", "from-trunk"),
        ("Exten", "4930100"),
        ("Uniqueid", "11.1"),
        ("Linkedid", "11.1"),
        ("BridgeId", "b1"),
    ]);
    pbx.tracker.reconcile(&[stale], since, &mut pbx.out);
    assert_eq!(pbx.sent(), Vec::<Value>::new());
    assert_eq!(pbx.tracker.active_channels(), 0);
}

#[test]
fn reconcile_ends_vanished_calls_and_adopts_unknown_ones() {
    let mut pbx = Pbx::new();
    // Known and reported (a leg rang), then the AMI connection is lost.
    pbx.ev(
        "Newchannel",
        (T, "12.1", "12.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    pbx.ev(
        "Newchannel",
        (
            "PJSIP/201-05",
            "12.2",
            "12.1",
            0,
            "from-internal",
            "s",
            "201",
        ),
        &[],
    );
    pbx.ev(
        "DialBegin",
        (T, "12.1", "12.1", 4, "from-trunk", "4930100", "+4930555"),
        &[
            ("DestChannel", "PJSIP/201-05"),
            ("DestUniqueid", "12.2"),
            ("DestLinkedid", "12.1"),
        ],
    );
    pbx.ev(
        "Newstate",
        (
            "PJSIP/201-05",
            "12.2",
            "12.1",
            5,
            "from-internal",
            "s",
            "201",
        ),
        &[],
    );
    assert_eq!(names(&pbx.sent()), ["newCall"]);
    let since = pbx.tracker.events_seen();
    // After the reconnect Asterisk lists only a call we never saw, answered by 203.
    let up = |ch: &str, uid: &str, ctx: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("CallerIDNum", "+4930777"),
            ("Context", ctx),
            ("Exten", "4930200"),
            ("Uniqueid", uid),
            ("Linkedid", "13.1"),
            ("BridgeId", "b2"),
        ])
    };
    let live = [
        up("PJSIP/trunk-06", "13.1", "from-trunk"),
        up("PJSIP/203-07", "13.2", "from-internal"),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    let sent = pbx.sent();
    let summary: Vec<(String, String)> = sent
        .iter()
        .map(|r| {
            (
                r["callId"].as_str().unwrap().into(),
                r["event"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("12.1".into(), "hangup".into()),
            ("13.1".into(), "newCall".into()),
            ("13.1".into(), "answer".into()),
        ]
    );
    // The vanished call rang and nobody was seen answering: the caller most likely gave up.
    assert_eq!(sent[0]["cause"], "cancel");
    assert_eq!(sent[1]["from"], "4930777");
    assert_eq!(sent[2]["user"], "Carol");
}

#[test]
fn a_kept_call_goes_on_after_a_restart_and_one_kept_without_channels_ends_at_once() {
    let mut pbx = Pbx::new();
    pbx.tracker.persist_changes();
    pbx.ev(
        "Newchannel",
        (T, "14.1", "14.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    pbx.ev(
        "HangupRequest",
        (T, "14.1", "14.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    let claimed = pbx
        .tracker
        .claim(&claim("14.1", "14.1", "from-trunk", "4930100", "+4930555"));
    assert!(matches!(claimed, ClaimOutcome::New(_)));
    let changes = pbx.tracker.take_changes();
    assert_eq!(changes.len(), 1);
    let (key, record) = changes.into_iter().next().unwrap();
    let record = record.expect("a reported call is kept");

    // A new daemon takes it back: its channel's hangup ends it, with no second newCall.
    let mut next = Pbx::new();
    next.tracker
        .restore([(key.clone(), record.clone())], &mut next.out);
    assert_eq!(next.sent(), Vec::<Value>::new());
    next.ev(
        "Hangup",
        (T, "14.1", "14.1", 6, "from-trunk", "4930100", "+4930555"),
        &[("Cause", "16")],
    );
    let sent = next.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(sent[0]["callId"], "14.1");

    // Kept with no live channel: nothing to follow, so it ends at once.
    let mut bare: Value = serde_json::to_value(&record).unwrap();
    bare["channels"] = json!([]);
    let bare = serde_json::from_value(bare).unwrap();
    let mut other = Pbx::new();
    other.tracker.persist_changes();
    other.tracker.restore([(key.clone(), bare)], &mut other.out);
    let sent = other.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(other.tracker.active_calls(), 0);
    // Its record is forgotten, once.
    assert!(matches!(other.tracker.take_changes().as_slice(), [(k, None)] if *k == key));
    assert_eq!(other.tracker.take_changes(), Vec::new());
}

/// A call whose last channel hangs up leaves the tracker at once: the record the state
/// dir holds for it is forgotten all the same, once.
#[test]
fn a_call_gone_with_its_last_channel_has_its_record_forgotten() {
    let mut pbx = Pbx::new();
    pbx.tracker.persist_changes();
    let trunk = pbx.claimed_trunk_call("16.1");
    assert!(matches!(
        pbx.tracker.take_changes().as_slice(),
        [(_, Some(_))]
    ));
    pbx.ev("Hangup", trunk, &[("Cause", "16")]);
    assert_eq!(pbx.tracker.active_calls(), 0);
    assert!(matches!(pbx.tracker.take_changes().as_slice(), [(k, None)] if k == "16.1"));
    assert_eq!(pbx.tracker.take_changes(), Vec::new());
}

#[test]
fn only_changes_a_restart_needs_are_kept() {
    let mut pbx = Pbx::new();
    pbx.tracker.persist_changes();
    pbx.tracker.set_now(1_000_020);
    pbx.ev(
        "Newchannel",
        (T, "15.1", "15.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    // Not reported yet: nothing to keep.
    assert_eq!(pbx.tracker.take_changes(), Vec::new());
    let claimed = pbx
        .tracker
        .claim(&claim("15.1", "15.1", "from-trunk", "4930100", "+4930555"));
    assert!(matches!(claimed, ClaimOutcome::New(_)));
    assert_eq!(pbx.tracker.take_changes().len(), 1);
    // A chatty event within the same minute changes nothing a restart needs.
    pbx.tracker.set_now(1_000_030);
    pbx.ev(
        "VarSet",
        (T, "15.1", "15.1", 4, "from-trunk", "4930100", "+4930555"),
        &[],
    );
    assert_eq!(pbx.tracker.take_changes(), Vec::new());
    // A new leg does; the hangup forgets the call.
    pbx.ev(
        "Newchannel",
        (
            "PJSIP/201-09",
            "15.2",
            "15.1",
            0,
            "from-internal",
            "s",
            "201",
        ),
        &[],
    );
    assert!(matches!(
        pbx.tracker.take_changes().as_slice(),
        [(_, Some(_))]
    ));
    pbx.ev(
        "Hangup",
        (T, "15.1", "15.1", 6, "from-trunk", "4930100", "+4930555"),
        &[("Cause", "16")],
    );
    assert!(matches!(pbx.tracker.take_changes().as_slice(), [(k, None)] if k == "15.1"));
}

/// Events that change nothing of the call itself (`VarSet`, `BridgeEnter`, ...) still
/// move its last event into another minute, which the record keeps (a restart sweeps a
/// call by it): the record is rewritten then, and only then.
#[test]
fn a_quiet_event_in_a_new_minute_rewrites_the_calls_record() {
    let mut pbx = Pbx::new();
    pbx.tracker.persist_changes();
    let mut now = 1_000_020;
    pbx.tracker.set_now(now);
    let trunk = pbx.claimed_trunk_call("17.1");
    assert_eq!(pbx.tracker.take_changes().len(), 1);
    let last_event_minute = |pbx: &mut Pbx| {
        let changes = pbx.tracker.take_changes();
        let [(key, Some(record))] = changes.as_slice() else {
            panic!("the call's record is rewritten: {changes:?}");
        };
        assert_eq!(key, "17.1");
        serde_json::to_value(record).unwrap()["last_event_at"].clone()
    };
    for (event, extra) in [
        ("VarSet", &[("Variable", "X"), ("Value", "1")][..]),
        ("BridgeEnter", &[("BridgeUniqueid", "b-17")][..]),
        ("Hold", &[][..]),
    ] {
        // Same minute: nothing to write.
        now += 1;
        pbx.tracker.set_now(now);
        pbx.ev(event, trunk, extra);
        assert_eq!(pbx.tracker.take_changes(), Vec::new(), "{event}");
        // The next minute: written, with that minute.
        now += 60;
        pbx.tracker.set_now(now);
        pbx.ev(event, trunk, extra);
        assert_eq!(
            last_event_minute(&mut pbx),
            json!(now - now % 60),
            "{event}"
        );
    }
}

/// A member channel that takes another Linkedid without leaving its call (the Linkedid of
/// a call merged into this one) changes what a restart needs: the record keeps each
/// channel's Linkedid, and a restart routes that Linkedid's events by it.
#[test]
fn a_channel_taking_a_merged_calls_linkedid_rewrites_its_calls_record() {
    let mut pbx = Pbx::new();
    pbx.tracker.persist_changes();
    pbx.claimed_trunk_call("16.1");
    let phone = (
        "PJSIP/201-10",
        "16.2",
        "16.1",
        0,
        "from-internal",
        "s",
        "201",
    );
    pbx.ev("Newchannel", phone, &[]);
    // A call of its own, then its only channel joins the reported call: its Linkedid
    // now names the reported call.
    let other = (
        "PJSIP/202-11",
        "16.5",
        "16.5",
        4,
        "from-internal",
        "s",
        "202",
    );
    pbx.ev("Newchannel", other, &[]);
    let joined = (
        "PJSIP/202-11",
        "16.5",
        "16.1",
        6,
        "from-internal",
        "s",
        "202",
    );
    pbx.ev("Newstate", joined, &[]);
    pbx.tracker.take_changes();
    // The phone's channel shows the merged call's Linkedid: same call, new Linkedid.
    let relinked = (
        "PJSIP/201-10",
        "16.2",
        "16.5",
        6,
        "from-internal",
        "s",
        "201",
    );
    pbx.ev("VarSet", relinked, &[]);
    let changes = pbx.tracker.take_changes();
    let [(key, Some(record))] = changes.as_slice() else {
        panic!("the call's record is rewritten: {changes:?}");
    };
    assert_eq!(key, "16.1");
    let record = serde_json::to_value(record).unwrap();
    let phone = record["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["uniqueid"] == "16.2")
        .expect("the phone's channel is kept");
    assert_eq!(phone["linkedid"], "16.5");
}

/// `DialBegin`/`DialEnd` of `caller` to the channel `dest` = (name, uniqueid, linkedid).
fn dial(
    pbx: &mut Pbx,
    caller: (&str, &str, &str, u8, &str, &str, &str),
    dest: (&str, &str, &str),
    status: Option<&str>,
) {
    let mut headers = vec![
        ("DestChannel", dest.0),
        ("DestUniqueid", dest.1),
        ("DestLinkedid", dest.2),
    ];
    match status {
        None => pbx.ev("DialBegin", caller, &headers),
        Some(status) => {
            headers.push(("DialStatus", status));
            pbx.ev("DialEnd", caller, &headers);
        }
    }
}

#[test]
fn a_caller_with_presentation_prohibited_is_anonymous_despite_digits() {
    for (pres, from) in [
        ("32 (Presentation Prohibited, Not Screened)", "anonymous"),
        ("67 (Number Unavailable)", "anonymous"),
        ("1 (Presentation Allowed, Passed Screen)", "4930555"),
    ] {
        let mut pbx = Pbx::new();
        let t = (T, "5.1", "5.1", 4, "from-trunk", "4930100", "+4930555");
        pbx.ev("Newchannel", t, &[]);
        pbx.ev("NewCallerid", t, &[("CID-CallingPres", pres)]);
        pbx.ev("Hangup", t, &[("Cause", "16")]);
        let sent = pbx.sent();
        assert_eq!(names(&sent), ["newCall", "hangup"], "{pres}");
        assert_eq!(sent[0]["from"], from, "{pres}");
    }
}

#[test]
fn the_callers_number_outlives_its_channel() {
    // The caller hangs up before anything rings: the newCall goes out with the hangup,
    // when the channel is already gone, and still carries the number it showed.
    let mut pbx = Pbx::new();
    let t = (T, "6.1", "6.1", 4, "from-trunk", "4930100", "+4930555");
    pbx.ev("Newchannel", t, &[]);
    pbx.ev("Hangup", t, &[("Cause", "16")]);
    let sent = pbx.sent();
    assert_eq!(sent[0]["from"], "4930555");
}

#[test]
fn an_inner_leg_answering_is_no_answer_until_the_caller_is_connected() {
    // The caller dials a Local pair whose inner half dials Alice's phone.
    let t = (T, "7.1", "7.1", 4, "from-trunk", "4930100", "+4930555");
    let l1 = ("Local/201@accept-01;1", "7.2", "7.1");
    let l2 = (
        "Local/201@accept-01;2",
        "7.3",
        "7.1",
        4,
        "accept",
        "201",
        "+4930555",
    );
    let phone = ("PJSIP/201-04", "7.4", "7.1");
    let start = |pbx: &mut Pbx| {
        pbx.ev("Newchannel", t, &[]);
        pbx.ev(
            "Newchannel",
            (l1.0, l1.1, l1.2, 0, "accept", "201", ""),
            &[],
        );
        pbx.ev("Newchannel", l2, &[]);
        dial(pbx, t, l1, None);
        pbx.ev(
            "Newchannel",
            (phone.0, phone.1, phone.2, 0, "from-internal", "s", "201"),
            &[],
        );
        dial(pbx, l2, phone, None);
        // Alice picks up: the inner dial is answered.
        dial(pbx, l2, phone, Some("ANSWER"));
    };
    // 1. Call acceptance: nobody presses 1, the inner leg is dropped, the caller's own
    // dial ends NOANSWER. A missed call.
    let mut pbx = Pbx::new();
    start(&mut pbx);
    pbx.ev(
        "Hangup",
        (phone.0, phone.1, phone.2, 6, "from-internal", "s", "201"),
        &[("Cause", "16")],
    );
    pbx.ev("Hangup", l2, &[("Cause", "16")]);
    dial(&mut pbx, t, l1, Some("NOANSWER"));
    pbx.ev("Hangup", t, &[("Cause", "16")]);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "hangup"]);
    assert_eq!(sent[1]["cause"], "noAnswer");
    // 2. Accepted: the caller's dial is answered; the answer names Alice, found through
    // the Local pair.
    let mut pbx = Pbx::new();
    start(&mut pbx);
    assert_eq!(
        names(&pbx.sent()),
        ["newCall"],
        "no answer for the inner leg alone"
    );
    dial(&mut pbx, t, l1, Some("ANSWER"));
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["answer"]);
    assert_eq!(sent[0]["answeringNumber"], "4930123456201");
    assert_eq!(sent[0]["user"], "Alice");
}

#[test]
fn a_call_emptied_by_a_transfer_still_gets_its_hangup() {
    // Two inbound calls; the agent joins them (an attended transfer between two
    // callers): every channel of the younger call takes the older Linkedid.
    let mut pbx = Pbx::new();
    let t1 = (T, "8.1", "8.1", 4, "from-trunk", "4930100", "+4930555");
    let t2 = (
        "PJSIP/trunk-09",
        "9.1",
        "9.1",
        4,
        "from-trunk",
        "4930100",
        "+4930666",
    );
    for t in [t1, t2] {
        pbx.ev("Newchannel", t, &[]);
        pbx.ev("Newstate", (t.0, t.1, t.2, 6, t.4, t.5, t.6), &[]);
        pbx.ev(
            "Newexten",
            (t.0, t.1, t.2, 6, t.4, t.5, t.6),
            &[("Application", "VoiceMail")],
        );
    }
    assert_eq!(
        names(&pbx.sent()),
        ["newCall", "answer", "newCall", "answer"]
    );
    pbx.ev("BridgeEnter", (t2.0, t2.1, "8.1", 6, t2.4, t2.5, t2.6), &[]);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(sent[0]["callId"], "9.1");
    assert_eq!(sent[0]["cause"], "normalClearing");
    pbx.ev(
        "Hangup",
        (t2.0, t2.1, "8.1", 6, t2.4, t2.5, t2.6),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (t1.0, t1.1, "8.1", 6, t1.4, t1.5, t1.6),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(sent[0]["callId"], "8.1");
    assert_eq!(pbx.tracker.active_calls(), 0);
}

#[test]
fn click_to_call_is_the_agents_outbound_call() {
    // AMI Originate rings Alice's phone (a DialBegin without a caller); answered, her
    // channel runs from-internal and dials the customer through the trunk.
    let mut pbx = Pbx::new();
    let phone = ("PJSIP/201-0a", "10.1", "10.1");
    pbx.ev(
        "Newchannel",
        (phone.0, phone.1, phone.2, 0, "from-internal", "s", ""),
        &[],
    );
    let no_caller = |event: &str, status: Option<&str>| {
        let mut pairs = vec![
            ("Event", event),
            ("DestChannel", phone.0),
            ("DestUniqueid", phone.1),
            ("DestLinkedid", phone.2),
            ("DestChannelState", "0"),
            ("DestContext", "from-internal"),
            ("DestExten", "s"),
        ];
        if let Some(s) = status {
            pairs.push(("DialStatus", s));
        }
        AmiMessage::from_pairs(pairs)
    };
    pbx.tracker
        .handle(&no_caller("DialBegin", None), &mut pbx.out);
    pbx.tracker
        .handle(&no_caller("DialEnd", Some("ANSWER")), &mut pbx.out);
    assert!(pbx.sent().is_empty(), "ringing the agent is no call yet");
    let agent = (
        phone.0,
        phone.1,
        phone.2,
        6,
        "from-internal",
        "0301234567",
        "",
    );
    pbx.ev("Newexten", agent, &[("Application", "Dial")]);
    let trunk = ("PJSIP/trunk-0b", "10.2", "10.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, agent, trunk, None);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall"]);
    assert_eq!(sent[0]["direction"], "out");
    assert_eq!(sent[0]["user"], "Alice");
    assert_eq!(sent[0]["from"], "4930123456201");
    assert_eq!(
        sent[0]["to"], "1301234567",
        "national number with country code 1"
    );
    dial(&mut pbx, agent, trunk, Some("ANSWER"));
    pbx.ev(
        "Hangup",
        (trunk.0, trunk.1, trunk.2, 6, "from-trunk", "s", ""),
        &[("Cause", "16")],
    );
    pbx.ev("Hangup", agent, &[("Cause", "16")]);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["answer", "hangup"]);
    assert_eq!(sent[1]["cause"], "normalClearing");

    // The same originate to an internal extension never leaves the PBX: nothing.
    let mut pbx = Pbx::new();
    pbx.ev(
        "Newchannel",
        (phone.0, phone.1, phone.2, 0, "from-internal", "s", ""),
        &[],
    );
    pbx.tracker
        .handle(&no_caller("DialBegin", None), &mut pbx.out);
    pbx.tracker
        .handle(&no_caller("DialEnd", Some("ANSWER")), &mut pbx.out);
    let agent = (phone.0, phone.1, phone.2, 6, "from-internal", "202", "");
    let bob = ("PJSIP/202-0c", "10.3", "10.1");
    pbx.ev(
        "Newchannel",
        (bob.0, bob.1, bob.2, 0, "from-internal", "s", ""),
        &[],
    );
    dial(&mut pbx, agent, bob, None);
    dial(&mut pbx, agent, bob, Some("ANSWER"));
    pbx.ev("Hangup", agent, &[("Cause", "16")]);
    assert!(pbx.sent().is_empty());
}

#[test]
fn the_outbound_agent_is_the_calling_endpoint_when_the_caller_id_was_rewritten() {
    // FreePBX sets the trunk's caller ID on the phone's channel before the Dial.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/202-0d",
        "11.1",
        "11.1",
        4,
        "from-internal",
        "0301234567",
        "202",
    );
    pbx.ev("Newchannel", phone, &[]);
    let rewritten = (
        phone.0,
        phone.1,
        phone.2,
        4,
        "macro-dialout-trunk",
        "s",
        "+4930111000",
    );
    pbx.ev("NewCallerid", rewritten, &[]);
    let trunk = ("PJSIP/trunk-0e", "11.2", "11.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, rewritten, trunk, None);
    // The trunk leg showing up in its endpoint's (inbound) context is still the leg.
    pbx.ev(
        "Newstate",
        (trunk.0, trunk.1, trunk.2, 4, "from-trunk", "s", ""),
        &[],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall"]);
    assert_eq!(sent[0]["direction"], "out");
    assert_eq!(sent[0]["user"], "Bob");
    assert_eq!(sent[0]["from"], "4930111000", "what the far end sees");
}

#[test]
fn an_empty_trunk_pattern_is_unset() {
    // A regex "" would match every channel: in the file, "" is no pattern.
    let mut config = lab_config();
    config.calls.trunk_channel = Config::from_toml_str("[calls]\ntrunk_channel = \"\"")
        .unwrap()
        .calls
        .trunk_channel;
    assert!(config.calls.trunk_channel.is_none());
    let mut pbx = Pbx {
        tracker: Tracker::new(TrackerSettings::from_config(&config)),
        out: Vec::new(),
    };
    // Bob calls Alice: internal, whatever the channels are named.
    let bob = (
        "PJSIP/202-0f",
        "12.1",
        "12.1",
        4,
        "from-internal",
        "201",
        "202",
    );
    let alice = ("PJSIP/201-10", "12.2", "12.1");
    pbx.ev("Newchannel", bob, &[]);
    pbx.ev(
        "Newchannel",
        (alice.0, alice.1, alice.2, 0, "from-internal", "s", "201"),
        &[],
    );
    dial(&mut pbx, bob, alice, None);
    dial(&mut pbx, bob, alice, Some("ANSWER"));
    pbx.ev("Hangup", bob, &[("Cause", "16")]);
    assert!(pbx.sent().is_empty(), "an internal call is not reported");
}

#[test]
fn a_claimed_caller_with_presentation_prohibited_is_anonymous() {
    let mut pbx = Pbx::new();
    let mut c = claim("13.1", "13.1", "from-trunk", "4930100", "+4930555");
    c.caller_withheld = true;
    assert_eq!(body(seen_and_claimed(&mut pbx, &c))["from"], "anonymous");
}

#[test]
fn a_masqueraded_husk_in_an_inbound_context_is_no_new_caller() {
    // Alice consults Bob (internal) and completes a blonde transfer while Bob rings:
    // Asterisk moves the transferee into her consultation channel's place, and that
    // channel's last snapshot carries the transferee's old dialplan location, an
    // inbound context, in state Ring.
    let mut pbx = Pbx::new();
    let a2 = (
        "PJSIP/201-11",
        "14.1",
        "14.1",
        4,
        "from-internal",
        "202",
        "201",
    );
    pbx.ev("Newchannel", (a2.0, a2.1, a2.2, 0, a2.4, a2.5, a2.6), &[]);
    pbx.ev("Newstate", a2, &[]);
    let bob = ("PJSIP/202-12", "14.2", "14.1");
    pbx.ev(
        "Newchannel",
        (bob.0, bob.1, bob.2, 0, "from-internal", "s", "202"),
        &[],
    );
    dial(&mut pbx, a2, bob, None);
    pbx.ev(
        "Hangup",
        (a2.0, a2.1, a2.2, 4, "from-trunk", "", "201"),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (bob.0, bob.1, bob.2, 6, "from-internal", "s", "202"),
        &[("Cause", "16")],
    );
    assert!(
        pbx.sent().is_empty(),
        "no phantom inbound call: {:?}",
        pbx.sent()
    );
}

#[test]
fn the_outbound_from_is_the_caller_id_the_far_end_sees() {
    // Dave (no configured number) dials out; the dialplan set the site's outbound
    // caller ID on his channel before the Dial.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/204-13",
        "15.1",
        "15.1",
        4,
        "from-internal",
        "0301234567",
        "+1555000",
    );
    pbx.ev("Newchannel", phone, &[]);
    let trunk = ("PJSIP/trunk-14", "15.2", "15.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, phone, trunk, None);
    let sent = pbx.sent();
    assert_eq!(sent[0]["user"], "Dave");
    assert_eq!(sent[0]["from"], "1555000");
}

#[test]
fn predial_hook_legs_of_an_inbound_call_stay_part_of_it() {
    // FreePBX runs its predial hook (and with it the FastAGI) also for legs nobody
    // dialed: a ring-group member that is an outside number (a Local channel) and a call
    // forward (the inbound channel itself). Both carry the inbound call's Linkedid.
    let mut pbx = Pbx::new();
    // Asterisk announces the channels before their dialplans run the AGI.
    let t = (T, "16.1", "16.1", 4, "from-trunk", "4930100", "+4930555");
    let l2 = (
        "Local/0301234@from-internal-0001;2",
        "16.3",
        "16.1",
        4,
        "from-internal",
        "0301234",
        "+4930555",
    );
    pbx.ev("Newchannel", t, &[]);
    pbx.ev("Newchannel", l2, &[]);
    let inbound = claim("16.1", "16.1", "from-trunk", "4930100", "+4930555");
    let call_id = body(pbx.tracker.claim(&inbound))["callId"].clone();
    let mut member = claim("16.1", "16.3", "macro-dialout-trunk", "s", "+4930555");
    member.channel = "Local/0301234@from-internal-0001;2".into();
    member.direction = Some(Direction::Out);
    member.to = Some("0301234".into());
    let mut forward = claim("16.1", "16.1", "macro-dialout-trunk", "s", "+4930555");
    forward.direction = Some(Direction::Out);
    forward.to = Some("0307777".into());
    for leg in [member, forward] {
        match pbx.tracker.claim(&leg) {
            ClaimOutcome::Known(id) => assert_eq!(json!(id.0), call_id, "the inbound callId"),
            other => panic!("a hook leg must stay part of the inbound call: {other:?}"),
        }
    }
    // On AMI the member leg dials the trunk: still no outbound call of its own.
    let trunk = ("PJSIP/trunk-15", "16.4", "16.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, l2, trunk, None);
    pbx.ev(
        "Hangup",
        (trunk.0, trunk.1, trunk.2, 5, "from-trunk", "s", ""),
        &[("Cause", "16")],
    );
    pbx.ev("Hangup", l2, &[("Cause", "16")]);
    pbx.ev("Hangup", t, &[("Cause", "16")]);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"], "{sent:?}");
    assert_eq!(sent[0]["callId"], call_id);
    assert_eq!(sent[0]["direction"], "in");
}

#[test]
fn freepbx_ampuser_names_the_calling_extension() {
    // A device whose endpoint is not named after the extension (FreePBX's
    // device-and-user mode): FreePBX states the calling extension in AMPUSER.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/desk7-16",
        "17.1",
        "17.1",
        4,
        "from-internal",
        "0301234567",
        "+4930111000",
    );
    pbx.ev("Newchannel", phone, &[]);
    pbx.ev(
        "VarSet",
        phone,
        &[("Variable", "AMPUSER"), ("Value", "202")],
    );
    let trunk = ("PJSIP/trunk-17", "17.2", "17.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, phone, trunk, None);
    assert_eq!(pbx.sent()[0]["user"], "Bob");
}

#[test]
fn an_extension_not_in_agents_is_named_by_its_phones_caller_id_name() {
    // Inbound: 205 and 206 are not in [agents]. 205's channel presents itself ("Erin
    // Example" <205>): her name. 206's leg carries the outside caller's ID: no name from it.
    let mut pbx = Pbx::new();
    let t = (T, "30.1", "30.1", 4, "from-trunk", "4930100", "+4930555");
    pbx.ev("Newchannel", t, &[("CallerIDName", "PSTN Caller")]);
    let erin = (
        "PJSIP/205-31",
        "30.2",
        "30.1",
        0,
        "from-internal",
        "s",
        "205",
    );
    let frank = (
        "PJSIP/206-32",
        "30.3",
        "30.1",
        0,
        "from-internal",
        "s",
        "+4930555",
    );
    pbx.ev("Newchannel", erin, &[("CallerIDName", "Erin Example")]);
    pbx.ev("Newchannel", frank, &[("CallerIDName", "PSTN Caller")]);
    dial(&mut pbx, t, (erin.0, erin.1, erin.2), None);
    dial(&mut pbx, t, (frank.0, frank.1, frank.2), None);
    pbx.ev(
        "Newstate",
        (erin.0, erin.1, erin.2, 5, erin.4, erin.5, erin.6),
        &[],
    );
    dial(&mut pbx, t, (erin.0, erin.1, erin.2), Some("ANSWER"));
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer"], "{sent:#?}");
    assert_eq!(sent[0]["user"], "Erin Example", "only 205 is named");
    assert_eq!(sent[1]["user"], "Erin Example");
    assert_eq!(sent[1]["answeringNumber"], "205");

    // Outbound: 206 dials out from a phone that shows its user's name.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/206-33",
        "31.1",
        "31.1",
        4,
        "from-internal",
        "0301234567",
        "206",
    );
    pbx.ev("Newchannel", phone, &[("CallerIDName", "Frank Example")]);
    let trunk = ("PJSIP/trunk-34", "31.2", "31.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, phone, trunk, None);
    let sent = pbx.sent();
    assert_eq!(sent[0]["event"], "newCall");
    assert_eq!(sent[0]["user"], "Frank Example");
    // A name in [agents] still wins over the phone's.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/204-35",
        "32.1",
        "32.1",
        4,
        "from-internal",
        "0301234567",
        "204",
    );
    pbx.ev("Newchannel", phone, &[("CallerIDName", "D. on the phone")]);
    let trunk = ("PJSIP/trunk-36", "32.2", "32.1");
    pbx.ev(
        "Newchannel",
        (trunk.0, trunk.1, trunk.2, 0, "from-trunk", "s", ""),
        &[],
    );
    dial(&mut pbx, phone, trunk, None);
    assert_eq!(pbx.sent()[0]["user"], "Dave");
}

#[test]
fn an_outbound_call_whose_dial_was_missed_is_adopted_from_the_channel_list() {
    // Alice's phone enters from-internal dialing an outside number; the AMI connection
    // drops before its DialBegin. After the reconnect Asterisk lists her channel, up and
    // bridged with a trunk leg: the call was dialed and answered while we were away.
    let mut pbx = Pbx::new();
    let phone = (
        "PJSIP/201-20",
        "20.1",
        "20.1",
        4,
        "from-internal",
        "0301234567",
        "201",
    );
    pbx.ev("Newchannel", phone, &[]);
    assert!(pbx.sent().is_empty());
    let since = pbx.tracker.events_seen();
    let listed = |ch: &str, uid: &str, ctx: &str, exten: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("CallerIDNum", "201"),
            ("Context", ctx),
            ("Exten", exten),
            ("Uniqueid", uid),
            ("Linkedid", "20.1"),
            ("BridgeId", "b20"),
        ])
    };
    let live = [
        listed("PJSIP/201-20", "20.1", "from-internal", "0301234567"),
        listed("PJSIP/trunk-21", "20.2", "from-trunk", "s"),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer"]);
    assert_eq!(sent[0]["direction"], "out");
    assert_eq!(sent[0]["user"], "Alice");
    assert_eq!(sent[0]["to"], "1301234567");
    // A second list changes nothing; the hangups arrive live and end it once.
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    assert!(pbx.sent().is_empty());
    pbx.ev(
        "Hangup",
        ("PJSIP/trunk-21", "20.2", "20.1", 6, "from-trunk", "s", ""),
        &[("Cause", "16")],
    );
    pbx.ev(
        "Hangup",
        (phone.0, phone.1, phone.2, 6, phone.4, phone.5, phone.6),
        &[("Cause", "16")],
    );
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"]);
    assert_eq!(sent[0]["cause"], "normalClearing");
}

#[test]
fn a_phone_still_in_the_dialplan_is_not_taken_for_an_unseen_dial() {
    // After a restart Asterisk lists a phone's Local pair whose dialplan half is still in
    // from-internal (say, running the FastAGI before its Dial): the other half of its own
    // pair is no dialed leg, so no outbound call yet.
    let mut pbx = Pbx::new();
    let since = pbx.tracker.events_seen();
    let listed = |ch: &str, uid: &str, state: &str, ctx: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", state),
            ("CallerIDNum", "201"),
            ("Context", ctx),
            ("Exten", "0301234567"),
            ("Uniqueid", uid),
            ("Linkedid", "21.1"),
        ])
    };
    let live = [
        listed(
            "Local/0301234567@from-internal-00000031;1",
            "21.1",
            "6",
            "phones",
        ),
        listed(
            "Local/0301234567@from-internal-00000031;2",
            "21.2",
            "4",
            "from-internal",
        ),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    assert!(pbx.sent().is_empty(), "{:?}", pbx.sent());
}

#[test]
fn a_call_emptied_by_a_merge_seen_only_in_the_channel_list_ends_at_once() {
    // Two inbound calls up; while we were away a transfer joined them: the list shows the
    // younger call's caller with the older call's Linkedid.
    let mut pbx = Pbx::new();
    let t1 = (T, "22.1", "22.1", 4, "from-trunk", "4930100", "+4930555");
    let t2 = (
        "PJSIP/trunk-23",
        "23.1",
        "23.1",
        4,
        "from-trunk",
        "4930100",
        "+4930666",
    );
    for t in [t1, t2] {
        pbx.ev("Newchannel", t, &[]);
        pbx.ev(
            "Newexten",
            (t.0, t.1, t.2, 6, t.4, t.5, t.6),
            &[("Application", "VoiceMail")],
        );
    }
    assert_eq!(
        names(&pbx.sent()),
        ["newCall", "answer", "newCall", "answer"]
    );
    let since = pbx.tracker.events_seen();
    let listed = |ch: &str, uid: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("Context", "from-trunk"),
            ("Exten", "4930100"),
            ("Uniqueid", uid),
            ("Linkedid", "22.1"),
            ("BridgeId", "b22"),
        ])
    };
    let live = [listed(T, "22.1"), listed("PJSIP/trunk-23", "23.1")];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["hangup"], "{sent:?}");
    assert_eq!(sent[0]["callId"], "23.1");
}

#[test]
fn an_outbound_call_learnt_between_the_login_and_the_list_is_adopted() {
    // The daemon restarts while Alice dials out: the dial and the answer happened before
    // its login. Between the login and the channel list, the call's end of dialling goes
    // on live (the phone's DialEnd ANSWER, both up); none of those events is a
    // Newchannel, so both channels were born while the daemon was not looking and the
    // list decides the call: outbound, answered, reported once.
    let mut pbx = Pbx::new();
    let since = pbx.tracker.events_seen();
    let phone = (
        "PJSIP/201-30",
        "30.1",
        "30.1",
        6,
        "from-internal",
        "0301234567",
        "201",
    );
    dial(
        &mut pbx,
        phone,
        ("PJSIP/trunk-31", "30.2", "30.1"),
        Some("ANSWER"),
    );
    assert!(pbx.sent().is_empty(), "nothing decided the call yet");
    let listed = |ch: &str, uid: &str, ctx: &str, exten: &str, caller: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("CallerIDNum", caller),
            ("Context", ctx),
            ("Exten", exten),
            ("Uniqueid", uid),
            ("Linkedid", "30.1"),
            ("BridgeId", "b30"),
        ])
    };
    let live = [
        listed(phone.0, "30.1", "from-internal", "0301234567", "201"),
        listed("PJSIP/trunk-31", "30.2", "from-trunk", "s", "0301234567"),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer"], "{sent:?}");
    assert_eq!(sent[0]["direction"], "out");
    assert_eq!(sent[0]["to"], "1301234567");
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    assert!(pbx.sent().is_empty(), "a second list changes nothing");
}

#[test]
fn a_call_whose_birth_came_after_the_list_was_asked_is_left_to_its_events() {
    // A caller is born after the login (its Newchannel is seen) and the IVR answers it:
    // no phone rang yet, so Zammad hears of it only when one does. The list that follows
    // shows it up; nothing was missed, so nothing is reported early.
    let mut pbx = Pbx::new();
    let since = pbx.tracker.events_seen();
    let t = (T, "34.1", "34.1", 4, "from-trunk", "4930100", "+4930555");
    pbx.ev("Newchannel", t, &[]);
    pbx.ev("Newstate", (t.0, t.1, t.2, 6, t.4, t.5, t.6), &[]);
    let live = [AmiMessage::from_pairs([
        ("Event", "CoreShowChannel"),
        ("Channel", T),
        ("ChannelState", "6"),
        ("CallerIDNum", "+4930555"),
        ("Context", "from-trunk"),
        ("Exten", "4930100"),
        ("Uniqueid", "34.1"),
        ("Linkedid", "34.1"),
        ("Application", "BackGround"),
    ])];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    assert!(pbx.sent().is_empty(), "{:?}", pbx.sent());
}

#[test]
fn an_internal_call_born_after_the_list_was_asked_stays_unreported() {
    // Alice's phone is born after the login (its Newchannel is seen) and dials extension
    // 202: an internal call, which is not Zammad's. The list that follows shows both up
    // and bridged; nothing was missed, so nothing is adopted.
    let mut pbx = Pbx::new();
    let since = pbx.tracker.events_seen();
    let phone = (
        "PJSIP/201-32",
        "32.1",
        "32.1",
        4,
        "from-internal",
        "202",
        "201",
    );
    pbx.ev("Newchannel", phone, &[]);
    pbx.ev(
        "Newchannel",
        (
            "PJSIP/202-33",
            "32.2",
            "32.1",
            0,
            "from-internal",
            "s",
            "202",
        ),
        &[],
    );
    dial(&mut pbx, phone, ("PJSIP/202-33", "32.2", "32.1"), None);
    dial(
        &mut pbx,
        (phone.0, phone.1, phone.2, 6, phone.4, phone.5, phone.6),
        ("PJSIP/202-33", "32.2", "32.1"),
        Some("ANSWER"),
    );
    let listed = |ch: &str, uid: &str, exten: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("Context", "from-internal"),
            ("Exten", exten),
            ("Uniqueid", uid),
            ("Linkedid", "32.1"),
            ("BridgeId", "b32"),
        ])
    };
    let live = [
        listed(phone.0, "32.1", "202"),
        listed("PJSIP/202-33", "32.2", "s"),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    assert!(pbx.sent().is_empty(), "{:?}", pbx.sent());
}

#[test]
fn a_phone_found_dialing_out_where_freepbx_dials_is_adopted_as_an_outbound_call() {
    // The daemon restarts while Alice's call is up. FreePBX 17 runs the trunk's Dial in
    // trunk-dial-with-exten at the number dialed, so the list shows her channel there,
    // bridged with the trunk leg: she dialed out while we were away.
    let mut pbx = Pbx::new();
    let since = pbx.tracker.events_seen();
    let listed = |ch: &str, uid: &str, ctx: &str, exten: &str, caller: &str| {
        AmiMessage::from_pairs([
            ("Event", "CoreShowChannel"),
            ("Channel", ch),
            ("ChannelState", "6"),
            ("CallerIDNum", caller),
            ("Context", ctx),
            ("Exten", exten),
            ("Uniqueid", uid),
            ("Linkedid", "40.1"),
            ("BridgeId", "b40"),
            ("Application", "Dial"),
        ])
    };
    let live = [
        listed(
            "PJSIP/201-40",
            "40.1",
            "trunk-dial-with-exten",
            "0301234567",
            "201",
        ),
        listed("PJSIP/trunk-41", "40.2", "from-trunk", "s", "0301234567"),
    ];
    pbx.tracker.reconcile(&live, since, &mut pbx.out);
    let sent = pbx.sent();
    assert_eq!(names(&sent), ["newCall", "answer"], "{sent:?}");
    assert_eq!(sent[0]["direction"], "out");
    assert_eq!(sent[0]["to"], "1301234567");
    assert_eq!(sent[0]["user"], "Alice");
}

#[test]
fn a_phone_found_at_a_feature_code_or_an_extension_is_no_outbound_call() {
    // Listed after a restart: Alice's phone at a feature code beside a Local channel, and
    // Bob's phone talking to extension 202 from a dialplan context of its own. Neither
    // is a number dialed out.
    for (exten, other) in [("*98", "Local/vm@app-00000001;1"), ("202", "PJSIP/202-43")] {
        let mut pbx = Pbx::new();
        let since = pbx.tracker.events_seen();
        let listed = |ch: &str, uid: &str, exten: &str| {
            AmiMessage::from_pairs([
                ("Event", "CoreShowChannel"),
                ("Channel", ch),
                ("ChannelState", "6"),
                ("CallerIDNum", "201"),
                ("Context", "macro-dial-one"),
                ("Exten", exten),
                ("Uniqueid", uid),
                ("Linkedid", "42.1"),
                ("BridgeId", "b42"),
            ])
        };
        let live = [
            listed("PJSIP/201-42", "42.1", exten),
            listed(other, "42.2", "s"),
        ];
        pbx.tracker.reconcile(&live, since, &mut pbx.out);
        let sent = pbx.sent();
        assert!(sent.is_empty(), "{exten}: {sent:?}");
    }
}
