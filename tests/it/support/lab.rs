//! The end-to-end lab: a real Asterisk 22 from Debian sid in a chroot
//! (`tests/e2e/asterisk-lab.sh`), the real daemon binary started with a config file, the
//! in-process stand-in Zammad, and a driver on AMI that places calls and records events.
//!
//! Everything listens on loopback ports picked at start. The processes are stopped when
//! their handles are dropped, and by the script's watchdog if this test process dies
//! without unwinding.

use asterisk_zammad_bridge::ami::{AmiHandle, AmiInput, AmiMessage, AmiSettings, AmiStatus};
use asterisk_zammad_bridge::standins::zammad::FakeZammad;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/asterisk-lab.sh");

/// The secrets the script writes into the lab's manager.conf (loopback only).
pub const ZAMMAD_SECRET: &str = "lab-zammad-secret";
const DRIVER_SECRET: &str = "lab-driver-secret";

/// Makes sure the lab can run (root, tools, the cached chroot, built now if missing).
/// Returns whether to go on. Where it cannot run, the tests fail with the reason; they skip,
/// saying so on the terminal (past the test harness's capture), when `AZB_SKIP_E2E=1`, or
/// when the only thing missing is root outside CI (`CI` unset: a developer's plain `cargo
/// test`; CI runs as root, and there a missing root fails).
pub fn ready_or_skip() -> bool {
    let reason = match Command::new("bash").args([SCRIPT, "prepare"]).output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run {SCRIPT}: {e}"),
    };
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let asked = std::env::var("AZB_SKIP_E2E").as_deref() == Ok("1");
    if asked || (reason.contains("needs root") && !in_ci) {
        use std::io::Write as _;
        let why = if asked { "AZB_SKIP_E2E=1" } else { "not root" };
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED ({why}): the end-to-end tests against a real Asterisk 22 \
             (tests/it/e2e.rs) cannot run here: {reason}\n  They need root (debootstrap, \
             chroot, a mount namespace); CI runs them as root. Here: sudo -E cargo test \
             --test it e2e::\n"
        );
        return false;
    }
    panic!(
        "the end-to-end tests against a real Asterisk cannot run here: {reason}\n\
         (set AZB_SKIP_E2E=1 to skip them)"
    );
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a local address").port()
}

/// A run directory under the system temp dir, unique to this process.
pub fn run_dir(tag: &str) -> PathBuf {
    super::sweep_leftovers();
    let dir = std::env::temp_dir().join(format!("azb-e2e-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run dir");
    dir
}

/// The last `n` lines of a text file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The name in the lab's AMI TLS certificate (its subjectAltName): not `127.0.0.1`.
pub const TLS_NAME: &str = "pbx.lab.test";

/// One Asterisk of the lab, with the PBX configuration of its run dir.
pub struct Asterisk {
    pub run_dir: PathBuf,
    pub ami_port: u16,
    pub agi_port: u16,
    /// AMI with TLS (`tlsenable`), its certificate for [`TLS_NAME`] signed by the CA in
    /// [`Asterisk::tls_ca`].
    pub ami_tls_port: u16,
}

impl Asterisk {
    pub fn start(run_dir: &Path) -> Result<Asterisk, String> {
        let (ami_port, agi_port, ami_tls_port) = (free_port(), free_port(), free_port());
        let owner = std::process::id().to_string();
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(run_dir)
            .args([
                ami_port.to_string(),
                agi_port.to_string(),
                owner,
                ami_tls_port.to_string(),
            ])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "asterisk-lab.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Asterisk {
            run_dir: run_dir.to_path_buf(),
            ami_port,
            agi_port,
            ami_tls_port,
        })
    }

    /// The PEM file of the CA that signed the AMI TLS certificate.
    pub fn tls_ca(&self) -> PathBuf {
        self.run_dir.join("tls/ca.pem")
    }

    /// Asterisk's own log, for failure messages.
    pub fn log(&self) -> PathBuf {
        self.run_dir.join("log/full")
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.run_dir)
            .status();
    }
}

