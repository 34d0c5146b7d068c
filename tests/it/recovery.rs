//! Nothing lost, nothing doubled across restarts (docs/persistence.md), in process: the
//! daemon is stopped (as by SIGTERM) and started again on the same state dir, between the
//! scripted AMI peer (whose `CoreShowChannels` answer is the live channel list) and the
//! stand-in Zammad. The SIGKILL and outage runs with the real binary are in `faults`.

use crate::support::call_events;
use crate::support::encode;
use crate::support::harness::Harness;
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::service::journal::{Journal, Record};
use asterisk_zammad_bridge::standins::zammad::FakeZammadConfig;
use asterisk_zammad_bridge::zammad::cti::{CallId, Cause, CtiEventKind, CtiRequest, Direction};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The channels of `call_events(i)` as `CoreShowChannels` lists them while the call is
/// answered: the trunk and the phone, up and in one bridge.
pub fn live_channels(i: usize) -> Vec<AmiMessage> {
    let t = format!("1900000000.{}", i * 2);
    let a = format!("1900000000.{}", i * 2 + 1);
    let bridge = format!("bridge-{i}");
    let trunk = format!("PJSIP/trunk-{i:08x}");
    let leg = format!("PJSIP/201-{i:08x}");
    let caller = format!("+1555000{i:04}");
    let did = format!("700{i:04}");
    let one = |ch: &str, uid: &str, context: &str| {
        AmiMessage::from_pairs([
            ("Channel", ch),
            ("ChannelState", "6"),
            ("ChannelStateDesc", "Up"),
            ("CallerIDNum", caller.as_str()),
            ("Context", context),
            ("Exten", did.as_str()),
            ("Uniqueid", uid),
            ("Linkedid", t.as_str()),
            ("BridgeId", bridge.as_str()),
            ("Application", "Dial"),
        ])
    };
    vec![
        one(&trunk, &t, "from-trunk"),
        one(&leg, &a, "from-internal"),
    ]
}

