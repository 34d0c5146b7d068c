//! Asterisk Manager Interface: the only module that speaks to AMI.
//!
//! - [`message`]: `AmiMessage`, one frame as an ordered multimap of headers.
//! - [`codec`]: bytes ⇄ frames (banner, escapes, size limit, CR/LF guard); no I/O.
//! - [`client`]: the task that owns the socket (login, ActionID map, ping, reconnect) and
//!   the cloneable `AmiHandle`.
//! - [`stream`]: the socket, TCP or TLS, and the tap `record` reads what Asterisk sent from.
//! - [`tls`]: AMI over TLS: the rustls set-up, the plain-or-TLS stream, handshake errors
//!   in an admin's words.
//! - [`backoff`]: the reconnect delays.
//!
//! What events mean for calls is the tracker's business, not this module's.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod message;
pub mod stream;
pub mod tls;

pub use backoff::Backoff;
pub use client::{AmiError, AmiHandle, AmiInput, AmiSettings, AmiStatus, spawn};
pub use codec::{AmiCodec, AmiFrame, FrameError};
pub use message::{AmiKind, AmiMessage};
