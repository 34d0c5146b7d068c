//! The attacks of a hostile local user, a hostile or broken Zammad and a full box, made on
//! loopback against the real binary (README, "Security"). Each test repeats one attack and
//! fails if it succeeds again:
//!
//! - forged FastAGI sessions claim live calls (`forged_fastagi_sessions_*`);
//! - slow FastAGI connections hold every session slot (`fastagi_slowloris_*`);
//! - Zammad's URL redirects elsewhere (`redirects_from_zammad_*`);
//! - Zammad answers with an endless body (`an_endless_reply_*`);
//! - a fake AMI refuses the MD5 challenge to be sent the secret (`the_ami_secret_*`);
//! - idle connections to the admin port take every descriptor (`idle_admin_connections_*`);
//! - links planted in the state dir, a crafted sequence number (`the_state_dir_*`,
//!   `a_sequence_number_at_the_top_*`);
//! - FastAGI query parameters that forge log lines or carry escape codes (`log_lines_*`);
//! - durations too long for a timer (`durations_*`), proxies from the environment and plain
//!   http to another host (`proxies_*`, `plain_http_*`).

use crate::support::{call_events, encode, temp_dir, without_azb_env};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::standins::agi::{AgiTranscript, FakeAgiCall};
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

const AMI_USER: &str = "zammad";
const AMI_SECRET: &str = "Ami-s3cret-never-in-clear";
const TOKEN: &str = "Tok3n-attack-0123456789";
const BLOCKED: &str = "15555550100";
const AGI_SECRET: &str = "0123456789abcdef0123";

/// Extra lines for each section of the daemon's config.
#[derive(Default)]
struct Extra<'a> {
    ami: &'a str,
    agi: &'a str,
    zammad: &'a str,
    state: &'a str,
    log: &'a str,
}

/// The real binary, with FastAGI and the admin listener on ports of their own.
struct Daemon {
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    log: PathBuf,
    agi: SocketAddr,
    admin: SocketAddr,
    /// Leave `dir` in place when dropped (a test starts another daemon on it).
    keep: bool,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn toml_config(
    dir: &Path,
    ami: SocketAddr,
    url: &str,
    agi: SocketAddr,
    admin: SocketAddr,
    extra: &Extra<'_>,
) -> String {
    format!(
        "[ami]\naddress = \"{ami}\"\nusername = \"{AMI_USER}\"\nsecret = \"{AMI_SECRET}\"\n{}\n\
         [agi]\nlisten = \"{agi}\"\n{}\n\
         [zammad]\nurl = \"{url}\"\n{}\n\
         [admin]\nlisten = \"{admin}\"\n\
         [calls]\ninbound_contexts = [\"from-trunk\"]\noutbound_contexts = [\"from-internal\"]\n\
         [numbers]\ncountry_code = \"1\"\n\
         [agents]\n\"201\" = \"Alice\"\n\
         [state]\ndir = \"{}\"\n{}\n\
         [log]\n{}\n",
        extra.ami,
        extra.agi,
        extra.zammad,
        dir.join("state").display(),
        extra.state,
        extra.log,
    )
}

impl Daemon {
    /// Starts the binary and waits until `/health` says 200 (AMI logged in, FastAGI bound).
    async fn start(name: &str, ami: &FakeAmi, url: &str, extra: Extra<'_>) -> Daemon {
        let daemon = Daemon::spawn(name, ami.addr(), url, extra, &[], None);
        daemon.wait_healthy().await;
        daemon
    }

    /// Starts the binary, with `env` and, when given, at most `nofile` open files.
    fn spawn(
        name: &str,
        ami: SocketAddr,
        url: &str,
        extra: Extra<'_>,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Daemon {
        let dir = temp_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (agi, admin) = (free_port(), free_port());
        Daemon::spawn_in(dir, ami, url, agi, admin, extra, env, nofile)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_in(
        dir: PathBuf,
        ami: SocketAddr,
        url: &str,
        agi: SocketAddr,
        admin: SocketAddr,
        extra: Extra<'_>,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Daemon {
        let config = dir.join("config.toml");
        std::fs::write(&config, toml_config(&dir, ami, url, agi, admin, &extra)).unwrap();
        let log = dir.join("daemon.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_asterisk-zammad-bridge");
        // `umask 000` too: the state dir's files must be 0600 whatever it is.
        let limit = nofile.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask 000 && {limit}exec \"$0\" run -c \"$1\""))
            .arg(bin)
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .env_remove("RUST_LOG");
        without_azb_env(&mut command);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Daemon {
            dir,
            child: Some(child),
            log,
            agi,
            admin,
            keep: false,
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = reqwest::get(format!("http://{}/health", self.admin)).await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "not healthy:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id().unwrap()
    }

