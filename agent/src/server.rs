//! HTTP endpoints: `/metrics` (OpenMetrics, or the classic text format when not negotiated), `/healthz` (the main loop is alive) and `/readyz`
//! (probes attached or failed, first read done).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::{agent::Health, telemetry};

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Binds first (so a busy port is reported before probes load), then serves until `shutdown`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// OpenMetrics when the client negotiates it (Prometheus does), else the classic text format.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let om = telemetry::encode(&s.registry);
    if telemetry::wants_openmetrics(accept) {
        (
            [(header::CONTENT_TYPE, telemetry::OPENMETRICS_CONTENT_TYPE)],
            om,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                telemetry::PROMETHEUS_TEXT_CONTENT_TYPE,
            )],
            telemetry::to_prometheus_text(&om),
        )
    }
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n")
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
