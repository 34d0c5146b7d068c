//! The daemon and what it runs, above the protocols and the call model:
//!
//! - [`daemon`]: `run`, the one entry point: wires AMI, FastAGI, the call model, the
//!   journal and the outbox; reconcile, sweep, reload, shutdown.
//! - [`newcall`]: the FastAGI `newcall` script (claim, ask Zammad, tell the dialplan).
//! - [`journal`]: the state dir: open calls and undelivered events across restarts.
//! - [`outbox`]: per-call ordered delivery to Zammad, retries, the journal's marks.
//! - [`health`]: what `/health` and systemd report; [`metrics`]: every Prometheus metric;
//!   [`admin`]: the admin HTTP listener; [`systemd`]: sd_notify and the watchdog.
//! - [`logging`]: tracing setup and the redaction of phone numbers.

pub mod admin;
pub mod daemon;
pub mod health;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod newcall;
pub mod outbox;
pub mod systemd;
