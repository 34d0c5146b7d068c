//! Throughput and memory benchmark (run with `cargo bench --bench throughput`).
//!
//! Prints:
//! - AMI events per second through the codec alone, over the recorded transcripts;
//! - AMI events per second end to end (codec, tracker, JSON bodies), no network, one core;
//! - bytes the tracker holds per active call with 10,000 calls up at once;
//! - the daemon's own work per AMI event, without its I/O: codec, tracker with the
//!   journal's change tracking, journal records and request bodies encoded, on calls
//!   interleaved as a busy PBX sends them (a stable figure to compare changes by, where the
//!   live daemon's, `daemon_load`, moves with the machine's noise);
//! - the CPU the daemon's HTTP client (`ZammadClient`) spends per request to the stand-in
//!   Zammad, the part of the live daemon's work per event that `replay` does not do.

#![allow(unsafe_code)] // the counting allocator below

mod common;

use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::{AmiCodec, AmiFrame};
use asterisk_zammad_bridge::calls::{Tracker, TrackerSettings};
use asterisk_zammad_bridge::commands::replay::for_each_message;
use asterisk_zammad_bridge::config::Config;
use asterisk_zammad_bridge::service::daemon;
use asterisk_zammad_bridge::service::journal::Record;
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use asterisk_zammad_bridge::zammad::ZammadClient;
use asterisk_zammad_bridge::zammad::cti::{CallId, CtiEventKind, CtiRequest, Direction};
use bytes::BytesMut;
use common::calls::{Template, call_part};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;
use tikv_jemallocator::Jemalloc;
use tokio_util::codec::Decoder;

/// Counts live heap bytes, to measure what the tracker holds; the blocks come from the
/// binary's allocator (`src/main.rs`), so that what is measured runs as it ships.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { Jemalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn transcripts() -> Vec<u8> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ami-transcripts"
    );
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".txt") && !n.ends_with(".sent.txt") && !n.starts_with("agi-agi")
        })
        .collect();
    paths.sort();
    let mut all = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let bytes = std::fs::read(p).unwrap();
        // Keep only the first banner so the stream reads as one connection.
        let start = if i == 0 {
            0
        } else {
            bytes.iter().position(|&b| b == b'\n').unwrap() + 1
        };
        all.extend_from_slice(&bytes[start..]);
    }
    all
}

fn lab_settings() -> TrackerSettings {
    let mut config = Config::default();
    config.calls.inbound_contexts = vec!["from-trunk".into()].try_into().unwrap();
    config.calls.outbound_contexts = vec!["from-internal".into()].try_into().unwrap();
    for (ext, name) in [
        ("201", "Alice"),
        ("202", "Bob"),
        ("203", "Carol"),
        ("204", "Dave"),
    ] {
        config.agents.insert(
            ext.into(),
            asterisk_zammad_bridge::config::AgentEntry::Name(name.into()),
        );
    }
    TrackerSettings::from_config(&config)
}

fn codec_only(stream: &[u8], rounds: usize) {
    let start = Instant::now();
    let mut events = 0usize;
    for _ in 0..rounds {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(stream);
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            if let AmiFrame::Message(m) = frame {
                events += usize::from(m.event().is_some());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "codec alone:  {:>10.0} events/s ({events} events in {secs:.2} s)",
        events as f64 / secs
    );
}

fn end_to_end(stream: &[u8], rounds: usize) {
    let mut tracker = Tracker::new(lab_settings());
    let mut requests = Vec::new();
    let mut events = 0usize;
    let mut bodies = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for_each_message(stream, |msg| {
            events += usize::from(msg.event().is_some());
            tracker.handle(msg, &mut requests);
            for r in requests.drain(..) {
                bodies += r.to_json().len();
            }
        })
        .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "end to end:   {:>10.0} events/s ({events} events, {bodies} bytes of JSON, {secs:.2} s)",
        events as f64 / secs
    );
}

/// The events that bring call `i` to the answered state: an inbound trunk channel, a
/// ringing and answered leg to phone 201, both in a bridge.
fn answered_call(i: usize) -> Vec<AmiMessage> {
    let t = format!("1800000000.{}", i * 2);
    let a = format!("1800000000.{}", i * 2 + 1);
    let trunk = format!("PJSIP/trunk-{i:08x}");
    let leg = format!("PJSIP/201-{i:08x}");
    let block = |ev: &str, ch: &str, uid: &str, state: &str, extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("Event", ev),
            ("Privilege", "call,all"),
            ("Channel", ch),
            ("ChannelState", state),
            ("CallerIDNum", "+15555550100"),
            ("CallerIDName", "Caller"),
            ("Context", "from-trunk"),
            ("Exten", "4930123456"),
            ("Uniqueid", uid),
            ("Linkedid", t.as_str()),
        ];
        pairs.extend_from_slice(extra);
        AmiMessage::from_pairs(pairs)
    };
    let dest = [
        ("DestChannel", leg.as_str()),
        ("DestChannelState", "0"),
        ("DestUniqueid", a.as_str()),
        ("DestLinkedid", t.as_str()),
    ];
    let mut end = dest.to_vec();
    end.push(("DialStatus", "ANSWER"));
    vec![
        block("Newchannel", &trunk, &t, "4", &[]),
        block("Newchannel", &leg, &a, "0", &[]),
        block("DialBegin", &trunk, &t, "4", &dest),
        block("Newstate", &leg, &a, "5", &[]),
        block("DialEnd", &trunk, &t, "4", &end),
        block("BridgeEnter", &trunk, &t, "6", &[("BridgeUniqueid", "b")]),
        block("BridgeEnter", &leg, &a, "6", &[("BridgeUniqueid", "b")]),
    ]
}