    /// The peak resident memory so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/metrics` has the line `line`.
    async fn wait_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {line} in\n{text}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; its exit code.
    async fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("stops after SIGTERM")
            .unwrap();
        let log = self.log();
        assert!(!log.contains("panicked"), "{log}");
        for secret in [TOKEN, AMI_SECRET, AGI_SECRET] {
            assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        }
        status.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon log kept in {}", self.dir.display());
        } else if self.child.is_none() && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn stand_ins(zammad: FakeZammadConfig) -> (FakeAmi, FakeZammad) {
    let ami = FakeAmi::start(FakeAmiConfig {
        username: AMI_USER.into(),
        secret: AMI_SECRET.into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: TOKEN.into(),
        blocked: vec![BLOCKED.into()],
        ..zammad
    })
    .await
    .unwrap();
    (ami, zammad)
}

/// A blocked caller's channel entering `from-trunk`, announced on AMI as Asterisk does
/// before the dialplan runs the AGI.
fn blocked_call(n: usize) -> FakeAgiCall {
    let mut call = FakeAgiCall::inbound(
        &format!("1900000100.{}", n * 2),
        &format!("1900000100.{}", n * 2 + 1),
        &format!("+{BLOCKED}"),
        "800",
    );
    call.channel = format!("PJSIP/trunk-{n:08x}");
    call
}

async fn run_session(call: &FakeAgiCall, agi: SocketAddr) -> AgiTranscript {
    tokio::time::timeout(Duration::from_secs(10), call.run(agi))
        .await
        .expect("the session ends")
        .expect("the session runs")
}

fn rejected(t: &AgiTranscript) -> bool {
    t.commands
        .iter()
        .any(|c| c == r#"SET VARIABLE "ZAMMAD_ACTION" "reject""#)
        && t.hangup_cause.as_deref() == Some("17")
}

fn new_calls(zammad: &FakeZammad) -> Vec<String> {
    zammad
        .requests()
        .into_iter()
        .filter(|r| r.event() == Some("newCall"))
        .filter_map(|r| r.call_id())
        .collect()
}

/// Attack 1: sessions that claim a live call (its Linkedid, its Uniqueid, its channel
/// under another Linkedid) or calls that do not exist, before the dialplan's own session.
#[tokio::test]
async fn forged_fastagi_sessions_reach_no_zammad_and_steer_no_call() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let d = Daemon::start(
        "attack-forged",
        &ami,
        &zammad.url(),
        Extra {
            agi: "decision_timeout = \"1s\"",
            ..Extra::default()
        },
    )
    .await;
    let real = blocked_call(0);
    assert!(ami.send_raw(encode(&[real.newchannel()])));
    let mut forged = Vec::new();
    for i in 0..200 {
        let mut f = real.clone();
        f.script = "newcall?direction=in&user=Alice".into();
        match i % 4 {
            0 => f.uniqueid = format!("1900000100.{}", 1000 + i),
            1 => f.channel = format!("PJSIP/evil-{i:08x}"),
            2 => f.linkedid = format!("1900000100.{}", 1000 + i),
            _ => {
                f.linkedid = format!("1800000000.{i}");
                f.uniqueid = f.linkedid.clone();
                f.callerid = format!("+1555{i:07}");
            }
        }
        forged.push(f);
    }
    let mut sessions = JoinSet::new();
    for f in forged {
        let agi = d.agi;
        sessions.spawn(async move { run_session(&f, agi).await });
    }
    // Their claims are in before the dialplan's own session.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = run_session(&real, d.agi).await;
    assert!(rejected(&t), "the blocked caller went on: {:?}", t.commands);
    while let Some(t) = sessions.join_next().await {
        let t = t.unwrap();
        assert_eq!(
            t.commands.last().map(String::as_str),
            Some(r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#)
        );
        assert_eq!(t.hangup_cause, None);
    }
    d.wait_metric(r#"azb_agi_sessions_total{outcome="unconfirmed"} 200"#)
        .await;
    d.wait_metric(r#"azb_agi_sessions_total{outcome="reject"} 1"#)
        .await;
    assert_eq!(new_calls(&zammad), ["1900000100.0"]);
    let from = &zammad.requests()[0].params["from"];
    assert_eq!(from, BLOCKED);
    // The session did the reject; nothing went over AMI.
    assert!(
        ami.actions()
            .iter()
            .all(|a| a.get("Action") != Some("Hangup"))
    );
    // A flood logs a line per period, not one per forged session.
    let log = d.log();
    assert!(log.matches("no AMI event showed").count() <= 2, "{log}");
    assert_eq!(d.stop().await, Some(0));
}

/// Attack 1 where others can reach the port: with `agi.secret`, a session without it is
/// closed before the script runs, and one with it works as before.
#[tokio::test]
async fn forged_fastagi_sessions_without_the_secret_are_closed_unheard() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let secret = format!("secret = \"{AGI_SECRET}\"");
    let d = Daemon::start(
        "attack-secret",
        &ami,
        &zammad.url(),
        Extra {
            agi: &secret,
            ..Extra::default()
        },
    )
    .await;
    let mut real = blocked_call(1);
    assert!(ami.send_raw(encode(&[real.newchannel()])));
    for script in [
        "newcall".to_string(),
        "newcall?secret=guess".to_string(),
        format!("newcall?secret={}", &AGI_SECRET[..AGI_SECRET.len() - 1]),
        format!("newcall?secret={AGI_SECRET}x"),
    ] {
        let mut f = real.clone();
        f.script = script;
        let started = Instant::now();
        let t = run_session(&f, d.agi).await;
        assert_eq!(t.commands, Vec::<String>::new(), "{}", f.script);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    d.wait_metric(r#"azb_agi_sessions_total{outcome="refused"} 4"#)
        .await;
    assert!(zammad.requests().is_empty());
    real.script = format!("newcall?direction=in&secret={AGI_SECRET}");
    let t = run_session(&real, d.agi).await;
    assert!(rejected(&t), "{:?}", t.commands);
    assert_eq!(new_calls(&zammad), ["1900000100.2"]);
    assert_eq!(d.stop().await, Some(0));
}

/// Attack 2 with whole environment blocks: forged sessions that AMI never confirms fill
/// every slot and wait. A real call's session takes the slot of the oldest of them.
#[tokio::test]
async fn forged_sessions_waiting_for_ami_give_their_slots_to_real_calls() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let d = Daemon::start(
        "attack-unconfirmed-flood",
        &ami,
        &zammad.url(),
        Extra {
            agi: "max_sessions = 40\ndecision_timeout = \"5s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut forged = JoinSet::new();
    for i in 0..60 {
        let mut f = blocked_call(300 + i);
        f.uniqueid = format!("1800000300.{i}");
        let agi = d.agi;
        forged.spawn(async move { f.run(agi).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..3 {
        let call = blocked_call(400 + n);
        assert!(ami.send_raw(encode(&[call.newchannel()])));
        let t = run_session(&call, d.agi).await;
        assert!(rejected(&t), "call {n}: {:?}\n{}", t.commands, d.log());
    }
    let text = d.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == r#"azb_agi_sessions_total{outcome="overloaded"} 0"#),
        "{text}"
    );
    assert_eq!(new_calls(&zammad).len(), 3);
    forged.abort_all();
    assert_eq!(d.stop().await, Some(0));
}

/// Attack 2: 520 connections each dribbling its environment block, one line a second,
/// while calls need their sessions.
#[tokio::test]
async fn fastagi_slowloris_holds_no_slot_a_call_needs() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let d = Daemon::start(
        "attack-slowloris",
        &ami,
        &zammad.url(),
        Extra {
            agi: "idle_timeout = \"3s\"\ndecision_timeout = \"1s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut slow = JoinSet::new();
    for i in 0..520 {
        let agi = d.agi;
        slow.spawn(async move {
            let started = Instant::now();
            let Ok(mut stream) = TcpStream::connect(agi).await else {
                return Duration::ZERO;
            };
            let mut buf = [0u8; 64];
            let mut n = 0;
            loop {
                if stream
                    .write_all(format!("agi_line{n}_{i}: x\n").as_bytes())
                    .await
                    .is_err()
                {
                    return started.elapsed();
                }
                n += 1;
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => panic!("a half session got a command"),
                    Err(_) => {}
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return started.elapsed();
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Calls arrive meanwhile: each gets its session, and its blocked caller is rejected.
    for n in 0..5 {
        let call = blocked_call(10 + n);
        assert!(ami.send_raw(encode(&[call.newchannel()])));
        let t = run_session(&call, d.agi).await;
        assert!(rejected(&t), "call {n}: {:?}", t.commands);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut longest = Duration::ZERO;
    while let Some(lasted) = slow.join_next().await {
        longest = longest.max(lasted.unwrap());
    }
    // No dribbling connection outlives agi.idle_timeout (3 s) by much.
    assert!(longest < Duration::from_secs(5), "one lasted {longest:?}");
    assert_eq!(new_calls(&zammad).len(), 5);
    assert_eq!(d.stop().await, Some(0));
}

/// A bare HTTP server for Zammad's role: reads each request, answers `reply`, counts the
/// body bytes it wrote.
#[derive(Clone)]
enum Reply {
    Fixed(String),
    /// The head, then body bytes for as long as the client reads.
    Endless(String),
    /// Nothing, ever (the connection stays open).
    Never,
}

struct RawHttp {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    written: Arc<AtomicU64>,
}

impl RawHttp {
    async fn start(reply: Reply) -> RawHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        let (h, w) = (heads.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (reply, heads, written) = (reply.clone(), h.clone(), w.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        let mut body = vec![0; length];
                        let _ = read.read_exact(&mut body).await;
                        heads.lock().unwrap().push(head);
                        match &reply {
                            Reply::Fixed(text) => {
                                if write.write_all(text.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Never => {
                                let _ = read.read_u8().await;
                                return;
                            }
                            Reply::Endless(head) => {
                                let _ = write.write_all(head.as_bytes()).await;
                                let mut chunk = vec![b' '; 16 * 1024];
                                if head.contains("chunked") {
                                    chunk = [b"4000\r\n", &chunk[..], b"\r\n"].concat();
                                }
                                while write.write_all(&chunk).await.is_ok() {
                                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawHttp {
            addr,
            heads,
            written,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1/cti/{TOKEN}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn ok_json() -> Reply {
    Reply::Fixed(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".into(),
    )
}

/// Attack 3: Zammad's URL answers with a redirect to another host. The call data (and
/// the token) must not go there, and a 302 (whose GET would get a 200) is no delivery.
#[tokio::test]
async fn redirects_from_zammad_are_not_followed() {
    let elsewhere = RawHttp::start(ok_json()).await;
    let (ami, _) = stand_ins(FakeZammadConfig::default()).await;
    for status in [302, 307, 308] {
        let redirector = RawHttp::start(Reply::Fixed(format!(
            "HTTP/1.1 {status} Moved\r\nLocation: http://{}/api/v1/cti/{TOKEN}\r\nContent-Length: 0\r\n\r\n",
            elsewhere.addr
        )))
        .await;
        let d = Daemon::start(
            &format!("attack-redirect-{status}"),
            &ami,
            &redirector.url(),
            Extra::default(),
        )
        .await;
        assert!(ami.send_raw(encode(&call_events(status as usize))));
        d.wait_metric(r#"azb_cti_requests_total{event="newCall",outcome="refused"} 1"#)
            .await;
        d.wait_metric(r#"azb_cti_requests_total{event="hangup",outcome="dropped"} 1"#)
            .await;
        let text = d.metrics().await;
        assert!(
            text.lines()
                .any(|l| l == r#"azb_cti_requests_total{event="newCall",outcome="delivered"} 0"#),
            "{text}"
        );
        let heads = redirector.heads();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            !heads[0].to_ascii_lowercase().contains("referer"),
            "{heads:?}"
        );
        let want = format!(
            "redirect (http {status}) to http://{}/api/v1/cti/*** which is not followed",
            elsewhere.addr
        );
        let log = d.log();
        assert!(log.replace(',', "").contains(&want), "{want}\n{log}");
        assert_eq!(d.stop().await, Some(0));
    }
    assert_eq!(elsewhere.heads(), Vec::<String>::new());
}

/// Attack 4: Zammad answers every request with a body that never ends. Each reply is read
/// up to 64 KiB and no further, however many calls there are.
#[tokio::test]
async fn an_endless_reply_costs_no_memory() {
    let (ami, _) = stand_ins(FakeZammadConfig::default()).await;
    for head in [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
    ] {
        let zammad = RawHttp::start(Reply::Endless(head.into())).await;
        let d = Daemon::start("attack-endless", &ami, &zammad.url(), Extra::default()).await;
        let calls = 50;
        let events: Vec<AmiMessage> = (0..calls).flat_map(call_events).collect();
        assert!(ami.send_raw(encode(&events)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while zammad.heads().len() < calls {
            assert!(
                Instant::now() < deadline,
                "{} requests\n{}",
                zammad.heads().len(),
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rss = d.peak_rss();
        assert!(rss < 80 << 20, "peak RSS {} MiB", rss >> 20);
        let sent = zammad.written.load(Ordering::Relaxed);
        // What the kernel's socket buffers took (a few MiB a connection), not a GiB each.
        let most = calls as u64 * (8 << 20);
        assert!(sent < most, "{} MiB went out to the daemon", sent >> 20);
        assert!(d.log().contains("longer than 65536 bytes"), "{}", d.log());
        assert_eq!(d.stop().await, Some(0));
    }
}

/// Attack 4 as a broken Zammad would make it: requests that are never answered, while
/// calls keep coming. Requests in flight are capped (1,024), so they cannot take the
/// descriptors FastAGI needs, whatever the limit.
#[tokio::test]
async fn a_zammad_that_never_answers_takes_no_descriptor_a_call_needs() {
    let (ami, _) = stand_ins(FakeZammadConfig::default()).await;
    let zammad = RawHttp::start(Reply::Never).await;
    let d = Daemon::spawn(
        "attack-never",
        ami.addr(),
        &zammad.url(),
        Extra {
            zammad: "timeout = \"60s\"",
            agi: "decision_timeout = \"500ms\"",
            ..Extra::default()
        },
        &[],
        Some(4096),
    );
    d.wait_healthy().await;
    let events: Vec<AmiMessage> = (0..2000).flat_map(|i| call_events(3000 + i)).collect();
    assert!(ami.send_raw(encode(&events)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while zammad.heads().len() < 1024 {
        assert!(
            Instant::now() < deadline,
            "{} requests",
            zammad.heads().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        zammad.heads().len(),
        1024,
        "more requests in flight than the cap"
    );
    assert!(d.open_files() < 1200, "{} files open", d.open_files());
    // FastAGI still serves: Zammad gives no decision, the call goes on in time.
    let call = blocked_call(70);
    assert!(ami.send_raw(encode(&[call.newchannel()])));
    let t = run_session(&call, d.agi).await;
    assert_eq!(
        t.commands.last().map(String::as_str),
        Some(r#"SET VARIABLE "ZAMMAD_ACTION" "continue""#)
    );
    assert!(t.elapsed < Duration::from_secs(2), "{:?}", t.elapsed);
    let mut d = d;
    let mut child = d.child.take().unwrap();
    child.kill().await.unwrap();
}

/// Attack 5: whoever answers on the AMI port refuses the MD5 challenge, to be sent the
/// secret in clear text. The daemon and `check` send nothing; only `ami.plain_login`
/// allows it, with a warning.
#[tokio::test]
async fn the_ami_secret_never_goes_out_in_clear_text_unless_allowed() {
    let impostor = FakeAmi::start(FakeAmiConfig {
        username: AMI_USER.into(),
        secret: AMI_SECRET.into(),
        md5_challenge: false,
        ..FakeAmiConfig::default()
    })
    .await;
    let zammad = FakeZammad::start(FakeZammadConfig {
        token: TOKEN.into(),
        ..FakeZammadConfig::default()
    })
    .await
    .unwrap();
    let d = Daemon::spawn(
        "attack-plain",
        impostor.addr(),
        &zammad.url(),
        Extra::default(),
        &[],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while impostor.connections() < 2 {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(impostor.logins(), 0);
    let sent_secret = |ami: &FakeAmi| {
        ami.actions()
            .iter()
            .any(|a| a.get("Secret").is_some() || a.get("Action") == Some("Login"))
    };
    assert!(!sent_secret(&impostor), "{:?}", impostor.actions());
    let log = d.log();
    assert!(log.contains("refused the MD5 challenge"), "{log}");
    assert!(log.contains("ami.plain_login"), "{log}");
    // `check` neither.
    let config = d.dir.join("config.toml");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"))
        .args(["check", "-c"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("refused the MD5 challenge"), "{out}");
    assert!(!out.contains(AMI_SECRET) && !sent_secret(&impostor));
    assert_eq!(d.stop().await, Some(0));
    // Opted in: logged in with the plain secret, and a warning says so.
    let d = Daemon::spawn(
        "attack-plain-allowed",
        impostor.addr(),
        &zammad.url(),
        Extra {
            ami: "plain_login = true",
            ..Extra::default()
        },
        &[],
        None,
    );
    d.wait_healthy().await;
    assert!(impostor.logins() >= 1);
    let log = d.log();
    assert!(log.contains("sending the secret in clear text"), "{log}");
    assert!(
        log.contains("ami.plain_login = true: when Asterisk refuses"),
        "{log}"
    );
    assert_eq!(d.stop().await, Some(0));
}

/// Attack 6: 1,100 idle connections to the admin port of a daemon with systemd's default
/// limit of 1,024 descriptors. FastAGI and Zammad must go on; the admin port itself comes
/// back once the idle connections time out.
#[tokio::test]
async fn idle_admin_connections_take_no_descriptor_a_call_needs() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let d = Daemon::spawn(
        "attack-admin",
        ami.addr(),
        &zammad.url(),
        Extra::default(),
        &[],
        Some(1024),
    );
    d.wait_healthy().await;
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect(d.admin).await {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connect: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.open_files() < 200, "{} files open", d.open_files());
    let call = blocked_call(20);
    assert!(ami.send_raw(encode(&[call.newchannel()])));
    let t = run_session(&call, d.agi).await;
    assert!(rejected(&t), "{:?}\n{}", t.commands, d.log());
    assert!(ami.send_raw(encode(&call_events(21))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_calls(&zammad).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            new_calls(&zammad),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The idle connections the daemon took are closed after the header timeout; the
    // port answers again while all 1,100 are still open on this side.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = reqwest::Client::new()
            .get(format!("http://{}/health", d.admin))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if health.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the admin port stays taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!d.log().contains("Too many open files"), "{}", d.log());
    drop(idle);
    assert_eq!(d.stop().await, Some(0));
}

/// Lower: links planted in the state dir are not followed (the daemon refuses the journal
/// rather than truncate or read what it points at); its files are 0600 under `umask 000`.
#[tokio::test]
async fn the_state_dir_follows_no_link_and_keeps_its_files_private() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let dir = temp_dir("attack-state");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, state.join("journal.tmp")).unwrap();
    let (agi, admin) = (free_port(), free_port());
    let start = |dir: &Path| {
        Daemon::spawn_in(
            dir.to_path_buf(),
            ami.addr(),
            &zammad.url(),
            agi,
            admin,
            Extra::default(),
            &[],
            None,
        )
    };
    let mut d = start(&dir);
    d.keep = true;
    d.wait_healthy().await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    for file in ["journal", "lock"] {
        let mode = std::fs::metadata(state.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert_eq!(d.stop().await, Some(0));
    std::fs::remove_file(state.join("journal")).unwrap();
    symlink(&victim, state.join("journal")).unwrap();
    let mut d = start(&dir);
    let status = tokio::time::timeout(Duration::from_secs(10), d.child.as_mut().unwrap().wait())
        .await
        .expect("refuses to start")
        .unwrap();
    assert_ne!(status.code(), Some(0));
    let log = d.log();
    assert!(
        log.contains("a symbolic link where its own file should be"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    d.child = None;
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lower: an undelivered event at sequence number `u64::MAX` in the journal (written by a
/// local user, or after a very long life) makes no number wrap: the debug build panics
/// on an overflow, so this would exit 101.
#[tokio::test]
async fn a_sequence_number_at_the_top_does_not_wrap() {
    use asterisk_zammad_bridge::service::journal::{Record, crc32};
    use asterisk_zammad_bridge::zammad::cti::{CallId, CtiEventKind, CtiRequest, Direction};
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let dir = temp_dir("attack-seq");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let record = Record::Item {
        seq: u64::MAX,
        request: CtiRequest {
            event: CtiEventKind::NewCall,
            direction: Direction::In,
            call_id: CallId("1700000000.1".into()),
            from: "15555550199".into(),
            to: "800".into(),
            user: None,
            queue: None,
            answering_number: None,
            cause: None,
        },
    };
    let json = serde_json::to_vec(&record).unwrap();
    let mut line = format!("{:08x} ", crc32(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    std::fs::write(dir.join("state/journal"), line).unwrap();
    let d = Daemon::spawn_in(
        dir,
        ami.addr(),
        &zammad.url(),
        free_port(),
        free_port(),
        Extra::default(),
        &[],
        None,
    );
    d.wait_healthy().await;
    assert!(ami.send_raw(encode(&call_events(40))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_calls(&zammad).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            new_calls(&zammad),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(new_calls(&zammad).contains(&"1700000000.1".to_string()));
    assert_eq!(d.stop().await, Some(0));
}

/// Lower: FastAGI query parameters with `%0D%0A` and `%1B` reach the text log escaped: no
/// forged line, no escape code for the operator's terminal.
#[tokio::test]
async fn log_lines_cannot_be_forged_from_a_fastagi_url() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let d = Daemon::start("attack-log", &ami, &zammad.url(), Extra::default()).await;
    let mut call = blocked_call(30);
    call.script =
        "newcall?direction=in%0D%0A2030-01-01T00:00:00.000000Z%20%20INFO%20forged%3A%20ok%1B[2J\
                   &x%0D%0A2031-01-01T00:00:00.000000Z%20ERROR%20forged%1B]0;pwned%07=1"
            .into();
    assert!(ami.send_raw(encode(&[call.newchannel()])));
    let t = run_session(&call, d.agi).await;
    assert!(rejected(&t), "{:?}", t.commands);
    let log = d.log();
    assert!(
        !log.contains('\x1b') && !log.contains('\x07') && !log.contains('\r'),
        "{log:?}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2030-") && !line.starts_with("2031-"),
            "forged: {line}"
        );
    }
    assert!(
        log.contains(r"direction=in\r\n2030-01-01T00:00:00.000000Z  INFO forged: ok\u001b[2J"),
        "{log}"
    );
    assert!(
        log.contains(
            r"parameter=x\r\n2031-01-01T00:00:00.000000Z ERROR forged\u001b]0;pwned\u0007"
        ),
        "{log}"
    );
    assert_eq!(d.stop().await, Some(0));
}

const DURATION_KEYS: [(&str, &str); 7] = [
    ("ami", "ping_interval"),
    ("ami", "reconcile_interval"),
    ("agi", "decision_timeout"),
    ("agi", "idle_timeout"),
    ("zammad", "timeout"),
    ("calls", "stale_after"),
    ("state", "shutdown_grace"),
];

/// Lower: a duration no timer can reach (`"500000000000y"`) is refused at load, naming
/// the key (exit 78), by `check --offline` and by `run`; the longest accepted one (100
/// years) in every key runs a FastAGI session and a call, and stops cleanly.
#[tokio::test]
async fn durations_too_long_for_a_timer_are_refused_and_the_longest_allowed_run() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    for (section, key) in DURATION_KEYS {
        for (how, value) in [("file", "500000000000y"), ("env", "500000000000y")] {
            let dir = temp_dir("attack-duration");
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("config.toml");
            let mut sections = std::collections::BTreeMap::from([
                ("ami", vec![format!("secret = \"{AMI_SECRET}\"")]),
                ("zammad", vec![format!("url = \"{}\"", zammad.url())]),
                (
                    "state",
                    vec![format!("dir = \"{}\"", dir.join("state").display())],
                ),
            ]);
            let var = format!("AZB__{}__{}", section.to_uppercase(), key.to_uppercase());
            if how == "file" {
                sections
                    .entry(section)
                    .or_default()
                    .push(format!("{key} = \"{value}\""));
            }
            let toml: String = sections
                .iter()
                .map(|(section, lines)| format!("[{section}]\n{}\n", lines.join("\n")))
                .collect();
            std::fs::write(&config, toml).unwrap();
            for args in [&["check", "--offline", "-c"][..], &["run", "-c"][..]] {
                let mut command =
                    std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
                command.args(args).arg(&config).env_remove("RUST_LOG");
                without_azb_env(&mut command);
                if how == "env" {
                    command.env(&var, value);
                }
                let output = tokio::process::Command::from(command)
                    .output()
                    .await
                    .unwrap();
                let err = String::from_utf8_lossy(&output.stderr);
                assert_eq!(
                    output.status.code(),
                    Some(78),
                    "{how} {section}.{key} {args:?}: {err}"
                );
                let want = format!("{section}.{key}: must be at most 100years, got \"{value}\"");
                assert!(err.contains(&want), "{want}\n{err}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let longest: Vec<String> = DURATION_KEYS
        .iter()
        .map(|(s, k)| format!("AZB__{}__{}", s.to_uppercase(), k.to_uppercase()))
        .collect();
    let env: Vec<(&str, &str)> = longest.iter().map(|v| (v.as_str(), "100y")).collect();
    let d = Daemon::spawn(
        "attack-longest",
        ami.addr(),
        &zammad.url(),
        Extra::default(),
        &env,
        None,
    );
    d.wait_healthy().await;
    let call = blocked_call(50);
    assert!(ami.send_raw(encode(&[call.newchannel()])));
    let t = run_session(&call, d.agi).await;
    assert!(rejected(&t), "{:?}\n{}", t.commands, d.log());
    assert!(ami.send_raw(encode(&call_events(51))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_calls(&zammad).len() < 2 {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d.stop().await, Some(0));
}

/// Lower: `HTTP_PROXY` and friends in the daemon's environment are not used; a proxy is
/// used only when `zammad.proxy` names it.
#[tokio::test]
async fn proxies_come_from_the_config_only() {
    let (ami, zammad) = stand_ins(FakeZammadConfig::default()).await;
    let proxy = RawHttp::start(ok_json()).await;
    let proxy_url = format!("http://{}", proxy.addr);
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .map(|v| (v, proxy_url.as_str()))
    .chain([("NO_PROXY", ""), ("no_proxy", "")])
    .collect();
    let d = Daemon::spawn(
        "attack-proxy-env",
        ami.addr(),
        &zammad.url(),
        Extra::default(),
        &env,
        None,
    );
    d.wait_healthy().await;
    assert!(ami.send_raw(encode(&call_events(60))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while new_calls(&zammad).is_empty() {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxy.heads(), Vec::<String>::new());
    assert_eq!(d.stop().await, Some(0));
    // Configured: the request goes through it, and nothing goes to Zammad directly.
    let configured = format!("proxy = \"http://user:pw@{}\"", proxy.addr);
    let d = Daemon::start(
        "attack-proxy-config",
        &ami,
        &zammad.url(),
        Extra {
            zammad: &configured,
            ..Extra::default()
        },
    )
    .await;
    assert!(ami.send_raw(encode(&call_events(61))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.heads().is_empty() {
        assert!(Instant::now() < deadline, "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = &proxy.heads()[0];
    assert!(
        head.starts_with(&format!("POST {} HTTP/1.1", zammad.url())),
        "{head}"
    );
    assert_eq!(new_calls(&zammad).len(), 1, "only the first daemon's call");
    assert_eq!(d.stop().await, Some(0));
}

/// Lower: a plain `http://` Zammad URL to another host is warned about (`check`, and the
/// daemon's log); on this host, or over https, it is not.
#[tokio::test]
async fn plain_http_to_another_host_is_warned_about() {
    for (url, warned) in [
        ("http://zammad.example.com/api/v1/cti/Tok", true),
        ("http://10.0.0.7:3000/api/v1/cti/Tok", true),
        ("https://zammad.example.com/api/v1/cti/Tok", false),
        ("http://127.0.0.1:3000/api/v1/cti/Tok", false),
        ("http://localhost/api/v1/cti/Tok", false),
    ] {
        let dir = temp_dir("attack-http");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!("[ami]\nsecret = \"{AMI_SECRET}\"\n[zammad]\nurl = \"{url}\"\n"),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command.args(["check", "--offline", "-c"]).arg(&config);
        without_azb_env(&mut command);
        let output = command.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.status.code(), Some(0), "{all}");
        assert_eq!(
            all.contains("zammad.url is plain http:// to a host that is not this one"),
            warned,
            "{url}: {all}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The daemon's VmRSS and open descriptors, sampled every 20 ms; the peaks so far.
fn sample_peaks(pid: u32) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let (files, rss) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (f, r) = (files.clone(), rss.clone());
    let task = tokio::spawn(async move {
        loop {
            let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            f.fetch_max(open as u64, Ordering::Relaxed);
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
                r.fetch_max(kb * 1024, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (files, rss, task)
}

/// Not a check but a measurement: the peaks the unit's `LimitNOFILE=` and `MemoryMax=`
/// are set from (docs/security.md, "The unit's limits"). Run it on the release build:
/// `cargo test --release --test it -- --ignored --nocapture attacks::peaks`.
///
/// Descriptors: every limit at once, at its default: 200 FastAGI sessions of real calls
/// back to back and 100 calls a second on AMI for 10 s against a Zammad that takes 3 s per
/// request (so requests pile up), while 520 connections dribble FastAGI environments and
/// 600 sit idle on the admin port. Memory: Zammad down while 10,000 calls stay open and
/// others end, until `state.max_outbox` (100,000) events wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn peaks_of_descriptors_and_memory_under_load_and_attack() {
    let (ami, zammad) = stand_ins(FakeZammadConfig {
        delay: Duration::from_secs(3),
        ..FakeZammadConfig::default()
    })
    .await;
    let d = Daemon::start("peaks", &ami, &zammad.url(), Extra::default()).await;
    let (files, rss, sampler) = sample_peaks(d.pid());
    let idle: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..600 {
            v.push(TcpStream::connect(d.admin).await.unwrap());
        }
        v
    };
    let mut slow = JoinSet::new();
    for i in 0..520 {
        let agi = d.agi;
        slow.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(agi).await else {
                return;
            };
            for n in 0..12 {
                if stream
                    .write_all(format!("agi_x{n}_{i}: x\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let until = Instant::now() + Duration::from_secs(10);
    let ami = Arc::new(ami);
    let mut sessions = JoinSet::new();
    for peer in 0..200usize {
        let (agi, ami) = (d.agi, ami.clone());
        sessions.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                let call = blocked_call(1000 + peer * 1000 + n);
                n += 1;
                ami.send_raw(encode(&[call.newchannel()]));
                let _ = call.run(agi).await;
            }
        });
    }
    for second in 0..10 {
        let events: Vec<AmiMessage> = (second * 100..second * 100 + 100)
            .flat_map(|i| call_events(5000 + i))
            .collect();
        ami.send_raw(encode(&events));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    while sessions.join_next().await.is_some() {}
    while slow.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!(
        "descriptors: peak {} open at once (load and attack); RSS peak so far {} MiB",
        files.load(Ordering::Relaxed),
        rss.load(Ordering::Relaxed) >> 20
    );
    drop(idle);
    // Memory: Zammad down; 10,000 calls open; others end until the outbox is full.
    zammad.set_delay(Duration::ZERO);
    zammad.fail_for(None, 503);
    let open: Vec<AmiMessage> = (0..10_000)
        .flat_map(|i| {
            call_events(100_000 + i)
                .into_iter()
                .filter(|e| e.get("Event") != Some("Hangup"))
        })
        .collect();
    for chunk in open.chunks(5_000) {
        ami.send_raw(encode(chunk));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut i = 200_000;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = d.metrics().await;
        if !text.lines().any(|l| l == "azb_cti_outbox_full_total 0")
            && text.contains("azb_cti_outbox_full_total")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox never filled");
        let events: Vec<AmiMessage> = (i..i + 1000).flat_map(call_events).collect();
        i += 1000;
        ami.send_raw(encode(&events));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    println!(
        "memory: peak RSS {} MiB (VmHWM {} MiB) with 10,000 calls open and state.max_outbox \
         events waiting; descriptors peak {}",
        rss.load(Ordering::Relaxed) >> 20,
        d.peak_rss() >> 20,
        files.load(Ordering::Relaxed)
    );
    assert_eq!(d.stop().await, Some(0));
}