/// Zammad's accepted requests (2xx) of call `i`, as (event, cause) pairs.
fn accepted(h: &Harness, i: usize) -> Vec<(String, Option<String>)> {
    let id = format!("1900000000.{}", i * 2);
    h.zammad
        .requests()
        .into_iter()
        .filter(|r| r.call_id().as_deref() == Some(&id))
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|r| {
            (
                r.event().unwrap_or("").to_string(),
                r.params["cause"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ev(pairs: &[(&str, &str)]) -> (String, Option<String>) {
    (
        pairs[0].1.to_string(),
        pairs.get(1).map(|p| p.1.to_string()),
    )
}

#[tokio::test]
async fn a_call_up_across_a_restart_is_continued_under_its_callid() {
    let mut h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    let events = call_events(1);
    // Ringing and answered before the restart...
    h.ami.send_raw(encode(&events[..5]));
    wait_until("newCall and answer", || accepted(&h, 1).len() == 2).await;
    h.ami.set_channels(live_channels(1));
    h.restart().await;
    // ... and hung up after it.
    h.ami.send_raw(encode(&events[5..]));
    wait_until("the hangup", || accepted(&h, 1).len() == 3).await;
    assert_eq!(
        accepted(&h, 1),
        [
            ev(&[("event", "newCall")]),
            ev(&[("event", "answer")]),
            ev(&[("event", "hangup"), ("cause", "normalClearing")]),
        ]
    );
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_call_that_ended_while_the_daemon_was_down_gets_its_hangup() {
    let mut h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    let events = call_events(2);
    // Ringing (newCall sent), then the daemon stops; the caller gives up meanwhile, so at
    // the next start Asterisk lists no channel of the call.
    h.ami.send_raw(encode(&events[..4]));
    wait_until("newCall", || accepted(&h, 2).len() == 1).await;
    h.ami.set_channels(Vec::new());
    h.restart().await;
    wait_until("the hangup", || accepted(&h, 2).len() == 2).await;
    // Nobody answered and the end was not seen: the caller most likely gave up.
    assert_eq!(
        accepted(&h, 2),
        [
            ev(&[("event", "newCall")]),
            ev(&[("event", "hangup"), ("cause", "cancel")]),
        ]
    );
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn events_zammad_did_not_take_before_a_stop_are_sent_after_the_start() {
    let mut h = Harness::start(FakeZammadConfig::default(), |c| {
        c.state.shutdown_grace = Duration::from_millis(300)
    })
    .await;
    // Zammad is down (503) for the whole call and the stop.
    h.zammad.fail_for(Some(Duration::from_secs(3)), 503);
    h.ami.send_raw(encode(&call_events(3)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted(&h, 3), []);
    h.ami.set_channels(Vec::new());
    h.restart().await;
    wait_until("all three events", || accepted(&h, 3).len() == 3).await;
    assert_eq!(
        accepted(&h, 3),
        [
            ev(&[("event", "newCall")]),
            ev(&[("event", "answer")]),
            ev(&[("event", "hangup"), ("cause", "normalClearing")]),
        ]
    );
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_call_found_up_at_start_is_adopted_and_ended_when_it_ends() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    // The daemon never saw call 4 begin; Asterisk lists it, answered, at the next
    // reconciliation (a reconnect).
    h.ami.set_channels(live_channels(4));
    let logins = h.ami.logins();
    h.ami.drop_connection();
    h.ami.wait_logins(logins + 1).await;
    wait_until("newCall and answer", || accepted(&h, 4).len() == 2).await;
    let events = call_events(4);
    h.ami.send_raw(encode(&events[5..]));
    wait_until("the hangup", || accepted(&h, 4).len() == 3).await;
    let requests: Vec<Value> = h
        .zammad
        .requests()
        .into_iter()
        .filter(|r| r.call_id().as_deref() == Some("1900000000.8"))
        .map(|r| r.params)
        .collect();
    assert_eq!(requests[0]["from"], "15550000004");
    assert_eq!(requests[0]["to"], "7000004");
    assert_eq!(requests[1]["user"], "Alice");
    assert_eq!(requests[2]["cause"], "normalClearing");
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_call_silent_for_longer_than_stale_after_is_ended() {
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.calls.stale_after = Duration::from_secs(1)
    })
    .await;
    let events = call_events(5);
    h.ami.send_raw(encode(&events[..5]));
    wait_until("newCall and answer", || accepted(&h, 5).len() == 2).await;
    // No hangup ever comes (a lost event); the sweep ends the call.
    wait_until("the swept hangup", || accepted(&h, 5).len() == 3).await;
    assert_eq!(
        accepted(&h, 5)[2],
        ev(&[("event", "hangup"), ("cause", "normalClearing")])
    );
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

/// A journal as a daemon killed while sending `in_doubt` (an `answer`, or the `hangup`
/// ending with `cause`) left it: call 1900000000.18's `newCall` still to send (Zammad was down),
/// then `in_doubt`, marked "being sent" (Zammad came back just then), then, after an
/// `answer`, the call's `hangup`.
fn journal_killed_while_sending(dir: &std::path::Path, in_doubt: CtiEventKind, cause: Cause) {
    let request = |event, cause| CtiRequest {
        event,
        direction: Direction::In,
        call_id: CallId("1900000000.18".into()),
        from: "4930555".into(),
        to: "4930100".into(),
        user: None,
        queue: None,
        answering_number: None,
        cause,
    };
    let item = |seq, request| Record::Item { seq, request };
    let mut records = vec![item(1, request(CtiEventKind::NewCall, None))];
    if in_doubt == CtiEventKind::Answer {
        records.push(item(2, request(CtiEventKind::Answer, None)));
        records.push(item(3, request(CtiEventKind::Hangup, Some(cause))));
    } else {
        records.push(item(2, request(CtiEventKind::Hangup, Some(cause))));
    }
    records.push(Record::Sending { seq: 2 });
    Journal::open(dir).unwrap().0.append(records).unwrap();
}

#[tokio::test]
async fn an_event_in_doubt_after_a_kill_is_sent_again_once_the_killed_attempt_is_over() {
    // The killed daemon was sending the answer of call 1900000000.18 (answered: its hangup says
    // normalClearing). A second answer costs less than a handled call shown as missed, so
    // it goes again, but only once zammad.timeout has passed since the start: the killed
    // attempt may still be in Zammad's hands, and the hangup must not overtake it. The
    // newCall before it waits as well (a newCall on its way carries no mark).
    let dir = crate::support::temp_dir("doubt");
    journal_killed_while_sending(&dir, CtiEventKind::Answer, Cause::NormalClearing);
    let started = Instant::now();
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.state.dir = dir.clone();
        c.zammad.timeout = Duration::from_millis(1500);
    })
    .await;
    wait_until("the three events", || accepted(&h, 9).len() == 3).await;
    let requests = h.zammad.requests();
    let at = |event: &str| {
        let r = requests.iter().find(|r| r.event() == Some(event)).unwrap();
        r.received_at.into_std() - started
    };
    assert!(
        at("newCall") >= Duration::from_millis(1500),
        "what the journal kept waited out zammad.timeout: {:?}",
        at("newCall")
    );
    assert!(at("answer") >= at("newCall"));
    assert!(at("hangup") >= at("answer"));
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;

    // The hangup of a missed call in doubt is not sent again: a second one would turn
    // Zammad's missed call into a handled one.
    let dir = crate::support::temp_dir("doubt-missed");
    journal_killed_while_sending(&dir, CtiEventKind::Hangup, Cause::Cancel);
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.state.dir = dir.clone();
        c.zammad.timeout = Duration::from_millis(300);
    })
    .await;
    wait_until("the newCall", || accepted(&h, 9).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events: Vec<String> = h
        .zammad
        .requests()
        .iter()
        .map(|r| r.event().unwrap_or("").to_string())
        .collect();
    assert_eq!(events, ["newCall"]);
    h.stop().await;
}

#[tokio::test]
async fn a_request_cut_off_is_retried_only_once_zammad_would_be_done_with_it() {
    // Zammad handles each request and a proxy answers 504 instead: the daemon cannot know
    // whether it got through, so it sends the newCall again (a second one is harmless),
    // but not before zammad.timeout has passed: Zammad may still be busy with the first,
    // and two requests of one call must never be in its hands at once.
    let h = Harness::start(FakeZammadConfig::default(), |c| {
        c.zammad.timeout = Duration::from_millis(1200);
    })
    .await;
    h.zammad.fail_after(
        Some(Duration::from_millis(400)),
        1,
        asterisk_zammad_bridge::standins::zammad::AfterFault::GatewayTimeout,
    );
    h.ami.send_raw(encode(&call_events(4)));
    // The first newCall was handled, so the second is answered "already exists" (a 500
    // that counts as delivered): Zammad accepts the answer and the hangup after it.
    wait_until("the answer and the hangup", || accepted(&h, 4).len() == 2).await;
    let requests = h.zammad.requests();
    let new_calls: Vec<_> = requests
        .iter()
        .filter(|r| r.event() == Some("newCall"))
        .collect();
    assert!(new_calls.len() >= 2, "{new_calls:?}");
    assert_eq!(new_calls[0].status, Some(504));
    let waited = new_calls[1].received_at - new_calls[0].answered_at.unwrap();
    assert!(
        waited >= Duration::from_millis(1150),
        "retried after {waited:?}"
    );
    assert_eq!(
        h.zammad.violations(),
        ["callId \"1900000000.8\": duplicate newCall"],
        "nothing but the second newCall it had to send"
    );
    h.stop().await;
}
