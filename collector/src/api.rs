//! The API listener: SLA reports over HTTP, `/metrics`, health.
//!
//! - `GET /api/v1/tenants?period=P`: the tenants with traffic in the period that the token
//!   may read (JSON array).
//! - `GET /api/v1/tenants/{tenant}/sla?period=P&format=json|csv|html`: the tenant's SLA
//!   report (`period` defaults to `current`, `format` to `json`).
//! - `GET /metrics`: the collector's own metrics (no token: Prometheus scrapes it).
//! - `GET /healthz` (the process serves), `GET /readyz` (the store answers).
//!
//! With tokens configured, API requests need `Authorization: Bearer <token>`: an admin token
//! reads every tenant, a tenant token only its own (others answer 403), agent tokens none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::auth::{Principal, Tokens};
use crate::objectives::ObjectivesConfig;
use crate::report::{self, Format};
use crate::sla;
use crate::sli::SliSource;
use crate::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub objectives: Arc<ObjectivesConfig>,
    pub tokens: Arc<Tokens>,
    pub registry: Arc<Registry>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/tenants/{tenant}/sla", get(sla_report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, Json(body)).into_response()
    }
}

fn principal(s: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    s.tokens
        .check(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("task failed: {e}"),
            )
        })?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}

async fn tenants(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<String>>, ApiError> {
    let who = principal(&s, &headers)?;
    if let Some(t) = who.only_tenant() {
        return Ok(Json(vec![t.to_string()]));
    }
    if !who.is_admin() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this token may not read reports".into(),
        ));
    }
    let spec = q.get("period").cloned().unwrap_or_else(|| "current".into());
    let now = now_s();
    let kind = s.objectives.objective_for("").period;
    let period = sla::resolve_period(&spec, kind, now)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let store = s.store.clone();
    let list = blocking(move || store.tenants(period.start, period.end)).await?;
    Ok(Json(list))
}

async fn sla_report(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let who = principal(&s, &headers)?;
    if !who.may_read(&tenant) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("this token may not read tenant {tenant:?}"),
        ));
    }
    let format: Format = q
        .get("format")
        .map_or(Ok(Format::Json), |f| f.parse())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("format: {e}")))?;
    let spec = q.get("period").cloned().unwrap_or_else(|| "current".into());
    let now = now_s();
    // A bad period is the caller's mistake: check it before touching the store.
    sla::resolve_period(&spec, s.objectives.objective_for(&tenant).period, now)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("period: {e}")))?;
    let store = s.store.clone();
    let objectives = s.objectives.clone();
    let rendered = blocking(move || {
        let r = report::build(&*store, &objectives, &tenant, &spec, now, &mut |_| {})?;
        Ok(report::render(&r, format))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], rendered).into_response())
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&s.registry),
    )
        .into_response()
}

async fn ready(State(s): State<ApiState>) -> Response {
    let store = s.store.clone();
    match blocking(move || store.meta_get("schema_version")).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.1).into_response(),
    }
}
