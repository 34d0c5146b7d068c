//! FastAGI: the dialplan asks the bridge (and so Zammad) about a call before it rings.
//!
//! - [`protocol`]: the wire format as values (environment block, quoted commands,
//!   replies incl. multi-line 520 and bare `HANGUP`); no I/O.
//! - [`server`]: the listener, bounded sessions with an idle timeout, one session's
//!   command/reply exchange.
//! - [`newcall`]: the `newcall` script: claim the call, post `newCall`, wait at most
//!   `agi.decision_timeout`, tell the dialplan.

pub mod newcall;
pub mod protocol;
pub mod server;

pub use newcall::{Claim, ClaimSender};
pub use protocol::{AgiCommand, AgiEnv, AgiError, AgiReply};
pub use server::AgiServer;
