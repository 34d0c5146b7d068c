//! FastAGI: the dialplan asks the bridge (and so Zammad) about a call before it rings.
//!
//! - [`protocol`]: the wire format as values (environment block, quoted commands,
//!   replies incl. multi-line 520 and bare `HANGUP`); no I/O.
//! - [`server`]: the listener, bounded sessions with an idle timeout, one session's
//!   command/reply exchange.
//!
//! The script a session runs (`newcall`) lives with the daemon (`service::newcall`): the
//! listener is generic over it.

pub mod protocol;
pub mod server;

pub use protocol::{AgiCommand, AgiEnv, AgiError, AgiReply};
pub use server::{AgiServer, NotRun, Script, Session};
