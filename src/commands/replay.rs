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
use std::io::{Read, Write};
use std::path::PathBuf;
use tokio_util::codec::Decoder;

/// How much of a transcript is read at a time: the memory `replay` needs does not depend
/// on the size of its input (the codec's frame limit bounds what one frame can hold).
const CHUNK: usize = 64 * 1024;

/// Replays each transcript in turn (`-` is standard input) and writes every CTI request
/// body it would send. Reads and writes as streams.
pub fn replay_files(config: &Config, paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut tracker = Tracker::new(TrackerSettings::from_config(config));
    let mut requests = Vec::new();
    for path in paths {
        let name = path.display();
        let mut emit = |msg: &AmiMessage, out: &mut dyn Write| -> std::io::Result<()> {
            tracker.handle(msg, &mut requests);
            for request in requests.drain(..) {
                writeln!(out, "{}", request.to_json())?;
            }
            Ok(())
        };
        let result = if path.as_os_str() == "-" {
            for_each_message_in(std::io::stdin().lock(), |msg| emit(msg, out))
        } else {
            let file = std::fs::File::open(path)
                .with_context(|| format!("failed to read transcript {name}"))?;
            for_each_message_in(file, |msg| emit(msg, out))
        };
        result.with_context(|| format!("failed to replay transcript {name}"))?;
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
    for_each_message_in(bytes, |msg| {
        f(msg);
        Ok(())
    })
}

/// Like [`for_each_message`], reading `input` in chunks of [`CHUNK`] bytes; stops at the
/// first error of `input` or of `f`.
pub fn for_each_message_in(
    mut input: impl Read,
    mut f: impl FnMut(&AmiMessage) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut eof = false;
    loop {
        let frame = if eof {
            codec.decode_eof(&mut buf)?
        } else {
            codec.decode(&mut buf)?
        };
        match frame {
            Some(AmiFrame::Message(msg)) => f(&msg)?,
            Some(AmiFrame::Banner(_)) => {}
            Some(AmiFrame::Skipped(error)) => {
                tracing::warn!(%error, "skipped an AMI frame in the transcript");
            }
            None if eof => return Ok(()),
            None => {
                buf.reserve(CHUNK);
                let start = buf.len();
                buf.resize(start + CHUNK, 0);
                let n = loop {
                    match input.read(&mut buf[start..]) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => break other?,
                    }
                };
                buf.truncate(start + n);
                eof = n == 0;
            }
        }
    }
}
