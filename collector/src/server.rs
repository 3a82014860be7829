//! OTLP receivers: gRPC (tonic) and HTTP (axum; protobuf or JSON, optionally gzip), both
//! behind bearer-token auth and a request size limit, both feeding one [`Ingestor`].
//!
//! An export is acknowledged only after what it carries is committed to the store; a store
//! failure answers UNAVAILABLE / 503, which OTLP exporters retry. Data points that cannot be
//! used are reported back as a partial success (and counted), never silently dropped.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message;
use tonic::codec::CompressionEncoding;

use crate::auth::{AuthError, Tokens};
use crate::ingest::{self, CumulativeState, TimeLimits};
use crate::limits::RateLimiter;
use crate::metrics::CollectorMetrics;
use crate::store::{Applied, Batch, Store};

/// Latency threshold (milliseconds) of a tenant's objective, for slow-span evidence.
pub type ThresholdFn = dyn Fn(&str) -> f64 + Send + Sync;
/// Where accepted trace exports go next (the downstream forwarder), if anywhere.
pub type TraceSink = dyn Fn(&ExportTraceServiceRequest) + Send + Sync;

pub struct Ingestor {
    pub store: Arc<Store>,
    pub metrics: Arc<CollectorMetrics>,
    pub tokens: Tokens,
    pub threshold_ms: Box<ThresholdFn>,
    pub trace_sink: Option<Box<TraceSink>>,
    pub max_future_skew_s: i64,
    /// Per-sender request rate (off unless `with_rate_limit`).
    limiter: RateLimiter,
    state: Mutex<CumulativeState>,
}

/// Why an export was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("this token may not send data")]
    Forbidden,
    #[error("the store failed, retry later: {0:#}")]
    Store(anyhow::Error),
    #[error("too many requests from this sender (server.agent_rate_limit); retry in {0:?}")]
    RateLimited(std::time::Duration),
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Ingestor {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<CollectorMetrics>,
        tokens: Tokens,
        threshold_ms: Box<ThresholdFn>,
        max_cumulative_series: usize,
        max_future_skew_s: i64,
    ) -> Self {
        Self {
            store,
            metrics,
            tokens,
            threshold_ms,
            trace_sink: None,
            max_future_skew_s,
            limiter: RateLimiter::new(0, 1),
            state: Mutex::new(CumulativeState::new(now_ns(), max_cumulative_series)),
        }
    }

    /// At most `rate` requests per second from each sender address, `burst` at once.
    pub fn with_rate_limit(mut self, rate: u32, burst: u32) -> Self {
        self.limiter = RateLimiter::new(rate, burst);
        self
    }

    /// Authenticated, allowed to send, and within its sender's rate (checked in that order, so
    /// that requests without a valid token do not use up a sender's budget).
    fn authorize(
        &self,
        authorization: Option<&str>,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), IngestError> {
        let who = self.tokens.check(authorization)?;
        if !who.may_ingest() {
            return Err(IngestError::Forbidden);
        }
        if let Some(peer) = peer {
            self.limiter
                .check(peer, Instant::now())
                .map_err(IngestError::RateLimited)?;
        }
        Ok(())
    }

    async fn commit(&self, batch: Batch, now: i64) -> Result<Applied, IngestError> {
        let store = self.store.clone();
        let started = Instant::now();
        let applied = tokio::task::spawn_blocking(move || store.apply(&batch, now))
            .await
            .map_err(|e| IngestError::Store(anyhow::anyhow!("store task failed: {e}")))?
            .map_err(IngestError::Store)?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(applied)
    }

    /// Converts, commits and answers one metrics export.
    pub async fn metrics(
        &self,
        req: ExportMetricsServiceRequest,
    ) -> Result<(ExportMetricsServiceResponse, Applied), IngestError> {
        let now = now_s();
        let oldest = now.saturating_sub(self.store.options().minute_retention.as_secs() as i64);
        let limits = TimeLimits {
            now,
            oldest,
            future: self.max_future_skew_s,
        };
        let mut converted = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let c = ingest::metrics(&req, limits, &mut state);
            self.metrics.cumulative_series.set(state.len() as i64);
            c
        };
        let newest = converted.rows.iter().map(|r| r.start + 60).max();
        let rejected = converted.rejected_total();
        let batch = Batch {
            digest: ingest::digest("metrics", &req),
            rows: std::mem::take(&mut converted.rows),
            evidence: vec![],
        };
        let applied = match self.commit(batch, now).await {
            Ok(a) => a,
            Err(e) => {
                let undo = std::mem::take(&mut converted.undo);
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rollback(undo);
                return Err(e);
            }
        };
        let m = &self.metrics;
        if let Applied::Stored { rows, .. } = applied {
            m.points("accepted", None, converted.accepted);
            for (why, n) in &converted.rejected {
                m.points("rejected", Some(*why), *n);
            }
            m.points("ignored", None, converted.ignored);
            m.rebucketed.inc_by(converted.rebucketed);
            m.rows_written.inc_by(rows as u64);
            if let Some(newest) = newest {
                m.lag_seconds
                    .observe(now_s().saturating_sub(newest).max(0) as f64);
            }
        }
        let partial_success = (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: converted.first_error.unwrap_or_default(),
        });
        Ok((ExportMetricsServiceResponse { partial_success }, applied))
    }

    /// Keeps evidence from, commits and forwards one trace export.
    pub async fn traces(
        &self,
        req: ExportTraceServiceRequest,
    ) -> Result<(ExportTraceServiceResponse, Applied), IngestError> {
        let converted = ingest::traces(&req, &*self.threshold_ms);
        let batch = Batch {
            digest: ingest::digest("traces", &req),
            rows: vec![],
            evidence: converted.evidence,
        };
        let applied = self.commit(batch, now_s()).await?;
        if let Applied::Stored { evidence, .. } = applied {
            self.metrics.spans.inc_by(converted.spans);
            self.metrics.evidence.inc_by(evidence as u64);
            if let Some(sink) = &self.trace_sink {
                sink(&req);
            }
        }
        Ok((ExportTraceServiceResponse::default(), applied))
    }
}

