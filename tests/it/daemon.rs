//! The daemon end to end on loopback: a scripted AMI peer (`standins::ami`) plays recorded
//! Asterisk traffic, the stand-in Zammad (`standins::zammad`) records what it receives.
//!
//! What Zammad receives must be what `replay` prints for the same bytes (one code path),
//! per call in order, with none of Zammad's invariants broken.

use crate::support::harness::Harness;
use crate::support::{assert_invariants, call_events, fixture, lab_config};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::AmiCodec;
use asterisk_zammad_bridge::commands::replay::replay_files;
use asterisk_zammad_bridge::standins::zammad::FakeZammadConfig;
use bytes::BytesMut;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::codec::Encoder;

async fn spawn_daemon() -> Harness {
    Harness::start(FakeZammadConfig::default(), |_| {}).await
}

/// What `replay` prints for these transcripts, per callId.
fn replayed(paths: &[PathBuf]) -> BTreeMap<String, Vec<Value>> {
    let mut out = Vec::new();
    replay_files(&lab_config(), paths, &mut out).unwrap();
    let mut per_call: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in String::from_utf8(out).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        per_call
            .entry(v["callId"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    per_call
}

fn scenarios() -> Vec<PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(fixture("ami-transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".txt") && !n.ends_with(".sent.txt") && !n.starts_with("agi-agi")
        })
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn daemon_posts_what_replay_prints() {
    let h = spawn_daemon().await;
    let paths = scenarios();
    for p in &paths {
        let bytes = std::fs::read(p).unwrap();
        assert!(h.ami.send_events(&bytes).is_some_and(|n| n > 0));
    }
    let expected = replayed(&paths);
    let got = h.requests_after_hangups(expected.len()).await;
    assert_eq!(got, expected);
    let all: Vec<Value> = got.values().flatten().cloned().collect();
    assert_invariants(&all, "daemon");
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn daemon_survives_the_ami_peer_closing_the_socket_mid_call() {
    let h = spawn_daemon().await;
    let path = fixture("ami-transcripts/queue-answered.txt");
    let bytes = std::fs::read(&path).unwrap();
    // Split at a frame boundary in the middle of the call (after the agent answered).
    let mid = bytes.len() / 2;
    let cut = mid
        + bytes[mid..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
        + 4;
    assert!(h.ami.send_events(&bytes[..cut]).is_some());
    // Let the first half arrive, then the peer drops the connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.ami.drop_connection());
    tokio::time::timeout(Duration::from_secs(10), h.ami.wait_logins(2))
        .await
        .expect("the daemon reconnects and logs in again");
    assert!(h.ami.send_events(&bytes[cut..]).is_some());
    let got = h.requests_after_hangups(1).await;
    assert_eq!(got, replayed(&[path]));
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_calls_stay_apart() {
    let h = spawn_daemon().await;
    let calls: Vec<Vec<AmiMessage>> = (0..100).map(call_events).collect();
    // Interleave: step k of every call before step k+1 of any, as on a busy PBX.
    let mut buf = BytesMut::new();
    let mut codec = AmiCodec::new();
    for step in 0..calls[0].len() {
        for call in &calls {
            codec.encode(&call[step], &mut buf).unwrap();
        }
    }
    assert!(h.ami.send_raw(buf.freeze()));
    let got = h.requests_after_hangups(100).await;
    assert_eq!(got.len(), 100);
    for i in 0..100 {
        let events = &got[&format!("1900000000.{}", i * 2)];
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["newCall", "answer", "hangup"], "call {i}");
        for e in events {
            assert_eq!(e["from"], format!("1555000{i:04}"), "call {i}");
            assert_eq!(e["to"], format!("700{i:04}"), "call {i}");
        }
    }
    assert_eq!(h.zammad.violations(), Vec::<String>::new());
    h.stop().await;
}
