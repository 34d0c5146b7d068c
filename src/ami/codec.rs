//! AMI framing: bytes ⇄ [`AmiMessage`]. No I/O.
//!
//! Owns the wire format of AMI (docs/asterisk.md, "AMI framing and escaping"): the one
//! banner line, `Key: Value` lines ended by CRLF (bare LF accepted), a blank line after
//! each frame, lossy UTF-8, the C-escapes Asterisk (since 13.5) puts into caller names and
//! channel variables, a per-frame size limit, and the CR/LF guard on everything we write.
//! The socket and what frames mean belong to `client`.
//!
//! The banner is recognised wherever a frame could start (a line beginning with
//! `Asterisk Call Manager`), so the decoder needs no state for it and a recording made of
//! several connections decodes too. The frame limit holds for it as well: a longer such
//! line is the start of an oversized frame, whatever reads it arrives in.
//!
//! Bad input never ends the stream (a `Decoder` error would): it comes out as
//! [`AmiFrame::Skipped`] and decoding goes on.
//!
//! - A frame longer than the limit is dropped whole: the decoder yields
//!   `Skipped(FrameError::TooLarge)` once and discards bytes up to the next blank line.
//! - A line without a colon inside a frame is dropped, the rest of the frame is kept and
//!   delivered first, then one `Skipped(FrameError::MalformedLines)` says how many lines
//!   were dropped. A frame made only of such lines yields only the `Skipped`.
//! - At end of stream, an unfinished frame yields `Skipped(FrameError::Truncated)`.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::message::AmiMessage;

/// The default limit on one frame's header lines, in bytes (line ends included).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager";

/// One thing the decoder read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiFrame {
    /// The greeting line, e.g. `Asterisk Call Manager/11.0.0` (no line end).
    Banner(String),
    Message(AmiMessage),
    /// Input that was dropped; the stream goes on.
    Skipped(FrameError),
}

/// Why input was dropped. Never ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `at_least` is the frame's size as far as it was read, always above `limit`.
    #[error("skipped an AMI frame of at least {at_least} bytes, over the limit of {limit}")]
    TooLarge { limit: usize, at_least: usize },
    #[error("skipped {count} AMI header line(s) without a colon")]
    MalformedLines { count: usize },
    #[error("AMI stream ended inside a frame ({bytes} bytes dropped)")]
    Truncated { bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading `Key: Value` lines.
    Frame,
    /// Dropping an oversized frame up to the next blank line. `mid_line` is true when the
    /// bytes dropped so far end inside a line, so the next line end closes that line
    /// rather than being a blank line.
    Discard { mid_line: bool },
}

/// The AMI `Decoder` and `Encoder`.
#[derive(Debug)]
pub struct AmiCodec {
    max_frame: usize,
    state: State,
    /// Offset in the buffer of the first line not yet scanned. The current frame always
    /// starts at offset 0, so the scan resumes here when more bytes arrive.
    scan: usize,
    /// Offsets of the `\n` ending each line of the current frame, reused across frames.
    line_ends: Vec<usize>,
    /// Reported after the frame it belongs to.
    pending: Option<FrameError>,
}

impl Default for AmiCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl AmiCodec {
    /// A codec with the default frame limit of 64 KiB.
    pub fn new() -> Self {
        Self::with_max_frame(DEFAULT_MAX_FRAME)
    }