fn memory_per_call(calls: usize) {
    let events: Vec<Vec<AmiMessage>> = (0..calls).map(answered_call).collect();
    let mut requests = Vec::new();
    let before = LIVE.load(Ordering::Relaxed);
    let mut tracker = Tracker::new(lab_settings());
    for call in &events {
        for msg in call {
            tracker.handle(msg, &mut requests);
        }
        requests.clear();
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(tracker.active_calls(), calls);
    println!(
        "memory:       {:>10.0} bytes per active call ({calls} answered calls, {} channels)",
        (after - before) as f64 / calls as f64,
        tracker.active_channels()
    );
    drop(tracker);
}

/// `calls` answered calls (the load benchmark's), `open` of them under way at any time,
/// their events interleaved one call after the other, as many calls ringing and talking at
/// once reach AMI. Taken in batches of `batch` events as the daemon takes what is ready: the
/// tracker's changed calls become journal records, its requests JSON bodies. Generating
/// the events is not timed.
#[inline(never)] // a frame of its own in profiles
fn daemon_work(calls: u64, open: usize, batch: usize) {
    let frames = Template::load().frames();
    let mut tracker = Tracker::new(lab_settings());
    tracker.persist_changes();
    tracker.set_now(1_800_000_000);
    let mut codec = AmiCodec::new();
    let mut requests = Vec::new();
    let (mut events, mut records, mut bytes) = (0usize, 0usize, 0usize);
    let mut in_batch = 0;
    let mut timed = std::time::Duration::ZERO;
    // Calls under way: (call, index of its next event).
    let mut active: Vec<(u64, usize)> = Vec::new();
    let mut next_call = 0u64;
    let mut buf = BytesMut::new();
    while next_call < calls || !active.is_empty() {
        // One round: each open call sends its next event (untimed), then the round is
        // decoded and handled (timed).
        while active.len() < open && next_call < calls {
            active.push((next_call, 0));
            next_call += 1;
        }
        for (n, k) in active.iter_mut() {
            call_part(&frames[*k], *n, &mut buf);
            *k += 1;
        }
        active.retain(|(_, k)| *k < frames.len());
        let start = Instant::now();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            let AmiFrame::Message(msg) = frame else {
                continue;
            };
            events += 1;
            tracker.handle(&msg, &mut requests);
            in_batch += 1;
            if in_batch == batch {
                in_batch = 0;
                for (key, call) in tracker.take_changes() {
                    let record = match call {
                        Some(call) => Record::Call {
                            key,
                            call: Box::new(call),
                        },
                        None => Record::End { key },
                    };
                    records += 1;
                    bytes += serde_json::to_vec(&record).unwrap().len();
                }
                for r in requests.drain(..) {
                    bytes += r.to_json().len();
                }
            }
        }
        timed += start.elapsed();
    }
    assert_eq!(tracker.active_calls(), 0, "every call ended");
    println!(
        "daemon work:  {:>10.0} ns per event ({events} events of {calls} calls, {open} open at \
         once, batches of {batch}; {records} journal records, {bytes} bytes of JSON, {:.2} s)",
        timed.as_nanos() as f64 / events as f64,
        timed.as_secs_f64()
    );
}

/// `calls` calls' `newCall`, `answer` and `hangup`, one request at a time, through the
/// daemon's `ZammadClient` on a runtime like the daemon's (one thread: the client's tasks
/// and hyper's connection run on it), to the stand-in Zammad on a thread of its own. The
/// CPU is this thread's alone (`/proc/thread-self/schedstat`), which on loopback includes
/// the kernel handing each request to the stand-in, as it does in the live daemon.
fn http_client(calls: usize) {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = daemon::runtime().expect("stand-in runtime");
        runtime.block_on(async {
            let zammad = FakeZammad::start(FakeZammadConfig::default())
                .await
                .expect("stand-in zammad");
            url_tx.send(zammad.url()).expect("url sent");
            std::future::pending::<()>().await;
        });
    });
    let url = url_rx.recv().expect("the stand-in's url");
    let request = |n: usize, event| CtiRequest {
        event,
        direction: Direction::In,
        call_id: CallId::of("", &format!("1800000000.{n}")),
        from: "4930123456789".into(),
        to: "4930123456201".into(),
        user: None,
        queue: None,
        answering_number: None,
        cause: None,
    };
    let runtime = daemon::runtime().expect("client runtime");
    runtime.block_on(async {
        let client = ZammadClient::new(url, std::time::Duration::from_secs(5)).expect("client");
        let send = async |from: usize, to: usize| {
            for n in from..to {
                for event in [
                    CtiEventKind::NewCall,
                    CtiEventKind::Answer,
                    CtiEventKind::Hangup,
                ] {
                    client.send(&request(n, event)).await.expect("delivered");
                }
            }
        };
        send(0, 100).await; // the connection, warm
        let (cpu, start) = (thread_cpu_ns(), Instant::now());
        send(100, 100 + calls).await;
        let (cpu, took) = (thread_cpu_ns() - cpu, start.elapsed());
        let requests = 3 * calls;
        println!(
            "http client: {:>10.1} µs of CPU per request ({requests} requests one at a time, \
             {:.0} µs each from send to Zammad's answer)",
            cpu as f64 / 1e3 / requests as f64,
            took.as_secs_f64() * 1e6 / requests as f64
        );
    });
}

/// This thread's time on a CPU so far, in ns (the first field of its `schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat")
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("a number of ns")
}

fn main() {
    let stream = transcripts();
    codec_only(&stream, 2000);
    end_to_end(&stream, 1000);
    memory_per_call(10_000);
    daemon_work(20_000, 1_000, 8);
    http_client(5_000);
}
