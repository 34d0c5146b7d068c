//! The AMI codec under hostile bytes: arbitrary bytes and mutated real frames decode as
//! [`oracle::expected_frames`] says, in any reads, with the buffer kept within the frame
//! limit; an oversized frame is skipped and what follows decodes as it would alone; every
//! message the encoder accepts reads back the same, and it refuses every injection.

use super::oracle::{self, asterisk_escapes, c_escape, c_unescape, check_ami_stream};
use super::{Mutation, Reads, apply, bytes, config, corpus, mutation, reads, save_failure};
use asterisk_zammad_bridge::ami::AmiMessage;
use asterisk_zammad_bridge::ami::codec::{AmiCodec, AmiFrame, DEFAULT_MAX_FRAME, FrameError};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use std::io;
use std::path::Path;
use std::sync::OnceLock;
use tokio_util::codec::{Decoder, Encoder};

/// The corpus files, then every frame of the recorded transcripts (each with its blank
/// line; a transcript's first frame with its banner line).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Vec<u8>> = corpus("ami").into_iter().map(|(_, b)| b).collect();
        seeds.extend(recorded_frames());
        seeds
    })
}

fn recorded_frames() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths = Vec::new();
    for (dir, ext) in [("ami-transcripts", "txt"), ("cacofonisk", "ami")] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            // `agi-agi-*` is the FastAGI side of a scenario.
            if path.extension().is_some_and(|e| e == ext) && !name.starts_with("agi-agi-") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut frames = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        let mut rest = &bytes[..];
        while let Some(at) = memchr::memmem::find(rest, b"\r\n\r\n") {
            frames.push(rest[..at + 4].to_vec());
            rest = &rest[at + 4..];
        }
    }
    assert!(frames.len() > 1000, "{} recorded frames", frames.len());
    frames
}

/// Frames the decoder reads back alone: recorded frames, which all end in a blank line.
fn recorded() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(recorded_frames)
}

/// One part of a stream.
#[derive(Debug, Clone)]
enum Piece {
    Seed {
        seed: Index,
        mutations: Vec<Mutation>,
    },
    Bytes(Vec<u8>),
    /// Many copies of one byte: a giant line, or with `\n` a flood of blank lines.
    Fill {
        byte: u8,
        len: usize,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => (any::<Index>(), proptest::collection::vec(mutation(), 0..4))
            .prop_map(|(seed, mutations)| Piece::Seed { seed, mutations }),
        2 => bytes(256).prop_map(Piece::Bytes),
        1 => (
            proptest::sample::select(&b"x\r\n:\\\0"[..]),
            prop_oneof![1..2048usize, 60_000..140_000usize],
        )
            .prop_map(|(byte, len)| Piece::Fill { byte, len }),
    ]
}

fn build(pieces: &[Piece]) -> Vec<u8> {
    let seeds = seeds();
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Seed { seed, mutations } => {
                let mut bytes = seeds[seed.index(seeds.len())].clone();
                for m in mutations {
                    apply(&mut bytes, m, seeds);
                }
                out.extend_from_slice(&bytes);
            }
            Piece::Bytes(bytes) => out.extend_from_slice(bytes),
            Piece::Fill { byte, len } => out.extend(std::iter::repeat_n(*byte, *len)),
        }
    }
    out
}

/// Mostly the real limit; often one so small that real frames exceed it.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(DEFAULT_MAX_FRAME),
        1 => 1..64usize,
        2 => 64..2048usize,
    ]
}

