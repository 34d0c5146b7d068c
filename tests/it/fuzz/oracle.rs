//! What the AMI codec and the FastAGI parser must do with any input, written out plainly
//! and checked against the real code. No proptest here, so that a fuzzer can use it too.
//!
//! The AMI oracle reads the whole stream at once, line by line, with the rules of
//! `ami::codec`'s docs (docs/asterisk.md, "AMI framing and escaping"): a banner line where
//! a frame could start, `Key: Value` lines, a blank line after each frame, a frame whose
//! header lines exceed the limit dropped whole, an unfinished frame at the end reported. It
//! owns no buffer and has no state across lines but the current frame, so every frame after
//! a dropped one decodes as it would alone. The codec, fed the same bytes in any pieces,
//! must give the same frames and keep its buffer within the limit meanwhile.

#![allow(dead_code)]

use asterisk_zammad_bridge::agi::protocol::{AgiEnv, MAX_LINE, MAX_USAGE, ReplyLine, ReplyReader};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::{AmiCodec, AmiFrame, FrameError};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager";

/// One thing the oracle expects the decoder to yield.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Frame(AmiFrame),
    /// `Skipped(TooLarge)` for a frame of `size` bytes (at the end of the stream: as far
    /// as it went, counting its unfinished last line as if it ended there); the codec's
    /// `at_least` is above the limit and at most `size`.
    TooLarge {
        size: usize,
    },
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The frames `bytes` holds, followed by the end of the stream, under a frame limit of
/// `limit` bytes.
pub fn expected_frames(bytes: &[u8], limit: usize) -> Vec<Expected> {
    let mut out = Vec::new();
    let mut frame: Vec<&[u8]> = Vec::new();
    let mut size = 0;
    let mut rest = bytes;
    while let Some(nl) = memchr::memchr(b'\n', rest) {
        let raw = &rest[..nl];
        rest = &rest[nl + 1..];
        let line = strip_cr(raw);
        if frame.is_empty() && line.starts_with(BANNER_PREFIX) && nl < limit {
            out.push(Expected::Frame(AmiFrame::Banner(
                String::from_utf8_lossy(line).into_owned(),
            )));
        } else if !line.is_empty() {
            frame.push(raw);
            size += nl + 1;
        } else if !frame.is_empty() {
            out.extend(finish(&frame, size, limit));
            frame.clear();
            size = 0;
        }
    }
    let unfinished_line = match rest {
        [] | [b'\r'] => 0,
        partial => partial.len() + 1,
    };
    if size + unfinished_line > limit {
        out.push(Expected::TooLarge {
            size: size + unfinished_line,
        });
    } else if !(frame.is_empty() && rest.iter().all(|b| *b == b'\r')) {
        out.push(Expected::Frame(AmiFrame::Skipped(FrameError::Truncated {
            bytes: size + rest.len(),
        })));
    }
    out
}

/// A frame ended by its blank line: dropped if too large, else its headers and then the
/// count of lines without a colon.
fn finish(lines: &[&[u8]], size: usize, limit: usize) -> Vec<Expected> {
    if size > limit {
        return vec![Expected::TooLarge { size }];
    }
    let mut pairs = Vec::new();
    let mut malformed = 0;
    for raw in lines {
        let text = String::from_utf8_lossy(raw);
        let line = text.strip_suffix('\r').unwrap_or(&text);
        let Some((key, value)) = line.split_once(':') else {
            malformed += 1;
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        let value = if asterisk_escapes(key) {
            c_unescape(value)
        } else {
            value.to_owned()
        };
        pairs.push((key.to_owned(), value));
    }
    let skipped = AmiFrame::Skipped(FrameError::MalformedLines { count: malformed });
    let mut out = Vec::new();
    if !pairs.is_empty() {
        out.push(Expected::Frame(AmiFrame::Message(AmiMessage::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))));
    }
    if malformed > 0 {
        out.push(Expected::Frame(skipped));
    }
    out
}

/// Keys whose values Asterisk writes through `ast_escape_c_alloc` (docs/asterisk.md, "AMI
/// framing and escaping"): caller and connected-line names under any prefix, channel
/// variables (also the old `ChanVariable(chan)` form), `CID-CallingPres`.
pub fn asterisk_escapes(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    lower.ends_with("calleridname")
        || lower.ends_with("connectedlinename")
        || lower.starts_with("chanvariable")
        || lower == "cid-callingpres"
}

const C_ESCAPES: [(char, char); 11] = [
    ('\x07', 'a'),
    ('\x08', 'b'),
    ('\x0c', 'f'),
    ('\n', 'n'),
    ('\r', 'r'),
    ('\t', 't'),
    ('\x0b', 'v'),
    ('\\', '\\'),
    ('\'', '\''),
    ('"', '"'),
    ('?', '?'),
];

