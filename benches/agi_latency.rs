//! FastAGI decision latency (run with `cargo bench --bench agi_latency`).
//!
//! The real daemon (`daemon::run`, on a runtime of its own as it would be a
//! process of its own) answers FastAGI `newcall` sessions from `CONCURRENCY` peers that
//! play Asterisk's side (`standins::agi`, one thread each with blocking sockets, as `res_agi`
//! runs in the channel's thread), each starting its next session as soon as one ends, so
//! that 200 sessions are open at all times; each session's channel is announced on AMI
//! (`Newchannel`) just before it, as Asterisk does, and every call then ends on AMI. The stand-in
//! Zammad takes a fixed time per request (a real Zammad takes tens to hundreds of
//! milliseconds); the benchmark runs at two paces, 500 ms and 100 ms, which with 200
//! sessions open are 400 and 2,000 new calls a second.
//!
//! Per session, the time the bridge adds = (the time from each of the peer's writes, the
//! environment block or a reply, to the arrival of the bridge's next command, summed;
//! `AgiTranscript::bridge_time`) − (the stand-in Zammad's own time for that call's
//! `newCall`, from its handler's start to its end). What remains is the bridge's work:
//! parsing, the claim, the journal write, the HTTP client, building and sending the
//! commands, and the loopback hops (the stand-in's HTTP server counts too). Asterisk's
//! own time to answer a command is not counted; the peers and the stand-ins share the
//! machine's cores with the daemon, so their load is. Prints p50, p99 and the maximum,
//! the whole session for comparison, and the bridge's share of the wait before each
//! command (where the time goes).

use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::AmiCodec;
use asterisk_zammad_bridge::config::Config;
use asterisk_zammad_bridge::service::daemon;
use asterisk_zammad_bridge::standins::agi::FakeAgiCall;
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

const CONCURRENCY: usize = 200;
/// Zammad's time per request, and sessions per peer at that pace (about 5 s each).
/// With 200 sessions open at once, 500 ms is 400 new calls a second, 100 ms 2,000.
const PACES: [(Duration, usize); 2] = [
    (Duration::from_millis(500), 10),
    (Duration::from_millis(100), 25),
];

/// A session's commands: what the bridge waited for before each.
/// The third waits for Zammad's answer: its time is taken off.
const STEPS: [&str; 4] = [
    "connect + environment -> GET VARIABLE",
    "linkedid -> SET VARIABLE ZAMMAD_CALLID (the claim)",
    "reply -> SET VARIABLE ZAMMAD_ACTION, minus Zammad's time",
    "reply -> EXEC Hangup 17 (blocked callers)",
];
const ZAMMAD_STEP: usize = 2;

fn main() {
    // The daemon gets a runtime of its own, as it would be a process of its own; the
    // stand-ins share the other one (and the same two cores).
    let daemon_rt = daemon::runtime().expect("daemon runtime");
    let daemon_handle = daemon_rt.handle().clone();
    // The daemon's runtime runs its tasks on the thread that drives it, as the daemon's
    // main thread does.
    std::thread::Builder::new()
        .name("daemon".into())
        .spawn(move || daemon_rt.block_on(std::future::pending::<()>()))
        .expect("daemon thread");
    let stand_ins_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("stand-ins")
        .enable_all()
        .build()
        .expect("stand-ins runtime");
    for (zammad_delay, sessions_per_peer) in PACES {
        stand_ins_rt.block_on(bench(
            daemon_handle.clone(),
            zammad_delay,
            sessions_per_peer,
        ));
    }
}

