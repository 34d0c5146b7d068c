//! The command line (docs/commands.md): every command, flag and help text, as clap
//! derives them. `main.rs` parses it and dispatches; the man pages and shell completions
//! in `packaging/` are generated from it (`tests/it/package.rs` keeps them current).

use crate::config::DEFAULT_PATH;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `--version`: the version, the commit and the build date (`build.rs`).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AZB_BUILD_COMMIT"),
    ", built ",
    env!("AZB_BUILD_DATE"),
    ")"
);

/// Reports every Asterisk call to Zammad's CTI API and acts on Zammad's answers.
#[derive(Debug, Parser)]
#[command(
    name = "asterisk-zammad-bridge",
    version,
    long_version = LONG_VERSION,
    args_conflicts_with_subcommands = true,
    after_help = "Config keys, exit codes and files: docs/ in the source, \
                  /usr/share/doc/asterisk-zammad-bridge/ where installed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Log in to AMI and write what Asterisk sends (banner and frames, never the login) to
    /// OUTPUT until stopped (Ctrl-C, SIGTERM) or for DURATION; `replay OUTPUT` reads it.
    /// The recording holds phone numbers: personal data.
    Record {
        #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Stop after this long ("30s", "10m", "1h").
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// The file to write (created with mode 0600; an existing file is refused);
        /// `-` for standard output.
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// A self-contained run against an in-process Asterisk and Zammad.
    Demo,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write it like \"30s\", \"10m\", \"1h\")")),
    }
}

impl Cli {
    /// The clap command, for the man pages and completions: with the plain version, so
    /// that they do not change with every commit.
    pub fn command_for_docs() -> clap::Command {
        <Cli as clap::CommandFactory>::command().long_version(env!("CARGO_PKG_VERSION"))
    }
}
