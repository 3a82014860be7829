//! Forwarding of accepted OTLP traces to a downstream trace backend (Tempo, Jaeger, an
//! OpenTelemetry Collector, a vendor), over OTLP/gRPC or OTLP/HTTP protobuf.
//!
//! Ingest hands every accepted `ExportTraceServiceRequest` to [`Forwarder::offer`], which never
//! blocks: the request goes into a bounded queue (`queue_size` requests) or, when the queue is
//! full, its spans are counted as dropped. One task drains the queue, retrying retryable
//! failures (OTLP's list: HTTP 429/502/503/504, gRPC UNAVAILABLE and friends, network errors)
//! with exponential backoff and jitter; a request that is refused, or still failing after
//! `max_retries`, has its spans counted as failed. Every span ends up in exactly one of
//! `tenantscope_collector_forward_spans_total{outcome="sent|dropped|failed"}`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::remote_write::{
    backoff_delay, build_headers, check_headers, check_http_url, redact_headers, redact_url,
    retry_after_header, truncate_body,
};

/// OTLP transport to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardProtocol {
    /// OTLP/gRPC, `endpoint` like `http://tempo:4317`.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies, `POST <endpoint>/v1/traces`, `endpoint` like
    /// `http://tempo:4318`.
    #[serde(rename = "http/protobuf", alias = "http")]
    HttpProtobuf,
}

/// `[forward]`: the downstream trace backend.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Empty: forwarding is off. For `http/protobuf` the base URL (`/v1/traces` is appended
    /// unless the path already ends with it).
    pub endpoint: String,
    pub protocol: ForwardProtocol,
    /// Extra headers (gRPC metadata), e.g. a tenant or an API key of the backend.
    pub headers: BTreeMap<String, String>,
    /// Requests waiting to be sent; beyond it, incoming requests are dropped and counted.
    pub queue_size: usize,
    /// Timeout of one export.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a retryable failure before the request's spans count as failed.
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// PEM CA bundle to trust for an `https://` endpoint, in addition to the public roots for
    /// `http/protobuf`. gRPC over TLS requires it (this build has no built-in root store for
    /// gRPC).
    pub ca_file: Option<PathBuf>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: ForwardProtocol::Grpc,
            headers: BTreeMap::new(),
            queue_size: 1024,
            timeout: Duration::from_secs(10),
            max_retries: 5,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