    /// A codec that skips frames whose header lines exceed `max_frame` bytes.
    pub fn with_max_frame(max_frame: usize) -> Self {
        Self {
            max_frame,
            state: State::Frame,
            scan: 0,
            line_ends: Vec::with_capacity(32),
            pending: None,
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Checks that `message` can be written without smuggling in lines of its own: no key
    /// or value may contain CR or LF, and no key a colon. The error names the key.
    pub fn check(message: &AmiMessage) -> io::Result<()> {
        for (key, value) in message.iter() {
            let bad_key = memchr::memchr3(b'\r', b'\n', b':', key.as_bytes()).is_some();
            let bad_value = memchr::memchr2(b'\r', b'\n', value.as_bytes()).is_some();
            if bad_key || bad_value {
                let what = if bad_key {
                    "key contains CR, LF or a colon"
                } else {
                    "value contains CR or LF"
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("refusing to write AMI header {key:?}: its {what}"),
                ));
            }
        }
        Ok(())
    }

    /// Drops bytes up to and including the next blank line. True once resynchronised.
    fn discard(&mut self, buf: &mut BytesMut, mut mid_line: bool) -> bool {
        while let Some(nl) = memchr::memchr(b'\n', buf) {
            let blank = !mid_line && strip_cr(&buf[..nl]).is_empty();
            buf.advance(nl + 1);
            mid_line = false;
            if blank {
                self.state = State::Frame;
                return true;
            }
        }
        // No line end in sight: drop what we have, but keep a trailing CR, which may be the
        // first half of the blank line we look for.
        let keep = usize::from(buf.last() == Some(&b'\r'));
        let drop = buf.len() - keep;
        if drop > 0 {
            buf.advance(drop);
            mid_line = true;
        }
        self.state = State::Discard { mid_line };
        false
    }

    fn decode_frame(&mut self, buf: &mut BytesMut) -> Option<AmiFrame> {
        let mut start = self.scan;
        while let Some(offset) = memchr::memchr(b'\n', &buf[start..]) {
            let nl = start + offset;
            let line = strip_cr(&buf[start..nl]);
            if self.line_ends.is_empty() && line.starts_with(BANNER_PREFIX) && nl < self.max_frame {
                // The greeting: a line of its own, without a blank line after it. Looked
                // for at every frame start, so concatenated recordings decode too. One
                // over the limit is left to the size check below, as it would be had it
                // arrived in pieces.
                let banner = String::from_utf8_lossy(line).into_owned();
                buf.advance(nl + 1);
                self.scan = 0;
                return Some(AmiFrame::Banner(banner));
            }
            if !line.is_empty() {
                self.line_ends.push(nl);
                start = nl + 1;
                continue;
            }
            if self.line_ends.is_empty() {
                // A stray blank line between frames.
                buf.advance(nl + 1);
                start = 0;
                continue;
            }
            let frame = if start > self.max_frame {
                AmiFrame::Skipped(FrameError::TooLarge {
                    limit: self.max_frame,
                    at_least: start,
                })
            } else {
                let (message, malformed) = parse(&buf[..start], &self.line_ends);
                let error = FrameError::MalformedLines { count: malformed };
                match (message.is_empty(), malformed) {
                    (true, _) => AmiFrame::Skipped(error),
                    (false, 0) => AmiFrame::Message(message),
                    (false, _) => {
                        self.pending = Some(error);
                        AmiFrame::Message(message)
                    }
                }
            };
            buf.advance(nl + 1);
            self.scan = 0;
            self.line_ends.clear();
            return Some(frame);
        }
        // The frame is at least this long; an unfinished `\r` may open the blank line.
        let partial = &buf[start..];
        let known = match partial {
            [] | [b'\r'] => start,
            _ => buf.len() + 1,
        };
        if known <= self.max_frame {
            self.scan = start;
            return None;
        }
        // Too large and still not ended: drop the complete lines now, the rest in Discard.
        buf.advance(start);
        self.scan = 0;
        self.line_ends.clear();
        self.state = State::Discard { mid_line: false };
        Some(AmiFrame::Skipped(FrameError::TooLarge {
            limit: self.max_frame,
            at_least: known,
        }))
    }
}

impl Decoder for AmiCodec {
    type Item = AmiFrame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<AmiFrame>> {
        if let Some(error) = self.pending.take() {
            return Ok(Some(AmiFrame::Skipped(error)));
        }
        loop {
            match self.state {
                State::Discard { mid_line } => {
                    if !self.discard(buf, mid_line) {
                        return Ok(None);
                    }
                }
                State::Frame => return Ok(self.decode_frame(buf)),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<AmiFrame>> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let rest = buf.len();
        // Nothing but (the start of) blank lines: no frame was begun. A line of CRs alone
        // is not blank (one CR is its line end), so it begins a frame.
        let only_blanks = self.line_ends.is_empty() && buf.iter().all(|b| *b == b'\r');
        let discarding = matches!(self.state, State::Discard { .. });
        buf.clear();
        self.scan = 0;
        self.line_ends.clear();
        if rest == 0 || only_blanks || discarding {
            return Ok(None);
        }
        Ok(Some(AmiFrame::Skipped(FrameError::Truncated {
            bytes: rest,
        })))
    }
}

impl Encoder<&AmiMessage> for AmiCodec {
    type Error = io::Error;

    /// Writes `Key: Value\r\n` per header and a final `\r\n`. Refuses (`InvalidInput`,
    /// nothing written) a message that [`AmiCodec::check`] rejects.
    fn encode(&mut self, message: &AmiMessage, dst: &mut BytesMut) -> io::Result<()> {
        Self::check(message)?;
        let size: usize = message.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        dst.reserve(size + 2);
        for (key, value) in message.iter() {
            dst.put_slice(key.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(value.as_bytes());
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"\r\n");
        Ok(())
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// Builds the message from `frame` (its header lines; `line_ends` holds the offset of
/// each line's `\n`). Returns it with the number of lines dropped for want of a colon.
/// The frame is copied once, whole, and its headers are ranges of the copy.
fn parse(frame: &[u8], line_ends: &[usize]) -> (AmiMessage, usize) {
    let text = match String::from_utf8(frame.to_vec()) {
        Ok(text) => text,
        Err(not_utf8) => {
            // Rare (Latin-1 caller names): decode the frame lossily, then find its lines
            // again, since replacement characters change the offsets.
            let text = String::from_utf8_lossy(not_utf8.as_bytes()).into_owned();
            let line_ends: Vec<usize> = memchr::memchr_iter(b'\n', text.as_bytes()).collect();
            return parse_text(text, &line_ends);
        }
    };
    parse_text(text, line_ends)
}

fn parse_text(text: String, line_ends: &[usize]) -> (AmiMessage, usize) {
    // Most frames hold no backslash at all: one look at the whole frame spares a look
    // at each value.
    let escapes = memchr::memchr(b'\\', text.as_bytes()).is_some();
    let mut message = AmiMessage::over(text, line_ends.len());
    let mut start = 0;
    let mut malformed = 0;
    for &nl in line_ends {
        malformed += usize::from(!push_line(&mut message, start..nl, escapes));
        start = nl + 1;
    }
    (message, malformed)
}

/// Adds the `Key: Value` line at `line` of the message's text (its `\n` excluded); the
/// text holds a backslash somewhere if `escapes`. False if the line has no colon. The
/// line is read as bytes: every place cut at is an ASCII byte (`:`, space, CR), so the
/// ranges fall on character boundaries.
fn push_line(message: &mut AmiMessage, line: std::ops::Range<usize>, escapes: bool) -> bool {
    let bytes = &message.text().as_bytes()[line.clone()];
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let Some(colon) = memchr::memchr(b':', bytes) else {
        return false;
    };
    let end = line.start + bytes.len();
    let key = line.start..line.start + colon;
    let space = usize::from(bytes.get(colon + 1) == Some(&b' '));
    let value = key.end + 1 + space..end;
    let text = message.text();
    if escapes
        && memchr::memchr(b'\\', &text.as_bytes()[value.clone()]).is_some()
        && is_escaped(&text[key.clone()])
    {
        let escaped = text[value].to_owned();
        message.push_range_with(key, |out| unescape_into(&escaped, out));
    } else {
        message.push_range(key, value);
    }
    true
}

/// Keys whose values Asterisk C-escapes (`ast_escape_c_alloc`): caller and connected-line
/// names under any prefix (`DestCallerIDName`, `TransfererConnectedLineName`, ...),
/// channel variables, and `CID-CallingPres`.
fn is_escaped(key: &str) -> bool {
    ends_with_ignore_case(key, "CallerIDName")
        || ends_with_ignore_case(key, "ConnectedLineName")
        || key.len() >= 12 && key.as_bytes()[..12].eq_ignore_ascii_case(b"ChanVariable")
        || key.eq_ignore_ascii_case("CID-CallingPres")
}

fn ends_with_ignore_case(key: &str, suffix: &str) -> bool {
    key.len() >= suffix.len()
        && key.as_bytes()[key.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Undoes `\a \b \f \n \r \t \v \\ \' \" \?`; any other backslash is kept as it is.
fn unescape_into(value: &str, out: &mut String) {
    let mut rest = value;
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let decoded = match rest.as_bytes().get(at + 1) {
            Some(b'a') => Some('\x07'),
            Some(b'b') => Some('\x08'),
            Some(b'f') => Some('\x0c'),
            Some(b'n') => Some('\n'),
            Some(b'r') => Some('\r'),
            Some(b't') => Some('\t'),
            Some(b'v') => Some('\x0b'),
            Some(b'\\') => Some('\\'),
            Some(b'\'') => Some('\''),
            Some(b'"') => Some('"'),
            Some(b'?') => Some('?'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 2..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::AmiKind;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Decodes `chunks` fed one after the other, then the end of stream.
    fn decode_chunks<'a>(
        codec: &mut AmiCodec,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<AmiFrame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            out.push(frame);
        }
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<AmiFrame> {
        decode_chunks(&mut AmiCodec::new(), [bytes])
    }

    fn decode_bytewise(codec: &mut AmiCodec, bytes: &[u8]) -> Vec<AmiFrame> {
        decode_chunks(codec, bytes.chunks(1))
    }

    fn msg(pairs: &[(&str, &str)]) -> AmiFrame {
        AmiFrame::Message(AmiMessage::from_pairs(pairs.iter().copied()))
    }

    fn fixtures() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut files = Vec::new();
        for (dir, ext) in [("ami-transcripts", "txt"), ("cacofonisk", "ami")] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                // `agi-agi-*` hold the FastAGI side of a scenario, not AMI.
                if path.extension().is_some_and(|e| e == ext) && !name.starts_with("agi-agi-") {
                    files.push(path);
                }
            }
        }
        files.sort();
        assert!(files.len() > 40, "fixtures not found: {files:?}");
        files
    }

    const TWO_EVENTS: &[u8] =
        b"Event: Newstate\r\nPrivilege: call,all\r\nChannel: PJSIP/201-0001\r\n\r\n\
Event: Hangup\r\nPrivilege: call,all\r\nCause: 16\r\n\r\n";

    fn two_events() -> Vec<AmiFrame> {
        vec![
            msg(&[
                ("Event", "Newstate"),
                ("Privilege", "call,all"),
                ("Channel", "PJSIP/201-0001"),
            ]),
            msg(&[
                ("Event", "Hangup"),
                ("Privilege", "call,all"),
                ("Cause", "16"),
            ]),
        ]
    }

    #[test]
    fn banner_then_frames() {
        let bytes = b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n";
        assert_eq!(
            decode_all(bytes),
            [
                AmiFrame::Banner("Asterisk Call Manager/11.0.0".into()),
                msg(&[
                    ("Response", "Success"),
                    ("ActionID", "1"),
                    ("Message", "Authentication accepted")
                ]),
            ]
        );
    }

    #[test]
    fn a_banner_at_any_frame_start_is_a_banner_but_not_inside_a_frame() {
        let bytes = b"Asterisk Call Manager/2.10.4\r\nEvent: A\r\n\r\nAsterisk Call Manager/11.0.0\r\nEvent: B\r\nAsterisk Call Manager: x\r\n\r\n";
        let expected = [
            AmiFrame::Banner("Asterisk Call Manager/2.10.4".into()),
            msg(&[("Event", "A")]),
            AmiFrame::Banner("Asterisk Call Manager/11.0.0".into()),
            msg(&[("Event", "B"), ("Asterisk Call Manager", "x")]),
        ];
        assert_eq!(decode_all(bytes), expected);
        assert_eq!(decode_bytewise(&mut AmiCodec::new(), bytes), expected);
    }

    /// Found by fuzzing: a greeting line longer than the limit came out whole as a
    /// `Banner` when it arrived in one read, but as `TooLarge` (dropping the frame after
    /// it) when it arrived in pieces.
    #[test]
    fn a_banner_over_the_limit_is_an_oversized_frame_in_any_reads() {
        let mut bytes = format!("Asterisk Call Manager/{}\r\n", "9".repeat(100)).into_bytes();
        bytes.extend_from_slice(b"Response: Success\r\n\r\n");
        bytes.extend_from_slice(TWO_EVENTS);
        for frames in [
            decode_chunks(&mut AmiCodec::with_max_frame(100), [&bytes[..]]),
            decode_bytewise(&mut AmiCodec::with_max_frame(100), &bytes),
        ] {
            assert!(
                matches!(
                    frames[0],
                    AmiFrame::Skipped(FrameError::TooLarge { limit: 100, .. })
                ),
                "{frames:?}"
            );
            assert_eq!(frames[1..], two_events());
        }
        // One that fits, line end included, is a banner.
        let banner = format!("Asterisk Call Manager/{}", "9".repeat(76));
        let bytes = format!("{banner}\r\n");
        assert_eq!(bytes.len(), 100);
        for frames in [
            decode_chunks(&mut AmiCodec::with_max_frame(100), [bytes.as_bytes()]),
            decode_bytewise(&mut AmiCodec::with_max_frame(100), bytes.as_bytes()),
        ] {
            assert_eq!(frames, [AmiFrame::Banner(banner.clone())]);
        }
    }

    #[test]
    fn no_banner_when_the_first_line_is_a_header() {
        assert_eq!(decode_all(TWO_EVENTS), two_events());
    }

    #[test]
    fn two_frames_in_one_read() {
        let mut codec = AmiCodec::new();
        let mut buf = BytesMut::from(TWO_EVENTS);
        let first = codec.decode(&mut buf).unwrap();
        let second = codec.decode(&mut buf).unwrap();
        assert_eq!(vec![first.unwrap(), second.unwrap()], two_events());
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn bytes_arriving_one_at_a_time() {
        let mut bytes = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
        bytes.extend_from_slice(TWO_EVENTS);
        let mut expected = vec![AmiFrame::Banner("Asterisk Call Manager/11.0.0".into())];
        expected.extend(two_events());
        assert_eq!(decode_bytewise(&mut AmiCodec::new(), &bytes), expected);
    }

    #[test]
    fn bare_lf_mixed_line_ends_and_stray_blank_lines() {
        let bytes = b"\r\n\nEvent: A\nX: 1\r\n\n\r\n\r\nEvent: B\r\nY: 2\n\r\n";
        let expected = [
            msg(&[("Event", "A"), ("X", "1")]),
            msg(&[("Event", "B"), ("Y", "2")]),
        ];
        assert_eq!(decode_all(bytes), expected);
        assert_eq!(decode_bytewise(&mut AmiCodec::new(), bytes), expected);
    }

    #[test]
    fn values_split_at_the_first_colon_lose_one_space_and_may_be_empty() {
        let bytes =
            b"Event: X\r\nTime: 12:30:00\r\nEmpty:\r\nSpace: \r\nTwo:  two\r\nTight:x\r\n\r\n";
        assert_eq!(
            decode_all(bytes),
            [msg(&[
                ("Event", "X"),
                ("Time", "12:30:00"),
                ("Empty", ""),
                ("Space", ""),
                ("Two", " two"),
                ("Tight", "x")
            ])]
        );
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_decodes() {
        let big = format!("Event: Big\r\nData: {}\r\n\r\n", "x".repeat(200));
        let mut bytes = big.into_bytes();
        bytes.extend_from_slice(TWO_EVENTS);
        for (how, frames) in [
            (
                "whole",
                decode_chunks(&mut AmiCodec::with_max_frame(100), [&bytes[..]]),
            ),
            (
                "bytewise",
                decode_bytewise(&mut AmiCodec::with_max_frame(100), &bytes),
            ),
        ] {
            assert_eq!(frames.len(), 3, "{how}: {frames:?}");
            assert!(
                matches!(frames[0], AmiFrame::Skipped(FrameError::TooLarge { limit: 100, at_least }) if at_least > 100),
                "{how}: {frames:?}"
            );
            assert_eq!(frames[1..], two_events(), "{how}");
        }
    }

    #[test]
    fn oversized_frame_with_an_endless_line_resynchronises_at_the_blank_line() {
        let mut codec = AmiCodec::with_max_frame(64);
        let mut chunks: Vec<Vec<u8>> = vec![b"Event: Big\r\nData: ".to_vec()];
        // The CR of the blank line arrives alone, at the end of a chunk.
        chunks.extend((0..10).map(|_| vec![b'y'; 50]));
        chunks.push(b"\r\n\r".to_vec());
        chunks.push(b"\n".to_vec());
        chunks.push(TWO_EVENTS.to_vec());
        let frames = decode_chunks(&mut codec, chunks.iter().map(Vec::as_slice));
        assert!(
            matches!(
                frames[0],
                AmiFrame::Skipped(FrameError::TooLarge { limit: 64, .. })
            ),
            "{frames:?}"
        );
        assert_eq!(frames[1..], two_events());
    }

    #[test]
    fn frame_limit_counts_header_lines_with_their_line_ends() {
        // "Event: X\r\n" is 10 bytes, "Data: 0123\r\n" is 12: 22 in all.
        let bytes = b"Event: X\r\nData: 0123\r\n\r\n";
        for limit in [22, 21] {
            for frames in [
                decode_chunks(&mut AmiCodec::with_max_frame(limit), [&bytes[..]]),
                decode_bytewise(&mut AmiCodec::with_max_frame(limit), bytes),
            ] {
                if limit == 22 {
                    assert_eq!(frames, [msg(&[("Event", "X"), ("Data", "0123")])]);
                } else {
                    assert_eq!(frames.len(), 1, "{frames:?}");
                    assert!(matches!(
                        frames[0],
                        AmiFrame::Skipped(FrameError::TooLarge { limit: 21, .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn lines_without_a_colon_are_dropped_and_reported_after_the_frame() {
        let bytes =
            b"Event: A\r\nno colon here\r\nX: 1\r\nnor here\r\n\r\njunk\r\n\r\nEvent: B\r\n\r\n";
        assert_eq!(
            decode_all(bytes),
            [
                msg(&[("Event", "A"), ("X", "1")]),
                AmiFrame::Skipped(FrameError::MalformedLines { count: 2 }),
                AmiFrame::Skipped(FrameError::MalformedLines { count: 1 }),
                msg(&[("Event", "B")]),
            ]
        );
    }

    #[test]
    fn unfinished_frame_at_end_of_stream_is_reported() {
        let frames = decode_all(b"Event: A\r\n\r\nEvent: B\r\nX: 1\r\n");
        assert_eq!(
            frames,
            [
                msg(&[("Event", "A")]),
                AmiFrame::Skipped(FrameError::Truncated { bytes: 16 })
            ]
        );
        assert_eq!(
            decode_all(b"Event: A\r\n\r\n\r\n"),
            [msg(&[("Event", "A")])]
        );
    }

    /// Found by cargo-fuzz: a frame of lines holding only CRs (`\r\r\n`: not blank, since
    /// only one CR is the line end) went unreported when the stream ended inside it.
    #[test]
    fn an_unfinished_frame_of_cr_lines_is_reported() {
        assert_eq!(
            decode_all(b"\r\r\n\r"),
            [AmiFrame::Skipped(FrameError::Truncated { bytes: 4 })]
        );
        assert_eq!(
            decode_bytewise(&mut AmiCodec::new(), b"\r\r\n\r"),
            [AmiFrame::Skipped(FrameError::Truncated { bytes: 4 })]
        );
        assert_eq!(
            decode_all(b"\r\r\n\r\n"),
            [AmiFrame::Skipped(FrameError::MalformedLines { count: 1 })]
        );
        assert_eq!(decode_all(b"\r\n\n\r"), []);
    }

    #[test]
    fn escaped_values_are_unescaped_only_where_asterisk_escapes() {
        let bytes = br#"Event: Newchannel
CallerIDName: O\'Brien
ConnectedLineName: Say \"hi\"\tnow
DestCallerIDName: a\\b
TransfererConnectedLineName: Q\?
ChanVariable: note=line1\nline2\r
ChanVariable(PJSIP/1): x=\a\b\f\v
CID-CallingPres: 0 (Presentation Allowed\, Not Screened)
CallerIDNum: O\'Brien
Data: O\'Brien
Exten: trail\

"#;
        let frames = decode_all(bytes);
        assert_eq!(
            frames,
            [msg(&[
                ("Event", "Newchannel"),
                ("CallerIDName", "O'Brien"),
                ("ConnectedLineName", "Say \"hi\"\tnow"),
                ("DestCallerIDName", "a\\b"),
                ("TransfererConnectedLineName", "Q?"),
                ("ChanVariable", "note=line1\nline2\r"),
                ("ChanVariable(PJSIP/1)", "x=\x07\x08\x0c\x0b"),
                (
                    "CID-CallingPres",
                    "0 (Presentation Allowed\\, Not Screened)"
                ),
                ("CallerIDNum", "O\\'Brien"),
                ("Data", "O\\'Brien"),
                ("Exten", "trail\\"),
            ])]
        );
    }

    #[test]
    fn latin1_bytes_decode_lossily_and_keep_the_rest_of_the_frame() {
        let bytes =
            b"Event: Newchannel\r\nCallerIDName: M\xfcller \xe9\r\nCallerIDNum: 4930\r\n\r\n";
        assert_eq!(
            decode_all(bytes),
            [msg(&[
                ("Event", "Newchannel"),
                ("CallerIDName", "M\u{fffd}ller \u{fffd}"),
                ("CallerIDNum", "4930")
            ])]
        );
    }

    #[test]
    fn a_latin1_frame_keeps_its_escapes_its_line_ends_and_its_dropped_lines() {
        // The lossy path finds the lines again in the decoded text: the replacement
        // characters are longer than the bytes they replace.
        let bytes = b"Event: Newchannel\nCallerIDName: M\xfcller\\'s \xe9\r\nno colon \xfc\r\n\
            Exten: \xe9\xe9\nCallerIDNum: 4930\r\n\r\n";
        assert_eq!(
            decode_all(bytes),
            [
                msg(&[
                    ("Event", "Newchannel"),
                    ("CallerIDName", "M\u{fffd}ller's \u{fffd}"),
                    ("Exten", "\u{fffd}\u{fffd}"),
                    ("CallerIDNum", "4930")
                ]),
                AmiFrame::Skipped(FrameError::MalformedLines { count: 1 })
            ]
        );
    }

    #[test]
    fn originate_response_with_a_response_header_is_an_event() {
        let bytes = b"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: lab-2\r\nResponse: Success\r\nReason: 4\r\n\r\n";
        let [AmiFrame::Message(m)] = &decode_all(bytes)[..] else {
            panic!()
        };
        assert_eq!(m.kind(), AmiKind::Event);
        assert_eq!(m.event(), Some("OriginateResponse"));
        assert_eq!(m.get("Response"), Some("Success"));
    }

    /// Counts, without the codec, the lines starting with `Event:` and the blank lines that
    /// end a frame.
    fn count_by_hand(bytes: &[u8]) -> (usize, usize) {
        let text = String::from_utf8_lossy(bytes);
        let events = text.lines().filter(|l| l.starts_with("Event:")).count();
        let frames = text.matches("\r\n\r\n").count();
        (events, frames)
    }

    #[test]
    fn every_recorded_transcript_decodes_completely() {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/ami-transcripts/index.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut checked_against_index = 0;
        for path in fixtures() {
            let bytes = std::fs::read(&path).unwrap();
            let frames = decode_all(&bytes);
            let name = path.file_name().unwrap().to_str().unwrap();
            let skipped: Vec<_> = frames
                .iter()
                .filter(|f| matches!(f, AmiFrame::Skipped(_)))
                .collect();
            assert!(skipped.is_empty(), "{name}: {skipped:?}");
            let messages: Vec<&AmiMessage> = frames
                .iter()
                .filter_map(|f| match f {
                    AmiFrame::Message(m) => Some(m),
                    _ => None,
                })
                .collect();
            let (events, blank_lines) = count_by_hand(&bytes);
            assert_eq!(messages.len(), blank_lines, "{name}: messages");
            assert_eq!(
                messages
                    .iter()
                    .filter(|m| m.kind() == AmiKind::Event)
                    .count(),
                events,
                "{name}: events"
            );
            let banners = frames
                .iter()
                .filter(|f| matches!(f, AmiFrame::Banner(_)))
                .count();
            assert_eq!(
                banners,
                usize::from(bytes.starts_with(b"Asterisk Call Manager")),
                "{name}"
            );
            // The recorder's own per-event-name counts.
            let stem = name.strip_suffix(".txt").unwrap_or(name);
            if let Some(expected) = index["scenarios"][stem]["events"].as_object() {
                let mut seen = BTreeMap::new();
                for m in &messages {
                    if let Some(event) = m.event() {
                        *seen.entry(event.to_owned()).or_insert(0u64) += 1;
                    }
                }
                let expected: BTreeMap<String, u64> = expected
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                    .collect();
                assert_eq!(seen, expected, "{name}");
                checked_against_index += 1;
            }
        }
        assert_eq!(checked_against_index, 12);
    }

    #[test]
    fn encoder_writes_headers_and_a_blank_line_and_round_trips() {
        let action = AmiMessage::from_pairs([
            ("Action", "Setvar"),
            ("ActionID", "7"),
            ("Variable", "CALLERID(num)"),
            ("Value", ""),
        ]);
        let mut dst = BytesMut::new();
        AmiCodec::new().encode(&action, &mut dst).unwrap();
        assert_eq!(
            &dst[..],
            b"Action: Setvar\r\nActionID: 7\r\nVariable: CALLERID(num)\r\nValue: \r\n\r\n"
        );
        assert_eq!(decode_all(&dst), [AmiFrame::Message(action)]);
    }

    #[test]
    fn encoder_refuses_cr_lf_and_writes_nothing() {
        for (key, value) in [
            ("Value", "1\r\nAction: Originate"),
            ("Value", "a\nb"),
            ("Va\rlue", "1"),
            ("Key: x", "1"),
        ] {
            let action = AmiMessage::from_pairs([("Action", "Setvar"), (key, value)]);
            let mut dst = BytesMut::from(&b"kept"[..]);
            let error = AmiCodec::new().encode(&action, &mut dst).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(&format!("{key:?}")), "{error}");
            assert_eq!(&dst[..], b"kept");
        }
    }

    fn transcript() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ami-transcripts/inbound-busy.txt");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_transcript_fed_byte_by_byte_decodes_as_a_whole() {
        let bytes = transcript();
        let whole = decode_all(&bytes);
        assert!(whole.len() > 50);
        assert_eq!(decode_bytewise(&mut AmiCodec::new(), &bytes), whole);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_chunking_yields_the_same_frames(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..200)) {
            let bytes = transcript();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            chunks.push(&bytes[start..]);
            let whole = decode_all(&bytes);
            prop_assert_eq!(decode_chunks(&mut AmiCodec::new(), chunks), whole);
        }
    }

    /// Rough codec throughput; run with
    /// `cargo test --release --lib codec_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn codec_throughput() {
        let mut stream = Vec::new();
        let mut events_per_round = 0;
        for path in fixtures() {
            let bytes = std::fs::read(&path).unwrap();
            events_per_round += count_by_hand(&bytes).1;
            stream.extend_from_slice(&bytes);
            stream.extend_from_slice(b"\r\n");
        }
        let rounds = 50;
        let started = std::time::Instant::now();
        let mut decoded = 0;
        for _ in 0..rounds {
            let mut codec = AmiCodec::new();
            let mut buf = BytesMut::from(&stream[..]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                decoded += usize::from(matches!(frame, AmiFrame::Message(_)));
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(decoded, events_per_round * rounds);
        println!(
            "{decoded} frames, {} MB in {elapsed:?}: {:.0} frames/s",
            stream.len() * rounds / 1_000_000,
            decoded as f64 / elapsed.as_secs_f64()
        );
    }
}
