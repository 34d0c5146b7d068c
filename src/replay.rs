//! `replay`: recorded AMI byte streams through the tracker, printed as one JSON CTI request
//! per line.

use crate::config::Config;
use std::io::Write;
use std::path::PathBuf;

/// Replays each transcript in turn and writes every CTI request body it would send.
pub fn replay_files(config: &Config, paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    let _ = (config, paths, out);
    anyhow::bail!("replay is not implemented yet")
}
