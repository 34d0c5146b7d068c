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
//!
//! Then the floor: the same peers, at the same pace, against a FastAGI server that does no
//! work at all (`floor_server`: the same commands, Zammad's time slept, no claim, no
//! journal, no HTTP), on a thread of its own as the daemon is. What it "adds" is this
//! machine's share: waking the threads and the loopback hops with 200 peer threads on two
//! cores. The bridge's own work is what lies above it. A second floor runs the bridge's
//! own FastAGI server (`AgiServer`: its session slots, deadlines and line reading) with a
//! script that does the same talk and no work ([`IdleScript`]): what lies between the two
//! floors is the server's machinery, what lies above the second the claim, the journal
//! and the HTTP round trip to Zammad.
//!
//! The peers start spread evenly over one Zammad delay and drift, session by session,
//! towards random arrivals (two sessions per 5 ms, ± 0.2 at the start, ± 1.0 by the end
//! of a run, where a Poisson stream's is ± 1.4): the times of the run's later part are
//! the higher and the truer (calls arrive at random), for the bridge and the floors
//! alike. The figures printed cover the whole run.
//!
//! `AZB_AGI_RATE=400` (or `2000`) runs that pace only; `AZB_AGI_RUNS=N` runs each pace and
//! its floors N times in turns and ends with the median of their p99s: on a shared VM one
//! run's p99 moves by half from one hour to the next.

mod common;

use asterisk_zammad_bridge::agi::{AgiCommand, AgiServer, NotRun, Script, Session};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::AmiCodec;
use asterisk_zammad_bridge::config::Config;
use asterisk_zammad_bridge::service::daemon;
use asterisk_zammad_bridge::standins::agi::{AgiTranscript, FakeAgiCall};
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use bytes::{Bytes, BytesMut};
use common::{env_or, median};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

/// The binary's allocator (`src/main.rs`), so that the daemon in here runs as it ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CONCURRENCY: usize = 200;
/// The caller Zammad blocks: half the sessions.
const BLOCKED: &str = "+15555550100";
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
    let runs: usize = env_or("AZB_AGI_RUNS", 1);
    // 0: every pace.
    let only: u128 = env_or("AZB_AGI_RATE", 0);
    for (zammad_delay, sessions_per_peer) in PACES {
        let rate = CONCURRENCY as u128 * 1000 / zammad_delay.as_millis();
        if only != 0 && only != rate {
            continue;
        }
        let (mut bridge, mut floors, mut servers) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            bridge.push(stand_ins_rt.block_on(bench(
                daemon_handle.clone(),
                zammad_delay,
                sessions_per_peer,
            )));
            floors.push(stand_ins_rt.block_on(floor(Floor::Bare, zammad_delay, sessions_per_peer)));
            servers.push(stand_ins_rt.block_on(floor(
                Floor::OurServer,
                zammad_delay,
                sessions_per_peer,
            )));
        }
        if runs > 1 {
            println!(
                "{rate} new calls/s, {runs} runs: p99 of the time the bridge adds in ms, median \
                 {}; the floor's, median {}; our server's doing no work, median {}",
                median(&bridge, 3),
                median(&floors, 3),
                median(&servers, 3)
            );
        }
    }
}

