//! The live daemon under load (run with `cargo bench --bench daemon_load`).
//!
//! The real binary runs as its own process between two stand-ins in this one: the
//! scripted AMI peer (`standins::ami`), fed generated calls, and the stand-in Zammad
//! (`standins::zammad`), which answers like Zammad and keeps its caller log. Each call is
//! the lab's recorded inbound call answered by an agent (84 AMI events, 4 channels) with
//! its ids rewritten, so that every call is a call of its own.
//!
//! Two modes (`AZB_LOAD_MODE`):
//! - `rate` (default): `AZB_LOAD_RATE` new calls a second (500) for `AZB_LOAD_SECONDS`
//!   (20); each call's ringing and answer are sent when it starts, its end
//!   `AZB_LOAD_HOLD_MS` (2,000) later. Prints the events/s the daemon kept up with, its
//!   CPU per AMI event and per 1,000 calls, its RSS at start, peak and end, the largest
//!   outbox depth seen, and whether every call reached Zammad complete.
//! - `open`: `AZB_LOAD_OPEN` answered calls (10,000) held open at once, then ended, twice.
//!   Prints the RSS fresh, with the calls open and after they ended, and per open call
//!   both for a fresh daemon and for one that held as many calls before.
//!
//! CPU and RSS are the daemon's own, from `/proc/PID/stat` and `/proc/PID/status`.
//! `AZB_LOAD_BIN` runs another build of the daemon (a copy of an older binary, say) under
//! the same load. `AZB_LOAD_COMPARE=/path/to/other/binary` runs that one and this build in
//! turns, `AZB_LOAD_ROUNDS` (3) rounds, and ends with each one's median: on a shared VM
//! the CPU figures move by half between one hour and the next, so a before and after
//! means little unless the two ran side by side.

mod common;

