//! The real daemon binary as a child process, for tests that kill it: its config file and
//! state dir live in a fresh temp dir, and everything it prints (its log goes to stdout,
//! errors to stderr) is appended to `bridge.log` there, so a failing test can show the tail.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A scratch directory under the system temp dir. Removed when dropped, unless the thread
/// is panicking (a failed test), so its log and state can be inspected.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        super::sweep_leftovers();
        let path = std::env::temp_dir().join(format!("azb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the scratch dir");
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What the daemon is pointed at.
pub struct BridgeSetup<'a> {
    pub ami: std::net::SocketAddr,
    pub ami_username: &'a str,
    pub ami_secret: &'a str,
    pub zammad_url: String,
    pub zammad_timeout: &'a str,
}

/// One daemon process of a [`Bridge`]: when it was started, and when it was SIGKILLed.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub started: tokio::time::Instant,
    pub killed: Option<tokio::time::Instant>,
}

/// The daemon binary, started (and restarted) with one config and one state dir.
pub struct Bridge {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
    runs: Vec<Run>,
}

impl Bridge {
    /// Writes the config (state dir `dir/state`) and starts the daemon.
    pub fn start(dir: &Path, setup: &BridgeSetup<'_>) -> Bridge {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("create the state dir");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(setup, &state)).expect("write the config");
        let mut bridge = Bridge {
            dir: dir.to_path_buf(),
            config,
            log: dir.join("bridge.log"),
            child: None,
            starts: 0,
            runs: Vec::new(),
        };
        bridge.spawn();
        bridge
    }

    /// Starts the daemon (again); the log file is appended to.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the daemon log");
        writeln!(log, "===== test harness: start #{} =====", self.starts).unwrap();
        let err = log.try_clone().expect("clone the log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_asterisk-zammad-bridge"));
        command
            .args(["run", "-c"])
            .arg(&self.config)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .env_remove("RUST_LOG");
        crate::support::without_azb_env(&mut command);
        self.runs.push(Run {
            started: tokio::time::Instant::now(),
            killed: None,
        });
        self.child = Some(command.spawn().expect("start the daemon binary"));
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Some(run) = self.runs.last_mut() {
                run.killed = Some(tokio::time::Instant::now());
            }
            let _ = child.wait();
            self.note("killed with SIGKILL");
        }
    }

    /// Whether a daemon process is running (or has ended by itself and not been reaped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Every daemon process so far, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// `None` while it runs; its exit status once it has ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `grace`; SIGKILL if it is still running then. Returns the
    /// exit status if it ended by itself in time (or had already ended).
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("ended after SIGTERM: {status}"));
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        self.note("still running after SIGTERM; killed with SIGKILL");
        None
    }

    pub fn starts(&self) -> usize {
        self.starts
    }

    /// Everything the daemon printed, all runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let mut out = String::new();
        for line in &lines[lines.len().saturating_sub(n)..] {
            let _ = writeln!(out, "  | {line}");
        }
        out
    }

    /// Log lines that mention `id` (not as the prefix of a longer number), at most `n`.
    pub fn log_grep(&self, id: &str, n: usize) -> String {
        let mentions = |line: &str| {
            line.match_indices(id).any(|(at, _)| {
                !line[at + id.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        };
        let mut out = String::new();
        for line in self.log().lines().filter(|l| mentions(l)).take(n) {
            let _ = writeln!(out, "  | {line}");
        }
        out
    }

    fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "===== test harness: daemon {what} =====");
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config_toml(setup: &BridgeSetup<'_>, state: &Path) -> String {
    let toml_str = |s: &str| toml_string(s);
    format!(
        r#"[ami]
address = {ami}
username = {user}
secret = {secret}

[agi]
listen = ""

[admin]
listen = ""

[zammad]
url = {url}
timeout = {timeout}

[state]
dir = {state}

[calls]
inbound_contexts = ["from-trunk"]
outbound_contexts = ["from-internal"]

[numbers]
country_code = "1"

[agents]
"201" = {{ name = "Alice", number = "4930123456201" }}
"202" = "Bob"
"203" = "Carol"
"204" = "Dave"

[log]
level = "info"
"#,
        ami = toml_str(&setup.ami.to_string()),
        user = toml_str(setup.ami_username),
        secret = toml_str(setup.ami_secret),
        url = toml_str(&setup.zammad_url),
        timeout = toml_str(setup.zammad_timeout),
        state = toml_str(&state.display().to_string()),
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
