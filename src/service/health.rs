//! The daemon's health and what it listens on: written by the daemon (`daemon`), read by
//! the admin listener (`/health`) and by systemd's notifications (`systemd`). It lives
//! below all three so that none of them imports another for it.

use std::net::SocketAddr;
use tokio::sync::watch;

/// The addresses the daemon listens on, once they are bound, and its health from then on.
#[derive(Debug, Clone)]
pub struct Listening {
    pub agi: Option<SocketAddr>,
    /// The admin listener (`/health`, `/metrics`), unless `admin.listen` is empty.
    pub admin: Option<SocketAddr>,
    /// Updated after every batch of inputs (and on AMI state changes).
    pub health: watch::Receiver<Health>,
}

/// What `/health`, systemd's watchdog and `STATUS=` report (docs/observability.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Logged in to AMI.
    pub ami_connected: bool,
    /// The FastAGI listener is bound (or FastAGI is off).
    pub agi_ok: bool,
    /// Calls the tracker follows.
    pub active_calls: usize,
    /// Events waiting for Zammad.
    pub outbox_depth: usize,
}

impl Health {
    /// Healthy: AMI logged in and FastAGI (if enabled) listening.
    pub fn is_healthy(&self) -> bool {
        self.ami_connected && self.agi_ok
    }
}
