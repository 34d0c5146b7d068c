//! The binary: arguments → config → tracing → runtime → exit code (docs/commands.md).
//!
//! Owns the command line, the exit codes (0 fine, 1 failed, 78 invalid config) and the
//! signals that start a shutdown and a reload (SIGHUP), and starts the systemd notifier
//! (`systemd::report`) beside the daemon. Everything else is the library's:
//! `daemon::run`, `replay::replay_files`, `check::run`, `record::run`, `demo::run`,
//! `Config::load`; the command line itself is `cli.rs`.

use anyhow::Context as _;
use asterisk_zammad_bridge::ami::tls;
use asterisk_zammad_bridge::cli::{Cli, Command};
use asterisk_zammad_bridge::commands::{check, demo, record, replay};
use asterisk_zammad_bridge::config::{self, Config, ConfigError, DEFAULT_PATH};
use asterisk_zammad_bridge::service::{daemon, logging, systemd};
use clap::Parser;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc: under load the daemon allocates a few small
/// blocks per AMI event and frees them on the same thread, which jemalloc's thread caches
/// serve for about a tenth less of the daemon's CPU (CONTRIBUTING.md, "Benchmarks"); an
/// open call costs as many bytes, and what ended calls held goes back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run(&args.config),
        Command::Check { config, offline } => check(&config, offline),
        Command::Replay {
            config,
            transcripts,
        } => replay(config.as_deref(), &transcripts),
        Command::Record {
            config,
            duration,
            output,
        } => record(&config, duration, &output),
        Command::Demo => match demo::run(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: demo failed: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The config for `run` and `check`: valid, with both secrets (found as credentials if
/// nothing else gives them), and nothing the daemon could not run with (exit 78 then,
/// which the unit does not restart).
fn load_for_connections(path: &Path) -> Result<Config, ConfigError> {
    let mut config = Config::load(path)?;
    config.find_credentials(&config::credential_dirs())?;
    config.require_connections()?;
    require_usable_tls(&config)?;
    Ok(config)
}

/// With `ami.tls = true`: something to trust, and a name to check.
fn require_usable_tls(config: &Config) -> Result<(), ConfigError> {
    if config.ami.tls {
        let invalid = |e: tls::TlsConfigError| ConfigError::Invalid {
            key: e.key.to_string(),
            message: e.message,
        };
        tls::client_config(&config.ami).map_err(invalid)?;
        tls::server_name(&config.ami).map_err(invalid)?;
    }
    Ok(())
}

/// Prints the error and its causes on stderr; exit code 78.
fn config_failure(error: &ConfigError) -> ExitCode {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("error: {message}");
    ExitCode::from(error.exit_code())
}

fn run(path: &Path) -> ExitCode {
    let config = match load_for_connections(path) {
        Ok(config) => config,
        Err(error) => return config_failure(&error),
    };
    if let Err(error) = logging::init_tracing(&config.log) {
        eprintln!("error: failed to start logging: {error}");
        return ExitCode::FAILURE;
    }
    for warning in config.check() {
        tracing::warn!("{warning}");
    }
    match run_daemon(config, path) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(error = %format_args!("{error:#}"), "daemon failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(config: Config, path: &Path) -> anyhow::Result<()> {
    let runtime = daemon::runtime().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
        let mut hup = signal(SignalKind::hangup()).context("failed to listen for SIGHUP")?;
        let (reload_tx, reloads) = tokio::sync::mpsc::unbounded_channel();
        let reload_path = path.to_owned();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match load_for_connections(&reload_path) {
                    Ok(config) => {
                        tracing::info!(config = %reload_path.display(), "SIGHUP: reloading");
                        if reload_tx.send(config).is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::error!(
                        config = %reload_path.display(),
                        error = %format_args!("{error:#}"),
                        "SIGHUP: the config is invalid; keeping the running one"
                    ),
                }
            }
        });
        let token = shutdown.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = token.cancelled() => return,
            };
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        });
        // Under systemd (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
        let notifier = systemd::Notifier::from_env().unwrap_or_else(|error| {
            tracing::warn!(%error, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
            None
        });
        let (ready, listening) = tokio::sync::oneshot::channel();
        let reporter = notifier.map(|notifier| {
            let watchdog = systemd::watchdog_interval();
            tokio::spawn(systemd::report(
                notifier,
                watchdog,
                listening,
                shutdown.clone(),
            ))
        });
        // A task of its own, not the future `block_on` drives on this thread: woken by the
        // AMI reader and the outbox, it then runs on their worker thread instead of
        // waiting for this one to be unparked (a thread hand-off per wake).
        let result = tokio::spawn(daemon::run(config, shutdown.clone(), ready, reloads))
            .await
            .unwrap_or_else(|panic| Err(anyhow::anyhow!("the daemon task panicked: {panic}")));
        if let Some(reporter) = reporter {
            // It ends with the daemon loop (STOPPING=1) or with the ready channel dropped.
            shutdown.cancel();
            let _ = reporter.await;
        }
        result
    })
}

fn check(path: &Path, offline: bool) -> ExitCode {
    let config = match load_for_connections(path) {
        Ok(config) => config,
        Err(error) => return config_failure(&error),
    };
    for warning in config.check() {
        eprintln!("warning: {warning}");
    }
    println!("config OK");
    if offline {
        return ExitCode::SUCCESS;
    }
    match check::run(&config, &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn replay(path: Option<&Path>, transcripts: &[PathBuf]) -> ExitCode {
    // Replay needs no secrets: without -c and without the default file, the defaults do.
    let loaded = match path {
        Some(path) => Config::load(path),
        None if Path::new(DEFAULT_PATH).exists() => Config::load(Path::new(DEFAULT_PATH)),
        None => Config::from_env(),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => return config_failure(&error),
    };
    // Stdout is the output: logs go to stderr.
    if let Err(error) = logging::init_tracing_stderr(&config.log) {
        eprintln!("error: failed to start logging: {error}");
        return ExitCode::FAILURE;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = replay::replay_files(&config, transcripts, &mut out)
        .and_then(|()| out.flush().context("failed to write to stdout"));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn record(path: &Path, duration: Option<Duration>, output: &Path) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return config_failure(&error),
    };
    let checked = config
        .find_credentials(&config::credential_dirs())
        .and_then(|()| config.require_ami())
        .and_then(|()| require_usable_tls(&config));
    if let Err(error) = checked {
        return config_failure(&error);
    }
    // The recording may go to stdout: logs go to stderr.
    if let Err(error) = logging::init_tracing_stderr(&config.log) {
        eprintln!("error: failed to start logging: {error}");
        return ExitCode::FAILURE;
    }
    match record::run(&config, duration, output) {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