/// What `ast_escape_c` makes of `value`.
pub fn c_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match C_ESCAPES.iter().find(|(raw, _)| *raw == c) {
            Some((_, letter)) => {
                out.push('\\');
                out.push(*letter);
            }
            None => out.push(c),
        }
    }
    out
}

/// The reverse of [`c_escape`]; a backslash before anything else stays.
pub fn c_unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        let escaped = match (c, chars.peek()) {
            ('\\', Some(next)) => C_ESCAPES.iter().find(|(_, letter)| letter == next),
            _ => None,
        };
        match escaped {
            Some((raw, _)) => {
                out.push(*raw);
                chars.next();
            }
            None => out.push(c),
        }
    }
    out
}

/// Feeds `bytes` to a codec with frame limit `limit`, cut at the offsets `cuts` (sorted,
/// within the stream), then ends the stream; compares what it yields with
/// [`expected_frames`]. Also checks that the decoder never holds more than the limit (and
/// a byte) of input while it waits for more.
pub fn check_ami_stream(bytes: &[u8], limit: usize, cuts: &[usize]) -> Result<(), String> {
    let mut codec = AmiCodec::with_max_frame(limit);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([bytes.len()]) {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        while let Some(frame) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
            got.push(frame);
        }
        if buf.len() > limit + 1 {
            return Err(format!(
                "the decoder waits with {} bytes buffered, over the limit of {limit} \
                 (after {end} of {} bytes)",
                buf.len(),
                bytes.len()
            ));
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf).map_err(|e| e.to_string())? {
        got.push(frame);
    }
    let expected = expected_frames(bytes, limit);
    for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
        let same = match (got, want) {
            (
                AmiFrame::Skipped(FrameError::TooLarge {
                    limit: reported,
                    at_least,
                }),
                Expected::TooLarge { size },
            ) => *reported == limit && limit < *at_least && at_least <= size,
            (got, Expected::Frame(want)) => got == want,
            _ => false,
        };
        if !same {
            return Err(format!(
                "frame {i}: decoded {got:?}, expected {want:?} (limit {limit})"
            ));
        }
    }
    if got.len() != expected.len() {
        return Err(format!(
            "decoded {} frames, expected {}; first extra: {:?} / {:?}",
            got.len(),
            expected.len(),
            got.get(expected.len()),
            expected.get(got.len())
        ));
    }
    Ok(())
}

/// Most bytes of a multi-line 520 reply a reader may take in before it refuses the reply:
/// the text it keeps, and one more line.
const USAGE_BOUND: usize = MAX_USAGE + MAX_LINE;

/// What a FastAGI session's reader does with the bytes Asterisk sends: lines as
/// `LinesCodec` cuts them (LF, a CR before it dropped, at most `MAX_LINE` bytes, UTF-8),
/// the `agi_*` block into [`AgiEnv`], the rest into [`ReplyReader`], stopping where the
/// server would close the session. Checks the parser's answers that need no second
/// opinion; a panic is the finding the fuzzer looks for.
pub fn check_agi_session(bytes: &[u8]) -> Result<(), String> {
    let mut env = AgiEnv::default();
    let mut replies = ReplyReader::default();
    let mut in_env = true;
    let mut in_usage = false;
    let mut usage_bytes = 0;
    for raw in bytes.split(|b| *b == b'\n') {
        let raw = strip_cr(raw);
        if raw.len() > MAX_LINE {
            return Ok(());
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            return Ok(());
        };
        if in_env {
            match env.push_line(line) {
                Ok(done) => {
                    // `push_line` drops a CR at the end too, for callers that keep it; so
                    // after `LinesCodec` has dropped one, `\r\r\n` is a blank line.
                    if done != line.strip_suffix('\r').unwrap_or(line).is_empty() {
                        return Err(format!("{line:?} ended the environment: {done}"));
                    }
                    in_env = !done;
                }
                Err(_) => return Ok(()),
            }
            continue;
        }
        let reply = replies.push_line(line);
        // A bare HANGUP is never an error, and outside a 520 block it is a hangup.
        let hangup_ok = match &reply {
            Ok(ReplyLine::Hangup) => true,
            Ok(ReplyLine::More) => in_usage,
            _ => false,
        };
        if line == "HANGUP" && !hangup_ok {
            return Err(format!(
                "HANGUP gave {reply:?} (in a 520 block: {in_usage})"
            ));
        }
        in_usage = matches!(reply, Ok(ReplyLine::More));
        // A 520 block is held until its last line: it must not grow without end.
        usage_bytes = if in_usage {
            usage_bytes + line.len() + 1
        } else {
            0
        };
        if usage_bytes > USAGE_BOUND {
            return Err(format!(
                "a 520 block of {usage_bytes} bytes is still being read"
            ));
        }
        if reply.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
