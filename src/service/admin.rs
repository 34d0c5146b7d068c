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

use crate::service::health::Health;
use crate::service::metrics::{self, Metrics};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

    /// Serves until `cancel`.
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
        tokio::spawn(async move {
            let served = axum::serve(self.listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the admin listener stopped");
            }
        })
    }
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
