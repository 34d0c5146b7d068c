//! Asterisk Manager Interface: the wire codec and the connection that owns the socket.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod message;

pub use message::{AmiKind, AmiMessage};
