//! The binary: arguments → config → tracing → runtime → exit code (docs/commands.md).
//!
//! Owns the command line, the exit codes (0 fine, 1 failed, 78 invalid config) and the
//! signals that start a shutdown and a reload (SIGHUP), and starts the systemd notifier
//! (`systemd::report`) beside the daemon. Everything else is the library's:
//! `daemon::run`, `replay::replay_files`, `check::run`, `demo::run`, `Config::load`.

use anyhow::Context as _;
use asterisk_zammad_bridge::commands::{check, demo, replay};
use asterisk_zammad_bridge::config::{Config, ConfigError, DEFAULT_PATH};
use asterisk_zammad_bridge::service::{daemon, logging, systemd};
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Reports every Asterisk call to Zammad's CTI API and acts on Zammad's answers.
#[derive(Debug, Parser)]
#[command(
    name = "asterisk-zammad-bridge",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: `run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run(RunArgs),
    /// Validate the config; without --offline also probe AMI and Zammad.
    /// Exit 0 all good, 1 a probe failed, 78 the config is invalid.
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Only validate the config; connect to nothing.
        #[arg(long)]
        offline: bool,
    },
    /// Feed recorded AMI streams through the tracker and print each CTI request it would
    /// send, one JSON object per line; sends nothing.
    Replay {
        /// Default: the default file if it exists, else the built-in defaults.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(value_name = "TRANSCRIPT", required = true)]
        transcripts: Vec<PathBuf>,
    },
    /// A self-contained run against an in-process Asterisk and Zammad.
    Demo,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => run(&args.config),
        Command::Check { config, offline } => check(&config, offline),
        Command::Replay {
            config,
            transcripts,
        } => replay(config.as_deref(), &transcripts),
        Command::Demo => match demo::run(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: demo failed: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The config for `run` and `check`: valid, with both secrets.
fn load_for_connections(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    config.require_connections()?;
    Ok(config)
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
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
        let result = daemon::run(config, shutdown.clone(), ready, reloads).await;
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
