//! asterisk-zammad-bridge: reports every Asterisk call to Zammad's Generic CTI API.
//!
//! Modules, in the order data flows through them (see ARCHITECTURE.md):
//! - [`ami`]: the AMI codec and the connection task (login, actions, reconnect).
//! - [`agi`]: the FastAGI server and its `newcall` script (the dialplan asks Zammad).
//! - [`tracker`]: the pure call state machine, AMI events in, CTI requests out.
//! - [`policy`]: number normalisation and cause mapping, pure functions.
//! - [`cti`]: the request bodies and Zammad's replies, as values.
//! - [`decision`]: Zammad's reject/dial answers as AGI commands and AMI actions, guarded.
//! - [`delivery`]: the outbox: per-call ordered, different calls concurrent.
//! - [`zammad`]: the one HTTP client that talks to Zammad.
//! - [`replay`]: recorded AMI streams through the tracker, printed as JSON.
//! - [`store`]: the state dir's journal: open calls and undelivered events across restarts.
//! - [`daemon`]: `run`, wiring the parts together.
//! - [`metrics`]: the Prometheus registry and every metric (docs/observability.md).
//! - [`admin`]: the admin HTTP listener: `/health`, `/metrics`.
//! - [`config`]: the typed config tree.
//! - [`check`]: `check`'s online probes: one AMI login, one Zammad request that stores nothing.
//! - [`demo`]: `demo`: the daemon between in-process stand-ins, fed recorded calls.
//! - [`fake_agi`]: Asterisk's side of a FastAGI session, for tests, benchmarks and the demo.
//! - [`fake_zammad`]: an in-process stand-in for Zammad, for tests and the demo.

pub mod admin;
pub mod agi;
pub mod ami;
pub mod calls;
pub mod check;
pub mod config;
pub mod cti;
pub mod daemon;
pub mod decision;
pub mod delivery;
pub mod demo;
pub mod fake_agi;
pub mod fake_ami;
pub mod fake_zammad;
pub mod health;
pub mod metrics;
pub mod observability;
pub mod policy;
pub mod replay;
pub mod store;
pub mod systemd;
pub mod zammad;
