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

/// The daemon as the unit starts it, but with neither `AZB__*_FILE` variable: the secrets
/// come from `$CREDENTIALS_DIRECTORY` alone. Its stdout and stderr go to `log`;
/// `journal_stream` is the `JOURNAL_STREAM` it sees.
fn daemon_with_credentials(setup: &Setup, log: &Path, journal_stream: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
    let out = std::fs::File::create(log).unwrap();
    command
        .args(["run", "-c"])
        .arg(&setup.config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("CREDENTIALS_DIRECTORY", setup.dir.join("credentials"))
        .env("JOURNAL_STREAM", journal_stream)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    crate::support::without_azb_env(&mut command);
    command
}

/// `DEVICE:INODE` of a file, as systemd writes `JOURNAL_STREAM` for the journal's socket.
fn dev_ino(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Runs the daemon until its log contains `until` (or 10 s pass), then SIGTERM; the log.
fn run_until(mut command: Command, log: &Path, until: &str) -> String {
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(until)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{status}\n{text}");
    text
}

/// Under systemd (`JOURNAL_STREAM` names the output) every line starts with its syslog
/// priority and has no timestamp, so `journalctl -p warning` finds the warnings and errors;
/// on any other output (here: a `JOURNAL_STREAM` of another file) the lines are as on a
/// terminal. The secrets come from `$CREDENTIALS_DIRECTORY` without any variable naming them.
#[tokio::test]
async fn journal_lines_carry_their_priority_and_no_timestamp() {
    let zammad = FakeZammad::start(FakeZammadConfig::default())
        .await
        .unwrap();
    // The credential holds "bridge-secret": this AMI wants another, so the login fails (an
    // error), and the daemon retries (warnings).
    let ami = FakeAmi::start(FakeAmiConfig {
        secret: "another-secret".into(),
        ..FakeAmiConfig::default()
    })
    .await;
    let setup = setup("journal", &ami, &zammad);
    let log = setup.dir.join("journal.log");
    let stream = {
        std::fs::write(&log, "").unwrap();
        dev_ino(&log)
    };
    let command = daemon_with_credentials(&setup, &log, &stream);
    // Truncated, not replaced: the same inode.
    assert_eq!(dev_ino(&log), stream);
    let text = tokio::task::spawn_blocking({
        let log = log.clone();
        move || run_until(command, &log, "AMI authentication failed")
    })
    .await
    .unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let priority = line.strip_prefix('<').and_then(|rest| rest.split_once('>'));
        let Some((n, rest)) = priority else {
            panic!("no priority prefix: {line:?}\n{text}");
        };
        assert!(["3", "4", "6", "7"].contains(&n), "{line}");
        assert!(
            !rest.trim_start().starts_with("20"),
            "a timestamp after the priority: {line}"
        );
        let level = rest.split_whitespace().next().unwrap_or_default();
        let want = match level {
            "ERROR" => "3",
            "WARN" => "4",
            "INFO" => "6",
            _ => "7",
        };
        assert_eq!(n, want, "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("starting")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>") && l.contains("AMI authentication failed")),
        "{text}"
    );
    assert!(!text.contains("bridge-secret"), "{text}");

    // Not the journal's stream: the terminal format, timestamps first, no prefix.
    let plain_log = setup.dir.join("plain.log");
    let command = daemon_with_credentials(&setup, &plain_log, &stream);
    let text = tokio::task::spawn_blocking({
        let log = plain_log.clone();
        move || run_until(command, &log, "AMI authentication failed")
    })
    .await
    .unwrap();
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with("20"), "{line}\n{text}");
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// `check` finds the credentials as `run` does: `$CREDENTIALS_DIRECTORY/ami-secret` and
/// `zammad-url`, no variable naming them.
#[test]
fn check_finds_the_credentials_directory() {
    let dir = temp_dir("check-credentials");
    std::fs::create_dir_all(dir.join("credentials")).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, "[agi]\nlisten = \"\"\n").unwrap();
    let check = |credentials: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command
            .args(["check", "--offline", "-c"])
            .arg(&config)
            .env("CREDENTIALS_DIRECTORY", credentials);
        crate::support::without_azb_env(&mut command);
        command.output().unwrap()
    };
    // Where the package is installed and set up, /etc has the secrets: nothing is missing.
    if !crate::support::etc_has_credentials() {
        let missing = check(&dir.join("credentials"));
        assert_eq!(missing.status.code(), Some(78));
        assert!(
            String::from_utf8_lossy(&missing.stderr).contains("ami.secret is required"),
            "{missing:?}"
        );
    }
    std::fs::write(dir.join("credentials/ami-secret"), "s3cret\n").unwrap();
    std::fs::write(
        dir.join("credentials/zammad-url"),
        "https://zammad.example.com/api/v1/cti/aB3dE6\n",
    )
    .unwrap();
    let found = check(&dir.join("credentials"));
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    assert_eq!(String::from_utf8_lossy(&found.stdout), "config OK\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under the unit only `StateDirectory=` (`$STATE_DIRECTORY`) is writable: a `state.dir`
/// elsewhere is refused at load (78), not found out by a start that fails in a loop.
#[test]
fn a_state_dir_outside_the_units_state_directory_is_refused() {
    let dir = temp_dir("state-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[ami]\nsecret = \"s3cret\"\n[zammad]\nurl = \"https://z.example/api/v1/cti/aB3\"\n\
             [state]\ndir = \"{}\"\n",
            dir.join("elsewhere").display()
        ),
    )
    .unwrap();
    for args in [&["run", "-c"][..], &["check", "--offline", "-c"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command
            .args(args)
            .arg(&config)
            .env("STATE_DIRECTORY", dir.join("granted"));
        crate::support::without_azb_env(&mut command);
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("state.dir: ") && stderr.contains("outside the unit's StateDirectory="),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
