//! Issue 5, "nothing lost, nothing doubled": the real daemon binary, as a child process,
//! between the scripted AMI peer and the stand-in Zammad, while hundreds of interleaved
//! calls flow and things break: the daemon is SIGKILLed and restarted, Zammad answers 503
//! for 30 s, Zammad is slow, the AMI connection drops, Asterisk restarts under live calls.
//!
//! Each scenario plays at least 200 calls (`support::traffic`), then compares what Zammad
//! accepted with what the daemon could have known (docs/calls.md, docs/persistence.md,
//! docs/zammad.md): no call lost (a newCall without its hangup, or a call the daemon saw
//! that never reached Zammad), no hangup doubled (a second answer is sent on purpose when
//! Zammad may have the first; a newCall retried into "already exists" is harmless),
//! nothing out of order (the stand-in's violations), no answer missing that the daemon
//! saw; what a SIGKILL leaves in doubt is excused only as `support::traffic` says. The
//! counts are printed (`--nocapture`); a failure shows the daemon's log and what Zammad
//! got of the calls in question. `soak` (issue 16) lets all these faults overlap.

mod soak;

use crate::support::bridge::{Bridge, BridgeSetup, Scratch};
use crate::support::lab_config;
use crate::support::traffic::{Kind, PlanSpec, Player, Traffic, Verdict, settled};
use asterisk_zammad_bridge::calls::{Tracker, TrackerSettings};
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use asterisk_zammad_bridge::zammad::cti::CtiEventKind;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The stand-ins and the daemon of one scenario. Fields drop in order: the daemon is
/// stopped before its scratch dir goes.
struct Lab {
    ami: FakeAmi,
    zammad: FakeZammad,
    bridge: Bridge,
    started: Instant,
    _scratch: Scratch,
}

impl Lab {
    async fn start(name: &str) -> Lab {
        let zammad = FakeZammad::start(FakeZammadConfig::default())
            .await
            .expect("the stand-in zammad starts");
        let ami = FakeAmi::start(FakeAmiConfig {
            username: "zammad".into(),
            secret: "s3cret".into(),
            ..FakeAmiConfig::default()
        })
        .await;
        let scratch = Scratch::new(name);
        let bridge = Bridge::start(
            scratch.path(),
            &BridgeSetup {
                ami: ami.addr(),
                ami_username: "zammad",
                ami_secret: "s3cret",
                zammad_url: zammad.url(),
                // Above the 3 s of the slow-Zammad scenario.
                zammad_timeout: "10s",
            },
        );
        Lab {
            ami,
            zammad,
            bridge,
            started: Instant::now(),
            _scratch: scratch,
        }
    }
}

/// How long to wait for Zammad once the traffic is over.
struct Drain {
    /// Give up waiting when nothing reached Zammad for this long (and something is still
    /// owed); longer than the outbox's longest retry pause in the scenario.
    quiet: Duration,
    /// Give up in any case after this long.
    deadline: Duration,
}