use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use bytes::{Bytes, BytesMut};
use common::calls::{Template, call_part, frames};
use common::{env_or, median};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(
        binary: &OsStr,
        ami: &FakeAmi,
        zammad: &FakeZammad,
        admin: &str,
        name: &str,
    ) -> Daemon {
        let dir = std::env::temp_dir().join(format!("azb-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"
[ami]
address = "{ami}"
username = "bridge"
secret = "bridge-secret"
[agi]
listen = ""
[zammad]
url = "{zammad}"
[numbers]
country_code = "1"
[calls]
inbound_contexts = ["from-trunk"]
outbound_contexts = ["from-internal"]
[agents]
"201" = {{ name = "Alice", number = "4930123456201" }}
[admin]
listen = "{admin}"
[state]
dir = "{state}"
max_outbox = 1000000
"#,
            ami = ami.addr(),
            zammad = zammad.url(),
            state = dir.join("state").display(),
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(binary);
        command
            .args(["run", "-c"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AZB__") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().expect("start the daemon binary");
        Daemon { child, dir }
    }

    /// CPU time (user + system) the daemon used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let hz = 100; // sysconf(_SC_CLK_TCK) on Linux
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn outbox_depth(admin: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("azb_cti_outbox_depth "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until Zammad holds `calls` ended calls, or `limit` passes; returns how long it took.
async fn wait_complete(zammad: &FakeZammad, calls: usize, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if zammad.calls().iter().filter(|c| c.hungup).count() >= calls {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn check_complete(zammad: &FakeZammad, calls: usize) {
    let log = zammad.calls();
    let complete = log
        .iter()
        .filter(|c| c.answered && c.hungup && c.answers == 1 && c.hangups == 1)
        .count();
    let violations = zammad.violations();
    println!(
        "calls complete at Zammad (newCall, one answer, one hangup): {complete} of {calls}; \
         rule breaches: {}",
        violations.len()
    );
    for v in violations.iter().take(5) {
        println!("  {v}");
    }
}

async fn start_peers() -> (FakeAmi, FakeZammad) {
    let ami = FakeAmi::start(FakeAmiConfig::default()).await;
    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .expect("start the stand-in Zammad");
    (ami, zammad)
}

/// Runs the rate mode against `binary`; returns its CPU per AMI event in µs.
async fn rate_mode(binary: &OsStr) -> f64 {
    let rate: u64 = env_or("AZB_LOAD_RATE", 500);
    let seconds: u64 = env_or("AZB_LOAD_SECONDS", 20);
    let hold = Duration::from_millis(env_or("AZB_LOAD_HOLD_MS", 2000));
    let Template {
        start: start_part,
        end: end_part,
        events: events_per_call,
    } = Template::load();
    let (start_frames, end_frames) = (frames(&start_part), frames(&end_part));
    let (ami, zammad) = start_peers().await;
    let admin = free_port();
    let daemon = Daemon::start(binary, &ami, &zammad, &admin, "rate");
    ami.wait_logged_in().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_start = daemon.status_kib("VmRSS");
    let cpu_start = daemon.cpu();
    let total = rate * seconds;
    println!(
        "rate mode: {total} answered calls of {events_per_call} AMI events, {rate} new calls/s \
         for {seconds} s; each call's ringing and answer spread over its first {} ms, its end \
         {} ms after its start; every event written on its own, as Asterisk does",
        hold.as_millis() / 2,
        hold.as_millis()
    );
    // When event `k` of call `n` is due: the call starts at n / rate; its first part is
    // spread over half the hold time, its second part follows at the hold time, 2 ms apart.
    let due = |n: u64, k: usize| -> Duration {
        let start = Duration::from_secs_f64(n as f64 / rate as f64);
        if k < start_frames.len() {
            start + (hold / 2) * k as u32 / start_frames.len() as u32
        } else {
            start + hold + Duration::from_millis(2 * (k - start_frames.len()) as u64)
        }
    };
    let per_call = start_frames.len() + end_frames.len();
    let began = Instant::now();
    // Calls under way: (call, index of its next event).
    let mut active: Vec<(u64, usize)> = Vec::new();
    let mut next_call = 0u64;
    let mut max_depth = 0u64;
    let mut next_probe = Instant::now();
    // RSS as the calls handled grow, at every tenth of the run: flat after warm-up, or not.
    let mut rss_marks: Vec<(u64, u64)> = Vec::new();
    let mark_every = (total / 10).max(1);
    let mut buf = BytesMut::new();
    while next_call < total || !active.is_empty() {
        let now = began.elapsed();
        while next_call < total && due(next_call, 0) <= now {
            active.push((next_call, 0));
            next_call += 1;
        }
        for (n, k) in active.iter_mut() {
            while *k < per_call && due(*n, *k) <= now {
                let frame = if *k < start_frames.len() {
                    &start_frames[*k]
                } else {
                    &end_frames[*k - start_frames.len()]
                };
                call_part(frame, *n, &mut buf);
                assert!(
                    ami.send_raw(buf.split().freeze()),
                    "the daemon is logged in"
                );
                *k += 1;
            }
        }
        active.retain(|(_, k)| *k < per_call);
        if Instant::now() >= next_probe {
            max_depth = max_depth.max(outbox_depth(&admin).await.unwrap_or(0));
            next_probe = Instant::now() + Duration::from_millis(250);
            if next_call >= mark_every * (rss_marks.len() as u64 + 1) {
                rss_marks.push((next_call, daemon.status_kib("VmRSS")));
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sent_in = began.elapsed();
    let done = wait_complete(&zammad, total as usize, Duration::from_secs(120)).await;
    max_depth = max_depth.max(outbox_depth(&admin).await.unwrap_or(0));
    let cpu = daemon.cpu() - cpu_start;
    let events = total * events_per_call as u64;
    let elapsed = sent_in + done.unwrap_or_default();
    println!(
        "sent {events} events in {:.1} s; Zammad had every call {} after the last was sent",
        sent_in.as_secs_f64(),
        done.map_or("NEVER (gave up after 120 s)".to_string(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        )),
    );
    println!(
        "events/s kept up with: {:.0}",
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "daemon CPU: {:.2} s in all, {:.1} µs per AMI event, {:.0} ms per 1,000 calls",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / events as f64,
        cpu.as_secs_f64() * 1e3 * 1000.0 / total as f64
    );
    println!(
        "daemon RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; largest outbox depth seen {max_depth}",
        rss_start as f64 / 1024.0,
        daemon.status_kib("VmHWM") as f64 / 1024.0,
        daemon.status_kib("VmRSS") as f64 / 1024.0,
    );
    let marks: Vec<String> = rss_marks
        .iter()
        .map(|(calls, kib)| format!("{calls}: {:.1}", *kib as f64 / 1024.0))
        .collect();
    println!(
        "daemon RSS in MiB as calls started grew (about {} open at any time): {}",
        rate * (hold.as_millis() as u64) / 1000,
        marks.join(", ")
    );
    check_complete(&zammad, total as usize);
    cpu.as_secs_f64() * 1e6 / events as f64
}

/// Runs the open mode against `binary`; returns the RSS per open call of a fresh daemon.
async fn open_mode(binary: &OsStr) -> f64 {
    let open: u64 = env_or("AZB_LOAD_OPEN", 10_000);
    let Template {
        start: start_part,
        end: end_part,
        events: events_per_call,
    } = Template::load();
    let (ami, zammad) = start_peers().await;
    let admin = free_port();
    let daemon = Daemon::start(binary, &ami, &zammad, &admin, "open");
    ami.wait_logged_in().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    settle(&daemon).await;
    let fresh = daemon.status_kib("VmRSS");
    // The calls are opened twice: by a fresh daemon, then again once those ended. The
    // first shows all that holding them costs (the heap grown for them included); the
    // second what they cost a daemon that has held as many before, whose allocator keeps
    // the room the first ones left (what a daemon that has run a while pays). At most
    // `AZB_LOAD_RATE` (1,000) calls a second, so that the daemon is measured holding
    // calls, not a backlog, sent every 10 ms as a PBX's calls come, not in bursts: 100 new
    // calls at once open up to 100 connections to Zammad (about 40 KB each, kept idle
    // afterwards), a cost of how many requests are in flight at once, not of calls held.
    let rate: u64 = env_or("AZB_LOAD_RATE", 1000);
    let send = async |first: u64, count: u64, part: &str| {
        let per_tick = (rate / 100).max(1);
        for batch in (first..first + count)
            .collect::<Vec<_>>()
            .chunks(per_tick as usize)
        {
            let mut chunk = BytesMut::new();
            for &n in batch {
                call_part(part, n, &mut chunk);
            }
            assert!(ami.send_raw(Bytes::from(chunk)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut held = [0; 2];
    let mut ended = [0; 2];
    for (round, first) in [0, open].into_iter().enumerate() {
        let calls = first as usize + open as usize;
        send(first, open, &start_part).await;
        wait_answered(&zammad, calls).await;
        settle(&daemon).await;
        held[round] = daemon.status_kib("VmRSS");
        send(first, open, &end_part).await;
        wait_complete(&zammad, calls, Duration::from_secs(120))
            .await
            .expect("the open calls end at Zammad");
        settle(&daemon).await;
        ended[round] = daemon.status_kib("VmRSS");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let per_call = |from: u64, to: u64| (to as f64 - from as f64) * 1024.0 / open as f64;
    println!(
        "open mode: {open} answered calls of {events_per_call} events and 4 channels each \
         held open at once, twice"
    );
    println!(
        "daemon RSS: {:.1} MiB fresh; {:.1} MiB with the first {open} open, {:.1} MiB once \
         they ended; {:.1} MiB with {open} more open, {:.1} MiB once they ended",
        mib(fresh),
        mib(held[0]),
        mib(ended[0]),
        mib(held[1]),
        mib(ended[1])
    );
    println!(
        "RSS per open call: {:.0} bytes in a fresh daemon (first round minus fresh), {:.0} \
         bytes in one that held as many before (second round minus the first's end)",
        per_call(fresh, held[0]),
        per_call(ended[0], held[1])
    );
    check_complete(&zammad, 2 * open as usize);
    per_call(fresh, held[0])
}

async fn wait_answered(zammad: &FakeZammad, calls: usize) {
    let started = Instant::now();
    while zammad.calls().iter().filter(|c| c.answered).count() < calls {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the calls get answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets the daemon finish what it is doing (journal syncs, the allocator's trimming).
async fn settle(daemon: &Daemon) {
    let mut last = daemon.cpu();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = daemon.cpu();
        if now == last {
            return;
        }
        last = now;
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let this = std::env::var_os("AZB_LOAD_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_asterisk-zammad-bridge").into());
    let open = std::env::var("AZB_LOAD_MODE").as_deref() == Ok("open");
    let run = |binary: &OsStr| {
        runtime.block_on(async {
            if open {
                open_mode(binary).await
            } else {
                rate_mode(binary).await
            }
        })
    };
    let Some(other) = std::env::var_os("AZB_LOAD_COMPARE") else {
        run(&this);
        return;
    };
    let rounds: usize = env_or("AZB_LOAD_ROUNDS", 3);
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (binary, figures) in [(&other, &mut theirs), (&this, &mut ours)] {
            println!("round {round} of {rounds}: {}", Path::new(binary).display());
            figures.push(run(binary));
        }
    }
    let unit = if open {
        "bytes of RSS per open call (fresh daemon)"
    } else {
        "µs of CPU per AMI event"
    };
    println!(
        "{unit}, median of {rounds} rounds run in turns: {} {}; {} {}",
        Path::new(&other).display(),
        median(&theirs, 1),
        Path::new(&this).display(),
        median(&ours, 1)
    );
}