/// Checks one stream against the oracle; keeps it for the corpus when it fails.
fn check(test: &str, bytes: &[u8], limit: usize, reads: &Reads) -> Result<(), TestCaseError> {
    let cuts = reads.cuts(bytes.len());
    check_ami_stream(bytes, limit, &cuts).map_err(|e| {
        let path = save_failure(test, bytes);
        TestCaseError::fail(format!(
            "{e}\n({} bytes, limit {limit}, reads cut at {cuts:?}; input in {})",
            bytes.len(),
            path.display()
        ))
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn mutated_frames_decode_like_the_oracle(
        pieces in proptest::collection::vec(piece(), 1..12),
        limit in limit(),
        reads in reads(),
    ) {
        check("ami-mutated", &build(&pieces), limit, &reads)?;
    }

    #[test]
    fn arbitrary_bytes_decode_like_the_oracle(
        bytes in prop_oneof![
            bytes(8192),
            proptest::collection::vec(any::<u8>(), 0..8192),
        ],
        limit in limit(),
        reads in reads(),
    ) {
        check("ami-bytes", &bytes, limit, &reads)?;
    }

    /// An oversized frame, of header lines or one endless line, then recorded frames: one
    /// `TooLarge`, then each frame exactly as it decodes alone.
    #[test]
    fn after_an_oversized_frame_the_next_ones_decode_as_alone(
        head in any::<Index>(),
        filler in proptest::sample::select(&b"x:\r\0\xff "[..]),
        over in 1..3usize,
        limit in limit(),
        next in proptest::collection::vec(any::<Index>(), 1..6),
        reads in reads(),
    ) {
        let frames = recorded();
        // Header lines of a real frame without its blank line, then a giant last line.
        let head = &frames[head.index(frames.len())];
        let mut head = &head[..head.len() - 2];
        if head.starts_with(b"Asterisk Call Manager") {
            head = &head[memchr::memchr(b'\n', head).unwrap() + 1..];
        }
        let mut bytes = head.to_vec();
        bytes.extend(std::iter::repeat_n(filler, limit * over + 1));
        bytes.extend_from_slice(b"\r\n\r\n");
        let mut expected = vec![None];
        for i in &next {
            let frame = &frames[i.index(frames.len())];
            bytes.extend_from_slice(frame);
            let alone = decode(&mut AmiCodec::with_max_frame(limit), frame, &[]);
            expected.extend(alone.into_iter().map(Some));
        }
        let cuts = reads.cuts(bytes.len());
        let got = decode(&mut AmiCodec::with_max_frame(limit), &bytes, &cuts);
        let same = got.len() == expected.len()
            && got.iter().zip(&expected).all(|(got, want)| match want {
                None => matches!(got, AmiFrame::Skipped(FrameError::TooLarge { at_least, .. }) if *at_least > limit),
                // Where a read ends decides how much of a dropped frame was seen.
                Some(AmiFrame::Skipped(FrameError::TooLarge { at_least: whole, .. })) => {
                    matches!(got, AmiFrame::Skipped(FrameError::TooLarge { at_least, .. }) if *at_least > limit && at_least <= whole)
                }
                Some(want) => got == want,
            });
        if !same {
            let path = save_failure("ami-resync", &bytes);
            prop_assert!(false, "got {got:?}\nexpected {expected:?}\n(input in {})", path.display());
        }
    }
}

/// Decodes `bytes` cut at `cuts`, then the end of the stream.
fn decode(codec: &mut AmiCodec, bytes: &[u8], cuts: &[usize]) -> Vec<AmiFrame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([bytes.len()]) {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            out.push(frame);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        out.push(frame);
    }
    out
}

/// Every corpus file, at two limits, whole, bytewise and cut in two at every offset (at
/// 64 offsets for the big ones).
#[test]
fn every_corpus_file_decodes_like_the_oracle_in_any_two_reads() {
    for (name, bytes) in super::corpus("ami") {
        for limit in [DEFAULT_MAX_FRAME, 100] {
            let step = (bytes.len() / 64).max(1);
            let mut splits: Vec<Vec<usize>> =
                (0..=bytes.len()).step_by(step).map(|at| vec![at]).collect();
            splits.push(Vec::new());
            if bytes.len() < 4096 {
                splits.push((1..bytes.len()).collect());
            }
            for cuts in splits {
                if let Err(e) = check_ami_stream(&bytes, limit, &cuts) {
                    panic!("{name}, limit {limit}, cut at {cuts:?}: {e}");
                }
            }
        }
    }
}

/// Megabytes of input without a blank line, in reads of 4 KiB: the decoder drops it as it
/// comes and yields one `TooLarge`, then the frame after it.
#[test]
fn endless_garbage_without_a_blank_line_is_dropped_as_it_comes() {
    let limit = DEFAULT_MAX_FRAME;
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let line = b"Garbage: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n";
    let endless = [&b"x"[..], line, b"\0\0\0\xff\xff\r\r\r"];
    let mut most = 0;
    for round in 0..3 * 256 * 4 {
        let chunk = endless[round / 1024].repeat(4096 / endless[round / 1024].len());
        buf.extend_from_slice(&chunk);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        most = most.max(buf.len());
    }
    assert!(most <= limit + 1, "buffered {most} bytes");
    buf.extend_from_slice(b"\r\n\r\nEvent: After\r\n\r\n");
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        frames.push(frame);
    }
    assert!(
        matches!(frames[0], AmiFrame::Skipped(FrameError::TooLarge { .. })),
        "{:?}",
        &frames[..1]
    );
    assert_eq!(
        frames[1..],
        [AmiFrame::Message(AmiMessage::from_pairs([(
            "Event", "After"
        )]))]
    );
}