impl fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("protocol", &self.protocol)
            .field("headers", &redact_headers(&self.headers))
            .field("queue_size", &self.queue_size)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ForwardConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let url = check_http_url("forward.endpoint", &self.endpoint)?;
        check_headers(
            "forward",
            &self.headers,
            &["content-type", "content-length", "host", "te"],
            false,
        )?;
        if self.protocol == ForwardProtocol::Grpc {
            if let Some(k) = self.headers.keys().find(|k| k.ends_with("-bin")) {
                return Err(format!(
                    "forward.headers: binary gRPC metadata (`{k}`) is not supported"
                ));
            }
            if url.scheme() == "https" && self.ca_file.is_none() {
                return Err("forward: gRPC over https needs forward.ca_file (or use protocol = \"http/protobuf\", which trusts the public roots)".into());
            }
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            return Err("forward.queue_size must be between 1 and 1000000".into());
        }
        if self.timeout < Duration::from_millis(100) {
            return Err("forward.timeout must be at least 100ms".into());
        }
        if self.max_retries > 100 {
            return Err("forward.max_retries must be at most 100".into());
        }
        if self.min_backoff.is_zero() || self.max_backoff < self.min_backoff {
            return Err(
                "forward.min_backoff must be positive and at most forward.max_backoff".into(),
            );
        }
        Ok(())
    }

    /// Fills what the file left unset from the standard OpenTelemetry exporter variables
    /// (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `_PROTOCOL`, `_HEADERS`, `_TIMEOUT` in ms).
    /// `get` reads a variable (`|k| std::env::var(k).ok()` in production). The file wins.
    pub fn apply_otel_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let var = |suffix: &str| {
            get(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
                .or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if !self.enabled() {
            let Some(endpoint) = var("ENDPOINT") else {
                return;
            };
            self.endpoint = endpoint;
            match var("PROTOCOL").as_deref() {
                Some("http/protobuf") => self.protocol = ForwardProtocol::HttpProtobuf,
                Some("grpc") => self.protocol = ForwardProtocol::Grpc,
                Some(other) => tracing::warn!(
                    protocol = other,
                    "OTEL_EXPORTER_OTLP_PROTOCOL not supported for forwarding; using grpc"
                ),
                None => {}
            }
            if let Some(ms) = var("TIMEOUT").and_then(|v| v.parse::<u64>().ok()) {
                self.timeout = Duration::from_millis(ms.max(100));
            }
        }
        if let Some(headers) = var("HEADERS") {
            for pair in headers.split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    self.headers
                        .entry(percent_decode(k.trim()))
                        .or_insert_with(|| percent_decode(v.trim()));
                }
            }
        }
    }

    /// The URL requests go to (`http/protobuf`: with `/v1/traces`).
    pub fn target(&self) -> String {
        let e = self.endpoint.trim();
        match self.protocol {
            ForwardProtocol::Grpc => e.to_string(),
            ForwardProtocol::HttpProtobuf => {
                let base = e.trim_end_matches('/');
                if base.ends_with("/v1/traces") {
                    base.to_string()
                } else {
                    format!("{base}/v1/traces")
                }
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Span outcomes.
pub mod outcome {
    /// Accepted by the backend.
    pub const SENT: &str = "sent";
    /// The queue was full: never sent.
    pub const DROPPED: &str = "dropped";
    /// Refused by the backend, rejected in a partial success, or still failing after every
    /// retry.
    pub const FAILED: &str = "failed";
    /// Request outcomes (`tenantscope_collector_forward_requests_total`).
    pub const SUCCESS: &str = "success";
    pub const RETRYABLE: &str = "retryable";
    pub const REJECTED: &str = "rejected";
}

/// The forwarder's own metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ForwardMetrics {
    spans: Family<OutcomeLabels, Counter>,
    requests: Family<OutcomeLabels, Counter>,
    queue: Gauge,
    capacity: Gauge,
}

impl ForwardMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tenantscope_collector_forward_spans",
            "Spans offered to the trace forwarder, by outcome (sent, dropped: queue full, failed: refused or retries exhausted)",
            self.spans.clone(),
        );
        registry.register(
            "tenantscope_collector_forward_requests",
            "Export attempts to the downstream trace backend, by outcome (success, retryable, rejected)",
            self.requests.clone(),
        );
        registry.register(
            "tenantscope_collector_forward_queue_requests",
            "Export requests waiting in the forward queue",
            self.queue.clone(),
        );
        registry.register(
            "tenantscope_collector_forward_queue_capacity_requests",
            "Capacity of the forward queue (forward.queue_size)",
            self.capacity.clone(),
        );
    }

    pub fn spans(&self, outcome: &'static str) -> u64 {
        self.spans.get_or_create(&OutcomeLabels { outcome }).get()
    }

    pub fn requests(&self, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    pub fn queued(&self) -> i64 {
        self.queue.get()
    }

    fn add_spans(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.spans
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n);
        }
    }

    fn request(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Spans in a request.
pub fn span_count(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The forwarder

struct Item {
    req: ExportTraceServiceRequest,
    spans: u64,
}

/// The ingest side of the forwarder: cheap to clone, [`Forwarder::offer`] never blocks.
/// Dropping every clone lets the task drain the queue and end; abort its handle to stop at
/// once.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Item>,
    metrics: ForwardMetrics,
}

impl Forwarder {
    /// Starts the sending task on the current Tokio runtime. The config must be enabled.
    pub fn start(
        cfg: &ForwardConfig,
        metrics: ForwardMetrics,
    ) -> Result<(Forwarder, JoinHandle<()>)> {
        cfg.validate().map_err(|e| anyhow!(e))?;
        if !cfg.enabled() {
            bail!("forward.endpoint is empty: forwarding is off");
        }
        let transport = Transport::new(cfg)?;
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        metrics.capacity.set(cfg.queue_size as i64);
        let task = tokio::spawn(run(rx, transport, cfg.clone(), metrics.clone()));
        Ok((Forwarder { tx, metrics }, task))
    }

    /// Queues `req` for the backend; `false` (and its spans counted as dropped) when the
    /// queue is full or the task is gone.
    pub fn offer(&self, req: ExportTraceServiceRequest) -> bool {
        let spans = span_count(&req);
        match self.tx.try_send(Item { req, spans }) {
            Ok(()) => {
                self.metrics.queue.inc();
                true
            }
            Err(_) => {
                self.metrics.add_spans(outcome::DROPPED, spans);
                false
            }
        }
    }

    pub fn metrics(&self) -> &ForwardMetrics {
        &self.metrics
    }
}

enum Failure {
    /// Worth retrying, after at least the receiver's Retry-After if it sent one.
    Retryable(String, Option<Duration>),
    Permanent(String),
}

enum Transport {
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
    },
    Grpc {
        client: TraceServiceClient<tonic::transport::Channel>,
        metadata: Vec<(
            tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
            tonic::metadata::AsciiMetadataValue,
        )>,
    },
}