/// The peers' sessions, `CONCURRENCY` at a time, each peer starting its next at once;
/// before each, `announce` gets the call (the bridge's AMI hears of its channel), after
/// it `ended`. Round 0 warms up, round 1 is returned: (linkedid, transcript).
async fn run_peers(
    agi: std::net::SocketAddr,
    zammad_delay: Duration,
    sessions_per_peer: usize,
    announce: Arc<dyn Fn(&FakeAgiCall) + Send + Sync>,
    ended: Arc<dyn Fn(&FakeAgiCall) + Send + Sync>,
) -> Vec<(String, AgiTranscript)> {
    // Half the callers are blocked, so rejects (with their extra EXEC) are measured too.
    // Peers start spread over one Zammad delay, as calls arrive on a PBX, so that 200
    // sessions are open at any moment without all of them arriving in the same instant.
    // Each peer is a thread with blocking sockets, as each channel running an AGI is in
    // Asterisk.
    let run = |peer: usize, round: usize| {
        let (announce, ended) = (announce.clone(), ended.clone());
        move || {
            std::thread::sleep(zammad_delay * peer as u32 / CONCURRENCY as u32);
            let mut sessions = Vec::with_capacity(sessions_per_peer);
            for i in 0..sessions_per_peer {
                let seq = (round * CONCURRENCY + peer) * sessions_per_peer + i;
                let linkedid = format!("2000000000.{}", seq * 2);
                let uniqueid = format!("2000000000.{}", seq * 2 + 1);
                let caller = if seq.is_multiple_of(2) {
                    BLOCKED
                } else {
                    "+15555550101"
                };
                let call = FakeAgiCall::inbound(&linkedid, &uniqueid, caller, "800");
                announce(&call);
                let t = call.run_blocking(agi).expect("session runs");
                assert!(t.commands.len() >= 3, "a full session: {:?}", t.commands);
                sessions.push((linkedid.clone(), t));
                ended(&call);
            }
            sessions
        }
    };
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
    measured
}

/// Which server a floor runs.
#[derive(Clone, Copy)]
enum Floor {
    /// [`floor_server`]: the talk and nothing else.
    Bare,
    /// [`idle_server`]: the bridge's `AgiServer` running [`IdleScript`].
    OurServer,
}

/// A floor: the same load against a server that does no work; returns its p99 in ms.
async fn floor(kind: Floor, zammad_delay: Duration, sessions_per_peer: usize) -> f64 {
    let (agi, slept) = match kind {
        Floor::Bare => floor_server(zammad_delay),
        Floor::OurServer => idle_server(zammad_delay),
    };
    let nothing: Arc<dyn Fn(&FakeAgiCall) + Send + Sync> = Arc::new(|_: &FakeAgiCall| {});
    let measured = run_peers(
        agi,
        zammad_delay,
        sessions_per_peer,
        nothing.clone(),
        nothing,
    )
    .await;
    let slept = slept.lock().unwrap();
    let added: Vec<Duration> = measured
        .iter()
        .map(|(id, t)| t.bridge_time.saturating_sub(slept[id]))
        .collect();
    let what = match kind {
        Floor::Bare => "floor, a server doing no work",
        Floor::OurServer => "floor, the bridge's FastAGI server with a script doing no work",
    };
    println!(
        "{what} (same commands, Zammad's time slept): {}",
        percentiles(added.iter().copied(), true)
    );
    print_steps(&measured, &slept);
    p99(added)
}

/// What [`floor_server`] says, as a script of the bridge's own FastAGI server.
struct IdleScript {
    zammad_delay: Duration,
    slept: Slept,
}

impl Script for IdleScript {
    async fn run(&self, session: &mut Session) {
        let blocked = session.env().get("callerid") == Some(BLOCKED);
        let command = |c: Result<AgiCommand, _>| c.expect("a valid command");
        let Ok(reply) = session
            .command(&command(AgiCommand::get_variable("CHANNEL(linkedid)")))
            .await
        else {
            return;
        };
        let linkedid = reply.value().unwrap_or_default().to_string();
        let set_call_id = command(AgiCommand::set_variable("ZAMMAD_CALLID", &linkedid));
        let started = std::time::Instant::now();
        let (_, reply) = tokio::join!(
            tokio::time::sleep(self.zammad_delay),
            session.command(&set_call_id)
        );
        self.slept
            .lock()
            .unwrap()
            .insert(linkedid, started.elapsed());
        if reply.is_err() {
            return;
        }
        let action = if blocked { "reject" } else { "continue" };
        let set_action = command(AgiCommand::set_variable("ZAMMAD_ACTION", action));
        if session.command(&set_action).await.is_err() || !blocked {
            return;
        }
        let _ = session
            .command(&command(AgiCommand::exec("Hangup", "17")))
            .await;
    }

    fn not_run(&self, _: NotRun) {}
}