async fn bench(
    daemon_rt: tokio::runtime::Handle,
    zammad_delay: Duration,
    sessions_per_peer: usize,
) {
    let zammad = FakeZammad::start(FakeZammadConfig {
        delay: zammad_delay,
        blocked: vec!["15555550100".into()],
        ..FakeZammadConfig::default()
    })
    .await
    .expect("stand-in zammad");
    let ami = Arc::new(FakeAmi::start(FakeAmiConfig::default()).await);
    let mut config = Config::from_toml_str(
        r#"
        [agi]
        listen = "127.0.0.1:0"
        decision_timeout = "2s"
        [admin]
        listen = ""
        [calls]
        inbound_contexts = ["from-trunk"]
        [numbers]
        country_code = "1"
        "#,
    )
    .expect("bench config");
    config.ami.address = ami.addr().into();
    config.ami.username = "bridge".into();
    config.ami.secret = Some("bridge-secret".to_string().into());
    config.zammad.url = Some(zammad.url().parse().unwrap());
    config.state.dir = std::env::temp_dir().join(format!(
        "azb-bench-agi-{}-{}",
        std::process::id(),
        zammad_delay.as_millis()
    ));
    let shutdown = CancellationToken::new();
    let (ready, listening) = tokio::sync::oneshot::channel();
    let daemon = daemon_rt.spawn(daemon::run(
        config,
        shutdown.clone(),
        ready,
        tokio::sync::mpsc::unbounded_channel().1,
    ));
    let agi = listening.await.expect("daemon starts").agi.expect("agi on");
    ami.wait_logged_in().await;

    // Half the callers are blocked, so rejects (with their extra EXEC) are measured too.
    // Peers start spread over one Zammad delay, as calls arrive on a PBX, so that 200
    // sessions are open at any moment without all of them arriving in the same instant.
    // Each peer is a thread with blocking sockets, as each channel running an AGI is in
    // Asterisk.
    let run = |peer: usize, round: usize| {
        let ami = ami.clone();
        move || {
            std::thread::sleep(zammad_delay * peer as u32 / CONCURRENCY as u32);
            let mut sessions = Vec::with_capacity(sessions_per_peer);
            for i in 0..sessions_per_peer {
                let seq = (round * CONCURRENCY + peer) * sessions_per_peer + i;
                let linkedid = format!("2000000000.{}", seq * 2);
                let uniqueid = format!("2000000000.{}", seq * 2 + 1);
                let caller = if seq.is_multiple_of(2) {
                    "+15555550100"
                } else {
                    "+15555550101"
                };
                let call = FakeAgiCall::inbound(&linkedid, &uniqueid, caller, "800");
                // Asterisk announces the channel on AMI before its dialplan runs the AGI;
                // the claim counts once AMI has shown it (and waits for it otherwise).
                ami.send_raw(encoded(&call.newchannel()));
                let t = call.run_blocking(agi).expect("session runs");
                assert!(t.commands.len() >= 3, "a full session: {:?}", t.commands);
                sessions.push((linkedid.clone(), t));
                // The call ends, so the daemon's state stays the size of a busy PBX's.
                ami.send_raw(hangups(&call.channel, &uniqueid, &linkedid));
            }
            sessions
        }
    };
    // Round 0 warms up (connections to Zammad, allocator); round 1 is measured.
    let mut measured = Vec::new();
    for round in 0..2 {
        let peers: Vec<_> = (0..CONCURRENCY)
            .map(|peer| tokio::task::spawn_blocking(run(peer, round)))
            .collect();
        let mut all = Vec::new();
        for p in peers {
            all.extend(p.await.expect("peer"));
        }
        measured = all;
    }

    let zammad_time: HashMap<String, Duration> = zammad
        .requests()
        .into_iter()
        .filter(|r| r.event() == Some("newCall"))
        .filter_map(|r| Some((r.call_id()?, r.answered_at? - r.received_at)))
        .collect();
    let mut added: Vec<Duration> = measured
        .iter()
        .map(|(id, t)| t.bridge_time.saturating_sub(zammad_time[id]))
        .collect();
    let mut whole: Vec<Duration> = measured
        .iter()
        .map(|(id, t)| t.elapsed.saturating_sub(zammad_time[id]))
        .collect();
    added.sort();
    whole.sort();
    let pick = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "FastAGI newcall, {} sessions, {CONCURRENCY} open at once, stand-in Zammad {zammad_delay:?} per request ({} new calls/s)",
        added.len(),
        CONCURRENCY as u128 * 1000 / zammad_delay.as_millis()
    );
    println!(
        "time the bridge adds (session minus Zammad's own time): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target: p99 < 1 ms)",
        ms(pick(&added, 0.50)),
        ms(pick(&added, 0.99)),
        ms(*added.last().unwrap())
    );
    println!(
        "whole session incl. the peer's replies, minus Zammad's own time: p50 {:.3} ms, p99 {:.3} ms",
        ms(pick(&whole, 0.50)),
        ms(pick(&whole, 0.99)),
    );
    // Where the time goes: the bridge's share of each wait for its next command.
    for (step, what) in STEPS.iter().enumerate() {
        let mut times: Vec<Duration> = measured
            .iter()
            .filter_map(|(id, t)| {
                let wait = *t.steps.get(step)?;
                Some(match step {
                    ZAMMAD_STEP => wait.saturating_sub(zammad_time[id]),
                    _ => wait,
                })
            })
            .collect();
        times.sort();
        println!(
            "  {what}: p50 {:.3} ms, p99 {:.3} ms",
            ms(pick(&times, 0.50)),
            ms(pick(&times, 0.99)),
        );
    }
    shutdown.cancel();
    let _ = daemon.await;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!(
        "azb-bench-agi-{}-{}",
        std::process::id(),
        zammad_delay.as_millis()
    )));
}

fn encoded(event: &AmiMessage) -> Bytes {
    let mut buf = BytesMut::new();
    AmiCodec::new().encode(event, &mut buf).expect("encodes");
    buf.freeze()
}

/// AMI `Hangup` events for the session's channel and its caller's half.
fn hangups(channel: &str, uniqueid: &str, linkedid: &str) -> Bytes {
    let mut buf = BytesMut::new();
    for (ch, uid) in [(channel, uniqueid), (channel, linkedid)] {
        let event = AmiMessage::from_pairs([
            ("Event", "Hangup"),
            ("Channel", ch),
            ("ChannelState", "4"),
            ("Context", "from-trunk"),
            ("Exten", "800"),
            ("Uniqueid", uid),
            ("Linkedid", linkedid),
            ("Cause", "16"),
        ]);
        AmiCodec::new().encode(&event, &mut buf).expect("encodes");
    }
    buf.freeze()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
