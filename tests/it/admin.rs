//! The admin listener (docs/observability.md) of the in-process daemon: `/metrics` names
//! every contract metric and moves with a call; `/health` is 200 while AMI is logged in
//! and 503, with the reason, while it is not.

use crate::support::call_events;
use crate::support::encode;
use crate::support::harness::Harness;
use asterisk_zammad_bridge::standins::agi::FakeAgiCall;
use asterisk_zammad_bridge::standins::zammad::FakeZammadConfig;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Every metric name docs/observability.md promises, as it appears on a sample line.
const CONTRACT: [&str; 9] = [
    "azb_ami_connected",
    "azb_ami_events_total",
    "azb_ami_reconnects_total",
    "azb_calls_active",
    "azb_cti_requests_total",
    "azb_cti_request_duration_seconds_bucket",
    "azb_cti_outbox_depth",
    "azb_agi_sessions_total",
    "azb_agi_decision_seconds_bucket",
];

async fn get(h: &Harness, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", h.admin))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn scrape(h: &Harness) -> String {
    let response = get(h, "/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

async fn health(h: &Harness) -> (u16, Value) {
    let response = get(h, "/health").await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The value of the sample `series` (name and labels exactly as printed).
#[track_caller]
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn requests(event: &str, outcome: &str) -> String {
    format!("azb_cti_requests_total{{event=\"{event}\",outcome=\"{outcome}\"}}")
}

/// Scrapes until `series` reaches `want` (the outbox counts a request once Zammad's answer
/// is read, a moment after Zammad has recorded it).
async fn scrape_until(h: &Harness, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(h).await;
        if value(&text, series) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never {want} in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health_until(h: &Harness, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = health(h).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/health never {want}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_name_every_contract_metric_and_move_with_a_call() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    health_until(&h, 200).await;
    let before = scrape(&h).await;
    for name in CONTRACT {
        assert!(
            before.lines().any(|l| l.starts_with(name)),
            "{name} missing in\n{before}"
        );
    }
    assert_eq!(value(&before, "azb_ami_connected"), 1.0);
    assert_eq!(value(&before, "azb_calls_active"), 0.0);
    assert!(before.ends_with("# EOF\n"));

    // Ringing and answered: one call up, its newCall and answer delivered.
    let events = call_events(0);
    let (up, down) = events.split_at(5);
    assert!(h.ami.send_raw(encode(up)));
    let during = scrape_until(&h, &requests("answer", "delivered"), 1.0).await;
    assert_eq!(value(&during, "azb_calls_active"), 1.0);
    assert_eq!(value(&during, &requests("newCall", "delivered")), 1.0);
    assert!(value(&during, "azb_ami_events_total") >= value(&before, "azb_ami_events_total") + 5.0);

    // Hung up: the call is gone, every event delivered once, nothing waits.
    assert!(h.ami.send_raw(encode(down)));
    h.requests_after_hangups(1).await;
    let after = scrape_until(&h, &requests("hangup", "delivered"), 1.0).await;
    assert!(value(&after, "azb_ami_events_total") >= value(&before, "azb_ami_events_total") + 7.0);
    assert_eq!(value(&after, &requests("newCall", "delivered")), 1.0);
    assert_eq!(value(&after, &requests("answer", "delivered")), 1.0);
    for event in ["newCall", "answer", "hangup"] {
        assert_eq!(
            value(
                &after,
                &format!("azb_cti_request_duration_seconds_count{{event=\"{event}\"}}")
            ),
            1.0,
            "{event}"
        );
        for outcome in ["retried", "refused", "dropped", "kept", "duplicate"] {
            assert_eq!(
                value(&after, &requests(event, outcome)),
                0.0,
                "{event} {outcome}"
            );
        }
    }
    assert_eq!(value(&after, "azb_cti_outbox_depth"), 0.0);
    assert_eq!(value(&after, "azb_cti_outbox_full_total"), 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(&h).await, "azb_calls_active") != 0.0 {
        assert!(Instant::now() < deadline, "the call stays active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = health(&h).await;
    assert_eq!(status, 200);
    assert_eq!(body["active_calls"], 0, "{body}");
    assert_eq!(body["outbox_depth"], 0, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn a_fastagi_session_is_counted_with_its_decision_time() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    let call = FakeAgiCall::inbound("1795596443.48", "1795596443.49", "+15555550100", "800");
    assert!(h.ami.send_raw(encode(&[call.newchannel()])));
    tokio::time::timeout(Duration::from_secs(10), call.run(h.agi))
        .await
        .expect("the session ends")
        .expect("the session runs");
    let text = scrape_until(&h, "azb_agi_sessions_total{outcome=\"continue\"}", 1.0).await;
    assert_eq!(value(&text, "azb_agi_decision_seconds_count"), 1.0);
    assert!(value(&text, "azb_agi_decision_seconds_sum") < 2.0);
    assert_eq!(
        value(&text, "azb_agi_sessions_total{outcome=\"timeout\"}"),
        0.0
    );
    h.stop().await;
}

#[tokio::test]
async fn health_is_503_with_the_reason_while_ami_is_logged_out() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;
    let body = health_until(&h, 200).await;
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["ami"], "connected", "{body}");
    assert_eq!(body["agi"], "listening", "{body}");

    // The secret changes and the connection drops: every login fails from now on.
    h.ami.set_secret("rotated");
    assert!(h.ami.drop_connection());
    let body = health_until(&h, 503).await;
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["ami"], "disconnected", "{body}");
    assert_eq!(body["agi"], "listening", "{body}");
    assert_eq!(value(&scrape(&h).await, "azb_ami_connected"), 0.0);
    assert_eq!(value(&scrape(&h).await, "azb_ami_reconnects_total"), 0.0);

    // The secret is right again: the daemon logs in and is healthy.
    h.ami.set_secret("s3cret");
    tokio::time::timeout(Duration::from_secs(20), h.ami.wait_logins(2))
        .await
        .expect("the daemon logs in again");
    health_until(&h, 200).await;
    let text = scrape_until(&h, "azb_ami_reconnects_total", 1.0).await;
    assert_eq!(value(&text, "azb_ami_connected"), 1.0);
    h.stop().await;
}

#[tokio::test]
async fn requests_zammad_did_not_take_are_counted_by_outcome() {
    let h = Harness::start(FakeZammadConfig::default(), |_| {}).await;

    // Two 503s: the newCall goes out three times, then the rest of the call as usual.
    h.zammad.fail_next(2, 503, false);
    assert!(h.ami.send_raw(encode(&call_events(0))));
    let text = scrape_until(&h, &requests("hangup", "delivered"), 1.0).await;
    assert_eq!(value(&text, &requests("newCall", "retried")), 2.0);
    assert_eq!(value(&text, &requests("newCall", "delivered")), 1.0);
    assert_eq!(
        value(
            &text,
            "azb_cti_request_duration_seconds_count{event=\"newCall\"}"
        ),
        3.0
    );

    // CTI switched off in Zammad: the newCall is refused, the rest is never sent.
    h.zammad.set_enabled(false);
    assert!(h.ami.send_raw(encode(&call_events(1))));
    let text = scrape_until(&h, &requests("hangup", "dropped"), 1.0).await;
    assert_eq!(value(&text, &requests("newCall", "refused")), 1.0);
    assert_eq!(value(&text, &requests("answer", "dropped")), 1.0);
    assert_eq!(
        value(
            &text,
            "azb_cti_request_duration_seconds_count{event=\"hangup\"}"
        ),
        1.0,
        "the dropped hangup was never sent"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_admin_address_in_use_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = crate::support::lab_config();
    config.ami.secret = Some("s3cret".to_string().into());
    config.zammad.url = Some("http://127.0.0.1:9/api/v1/cti/token".parse().unwrap());
    config.agi.listen = asterisk_zammad_bridge::config::ListenAddr::off();
    config.admin.listen = taken.local_addr().unwrap().into();
    config.state.dir = crate::support::temp_dir("admin-in-use");
    let error = asterisk_zammad_bridge::service::daemon::run(
        config.clone(),
        tokio_util::sync::CancellationToken::new(),
        tokio::sync::oneshot::channel().0,
        tokio::sync::mpsc::unbounded_channel().1,
    )
    .await
    .expect_err("the start fails");
    let message = format!("{error:#}");
    assert!(
        message.contains("failed to listen for /health and /metrics on admin.listen"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(config.state.dir);
}