/// The bridge's FastAGI server (`agi.*` at their defaults) running [`IdleScript`], on a
/// thread and runtime of its own as the daemon's.
fn idle_server(zammad_delay: Duration) -> (std::net::SocketAddr, Slept) {
    let slept = Slept::default();
    let script = IdleScript {
        zammad_delay,
        slept: slept.clone(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("idle-server".into())
        .spawn(move || {
            let rt = daemon::runtime().expect("idle server runtime");
            rt.block_on(async move {
                let config = Config::from_toml_str("[agi]\nlisten = \"127.0.0.1:0\"\n")
                    .expect("idle server config");
                let server = AgiServer::bind(&config.agi)
                    .await
                    .expect("bind the idle server")
                    .expect("agi.listen is set");
                tx.send(server.local_addr()).expect("address sent");
                let forever = CancellationToken::new();
                server.run(script, forever, Duration::from_secs(1)).await;
            });
        })
        .expect("idle server thread");
    (rx.recv().expect("the idle server's address"), slept)
}

/// What each session's server slept for Zammad, by linkedid.
type Slept = Arc<std::sync::Mutex<HashMap<String, Duration>>>;

/// A FastAGI server on a thread and runtime of its own that does nothing but the talk:
/// it reads the environment, asks for `CHANNEL(linkedid)`, sets `ZAMMAD_CALLID`, sleeps
/// `zammad_delay` (what it slept is kept by linkedid), sets `ZAMMAD_ACTION` (`reject` for
/// the blocked caller, who is then hung up with cause 17, as the bridge does) and closes.
fn floor_server(zammad_delay: Duration) -> (std::net::SocketAddr, Slept) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the floor server");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("its address");
    let slept = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let kept = slept.clone();
    std::thread::Builder::new()
        .name("floor".into())
        .spawn(move || {
            let rt = daemon::runtime().expect("floor runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let slept = kept.clone();
                    tokio::spawn(async move {
                        let (read, mut write) = stream.into_split();
                        let mut lines = BufReader::new(read).lines();
                        let mut blocked = false;
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line.is_empty() {
                                break;
                            }
                            blocked |= line == format!("agi_callerid: {BLOCKED}");
                        }
                        let mut ask = async |command: &str| {
                            write.write_all(command.as_bytes()).await.ok()?;
                            lines.next_line().await.ok()?
                        };
                        let Some(reply) = ask("GET VARIABLE \"CHANNEL(linkedid)\"\n").await else {
                            return;
                        };
                        let linkedid = reply
                            .split_once('(')
                            .and_then(|(_, rest)| rest.strip_suffix(')'))
                            .unwrap_or_default()
                            .to_string();
                        let set_call_id =
                            format!("SET VARIABLE \"ZAMMAD_CALLID\" \"{linkedid}\"\n");
                        let started = std::time::Instant::now();
                        let (_, reply) =
                            tokio::join!(tokio::time::sleep(zammad_delay), ask(&set_call_id));
                        slept.lock().unwrap().insert(linkedid, started.elapsed());
                        if reply.is_none() {
                            return;
                        }
                        let action = if blocked { "reject" } else { "continue" };
                        let set_action = format!("SET VARIABLE \"ZAMMAD_ACTION\" \"{action}\"\n");
                        if ask(&set_action).await.is_none() || !blocked {
                            return;
                        }
                        let _ = ask("EXEC \"Hangup\" \"17\"\n").await;
                    });
                }
            });
        })
        .expect("floor thread");
    (addr, slept)
}