/// The daemon binary, running with `config.toml` in the run dir, logging to `daemon.log`.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(run_dir: &Path, config: &str) -> Result<Daemon, String> {
        Self::start_logging_to(run_dir, config, "daemon.log")
    }

    /// Like [`Daemon::start`], logging to `log_name` in the run dir.
    pub fn start_logging_to(
        run_dir: &Path,
        config: &str,
        log_name: &str,
    ) -> Result<Daemon, String> {
        let config_path = run_dir.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("write the config: {e}"))?;
        let log = run_dir.join(log_name);
        let out = std::fs::File::create(&log).map_err(|e| format!("create the log: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        crate::support::without_azb_env(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        // Stops the daemon if this process dies without unwinding.
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("watch")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        Ok(Daemon { child })
    }

    /// SIGKILL: the daemon gets no chance to tidy up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then a clean exit within the grace period, else SIGKILL.
    pub fn stop(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the daemon had already exited: {status}"));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the daemon exited with {status} on SIGTERM"))
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("the daemon did not stop within 10 s of SIGTERM".into())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every AMI event the driver saw, in arrival order.
#[derive(Default)]
struct EventLog {
    events: Mutex<Vec<AmiMessage>>,
    changed: Notify,
}

/// The test's own AMI session (user `lab`, all classes): places calls, transfers them,
/// and records every event.
pub struct Driver {
    ami: AmiHandle,
    log: Arc<EventLog>,
    cancel: CancellationToken,
    /// The `ChannelId`s originated so far (see [`Originate`] on why they matter).
    ids: Mutex<Vec<String>>,
}