/// Lets the daemon catch up, stops it with SIGTERM, judges what Zammad got and fails with
/// the counts and the daemon's log if anything is off.
async fn finish(
    name: &str,
    player: &mut Player<'_>,
    zammad: &FakeZammad,
    bridge: &mut Bridge,
    drain: Drain,
    started: Instant,
) {
    let (verdict, failures, drained) = drain_and_judge(name, player, zammad, bridge, drain).await;
    println!(
        "{}[{name}] {} daemon starts; waited {:.1} s for zammad after the traffic; {:.1} s in all; {}",
        verdict.report,
        bridge.starts(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        if failures.is_empty() { "OK" } else { "FAILED" },
    );
    if !failures.is_empty() {
        fail(name, player, bridge, &verdict, &failures);
    }
}

/// Lets the daemon catch up (until Zammad is settled and quiet, or `drain` runs out),
/// stops it with SIGTERM and judges what Zammad got: the verdict, every failure (the
/// verdict's and the daemon's own), and how long the wait was.
async fn drain_and_judge(
    name: &str,
    player: &mut Player<'_>,
    zammad: &FakeZammad,
    bridge: &mut Bridge,
    drain: Drain,
) -> (Verdict, Vec<String>, Duration) {
    let connected = player.wait_connected(secs(15)).await;
    let draining = Instant::now();
    loop {
        let activity = zammad.activity();
        let last = activity.last.unwrap_or(draining).max(draining);
        let done = settled(player, zammad);
        let quiet = if done { ms(1000) } else { drain.quiet };
        if activity.in_flight == 0
            && last.elapsed() >= quiet
            && draining.elapsed() >= quiet.min(ms(1000))
        {
            break;
        }
        if draining.elapsed() >= drain.deadline {
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    let drained = draining.elapsed();
    let ended_early = bridge.exited();
    let stopped = bridge.terminate(secs(10)).await;
    let verdict = player.judge(name, zammad, bridge.runs());
    let mut failures = verdict.failures.clone();
    if !connected {
        failures.push("no daemon was logged in to AMI at the end".into());
    }
    if let Some(status) = ended_early {
        failures.push(format!("the daemon ended by itself: {status}"));
    }
    match stopped {
        Some(status) if status.success() => {}
        Some(status) => failures.push(format!("after SIGTERM the daemon ended with {status}")),
        None => failures.push("the daemon did not stop within 10 s of SIGTERM".into()),
    }
    (verdict, failures, drained)
}

/// Panics with the failures, what the daemons were shown of a few of the calls and what
/// they logged of them, and the end of the daemon's log.
fn fail(name: &str, player: &Player<'_>, bridge: &Bridge, verdict: &Verdict, failures: &[String]) {
    let mut message = format!("[{name}] {} calls:\n", verdict.calls);
    for failure in failures {
        let _ = writeln!(message, "  - {failure}");
    }
    for id in &verdict.examples {
        let _ = writeln!(
            message,
            "{id}: {}\n{}\ndaemon log lines of {id}:\n{}",
            player.describe(id),
            verdict.histories.get(id).map_or("", String::as_str),
            bridge.log_grep(id, 10)
        );
    }
    let _ = writeln!(message, "daemon log, last lines:\n{}", bridge.log_tail(40));
    panic!("{message}\n{}", verdict.report);
}

/// (a) The daemon is SIGKILLed three times while calls flow and started again each time
/// on the same state dir: calls open across a kill end in Zammad exactly once.
#[tokio::test]
async fn a_daemon_killed_and_restarted_three_times() {
    let mut lab = Lab::start("faults-a-kill").await;
    let mut player = Player::new(&lab.ami, &PlanSpec::new(220, secs(9), 0xA));
    assert!(
        player.wait_connected(secs(15)).await,
        "the daemon logs in to AMI"
    );
    for at in [2000, 4500, 7000] {
        player.play_until(ms(at)).await;
        lab.bridge.kill();
        player.killed();
        // Down for 0.7 s: the calls go on, their events are lost.
        player.play_until(ms(at + 700)).await;
        lab.bridge.spawn();
    }
    player.play_to_end().await;
    // What a restart takes back waits zammad.timeout (10 s here) before it goes out, and
    // its call's later events behind it: a quieter wait would judge such a call before
    // its held events could arrive.
    let drain = Drain {
        quiet: secs(11),
        deadline: secs(30),
    };
    finish(
        "a: SIGKILL x3",
        &mut player,
        &lab.zammad,
        &mut lab.bridge,
        drain,
        lab.started,
    )
    .await;
}

/// (b) Zammad answers 503 for 30 s while calls flow, then recovers: everything arrives
/// once, late.
#[tokio::test]
async fn b_zammad_unavailable_for_30_seconds() {
    let mut lab = Lab::start("faults-b-503").await;
    let mut player = Player::new(&lab.ami, &PlanSpec::new(220, secs(36), 0xB));
    assert!(
        player.wait_connected(secs(15)).await,
        "the daemon logs in to AMI"
    );
    player.play_until(secs(2)).await;
    lab.zammad.fail_for(Some(secs(30)), 503);
    player.play_to_end().await;
    let drain = Drain {
        // The outbox's retry pauses double up to 30 s (+20 % jitter).
        quiet: secs(40),
        deadline: secs(90),
    };
    finish(
        "b: zammad 503 for 30 s",
        &mut player,
        &lab.zammad,
        &mut lab.bridge,
        drain,
        lab.started,
    )
    .await;
}

/// (c) Every Zammad request takes 3 s (zammad.timeout is 10 s): nothing is retried into a
/// duplicate, one call's requests never overlap.
#[tokio::test]
async fn c_zammad_slow_3_seconds_per_request() {
    let mut lab = Lab::start("faults-c-slow").await;
    lab.zammad.set_delay(secs(3));
    let mut player = Player::new(&lab.ami, &PlanSpec::new(220, secs(5), 0xC));
    assert!(
        player.wait_connected(secs(15)).await,
        "the daemon logs in to AMI"
    );
    player.play_to_end().await;
    let drain = Drain {
        quiet: secs(5),
        deadline: secs(60),
    };
    finish(
        "c: zammad 3 s per request",
        &mut player,
        &lab.zammad,
        &mut lab.bridge,
        drain,
        lab.started,
    )
    .await;
}

/// (d) The AMI connection drops twice mid-call; the daemon reconnects (about 1 s later),
/// gets the live channels, ends the calls that vanished meanwhile and adopts the new ones.
#[tokio::test]
async fn d_ami_connection_drops_mid_call() {
    let mut lab = Lab::start("faults-d-drop").await;
    let mut player = Player::new(&lab.ami, &PlanSpec::new(220, secs(6), 0xD));
    assert!(
        player.wait_connected(secs(15)).await,
        "the daemon logs in to AMI"
    );
    player.play_until(secs(2)).await;
    assert!(player.drop_ami().await, "a connection to drop");
    player.play_until(secs(4)).await;
    assert!(player.drop_ami().await, "a connection to drop");
    player.play_to_end().await;
    let drain = Drain {
        quiet: secs(4),
        deadline: secs(30),
    };
    finish(
        "d: AMI drops x2",
        &mut player,
        &lab.zammad,
        &mut lab.bridge,
        drain,
        lab.started,
    )
    .await;
}

/// (e) Asterisk restarts under live calls: the connection drops, and when it comes back
/// no channel is left; those calls get their hangup once, and new calls (new uniqueids)
/// follow.
#[tokio::test]
async fn e_asterisk_restarts_under_live_calls() {
    let mut lab = Lab::start("faults-e-restart").await;
    let mut spec = PlanSpec::new(220, secs(7), 0xE);
    spec.blackout = Some((secs(3), ms(4500)));
    let mut player = Player::new(&lab.ami, &spec);
    assert!(
        player.wait_connected(secs(15)).await,
        "the daemon logs in to AMI"
    );
    player.play_until(secs(3)).await;
    let cut = player.asterisk_restart().await;
    assert!(cut > 10, "calls are up when asterisk restarts ({cut})");
    player.play_to_end().await;
    let drain = Drain {
        quiet: secs(4),
        deadline: secs(30),
    };
    finish(
        "e: asterisk restart",
        &mut player,
        &lab.zammad,
        &mut lab.bridge,
        drain,
        lab.started,
    )
    .await;
}

/// The generator's calls, all seen, are what the tracker makes of them: one newCall, an
/// answer for the answered ones, one hangup with the expected cause. Guards the fault
/// tests' model against drifting from the tracker's rules.
#[test]
fn generated_traffic_is_understood_by_the_tracker() {
    let mut traffic = Traffic::new(&PlanSpec::new(400, secs(6), 7));
    let events = traffic.all_events();
    let mut tracker = Tracker::new(TrackerSettings::from_config(&lab_config()));
    let mut requests = Vec::new();
    for event in &events {
        tracker.handle(event, &mut requests);
    }
    let mut per_call: HashMap<String, Vec<(CtiEventKind, Option<String>)>> = HashMap::new();
    for r in &requests {
        per_call
            .entry(r.call_id.to_string())
            .or_default()
            .push((r.event, r.cause.map(|c| c.as_str().to_string())));
    }
    assert_eq!(per_call.len(), traffic.calls.len());
    for call in &traffic.calls {
        let id = call.id.as_ref().expect("every call started");
        let got = &per_call[id];
        let names: Vec<CtiEventKind> = got.iter().map(|g| g.0).collect();
        let answered = matches!(call.kind, Kind::InboundAnswered | Kind::OutboundAnswered);
        let want: Vec<CtiEventKind> = if answered {
            vec![
                CtiEventKind::NewCall,
                CtiEventKind::Answer,
                CtiEventKind::Hangup,
            ]
        } else {
            vec![CtiEventKind::NewCall, CtiEventKind::Hangup]
        };
        assert_eq!(names, want, "{id} {:?}", call.kind);
        assert_eq!(
            got.last().unwrap().1.as_deref(),
            Some(call.kind.expected_cause()),
            "{id} {:?}",
            call.kind
        );
    }
    assert_eq!(tracker.active_calls(), 0, "every call ended");
}