/// The daemon under the peers' load; returns the p99 of the time it adds, in ms.
async fn bench(
    daemon_rt: tokio::runtime::Handle,
    zammad_delay: Duration,
    sessions_per_peer: usize,
) -> f64 {
    let zammad = FakeZammad::start(FakeZammadConfig {
        delay: zammad_delay,
        blocked: vec![BLOCKED.trim_start_matches('+').into()],
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

    // Asterisk announces the channel on AMI before its dialplan runs the AGI; the claim
    // counts once AMI has shown it (and waits for it otherwise). The call then ends, so
    // the daemon's state stays the size of a busy PBX's.
    let (a, b) = (ami.clone(), ami.clone());
    let announce: Arc<dyn Fn(&FakeAgiCall) + Send + Sync> = Arc::new(move |call: &FakeAgiCall| {
        a.send_raw(encoded(&call.newchannel()));
    });
    let ended: Arc<dyn Fn(&FakeAgiCall) + Send + Sync> = Arc::new(move |call: &FakeAgiCall| {
        b.send_raw(hangups(&call.channel, &call.uniqueid, &call.linkedid));
    });
    let measured = run_peers(agi, zammad_delay, sessions_per_peer, announce, ended).await;

    let newcalls: HashMap<String, (std::time::Instant, std::time::Instant)> = zammad
        .requests()
        .into_iter()
        .filter(|r| r.event() == Some("newCall"))
        .filter_map(|r| {
            Some((
                r.call_id()?,
                (r.received_at.into_std(), r.answered_at?.into_std()),
            ))
        })
        .collect();
    let zammad_time: HashMap<String, Duration> = newcalls
        .iter()
        .map(|(id, (received, answered))| (id.clone(), *answered - *received))
        .collect();
    let added: Vec<Duration> = measured
        .iter()
        .map(|(id, t)| t.bridge_time.saturating_sub(zammad_time[id]))
        .collect();
    let whole = measured
        .iter()
        .map(|(id, t)| t.elapsed.saturating_sub(zammad_time[id]));
    println!(
        "FastAGI newcall, {} sessions, {CONCURRENCY} open at once, stand-in Zammad {zammad_delay:?} per request ({} new calls/s)",
        measured.len(),
        CONCURRENCY as u128 * 1000 / zammad_delay.as_millis()
    );
    println!(
        "time the bridge adds (session minus Zammad's own time): {} (target: p99 < 1 ms)",
        percentiles(added.iter().copied(), true)
    );
    println!(
        "whole session incl. the peer's replies, minus Zammad's own time: {}",
        percentiles(whole, false)
    );
    print_steps(&measured, &zammad_time);
    // The step that holds Zammad's time, split at Zammad's clock: from the peer's reply
    // with the linkedid to Zammad's handler starting (the claim, the journal, the request),
    // and from its handler ending to `SET VARIABLE ZAMMAD_ACTION` at the peer (the reply's
    // way back, Zammad's answer turned into commands).
    let mut to_zammad = Vec::new();
    let mut back = Vec::new();
    for (id, t) in &measured {
        let (received, answered) = newcalls[id];
        if let (Some(linkedid_sent), Some(action_arrived)) =
            (t.writes.get(1), t.arrivals.get(ZAMMAD_STEP))
        {
            to_zammad.push(received.saturating_duration_since(*linkedid_sent));
            back.push(action_arrived.saturating_duration_since(answered));
        }
    }
    println!(
        "  linkedid reply -> Zammad's handler starts: {}; Zammad's handler ends -> SET VARIABLE ZAMMAD_ACTION: {}",
        percentiles(to_zammad, false),
        percentiles(back, false),
    );
    shutdown.cancel();
    let _ = daemon.await;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!(
        "azb-bench-agi-{}-{}",
        std::process::id(),
        zammad_delay.as_millis()
    )));
    p99(added)
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

/// Where the time goes: the server's share of each wait for its next command (`waited`:
/// Zammad's time, or what the floor server slept, taken off the step that holds it).
fn print_steps(measured: &[(String, AgiTranscript)], waited: &HashMap<String, Duration>) {
    for (step, what) in STEPS.iter().enumerate() {
        let times = measured.iter().filter_map(|(id, t)| {
            let wait = *t.steps.get(step)?;
            Some(match step {
                ZAMMAD_STEP => wait.saturating_sub(waited[id]),
                _ => wait,
            })
        });
        println!("  {what}: {}", percentiles(times, false));
    }
}

/// The p99 of `times`, in ms.
fn p99(mut times: Vec<Duration>) -> f64 {
    times.sort();
    ms(quantile(&times, 0.99))
}

/// The `q` quantile of `sorted` (not empty).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// `p50 … ms, p99 … ms`, and the maximum when asked.
fn percentiles(times: impl IntoIterator<Item = Duration>, max: bool) -> String {
    let mut v: Vec<Duration> = times.into_iter().collect();
    v.sort();
    let pick = |q: f64| ms(quantile(&v, q));
    let mut text = format!("p50 {:.3} ms, p99 {:.3} ms", pick(0.50), pick(0.99));
    if max {
        text.push_str(&format!(", max {:.3} ms", ms(*v.last().unwrap())));
    }
    text
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
