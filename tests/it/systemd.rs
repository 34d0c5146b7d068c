//! Running under systemd: the real binary with a fake `NOTIFY_SOCKET` (a datagram socket in
//! a temp dir standing in for systemd) and its secrets given the way the unit gives them
//! (`AZB__AMI__SECRET_FILE` / `AZB__ZAMMAD__URL_FILE` naming credential files); and the
//! unit file itself, checked with `systemd-analyze verify` and `security`.

use crate::support::temp_dir;
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;

const UNIT: &str = "asterisk-zammad-bridge.service";

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(UNIT)
}

/// The next datagram on the fake notify socket, or `None` after `wait`.
async fn next_message(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .expect("read the notify socket");
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A port on loopback that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    agi_port: u16,
}

/// A config without inline secrets; the secrets are in files, as systemd credentials are.
fn setup(what: &str, ami: &FakeAmi, zammad: &FakeZammad) -> Setup {
    let dir = temp_dir(what);
    std::fs::create_dir_all(dir.join("credentials")).unwrap();
    std::fs::write(dir.join("credentials/ami-secret"), "bridge-secret\n").unwrap();
    std::fs::write(
        dir.join("credentials/zammad-url"),
        format!("{}\n", zammad.url()),
    )
    .unwrap();
    let agi_port = free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[ami]\naddress = \"{}\"\nusername = \"bridge\"\n\
             [agi]\nlisten = \"127.0.0.1:{agi_port}\"\n[admin]\nlisten = \"\"\n\
             [calls]\ninbound_contexts = [\"from-trunk\"]\n[numbers]\ncountry_code = \"1\"\n\
             [state]\ndir = \"{}\"\n",
            ami.addr(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        agi_port,
    }
}

fn daemon(setup: &Setup, notify: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    command
        .args(["run", "-c"])
        .arg(&setup.config)
        .env_remove("RUST_LOG")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", notify)
        .env(
            "AZB__AMI__SECRET_FILE",
            setup.dir.join("credentials/ami-secret"),
        )
        .env(
            "AZB__ZAMMAD__URL_FILE",
            setup.dir.join("credentials/zammad-url"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// READY=1 comes once the FastAGI listener takes connections, with a STATUS= line;
/// STATUS= follows the AMI login; WATCHDOG=1 comes at half of WATCHDOG_USEC; SIGTERM
/// brings STOPPING=1 and a clean exit.
#[tokio::test]
async fn notifies_ready_status_watchdog_and_stopping() {
    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .unwrap();
    let ami = FakeAmi::start(FakeAmiConfig::default()).await;
    let setup = setup("notify", &ami, &zammad);
    let notify = setup.dir.join("notify");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let mut child = daemon(&setup, &notify)
        .env("WATCHDOG_USEC", "400000")
        .spawn()
        .unwrap();

    let first = next_message(&socket, Duration::from_secs(10))
        .await
        .expect("READY=1 within 10 s");
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );
    std::net::TcpStream::connect(("127.0.0.1", setup.agi_port))
        .expect("the FastAGI listener is bound when READY=1 is sent");
    let status = first
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("READY=1 comes with a STATUS=: {first:?}"));
    assert!(
        !status.contains('\n') && status.contains("active call"),
        "{status}"
    );

    let mut logged_in = false;
    let mut watchdogs = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) && (!logged_in || watchdogs.len() < 3) {
        let Some(message) = next_message(&socket, Duration::from_secs(2)).await else {
            continue;
        };
        for line in message.lines() {
            if line == "WATCHDOG=1" {
                watchdogs.push(Instant::now());
            } else if line.starts_with("STATUS=AMI logged in") {
                logged_in = true;
            } else {
                assert!(line.starts_with("STATUS="), "unexpected: {line:?}");
            }
        }
    }
    assert!(logged_in, "a STATUS= line says AMI is logged in");
    assert!(
        watchdogs.len() >= 3,
        "WATCHDOG=1 every 200 ms: {watchdogs:?}"
    );
    let gap = watchdogs[2] - watchdogs[1];
    assert!(
        gap >= Duration::from_millis(100) && gap < Duration::from_millis(2000),
        "half of WATCHDOG_USEC apart: {gap:?}"
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stopping = false;
    while let Some(message) = next_message(&socket, Duration::from_secs(10)).await {
        if message.lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 after SIGTERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// WATCHDOG_USEC meant for another process (WATCHDOG_PID): no WATCHDOG=1. A daemon that
/// fails before it listens never says READY=1 and exits non-zero.
#[tokio::test]
async fn no_watchdog_unless_asked_and_no_ready_on_failure() {
    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .unwrap();
    let ami = FakeAmi::start(FakeAmiConfig::default()).await;
    let setup = setup("notify-quiet", &ami, &zammad);
    let notify = setup.dir.join("notify");
    let socket = UnixDatagram::bind(&notify).unwrap();

    let mut child = daemon(&setup, &notify)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1")
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = next_message(&socket, Duration::from_secs(10))
        .await
        .into_iter()
        .collect();
    while let Some(m) = next_message(&socket, Duration::from_millis(800)).await {
        messages.push(m);
    }
    assert!(
        messages.first().is_some_and(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "{messages:?}"
    );

    // A second daemon on the same FastAGI port and state dir cannot start.
    let second = daemon(&setup, &notify).status().unwrap();
    assert!(!second.success());
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
    let mut after = Vec::new();
    while let Some(m) = next_message(&socket, Duration::from_millis(300)).await {
        after.push(m);
    }
    assert_eq!(
        after.iter().filter(|m| m.contains("READY=1")).count(),
        0,
        "the failed daemon never said READY=1: {after:?}"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// `systemd-analyze`, or why the unit checks are skipped.
fn systemd_analyze() -> Option<&'static str> {
    let tool = "/usr/bin/systemd-analyze";
    if Path::new(tool).exists() {
        Some(tool)
    } else {
        eprintln!(
            "SKIPPED: {tool} is not installed (no systemd on this machine); the unit file \
             is not verified here"
        );
        None
    }
}

/// `systemd-analyze verify` on a copy of the unit whose `ExecStart=` names the binary just
/// built (verify wants the program to exist; /usr/bin has none before the package is
/// installed). Everything else in the copy is the shipped unit, line for line.
#[test]
fn unit_file_verifies() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let exec = "ExecStart=/usr/bin/asterisk-zammad-bridge ";
    assert_eq!(unit.matches(exec).count(), 1, "one ExecStart= on /usr/bin");
    let copy = unit.replace(
        exec,
        &format!(
            "ExecStart={} ",
            env!("CARGO_BIN_EXE_asterisk-zammad-bridge")
        ),
    );
    let dir = temp_dir("unit-verify");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(UNIT);
    std::fs::write(&path, copy).unwrap();
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify also prints warnings with exit 0; the unit should have none of its own.
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains(UNIT)).collect();
    assert!(own.is_empty(), "warnings about the unit:\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `systemd-analyze security --offline=yes` rates the unit OK or better. It rates 1.1 now
/// (what is left: network access, which the daemon needs, and no root image); the bound of
/// 2.0 catches a hardening line that goes missing long before the rating leaves "OK" (< 5).
#[test]
fn unit_file_is_hardened() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let out = Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{stdout}\n{stderr}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    eprintln!("{}", line.trim());
    assert!(
        level <= 2.0 && (line.contains("OK") || line.contains("SAFE")),
        "exposure {level}: {line}\n{stdout}"
    );
}
