//! The AMI decoder against the oracle of `tests/it/fuzz/oracle.rs`: the input is the
//! stream; each one is decoded at the real limit and at a small one derived from it,
//! whole and in reads of a few bytes.

#![no_main]

use asterisk_zammad_bridge::ami::codec::DEFAULT_MAX_FRAME;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/it/fuzz/oracle.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let hash = data.iter().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(*b))
    });
    let small = 1 + hash % 512;
    let step = 1 + (hash >> 9) % 61;
    let every = |step: usize| (1..data.len().div_ceil(step)).map(|k| k * step).collect();
    for (limit, cuts) in [
        (DEFAULT_MAX_FRAME, Vec::new()),
        (DEFAULT_MAX_FRAME, every(step)),
        (small, Vec::new()),
        (small, every(1 + step / 4)),
    ] {
        if let Err(e) = oracle::check_ami_stream(data, limit, &cuts) {
            panic!("limit {limit}, {} reads: {e}", cuts.len() + 1);
        }
    }
});
