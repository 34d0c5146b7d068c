//! Zammad's side: what it is told ([`cti`]: request bodies, replies, decisions, as values)
//! and the one HTTP client that tells it ([`client`]).

pub mod client;
pub mod cti;

pub use client::{PROBE_BODY, PROBE_CALL_ID, ZammadClient, ZammadError};
