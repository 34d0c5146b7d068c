//! `replay`: recorded AMI byte streams through the codec and the tracker, printed as one
//! JSON CTI request body per line, exactly as the daemon would post them. Sends nothing.
//!
//! All files go through one tracker in the order given, as if they were one connection.

use crate::ami::AmiMessage;
use crate::ami::codec::{AmiCodec, AmiFrame};
use crate::calls::{Tracker, TrackerSettings};
use crate::config::Config;
use crate::zammad::cti::CtiRequest;
use anyhow::Context;
use bytes::BytesMut;
use std::io::Write;
use std::path::PathBuf;
use tokio_util::codec::Decoder;

/// Replays each transcript in turn and writes every CTI request body it would send.
pub fn replay_files(config: &Config, paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut tracker = Tracker::new(TrackerSettings::from_config(config));
    let mut requests = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path)
            .with_context(|| format!("failed to read transcript {}", path.display()))?;
        for_each_message(&bytes, |msg| tracker.handle(msg, &mut requests))
            .with_context(|| format!("failed to decode transcript {}", path.display()))?;
        for request in requests.drain(..) {
            writeln!(out, "{}", request.to_json())?;
        }
    }
    Ok(())
}

/// Runs a whole byte stream through a fresh tracker; the requests in order.
pub fn replay_bytes(settings: TrackerSettings, bytes: &[u8]) -> std::io::Result<Vec<CtiRequest>> {
    let mut tracker = Tracker::new(settings);
    let mut requests = Vec::new();
    for_each_message(bytes, |msg| tracker.handle(msg, &mut requests))?;
    Ok(requests)
}

/// Decodes `bytes` as an AMI stream and calls `f` for every message. Frames the codec
/// skips (oversized, malformed) are logged and passed over, as on a live connection.
pub fn for_each_message(bytes: &[u8], mut f: impl FnMut(&AmiMessage)) -> std::io::Result<()> {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode_eof(&mut buf)? {
            Some(AmiFrame::Message(msg)) => f(&msg),
            Some(AmiFrame::Banner(_)) => {}
            Some(AmiFrame::Skipped(error)) => {
                tracing::warn!(%error, "skipped an AMI frame in the transcript");
            }
            None => return Ok(()),
        }
    }
}