impl Driver {
    /// Connects once Asterisk listens, logs in, and waits for `FullyBooted`.
    pub async fn connect(port: u16, within: Duration) -> Result<Driver, String> {
        let deadline = Instant::now() + within;
        let address = format!("127.0.0.1:{port}");
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("Asterisk's AMI did not listen on {address}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settings = AmiSettings::new(&address, "lab", DRIVER_SECRET.to_string().into());
        let cancel = CancellationToken::new();
        let (ami, mut inputs, mut status, _task) =
            asterisk_zammad_bridge::ami::spawn(settings, cancel.clone());
        let log = Arc::new(EventLog::default());
        let sink = log.clone();
        tokio::spawn(async move {
            while let Some(input) = inputs.recv().await {
                if let AmiInput::Event(event) = input {
                    sink.events.lock().unwrap().push(event);
                    sink.changed.notify_waiters();
                }
            }
        });
        let driver = Driver {
            ami,
            log,
            cancel,
            ids: Mutex::default(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, status.wait_for(|s| *s == AmiStatus::LoggedIn))
            .await
            .map_err(|_| format!("the driver could not log in to AMI at {address}"))?
            .map_err(|_| "the driver's AMI task stopped".to_string())?;
        driver
            .wait_event("FullyBooted", left, |e| e.event() == Some("FullyBooted"))
            .await?;
        Ok(driver)
    }

    /// Sends an action; an error response becomes `Err`.
    pub async fn action(&self, pairs: &[(&str, &str)]) -> Result<AmiMessage, String> {
        let action = AmiMessage::from_pairs(pairs.iter().copied());
        self.ami
            .action(action)
            .await
            .map_err(|e| format!("AMI action {pairs:?} failed: {e}"))
    }

    /// The first event (from the start of the session) that `matches`, waiting for it.
    pub async fn wait_event(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&AmiMessage) -> bool,
    ) -> Result<AmiMessage, String> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.log.changed.notified();
            if let Some(e) = self.log.events.lock().unwrap().iter().find(|e| matches(e)) {
                return Ok(e.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("no AMI event {what} within {within:?}"));
            }
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<AmiMessage> {
        self.log.events.lock().unwrap().clone()
    }

    /// Waits until the daemon's AMI user (`zammad`) is logged in.
    pub async fn wait_manager_user(&self, user: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let reply = self
                .action(&[("Action", "Command"), ("Command", "manager show connected")])
                .await?;
            let connected = reply
                .get_all("Output")
                .any(|line| line.split_whitespace().next() == Some(user));
            if connected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("AMI user {user} did not log in within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until Asterisk has no channel left.
    pub async fn wait_idle(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let list = AmiMessage::from_pairs([("Action", "CoreShowChannels")]);
            let channels = self
                .ami
                .list_action(list)
                .await
                .map_err(|e| format!("CoreShowChannels failed: {e}"))?;
            if channels.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = channels.iter().filter_map(|c| c.get("Channel")).collect();
                return Err(format!("channels still up after {within:?}: {names:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An AMI `Originate` of a Local channel running `Wait(wait)` once answered: the external
/// caller, or a phone placing a call ([`Originate::send_into`]: the dialplan instead). Its
/// `;1` half gets the Uniqueid `id` (`ChannelId`), which becomes the Linkedid of the whole
/// call (and so the callId, after the prefix).
/// Asterisk refuses an id that is a prefix of a live channel's Uniqueid (it compares
/// case-insensitively, up to the new id's length): no id may start another.
pub struct Originate<'a> {
    pub id: &'a str,
    pub channel: String,
    pub caller_id: &'a str,
    /// Seconds the originated side stays on the line once answered.
    pub wait: u32,
    /// How long the originated side rings before it gives up (ms).
    pub timeout_ms: u32,
    pub vars: Vec<(&'a str, String)>,
}

impl Originate<'_> {
    pub async fn send(&self, driver: &Driver) -> Result<(), String> {
        let wait = self.wait.to_string();
        self.send_with(driver, &[("Application", "Wait"), ("Data", &wait)])
            .await
    }

    /// Like [`Originate::send`], but once answered the originated side runs the dialplan
    /// at `exten` in `context` (priority 1) instead of waiting: a click-to-call, which
    /// rings the agent's phone first and then dials from the agent's context.
    pub async fn send_into(
        &self,
        driver: &Driver,
        context: &str,
        exten: &str,
    ) -> Result<(), String> {
        self.send_with(
            driver,
            &[("Context", context), ("Exten", exten), ("Priority", "1")],
        )
        .await
    }

    async fn send_with(&self, driver: &Driver, then: &[(&str, &str)]) -> Result<(), String> {
        {
            let mut ids = driver.ids.lock().unwrap();
            let new = self.id.to_ascii_lowercase();
            if let Some(old) = ids
                .iter()
                .find(|o| o.starts_with(&new) || new.starts_with(*o))
            {
                return Err(format!(
                    "ChannelId {:?} clashes with {old:?}: Asterisk matches ids by prefix",
                    self.id
                ));
            }
            ids.push(new);
        }
        let timeout = self.timeout_ms.to_string();
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut pairs = vec![("Action", "Originate"), ("Channel", self.channel.as_str())];
        pairs.extend(then.iter().copied());
        pairs.extend([
            ("CallerID", self.caller_id),
            ("Timeout", timeout.as_str()),
            ("ChannelId", self.id),
            ("Async", "true"),
        ]);
        pairs.extend(vars.iter().map(|v| ("Variable", v.as_str())));
        driver.action(&pairs).await.map(drop)
    }
}

/// The request bodies the stand-in Zammad received for `call_id`, in arrival order, once
/// its `hangup` has been answered.
pub async fn cti_of(
    zammad: &FakeZammad,
    call_id: &str,
    within: Duration,
) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + within;
    loop {
        let requests: Vec<_> = zammad
            .requests()
            .into_iter()
            .filter(|r| r.call_id().as_deref() == Some(call_id))
            .collect();
        let done = requests
            .iter()
            .any(|r| r.event() == Some("hangup") && r.status.is_some());
        if done {
            return Ok(requests.into_iter().map(|r| r.params).collect());
        }
        if Instant::now() > deadline {
            let got: Vec<Value> = requests.into_iter().map(|r| r.params).collect();
            return Err(format!(
                "no hangup for callId {call_id} within {within:?}; got {}",
                serde_json::to_string_pretty(&got).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