fn outcome(applied: Applied) -> &'static str {
    match applied {
        Applied::Stored { .. } => "ok",
        Applied::Duplicate => "duplicate",
    }
}

fn error_outcome(e: &IngestError) -> &'static str {
    match e {
        IngestError::Auth(_) => "unauthenticated",
        IngestError::Forbidden => "forbidden",
        IngestError::Store(_) => "store_failed",
        IngestError::RateLimited(_) => "rate_limited",
    }
}

// ---- gRPC ----

pub struct Grpc(pub Arc<Ingestor>);

fn status_of(e: &IngestError) -> tonic::Status {
    match e {
        IngestError::Auth(a) => tonic::Status::unauthenticated(a.to_string()),
        IngestError::Forbidden => tonic::Status::permission_denied(e.to_string()),
        IngestError::Store(_) => {
            tracing::error!("{e}");
            tonic::Status::unavailable("the collector could not store the data; retry")
        }
        IngestError::RateLimited(_) => tonic::Status::resource_exhausted(e.to_string()),
    }
}

fn grpc_auth<T>(i: &Ingestor, r: &tonic::Request<T>) -> Result<(), IngestError> {
    i.authorize(
        r.metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        r.remote_addr().map(|a| a.ip()),
    )
}

/// One OTLP signal: its export request, response, and how the ingestor takes it.
pub trait Export: Message + Default + serde::de::DeserializeOwned + Send + 'static {
    type Response: Message + serde::Serialize + Send;
    /// `metrics` or `traces`, for the metrics' `signal` label.
    const SIGNAL: &'static str;
    fn ingest(
        i: &Ingestor,
        req: Self,
    ) -> impl Future<Output = Result<(Self::Response, Applied), IngestError>> + Send;
}

impl Export for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: &'static str = "metrics";
    fn ingest(
        i: &Ingestor,
        req: Self,
    ) -> impl Future<Output = Result<(Self::Response, Applied), IngestError>> + Send {
        i.metrics(req)
    }
}

impl Export for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: &'static str = "traces";
    fn ingest(
        i: &Ingestor,
        req: Self,
    ) -> impl Future<Output = Result<(Self::Response, Applied), IngestError>> + Send {
        i.traces(req)
    }
}

