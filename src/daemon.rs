//! `run`: wires the parts together. The AMI connection task feeds events into one tracker
//! task, which turns them into CTI requests for the outbox; the outbox talks to Zammad.
//!
//! The tracker runs here, not in the socket reader: the reader only decodes and forwards,
//! so Asterisk never waits on us.

use crate::ami::client::{self, AmiInput, AmiSettings};
use crate::config::Config;
use crate::delivery::Outbox;
use crate::tracker::{Tracker, TrackerSettings};
use crate::zammad::ZammadClient;
use anyhow::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long shutdown waits for requests still in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.ami.tls,
        "ami.tls = true: AMI over TLS is not supported yet; use loopback or an stunnel"
    );
    let settings = TrackerSettings::from_config(&config).context("invalid [calls] patterns")?;
    let url = config.zammad.url.clone().context("zammad.url is not set")?;
    let zammad = ZammadClient::new(url, config.zammad.timeout)
        .context("failed to set up the zammad client")?;
    info!(zammad = %zammad.redacted_url(), ami = %config.ami.address, "starting");
    let secret = config.ami.secret.clone().context("ami.secret is not set")?;
    let ami_settings = AmiSettings::from_config(&config.ami, secret);
    let (_ami, mut inputs, _status, ami_task) = client::spawn(ami_settings, shutdown.clone());
    let outbox = Outbox::new(zammad, shutdown.clone());
    let mut tracker = Tracker::new(settings);
    let mut requests = Vec::new();

    loop {
        let input = tokio::select! {
            input = inputs.recv() => input,
            _ = shutdown.cancelled() => None,
        };
        match input {
            Some(AmiInput::Event(msg)) => {
                tracker.handle(&msg, &mut requests);
                for request in requests.drain(..) {
                    outbox.push(request);
                }
            }
            Some(AmiInput::LoggedIn) => info!("ami logged in; following calls"),
            Some(AmiInput::Disconnected) => warn!("ami connection lost; reconnecting"),
            None => break,
        }
    }
    info!(open_calls = outbox.open_calls(), "shutting down");
    if !outbox.close(SHUTDOWN_GRACE).await {
        warn!(
            open_calls = outbox.open_calls(),
            "shutdown grace period over with requests undelivered"
        );
    }
    let _ = ami_task.await;
    Ok(())
}