impl Transport {
    fn new(cfg: &ForwardConfig) -> Result<Self> {
        let ca = match &cfg.ca_file {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("reading forward.ca_file {}", p.display()))?,
            ),
            None => None,
        };
        match cfg.protocol {
            ForwardProtocol::HttpProtobuf => {
                let mut headers = build_headers(&cfg.headers, None, None)?;
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-protobuf"),
                );
                let mut b = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .user_agent(concat!("tenantscope-collector/", env!("CARGO_PKG_VERSION")))
                    .default_headers(headers);
                if let Some(pem) = &ca {
                    for cert in reqwest::Certificate::from_pem_bundle(pem)
                        .context("parsing forward.ca_file")?
                    {
                        b = b.add_root_certificate(cert);
                    }
                }
                Ok(Transport::Http {
                    client: b.build().context("building the forward HTTP client")?,
                    url: reqwest::Url::parse(&cfg.target()).context("forward.endpoint")?,
                })
            }
            ForwardProtocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(cfg.target())
                    .context("forward.endpoint")?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .user_agent(concat!("tenantscope-collector/", env!("CARGO_PKG_VERSION")))
                    .context("forward user agent")?;
                if let Some(pem) = &ca {
                    ep = ep
                        .tls_config(
                            tonic::transport::ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                        )
                        .context("forward TLS")?;
                }
                let mut metadata = Vec::new();
                for (k, v) in &cfg.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .with_context(|| format!("forward.headers: `{k}`"))?;
                    let value = v
                        .parse()
                        .map_err(|_| anyhow!("forward.headers: the value of `{k}`"))?;
                    metadata.push((key, value));
                }
                Ok(Transport::Grpc {
                    // Lazy: the collector starts even if the backend is down; failures are
                    // retried per request.
                    client: TraceServiceClient::new(ep.connect_lazy()),
                    metadata,
                })
            }
        }
    }

    /// One attempt. `Ok(rejected spans)` from a (partial) success.
    async fn send(&mut self, req: &ExportTraceServiceRequest) -> Result<u64, Failure> {
        match self {
            Transport::Http { client, url } => {
                let resp = client
                    .post(url.clone())
                    .body(req.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| Failure::Retryable(format!("{e}"), None))?;
                let status = resp.status();
                let retry_after = retry_after_header(resp.headers());
                let body = resp.bytes().await.unwrap_or_default();
                if status.is_success() {
                    // A partial success names the spans the backend refused; a body that is
                    // not a protobuf response (empty, JSON) means all accepted.
                    let rejected = ExportTraceServiceResponse::decode(body.as_ref())
                        .ok()
                        .and_then(|r| r.partial_success)
                        .map(|p| p.rejected_spans.max(0) as u64)
                        .unwrap_or(0);
                    return Ok(rejected);
                }
                let msg = format!("HTTP {status}: {}", truncate_body(&body));
                match status.as_u16() {
                    429 | 502 | 503 | 504 => Err(Failure::Retryable(msg, retry_after)),
                    _ => Err(Failure::Permanent(msg)),
                }
            }
            Transport::Grpc { client, metadata } => {
                let mut request = tonic::Request::new(req.clone());
                for (k, v) in metadata.iter() {
                    request.metadata_mut().insert(k.clone(), v.clone());
                }
                match client.export(request).await {
                    Ok(resp) => Ok(resp
                        .into_inner()
                        .partial_success
                        .map(|p| p.rejected_spans.max(0) as u64)
                        .unwrap_or(0)),
                    Err(status) => {
                        use tonic::Code;
                        let msg = format!("gRPC {:?}: {}", status.code(), status.message());
                        match status.code() {
                            Code::Cancelled
                            | Code::DeadlineExceeded
                            | Code::ResourceExhausted
                            | Code::Aborted
                            | Code::OutOfRange
                            | Code::Unavailable
                            | Code::DataLoss => Err(Failure::Retryable(msg, None)),
                            _ => Err(Failure::Permanent(msg)),
                        }
                    }
                }
            }
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Item>,
    mut transport: Transport,
    cfg: ForwardConfig,
    metrics: ForwardMetrics,
) {
    let target = redact_url(&cfg.target());
    // Log a failing backend once per streak, not once per request.
    let mut failing = false;
    while let Some(item) = rx.recv().await {
        metrics.queue.dec();
        let mut attempt = 0u32;
        loop {
            match transport.send(&item.req).await {
                Ok(rejected) => {
                    metrics.request(outcome::SUCCESS);
                    let rejected = rejected.min(item.spans);
                    metrics.add_spans(outcome::SENT, item.spans - rejected);
                    metrics.add_spans(outcome::FAILED, rejected);
                    if failing {
                        tracing::info!(target = %target, "trace forwarding recovered");
                        failing = false;
                    }
                    break;
                }
                Err(Failure::Permanent(msg)) => {
                    metrics.request(outcome::REJECTED);
                    metrics.add_spans(outcome::FAILED, item.spans);
                    tracing::warn!(target = %target, error = %msg, spans = item.spans, "trace backend refused an export; its spans are dropped");
                    break;
                }
                Err(Failure::Retryable(msg, retry_after)) => {
                    metrics.request(outcome::RETRYABLE);
                    if !failing {
                        tracing::warn!(target = %target, error = %msg, "trace forwarding failing; retrying");
                        failing = true;
                    }
                    if attempt >= cfg.max_retries {
                        metrics.add_spans(outcome::FAILED, item.spans);
                        tracing::warn!(target = %target, error = %msg, spans = item.spans, attempts = attempt + 1, "trace export still failing after retries; its spans are dropped");
                        break;
                    }
                    let mut delay = backoff_delay(attempt, cfg.min_backoff, cfg.max_backoff);
                    if let Some(after) = retry_after {
                        delay = delay.max(after.min(cfg.max_backoff));
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::sync::{Arc, Mutex};

    fn request(spans: usize, tag: u8) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..spans)
                        .map(|i| Span {
                            trace_id: vec![tag; 16],
                            span_id: vec![i as u8 + 1; 8],
                            name: format!("GET /r/{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    type Got = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

    #[derive(Clone, Default)]
    struct Http {
        got: Got,
        status: Arc<Mutex<u16>>,
        hang: bool,
    }

    async fn http_receiver(state: Http) -> String {
        use axum::routing::post;
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(
                    |axum::extract::State(s): axum::extract::State<Http>,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| async move {
                        if s.hang {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        s.got.lock().unwrap().push((headers, body.to_vec()));
                        let status = *s.status.lock().unwrap();
                        (axum::http::StatusCode::from_u16(status).unwrap(), "nope")
                    },
                ),
            )
            .with_state(state);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        format!("http://{addr}")
    }

    fn http_cfg(endpoint: String) -> ForwardConfig {
        ForwardConfig {
            endpoint,
            protocol: ForwardProtocol::HttpProtobuf,
            headers: [("X-Backend-Tenant".to_string(), "platform".to_string())].into(),
            queue_size: 8,
            timeout: Duration::from_secs(5),
            max_retries: 2,
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ca_file: None,
        }
    }

    async fn settle(m: &ForwardMetrics, total: u64) {
        for _ in 0..500 {
            let done =
                m.spans(outcome::SENT) + m.spans(outcome::FAILED) + m.spans(outcome::DROPPED);
            if done >= total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("forwarder did not settle");
    }

    #[tokio::test]
    async fn http_protobuf_sends_the_request_bytes_and_headers() {
        let state = Http {
            status: Arc::new(Mutex::new(200)),
            ..Default::default()
        };
        let url = http_receiver(state.clone()).await;
        let metrics = ForwardMetrics::default();
        let (fwd, _task) = Forwarder::start(&http_cfg(url), metrics.clone()).unwrap();
        let req = request(3, 7);
        assert!(fwd.offer(req.clone()));
        settle(&metrics, 3).await;
        assert_eq!(metrics.spans(outcome::SENT), 3);
        assert_eq!(metrics.requests(outcome::SUCCESS), 1);
        let got = state.got.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        let (h, body) = &got[0];
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-backend-tenant"], "platform");
        assert_eq!(body, &req.encode_to_vec());
        assert_eq!(
            ExportTraceServiceRequest::decode(body.as_slice()).unwrap(),
            req
        );
        assert_eq!(metrics.queued(), 0);
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_then_counted_as_failed() {
        let state = Http {
            status: Arc::new(Mutex::new(503)),
            ..Default::default()
        };
        let url = http_receiver(state.clone()).await;
        let metrics = ForwardMetrics::default();
        let (fwd, _task) = Forwarder::start(&http_cfg(url), metrics.clone()).unwrap();
        fwd.offer(request(2, 1));
        settle(&metrics, 2).await;
        assert_eq!(metrics.spans(outcome::FAILED), 2);
        assert_eq!(metrics.requests(outcome::RETRYABLE), 3);
        assert_eq!(state.got.lock().unwrap().len(), 3);

        // A 400 is final at once.
        *state.status.lock().unwrap() = 400;
        fwd.offer(request(4, 2));
        settle(&metrics, 6).await;
        assert_eq!(metrics.spans(outcome::FAILED), 6);
        assert_eq!(metrics.requests(outcome::REJECTED), 1);
        assert_eq!(state.got.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_closed_port_is_retried_and_counted() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let metrics = ForwardMetrics::default();
        let (fwd, _task) = Forwarder::start(
            &http_cfg(format!("http://127.0.0.1:{port}")),
            metrics.clone(),
        )
        .unwrap();
        fwd.offer(request(1, 1));
        settle(&metrics, 1).await;
        assert_eq!(metrics.spans(outcome::FAILED), 1);
        assert_eq!(metrics.requests(outcome::RETRYABLE), 3);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let state = Http {
            status: Arc::new(Mutex::new(200)),
            hang: true,
            ..Default::default()
        };
        let url = http_receiver(state).await;
        let metrics = ForwardMetrics::default();
        let mut cfg = http_cfg(url);
        cfg.queue_size = 2;
        let (fwd, task) = Forwarder::start(&cfg, metrics.clone()).unwrap();
        // The current-thread runtime does not run the task between these calls: exactly
        // queue_size requests fit.
        let accepted: Vec<bool> = (0..10).map(|i| fwd.offer(request(3, i))).collect();
        assert_eq!(accepted.iter().filter(|a| **a).count(), 2);
        assert_eq!(metrics.spans(outcome::DROPPED), 8 * 3);
        assert_eq!(metrics.queued(), 2);
        task.abort();
        let mut reg = Registry::default();
        metrics.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("tenantscope_collector_forward_spans_total{outcome=\"dropped\"} 24"),
            "{out}"
        );
        assert!(
            out.contains("tenantscope_collector_forward_queue_capacity_requests 2"),
            "{out}"
        );
    }

    #[derive(Clone, Default)]
    struct Grpc {
        got: Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>,
        partial: i64,
    }

    #[tonic::async_trait]
    impl TraceService for Grpc {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let tenant = request
                .metadata()
                .get("x-backend-tenant")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            self.got
                .lock()
                .unwrap()
                .push((tenant, request.into_inner()));
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: (self.partial > 0).then(|| {
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                        rejected_spans: self.partial,
                        error_message: "too old".into(),
                    }
                }),
            }))
        }
    }

    #[tokio::test]
    async fn grpc_sends_with_metadata_and_counts_partial_success() {
        let svc = Grpc {
            partial: 1,
            ..Default::default()
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l));
        tokio::spawn(server);
        let metrics = ForwardMetrics::default();
        let mut cfg = http_cfg(format!("http://{addr}"));
        cfg.protocol = ForwardProtocol::Grpc;
        let (fwd, _task) = Forwarder::start(&cfg, metrics.clone()).unwrap();
        let req = request(3, 9);
        fwd.offer(req.clone());
        settle(&metrics, 3).await;
        assert_eq!(metrics.spans(outcome::SENT), 2);
        assert_eq!(metrics.spans(outcome::FAILED), 1);
        let got = svc.got.lock().unwrap().clone();
        assert_eq!(got, vec![("platform".to_string(), req)]);
    }

    #[test]
    fn config_parses_validates_and_reads_otel_env() {
        let c: ForwardConfig = toml::from_str(
            r#"
            endpoint = "http://tempo:4318"
            protocol = "http/protobuf"
            headers = { "X-Scope-OrgID" = "platform" }
            queue_size = 100
            timeout = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.target(), "http://tempo:4318/v1/traces");
        assert!(toml::from_str::<ForwardConfig>("protocol = \"thrift\"").is_err());
        assert!(toml::from_str::<ForwardConfig>("endpointt = \"x\"").is_err());
        let grpc_tls = ForwardConfig {
            endpoint: "https://tempo:4317".into(),
            ..Default::default()
        };
        assert!(grpc_tls.validate().unwrap_err().contains("ca_file"));
        let zero = ForwardConfig {
            endpoint: "http://tempo:4317".into(),
            queue_size: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());

        let env: BTreeMap<&str, &str> = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-tenant=t"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]
        .into();
        let mut c = ForwardConfig::default();
        c.apply_otel_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(c.target(), "http://otel:4318/v1/traces");
        assert_eq!(c.headers["api-key"], "a b");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        // The file wins.
        let mut c = ForwardConfig {
            endpoint: "http://file:4317".into(),
            ..Default::default()
        };
        c.apply_otel_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(c.endpoint, "http://file:4317");
        assert_eq!(c.protocol, ForwardProtocol::Grpc);
        assert!(!format!("{c:?}").contains("a b"));
    }
}
