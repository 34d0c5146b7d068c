//! asterisk-zammad-bridge: reports every Asterisk call to Zammad's Generic CTI API.
//!
//! The modules are floors; each imports only those below it (ARCHITECTURE.md):
//! - [`config`]: the typed config tree (bottom floor).
//! - [`ami`], [`agi`]: the wire protocols (codecs without I/O) and the tasks that own their
//!   sockets. [`zammad`]: what Zammad is told ([`zammad::cti`]) and the one HTTP client.
//! - [`calls`]: the pure call model: AMI events and FastAGI claims in, CTI requests out;
//!   number and cause policy; Zammad's decision as AGI commands and AMI actions.
//! - [`service`]: the daemon and what it runs: journal, outbox, the FastAGI `newcall`
//!   script, health, metrics, the admin listener, systemd, logging.
//! - [`commands`]: `check`, `replay`, `record` and `demo`; [`cli`]: the command line they
//!   are reached by.
//! - [`standins`]: Zammad, AMI and FastAGI stand-ins for the tests, the benchmarks and the
//!   demo, apart from the product.

pub mod agi;
pub mod ami;
pub mod calls;
pub mod cli;
pub mod commands;
pub mod config;
pub mod service;
pub mod standins;
pub mod zammad;
