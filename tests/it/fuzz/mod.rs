//! Bad and hostile input (issue 5): the AMI codec and the FastAGI parser fed large random
//! inputs and mutations of real traffic, checked against [`oracle`]; the live FastAGI
//! port fed random connections.
//!
//! Seeds: every file in `tests/fuzz-corpus/ami/` and `tests/fuzz-corpus/agi/` (the AMI
//! side also takes every frame of the recorded transcripts). A failing case is written to
//! `target/tmp/fuzz-failures/<test>`, ready to be kept in the corpus as a regression.
//!
//! `cargo test` runs each property 256 or 512 times (300 connections); `AZB_FUZZ_CASES=100000 cargo test
//! --release --test it fuzz::` runs them longer (the live-server test opens that many
//! connections, up to 20,000).

mod agi;
mod ami;
pub mod oracle;

use proptest::prelude::*;
use proptest::sample::Index;
use std::path::{Path, PathBuf};

/// Cases per property: `AZB_FUZZ_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("AZB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Proptest settings for a fuzz property: no `proptest-regressions` files (failures go to
/// the corpus by hand, see [`save_failure`]).
pub fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub fn corpus_dir(side: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(side)
}

/// Every file of `tests/fuzz-corpus/<side>/`, by name.
pub fn corpus(side: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(side))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .filter(|(name, _)| !name.starts_with('.') && name != "README.md")
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the {side} corpus is missing");
    files
}

/// Writes the input of a failing case to `target/tmp/fuzz-failures/<test>`, overwriting the
/// last one: after proptest's shrinking the file holds the smallest failing input.
pub fn save_failure(test: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(test);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Bytes that give the parsers the most to decide: line ends, colons, backslashes,
/// spaces, NUL, bytes that are never UTF-8, digits and the letters of `HANGUP`.
const INTERESTING: &[u8] = b"\r\n\r\n::\\ \0\xff\xc3\x80(\"-=520HANGUPresult";

/// Short byte strings, mostly made of [`INTERESTING`] bytes.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(INTERESTING),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// Byte sequences that are not UTF-8: a lone continuation byte, truncated sequences, an
/// overlong form, a surrogate, a byte that never occurs.
const NOT_UTF8: &[&[u8]] = &[
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xff",
    b"M\xfcller",
];

/// One change to a seed.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
    Truncate {
        at: Index,
    },
    /// The line end at or after `at` written twice (or three times): an early blank line.
    DuplicateLineEnd {
        at: Index,
        times: usize,
    },
    /// `len` copies of `byte`: a giant value, or with `\n` a flood of blank lines.
    Giant {
        at: Index,
        byte: u8,
        len: usize,
    },
    Nul {
        at: Index,
    },
    NotUtf8 {
        at: Index,
        which: Index,
    },
    /// Part of another seed pasted in.
    Splice {
        at: Index,
        seed: Index,
        from: Index,
        len: usize,
    },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        3 => (any::<Index>(), bytes(24)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<Index>(), 1..64usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<Index>(), 1..3usize)
            .prop_map(|(at, times)| Mutation::DuplicateLineEnd { at, times }),
        1 => (
            any::<Index>(),
            prop_oneof![Just(b'x'), Just(b'\\'), Just(b'\r'), Just(b'\n'), Just(0u8), any::<u8>()],
            prop_oneof![1..4096usize, 60_000..140_000usize],
        )
            .prop_map(|(at, byte, len)| Mutation::Giant { at, byte, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Nul { at }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(at, which)| Mutation::NotUtf8 { at, which }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1..512usize)
            .prop_map(|(at, seed, from, len)| Mutation::Splice { at, seed, from, len }),
    ]
}

/// Applies `m` to `bytes`; `seeds` is what `Splice` pastes from.
pub fn apply(bytes: &mut Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) {
    let at = |i: &Index, len: usize| i.index(len + 1);
    match m {
        Mutation::FlipBit { at: i, bit } => {
            if !bytes.is_empty() {
                let i = i.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
        }
        Mutation::Insert { at: i, bytes: new } => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Delete { at: i, len } => {
            let i = at(i, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate { at: i } => {
            let i = at(i, bytes.len());
            bytes.truncate(i);
        }
        Mutation::DuplicateLineEnd { at: i, times } => {
            let i = at(i, bytes.len());
            if let Some(nl) = memchr::memchr(b'\n', &bytes[i..]) {
                let nl = i + nl;
                let end: &[u8] = if nl > 0 && bytes[nl - 1] == b'\r' {
                    b"\r\n"
                } else {
                    b"\n"
                };
                let extra = end.repeat(*times);
                bytes.splice(nl + 1..nl + 1, extra);
            }
        }
        Mutation::Giant { at: i, byte, len } => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, std::iter::repeat_n(*byte, *len));
        }
        Mutation::Nul { at: i } => {
            let i = at(i, bytes.len());
            bytes.insert(i, 0);
        }
        Mutation::NotUtf8 { at: i, which } => {
            let i = at(i, bytes.len());
            let bad = NOT_UTF8[which.index(NOT_UTF8.len())];
            bytes.splice(i..i, bad.iter().copied());
        }
        Mutation::Splice {
            at: i,
            seed,
            from,
            len,
        } => {
            let other = &seeds[seed.index(seeds.len())];
            let from = from.index(other.len() + 1);
            let end = (from + len).min(other.len());
            let i = at(i, bytes.len());
            bytes.splice(i..i, other[from..end].iter().copied());
        }
    }
}

/// Offsets at which to cut a stream of `len` bytes into reads: none, a few random ones,
/// or (for streams small enough to keep it quick) every `step` bytes.
#[derive(Debug, Clone)]
pub enum Reads {
    Whole,
    Random(Vec<Index>),
    Every(usize),
}

pub fn reads() -> impl Strategy<Value = Reads> {
    prop_oneof![
        1 => Just(Reads::Whole),
        4 => proptest::collection::vec(any::<Index>(), 1..64).prop_map(Reads::Random),
        2 => (1..32usize).prop_map(Reads::Every),
    ]
}

impl Reads {
    pub fn cuts(&self, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = match self {
            Reads::Whole => Vec::new(),
            Reads::Random(at) => at.iter().map(|i| i.index(len + 1)).collect(),
            Reads::Every(step) => {
                // Keeps a case well under a second in a debug build.
                let step = (*step).max(len / 16_384);
                (1..len.div_ceil(step.max(1))).map(|k| k * step).collect()
            }
        };
        cuts.sort_unstable();
        cuts
    }
}
