//! The admin HTTP listener on `admin.listen` (docs/observability.md): `GET /health` and
//! `GET /metrics`.
//!
//! Owns the socket and the two answers; what they say comes from elsewhere: health from
//! the daemon's [`Health`] watch channel (updated after every batch of inputs and on every
//! AMI state change), the outbox depth and every metric from [`Metrics`]. No
//! authentication: keep it on loopback (a warning says so otherwise).
//!
//! `/health` is 200 when AMI is logged in and the FastAGI listener (if enabled) is bound,
//! else 503; either way the body says why:
//! `{"status":"ok"|"unhealthy","ami":"connected"|"disconnected","agi":"listening"|"off"|"down","active_calls":N,"outbox_depth":N}`.
//!
//! Whoever can reach the port cannot hold what the daemon needs: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once), a request's head must
//! arrive within [`HEADER_TIMEOUT`] (also the most an idle keep-alive connection is kept),
//! and no connection lasts longer than [`CONNECTION_LIFETIME`]. Each connection is served
//! by hyper's HTTP/1 with those limits; axum routes the requests.

use crate::service::health::Health;
use crate::service::metrics::{self, Metrics};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::agi::server::Throttle;

/// Connections served at once; one more is closed as soon as it is accepted. A scraper and
/// a health check need one or two.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest wait for a request's head: from the connection, or from the end of the
/// previous response on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection is served longer than this, however busy (a scraper simply reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the handlers read.
struct AdminState {
    metrics: Arc<Metrics>,
    health: watch::Receiver<Health>,
    /// FastAGI is configured (`agi.listen` not empty).
    agi_enabled: bool,
}

/// The bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    /// Binds `admin.listen`; `Ok(None)` when it is empty (disabled). Warns when the address
    /// is not loopback: `/metrics` and `/health` have no authentication.
    pub async fn bind(listen: &str) -> std::io::Result<Option<AdminServer>> {
        if listen.is_empty() {
            return Ok(None);
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            warn!(
                listen = %addr,
                "the admin listener (/health, /metrics) is not on loopback and has no \
                 authentication; firewall it or use 127.0.0.1"
            );
        }
        info!(listen = %addr, "admin listening (/health, /metrics)");
        Ok(Some(AdminServer { listener }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// Serves until `cancel` (then each open connection gets a second to finish).
    pub fn spawn(
        self,
        metrics: Arc<Metrics>,
        health: watch::Receiver<Health>,
        agi_enabled: bool,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let state = Arc::new(AdminState {
            metrics,
            health,
            agi_enabled,
        });
        let app = Router::new()
            .route("/health", get(health_handler))
            .route("/metrics", get(metrics_handler))
            .with_state(state);
        tokio::spawn(serve(self.listener, app, cancel))
    }
}

/// Accepts connections until `cancel`, at most [`MAX_CONNECTIONS`] at once.
async fn serve(listener: TcpListener, app: Router, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let refused = Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = cancel.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, do not spin.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if let Some(left_out) = refused.allow() {
                warn!(%peer, max = MAX_CONNECTIONS, like_it_since_last_warning = left_out,
                    "too many connections to the admin listener: closed this one");
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        debug!(%peer, error = %e, "admin connection ended");
                    }
                }
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    debug!(%peer, "admin connection open too long: closed");
                }
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

async fn health_handler(State(state): State<Arc<AdminState>>) -> Response {
    let health = state.health.borrow().clone();
    let agi = match (state.agi_enabled, health.agi_ok) {
        (false, _) => "off",
        (true, true) => "listening",
        (true, false) => "down",
    };
    let healthy = health.is_healthy();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "ami": if health.ami_connected { "connected" } else { "disconnected" },
        "agi": agi,
        "active_calls": health.active_calls,
        "outbox_depth": state.metrics.outbox_depth().get().max(0),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_handler(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}
