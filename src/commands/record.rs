//! `record`: log in to AMI once (the daemon's own client, TLS and all) and write what
//! Asterisk sends, byte for byte (banner, login responses, events), to a file until
//! stopped, for `replay` and bug reports (docs/commands.md).
//!
//! Only what is read from Asterisk is written: the connection's tap ([`crate::ami::stream`])
//! sees reads, never writes, so neither the login nor the secret can reach the file (nor
//! anything else this side sends). The file holds phone numbers and names: it is created
//! with mode 0600, and an existing file is never overwritten.

use crate::ami::AmiSettings;
use crate::ami::client;
use crate::config::Config;
use anyhow::Context as _;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a finished recording wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub bytes: u64,
    pub took: Duration,
    pub output: String,
    /// Why it stopped: "stopped by SIGINT", "after 30s", "Asterisk closed the connection".
    pub ended: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recorded {} bytes in {:.1} s to {} ({}); it holds phone numbers: keep it private. \
             Replay it with: asterisk-zammad-bridge replay {}",
            self.bytes,
            self.took.as_secs_f64(),
            self.output,
            self.ended,
            self.output
        )
    }
}

/// Records until SIGINT or SIGTERM, `duration`, or the end of the connection, on a
/// runtime of its own. `output` `-` is standard output.
pub fn run(config: &Config, duration: Option<Duration>, output: &Path) -> anyhow::Result<Summary> {
    let mut sink: Box<dyn Write + Send> = if output == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(output)
            .with_context(|| format!("failed to create {}", output.display()))?;
        Box::new(file)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let stop = CancellationToken::new();
    let shown = if output == Path::new("-") {
        "standard output".to_string()
    } else {
        output.display().to_string()
    };
    let (bytes, took, ended) =
        runtime.block_on(record(config, duration, &mut *sink, stop.clone()))?;
    Ok(Summary {
        bytes,
        took,
        output: shown,
        ended,
    })
}

/// The recording itself: connect, then copy the tap to `sink` until `stop` fires (or a
/// signal, the duration, the end of the connection). Returns bytes written, time taken
/// and why it ended.
pub async fn record(
    config: &Config,
    duration: Option<Duration>,
    sink: &mut (dyn Write + Send),
    stop: CancellationToken,
) -> anyhow::Result<(u64, Duration, String)> {
    let secret = config.ami.secret.clone().context("ami.secret is not set")?;
    let mut settings = AmiSettings::from_config(&config.ami, secret);
    let (tap, mut read) = mpsc::unbounded_channel();
    settings.tap = Some(tap);
    let cancel = CancellationToken::new();
    let (_handle, task) = client::connect_once(settings, cancel.clone())
        .await
        .with_context(|| format!("failed to log in to AMI at {}", config.ami.address))?;
    tracing::info!(address = %config.ami.address, "recording what Asterisk sends");
    let started = Instant::now();
    let mut term = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut bytes = 0u64;
    let ended = loop {
        let chunk = tokio::select! {
            chunk = read.recv() => chunk,
            _ = term.recv() => break "stopped by SIGTERM".to_string(),
            _ = int.recv() => break "stopped by SIGINT".to_string(),
            () = &mut deadline => break format!(
                "after {}",
                humantime::format_duration(duration.unwrap_or_default())
            ),
            () = stop.cancelled() => break "stopped".to_string(),
        };
        let Some(chunk) = chunk else {
            break "Asterisk closed the connection".to_string();
        };
        sink.write_all(&chunk)
            .context("failed to write the recording")?;
        sink.flush().context("failed to write the recording")?;
        bytes += chunk.len() as u64;
    };
    // Log off; what came before the Logoff's answer is written too.
    cancel.cancel();
    let _ = task.await;
    while let Ok(chunk) = read.try_recv() {
        sink.write_all(&chunk)
            .context("failed to write the recording")?;
        bytes += chunk.len() as u64;
    }
    sink.flush().context("failed to write the recording")?;
    Ok((bytes, started.elapsed(), ended))
}
