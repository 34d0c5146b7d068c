//! What the benchmarks share.

#![allow(dead_code)] // each benchmark uses a part

pub mod calls;