async fn grpc_export<R: Export>(
    i: &Ingestor,
    request: tonic::Request<R>,
) -> Result<tonic::Response<R::Response>, tonic::Status> {
    let result = match grpc_auth(i, &request) {
        Ok(()) => R::ingest(i, request.into_inner()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((resp, applied)) => {
            i.metrics.request(R::SIGNAL, "grpc", outcome(applied));
            Ok(tonic::Response::new(resp))
        }
        Err(e) => {
            i.metrics.request(R::SIGNAL, "grpc", error_outcome(&e));
            Err(status_of(&e))
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        grpc_export(&self.0, request).await
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        grpc_export(&self.0, request).await
    }
}

/// The gRPC services, with the size limit and gzip accepted.
pub fn grpc_routes(ingestor: Arc<Ingestor>, max_bytes: usize) -> tonic::service::Routes {
    let metrics = MetricsServiceServer::new(Grpc(ingestor.clone()))
        .max_decoding_message_size(max_bytes)
        .accept_compressed(CompressionEncoding::Gzip);
    let traces = TraceServiceServer::new(Grpc(ingestor))
        .max_decoding_message_size(max_bytes)
        .accept_compressed(CompressionEncoding::Gzip);
    tonic::service::Routes::new(metrics).add_service(traces)
}

// ---- HTTP ----

#[derive(Clone)]
struct HttpState {
    ingestor: Arc<Ingestor>,
    max_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The OTLP/HTTP listener's routes.
pub fn http_router(ingestor: Arc<Ingestor>, max_bytes: usize) -> Router {
    Router::new()
        .route(
            "/v1/metrics",
            post(http_export::<ExportMetricsServiceRequest>),
        )
        .route("/v1/traces", post(http_export::<ExportTraceServiceRequest>))
        // The compressed body is bounded here; the decompressed one in `body_of`.
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(HttpState {
            ingestor,
            max_bytes,
        })
}

/// A refusal: status, and a message the exporter can log.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.0, self.2).into_response();
        // Both are retryable in OTLP/HTTP; a rate-limited sender's bucket refills within a
        // second at any sensible rate.
        let after = match self.0 {
            StatusCode::SERVICE_UNAVAILABLE => Some("5"),
            StatusCode::TOO_MANY_REQUESTS => Some("1"),
            _ => None,
        };
        if let Some(after) = after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static(after));
        }
        r
    }
}

fn decode<M: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Bytes,
    max_bytes: usize,
) -> Result<(M, Encoding), Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        other => {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content-type {other:?}: use application/x-protobuf or application/json"),
            ));
        }
    };
    let body = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => body,
        Some("gzip") => {
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(&body[..])
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut out);
            match read {
                Ok(n) if n > max_bytes => {
                    return Err(Refusal(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!("decompressed body over {max_bytes} bytes"),
                    ));
                }
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("gzip body: {e}"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content-encoding {other:?}: use gzip or none"),
            ));
        }
    };
    let message = match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| format!("protobuf body: {e}")),
        Encoding::Json => serde_json::from_slice(&body).map_err(|e| format!("JSON body: {e}")),
    }
    .map_err(|m| Refusal(StatusCode::BAD_REQUEST, "bad_request", m))?;
    Ok((message, encoding))
}

fn encoded<M: Message + serde::Serialize>(m: &M, encoding: Encoding) -> Response {
    let body = match encoding {
        Encoding::Protobuf => m.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(m).unwrap_or_default(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// The body could not be read: over the size limit (or the connection broke).
fn too_large(e: BytesRejection) -> Refusal {
    let status = e.status();
    let outcome = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_request"
    };
    Refusal(status, outcome, e.body_text())
}

fn refusal_of(e: IngestError) -> Refusal {
    match e {
        IngestError::Auth(a) => Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", a.to_string()),
        IngestError::Forbidden => Refusal(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
        IngestError::Store(_) => {
            tracing::error!("{e}");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_failed",
                "the collector could not store the data; retry".into(),
            )
        }
        IngestError::RateLimited(_) => {
            Refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
        }
    }
}

async fn http_export<R: Export>(
    State(s): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Set by `tls::serve` (both with and without TLS).
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let result = async {
        let body = body.map_err(too_large)?;
        s.ingestor
            .authorize(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
                peer,
            )
            .map_err(refusal_of)?;
        let (req, enc) = decode::<R>(&headers, body, s.max_bytes)?;
        let (resp, applied) = R::ingest(&s.ingestor, req).await.map_err(refusal_of)?;
        Ok::<_, Refusal>((encoded(&resp, enc), applied))
    }
    .await;
    respond(&s, R::SIGNAL, result)
}

fn respond(
    s: &HttpState,
    signal: &'static str,
    result: Result<(Response, Applied), Refusal>,
) -> Response {
    match result {
        Ok((resp, applied)) => {
            s.ingestor.metrics.request(signal, "http", outcome(applied));
            resp
        }
        Err(r) => {
            s.ingestor.metrics.request(signal, "http", r.1);
            r.into_response()
        }
    }
}
