//! `run`: wires the AMI connection, the tracker, the outbox and the Zammad client together.

use crate::config::Config;
use tokio_util::sync::CancellationToken;

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("the daemon is not wired up yet")
}
