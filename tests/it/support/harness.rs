//! The real daemon (`daemon::run`) on loopback between the scripted AMI peer
//! and the stand-in Zammad.

use super::lab_config;
use asterisk_zammad_bridge::config::Config;
use asterisk_zammad_bridge::service::daemon;
use asterisk_zammad_bridge::service::health::Listening;
use asterisk_zammad_bridge::standins::ami::{FakeAmi, FakeAmiConfig};
use asterisk_zammad_bridge::standins::zammad::{FakeZammad, FakeZammadConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub ami: FakeAmi,
    pub zammad: FakeZammad,
    /// The daemon's FastAGI address (it listens on `127.0.0.1:0`).
    pub agi: SocketAddr,
    /// The daemon's admin listener, `/health` and `/metrics` (also on `127.0.0.1:0`).
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub daemon: JoinHandle<anyhow::Result<()>>,
    /// The daemon's config (its state dir survives [`Harness::restart`]).
    pub config: Config,
}

impl Harness {
    /// Starts the stand-ins and the daemon with the lab config, changed by `tweak`;
    /// returns once the daemon listens for FastAGI and has logged in to AMI.
    pub async fn start(zammad: FakeZammadConfig, tweak: impl FnOnce(&mut Config)) -> Harness {
        let zammad = FakeZammad::start(zammad)
            .await
            .expect("the stand-in zammad starts");
        let ami = FakeAmi::start(FakeAmiConfig {
            username: "zammad".into(),
            secret: "s3cret".into(),
            ..FakeAmiConfig::default()
        })
        .await;
        let mut config = lab_config();
        config.ami.address = ami.addr().into();
        config.ami.username = "zammad".into();
        config.ami.secret = Some("s3cret".to_string().into());
        config.zammad.url = Some(zammad.url().parse().unwrap());
        config.agi.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.state.dir = super::temp_dir("state");
        tweak(&mut config);
        let (shutdown, daemon, listening) = launch(config.clone()).await;
        tokio::time::timeout(Duration::from_secs(10), ami.wait_logged_in())
            .await
            .expect("the daemon logs in to AMI");
        Harness {
            ami,
            zammad,
            agi: listening.agi.expect("FastAGI is on"),
            admin: listening.admin.expect("the admin listener is on"),
            shutdown,
            daemon,
            config,
        }
    }

    /// Stops the daemon (as SIGTERM does) and starts a new one on the same state dir;
    /// returns once it has logged in to AMI again.
    pub async fn restart(&mut self) {
        let logins = self.ami.logins();
        self.shutdown.cancel();
        (&mut self.daemon)
            .await
            .expect("no panic")
            .expect("the old daemon ends cleanly");
        let (shutdown, daemon, listening) = launch(self.config.clone()).await;
        self.daemon = daemon;
        self.shutdown = shutdown;
        self.agi = listening.agi.expect("FastAGI is on");
        self.admin = listening.admin.expect("the admin listener is on");
        tokio::time::timeout(Duration::from_secs(10), self.ami.wait_logins(logins + 1))
            .await
            .expect("the new daemon logs in to AMI");
    }

    /// Waits until Zammad has answered `n` hangups; returns every request body per callId.
    pub async fn requests_after_hangups(&self, n: usize) -> BTreeMap<String, Vec<Value>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let requests = self.zammad.requests();
            let done = requests
                .iter()
                .filter(|r| r.event() == Some("hangup") && r.status.is_some())
                .count();
            if done >= n {
                let mut per_call: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                for r in requests {
                    per_call
                        .entry(r.call_id().expect("a callId"))
                        .or_default()
                        .push(r.params.clone());
                }
                return per_call;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {done} of {n} hangups arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        let dir = self.config.state.dir.clone();
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.daemon)
            .await
            .expect("the daemon stops in time")
            .expect("the daemon does not panic");
        result.expect("the daemon ends cleanly");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Starts `daemon::run` on `config`; returns once its listeners are bound.
pub async fn launch(
    config: Config,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>, Listening) {
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let no_reloads = tokio::sync::mpsc::unbounded_channel().1;
    let daemon = tokio::spawn(daemon::run(config, shutdown.clone(), ready_tx, no_reloads));
    let listening = tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("the daemon binds its listeners")
        .expect("the daemon starts");
    (shutdown, daemon, listening)
}