/// Header names, including every kind Asterisk C-escapes and one that reads as a banner.
const KEYS: &[&str] = &[
    "Action",
    "ActionID",
    "Event",
    "Response",
    "Channel",
    "Value",
    "Variable",
    "CallerIDName",
    "ConnectedLineName",
    "DestCallerIDName",
    "ChanVariable",
    "ChanVariable(PJSIP/201-0001)",
    "CID-CallingPres",
    "CallerIDNum",
    "Asterisk Call Manager",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(String::from),
        3 => "[A-Za-z0-9_()/ -]{0,24}",
        2 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        4 => "[ -~]{0,40}",
        2 => "([\\\\][abfnrtv'\"?\\\\x0]| |:|\u{fffd}|ü|[a-z]){0,24}",
        1 => (proptest::sample::select(&['x', ' ', '\\', ':', '\0', 'ü'][..]), 0..70_000usize)
            .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

fn injectable(key: &str, value: &str) -> bool {
    key.contains(['\r', '\n', ':']) || value.contains(['\r', '\n'])
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the encoder accepts decodes to the same headers, the values of the keys
    /// Asterisk escapes unescaped; what it refuses has a line break or a colon in a key.
    #[test]
    fn what_the_encoder_writes_decodes_to_the_same_headers(
        headers in proptest::collection::vec((key(), value()), 1..12),
    ) {
        let message = AmiMessage::from_pairs(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut dst = BytesMut::new();
        let encoded = AmiCodec::new().encode(&message, &mut dst);
        let bad = headers.iter().any(|(k, v)| injectable(k, v));
        prop_assert_eq!(encoded.is_err(), bad, "{:?}", encoded);
        if bad {
            prop_assert!(dst.is_empty());
            return Ok(());
        }
        let mut expected = Vec::new();
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                let v = if asterisk_escapes(k) { c_unescape(v) } else { v.clone() };
                (k.clone(), v)
            })
            .collect();
        // Leading headers that look like the greeting read as greetings (we never send
        // one): each is a line of its own at a frame start.
        let mut first = 0;
        while let Some((key, value)) = headers.get(first) {
            let line = format!("{key}: {value}");
            if !(key.starts_with("Asterisk Call Manager") && line.len() + 2 <= DEFAULT_MAX_FRAME) {
                break;
            }
            expected.push(AmiFrame::Banner(line));
            first += 1;
        }
        let pairs = &pairs[first..];
        let size: usize = headers[first..].iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        if size > DEFAULT_MAX_FRAME {
            let got = decode(&mut AmiCodec::new(), &dst, &[]);
            prop_assert_eq!(got.len(), expected.len() + 1);
            prop_assert!(matches!(got.last(), Some(AmiFrame::Skipped(FrameError::TooLarge { .. }))), "{:?}", got.last());
            return Ok(());
        }
        if !pairs.is_empty() {
            expected.push(AmiFrame::Message(AmiMessage::from_pairs(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )));
        }
        prop_assert_eq!(decode(&mut AmiCodec::new(), &dst, &[]), expected);
    }

    /// A value Asterisk escaped (as it does caller names) reads back as it was, line
    /// breaks and all.
    #[test]
    fn escaped_values_read_back_as_they_were(
        key in proptest::sample::select(&KEYS[7..13]),
        value in any::<String>(),
    ) {
        let message = AmiMessage::from_pairs([("Event", "Newchannel"), (key, &c_escape(&value))]);
        let mut dst = BytesMut::new();
        AmiCodec::new().encode(&message, &mut dst).unwrap();
        prop_assert_eq!(
            decode(&mut AmiCodec::new(), &dst, &[]),
            [AmiFrame::Message(AmiMessage::from_pairs([("Event", "Newchannel"), (key, &value)]))]
        );
    }

    /// A CR, LF or CRLF anywhere in any key or value, or a colon in a key, is refused
    /// and nothing is written.
    #[test]
    fn the_encoder_refuses_every_injection(
        headers in proptest::collection::vec(("[A-Za-z0-9_()/ -]{0,24}", "[^\r\n]{0,40}"), 1..8),
        which in any::<Index>(),
        in_key in any::<bool>(),
        at in any::<Index>(),
        evil in proptest::sample::select(&["\r", "\n", "\r\n", "\r\nAction: Originate\r\n", ":"][..]),
    ) {
        let mut headers = headers;
        let i = which.index(headers.len());
        let (key, value) = &mut headers[i];
        let target = if in_key || evil == ":" { key } else { value };
        let chars: Vec<char> = target.chars().collect();
        let at = at.index(chars.len() + 1);
        *target = chars[..at].iter().chain(evil.chars().collect::<Vec<_>>().iter()).chain(&chars[at..]).collect();
        let message = AmiMessage::from_pairs(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut dst = BytesMut::from(&b"kept"[..]);
        let error = AmiCodec::new().encode(&message, &mut dst).unwrap_err();
        prop_assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        prop_assert_eq!(&dst[..], b"kept");
    }
}

/// The oracle's own rules, on the cases the codec's unit tests pin down.
#[test]
fn the_oracle_agrees_with_the_codec_tests() {
    use oracle::Expected;
    let frames = oracle::expected_frames(
        b"Asterisk Call Manager/11.0.0\r\n\r\nEvent: A\r\nno colon\r\n\r\nEvent: B\r\n",
        DEFAULT_MAX_FRAME,
    );
    assert_eq!(
        frames,
        [
            Expected::Frame(AmiFrame::Banner("Asterisk Call Manager/11.0.0".into())),
            Expected::Frame(AmiFrame::Message(AmiMessage::from_pairs([("Event", "A")]))),
            Expected::Frame(AmiFrame::Skipped(FrameError::MalformedLines { count: 1 })),
            Expected::Frame(AmiFrame::Skipped(FrameError::Truncated { bytes: 10 })),
        ]
    );
    assert_eq!(
        oracle::expected_frames(b"Event: X\r\nData: 0123\r\n\r\n", 21),
        [Expected::TooLarge { size: 22 }]
    );
    assert_eq!(c_unescape(r"O\'Brien\x\\"), r"O'Brien\x\");
    assert_eq!(c_escape("a\"b\n"), r#"a\"b\n"#);
}
