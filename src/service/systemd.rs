//! Telling systemd how the daemon is doing (`Type=notify`, docs/observability.md):
//! `READY=1` once the listeners are bound, `STATUS=` a one-line summary when the health
//! changes (at most once a second), `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1`
//! when the daemon stops.
//!
//! The notify protocol is one datagram per message to the socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace); it is written here on
//! [`std::os::unix::net::UnixDatagram`], no C library. Outside systemd (`NOTIFY_SOCKET`
//! unset) nothing of this runs.
//!
//! The watchdog pings while the daemon's loop is alive, not only while it is healthy: an
//! unhealthy daemon (Asterisk down, AMI login refused) already reconnects by itself, and a
//! restart by systemd would not bring Asterisk back but would cut the FastAGI sessions of
//! calls that are still going through. What the watchdog catches is a daemon that no longer
//! runs: a stuck runtime (the pinging task runs on it) or a daemon loop that has ended
//! (its health channel closes). Unhealthy shows in `STATUS=` and on `/health`.

use crate::service::health::{Health, Listening};
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The shortest time between two `STATUS=` messages.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The socket named by `NOTIFY_SOCKET`; `None` when it is unset or empty (not under
    /// systemd, or not `Type=notify`).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Notifier::new(&path.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier sending to `path` (`@name`: the abstract namespace).
    pub fn new(path: &str) -> io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => abstract_addr(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // A full socket buffer must never stall the daemon: such a message is dropped.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one message, e.g. `"READY=1"` or `"STATUS=...\nREADY=1"`.
    pub fn notify(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(|_| ())
    }

    /// Like [`Notifier::notify`]; a failure is logged, not returned.
    fn send(&self, message: &str) {
        if let Err(e) = self.notify(message) {
            warn!(error = %e, message, "could not notify systemd");
        } else {
            debug!(message, "notified systemd");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &str) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when that is set and
/// `WATCHDOG_PID` (if set) is this process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// The `STATUS=` text: one line.
pub fn status_line(health: &Health) -> String {
    let ami = if health.ami_connected {
        "AMI logged in"
    } else {
        "AMI not connected"
    };
    let agi = if health.agi_ok { "" } else { ", FastAGI down" };
    format!(
        "{ami}{agi}; {} active call{}; {} event{} waiting for Zammad",
        health.active_calls,
        if health.active_calls == 1 { "" } else { "s" },
        health.outbox_depth,
        if health.outbox_depth == 1 { "" } else { "s" },
    )
}

/// Reports the daemon to systemd until it stops: `READY=1` (with the first `STATUS=`) when
/// `listening` arrives, `STATUS=` on health changes (at most once a second), `WATCHDOG=1`
/// every `watchdog` while the daemon loop runs, `STOPPING=1` when `shutdown` is cancelled or the loop ends.
/// If the daemon fails before it listens (`listening` is dropped), nothing is sent: systemd
/// sees the process exit.
pub async fn report(
    notifier: Notifier,
    watchdog: Option<Duration>,
    listening: oneshot::Receiver<Listening>,
    shutdown: CancellationToken,
) {
    let listening = tokio::select! {
        l = listening => l,
        () = shutdown.cancelled() => {
            notifier.send("STOPPING=1");
            return;
        }
    };
    let Ok(Listening { mut health, .. }) = listening else {
        return;
    };
    let mut status = status_line(&health.borrow_and_update());
    notifier.send(&format!("READY=1\nSTATUS={status}"));
    // A far-off tick when there is no watchdog keeps one select below.
    let period = watchdog.unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The health changes with every batch under load: STATUS= goes out at most once per
    // STATUS_EVERY, with the latest health.
    let mut status_due = false;
    let mut next_status = Instant::now() + STATUS_EVERY;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = health.changed(), if !status_due => {
                if changed.is_err() {
                    break; // the daemon loop has ended
                }
                status_due = true;
            }
            () = tokio::time::sleep_until(next_status), if status_due => {
                status_due = false;
                next_status = Instant::now() + STATUS_EVERY;
                let now = status_line(&health.borrow_and_update());
                if now != status {
                    notifier.send(&format!("STATUS={now}"));
                    status = now;
                }
            }
            _ = ticks.tick(), if watchdog.is_some() => notifier.send("WATCHDOG=1"),
        }
    }
    notifier.send("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_interval_for_this_process_only() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
    }

    #[test]
    fn status_is_one_line() {
        let health = Health {
            ami_connected: true,
            agi_ok: true,
            active_calls: 1,
            outbox_depth: 3,
        };
        assert_eq!(
            status_line(&health),
            "AMI logged in; 1 active call; 3 events waiting for Zammad"
        );
        let down = Health::default();
        assert_eq!(
            status_line(&down),
            "AMI not connected, FastAGI down; 0 active calls; 0 events waiting for Zammad"
        );
    }

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("azb-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        notifier.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_arrive_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("azb-notify-unit-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap();
        notifier.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    /// Many health changes in a burst make one STATUS= with the last of them; the end of
    /// the daemon loop makes STOPPING=1.
    #[tokio::test(start_paused = true)]
    async fn status_is_rate_limited_and_stopping_follows_the_loop() {
        let dir = std::env::temp_dir().join(format!("azb-notify-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        let (health_tx, health) = tokio::sync::watch::channel(Health::default());
        let (ready, listening) = oneshot::channel();
        let task = tokio::spawn(report(notifier, None, listening, CancellationToken::new()));
        ready
            .send(Listening {
                agi: None,
                admin: None,
                health,
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        for calls in 1..=100 {
            health_tx.send_replace(Health {
                active_calls: calls,
                ..Health::default()
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(health_tx);
        task.await.unwrap();
        let mut messages = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = server.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            messages[0].starts_with("READY=1\nSTATUS=AMI not connected"),
            "{messages:?}"
        );
        assert_eq!(messages.last().unwrap(), "STOPPING=1", "{messages:?}");
        let statuses: Vec<&String> = messages[1..messages.len() - 1].iter().collect();
        assert!(
            (1..=2).contains(&statuses.len()),
            "500 ms of changes, at most one STATUS= a second: {statuses:?}"
        );
        assert!(
            statuses.last().unwrap().contains("100 active calls"),
            "{statuses:?}"
        );
    }
}
