//! The OTLP span export: a bounded queue that the HTTP pipeline feeds without blocking
//! ([`SpanSink::offer`]), and a task on the agent's runtime ([`SpanExporterTask::run`]) that
//! batches spans by size or time and sends each batch, one request per workload (the resource
//! is per request), through `opentelemetry_otlp::SpanExporter`. Spans go to the exporter as
//! `SpanData` built by [`crate::spans`], not through a tracer, so their ids and times are
//! exactly the agent's.
//!
//! Nothing here stops the agent: a full queue, a failed export or an exporter that could not
//! be built only drop spans, each counted in `tenantscope_agent_spans_total{outcome}` and
//! logged at most once a minute.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry_otlp::{
    Protocol, RetryPolicy, SpanExporter, WithExportConfig as _, WithHttpConfig as _,
    WithTonicConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanExporter as _},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};

use crate::{
    config::{OtlpConfig, OtlpProtocol},
    parenting::ParentKind,
    spans::{AgentSpan, MonoToUnix, ResourceBase, group_by_origin},
    workload::Origin,
};

pub const SPANS: &str = "tenantscope_agent_spans";
pub const SPAN_EXPORT_DURATION: &str = "tenantscope_agent_span_export_duration";
pub const SPAN_QUEUE_LENGTH: &str = "tenantscope_agent_span_queue_length";
pub const SPAN_RETRY_BUFFER: &str = "tenantscope_agent_span_retry_buffer_spans";
pub const CLIENT_SPANS_UNPARENTED: &str = "tenantscope_agent_client_spans_unparented";
pub const CLIENT_SPANS: &str = "tenantscope_agent_client_spans";

/// Export request durations (seconds): a node-local collector answers in milliseconds, a
/// struggling one takes up to `otlp.timeout`.
const EXPORT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Retries after a failed export request (retryable errors only), within `otlp.timeout`.
const MAX_RETRIES: usize = 2;
/// Slack over `otlp.timeout` before the task gives up on an export the exporter did not end.
const EXPORT_GRACE: Duration = Duration::from_secs(1);
/// Warnings about drops are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Workload resources kept built; more distinct workloads rebuild them (bounded memory).
const MAX_CACHED_RESOURCES: usize = 1024;
/// First wait before retrying failed exports; it doubles up to `otlp.retry_max_backoff`.
const RETRY_INITIAL: Duration = Duration::from_secs(1);

/// What became of a span (`tenantscope_agent_spans_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Accepted by the collector.
    Exported,
    /// `otlp.queue_size` spans were already waiting.
    DroppedQueueFull,
    /// Its export failed and it was the oldest in a full `otlp.retry_buffer`.
    DroppedRetryFull,
    /// Its export failed and could not be kept for retry (`otlp.retry_buffer = 0`), it was still
    /// waiting for a retry when the shutdown deadline passed, there is no exporter, or the span
    /// came after shutdown began.
    DroppedExportFailed,
    /// The sampler dropped it (never queued).
    NotSampled,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Exported,
        Outcome::DroppedQueueFull,
        Outcome::DroppedRetryFull,
        Outcome::DroppedExportFailed,
        Outcome::NotSampled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Exported => "exported",
            Outcome::DroppedQueueFull => "dropped_queue_full",
            Outcome::DroppedRetryFull => "dropped_retry_full",
            Outcome::DroppedExportFailed => "dropped_export_failed",
            Outcome::NotSampled => "not_sampled",
        }
    }
}

/// Why a client span was exported as a root instead of under a server span
/// (`tenantscope_agent_client_spans_unparented_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unparented {
    /// No enclosing server exchange on its thread within `otlp.client_parent_wait` (or the
    /// matching is off).
    NoServerSpan,
    /// `otlp.max_pending_client_spans` were already waiting.
    BufferFull,
    /// The agent stopped while it waited.
    Shutdown,
}

impl Unparented {
    pub const ALL: [Unparented; 3] = [
        Unparented::NoServerSpan,
        Unparented::BufferFull,
        Unparented::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Unparented::NoServerSpan => "no_server_span",
            Unparented::BufferFull => "buffer_full",
            Unparented::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnparentedLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientSpanLabels {
    pub parent: &'static str,
    pub workload: crate::aggregate::http::Label,
}

/// The span self-metrics; cheap to clone (shared handles). Register once with
/// [`SpanMetrics::register`].
#[derive(Clone, Debug)]
pub struct SpanMetrics {
    spans: Family<OutcomeLabels, Counter>,
    export_duration: Histogram,
    queue_length: Gauge,
    retry_buffer: Gauge,
    client_unparented: Family<UnparentedLabels, Counter>,
    client_spans: Family<ClientSpanLabels, Counter>,
}

impl Default for SpanMetrics {
    fn default() -> Self {
        let m = Self {
            spans: Family::default(),
            export_duration: Histogram::new(EXPORT_BUCKETS),
            queue_length: Gauge::default(),
            retry_buffer: Gauge::default(),
            client_unparented: Family::default(),
            client_spans: Family::default(),
        };
        // Every series exists from the start, so a drop shows as a rate rather than a new series.
        for o in Outcome::ALL {
            let _ = m.spans.get_or_create(&OutcomeLabels {
                outcome: o.as_str(),
            });
        }
        for r in Unparented::ALL {
            let _ = m
                .client_unparented
                .get_or_create(&UnparentedLabels { reason: r.as_str() });
        }
        m
    }
}

impl SpanMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            SPANS,
            "Spans of captured HTTP requests, by outcome: exported, dropped (queue full, retry \
             buffer full, export failed) or not sampled",
            self.spans.clone(),
        );
        registry.register_with_unit(
            SPAN_EXPORT_DURATION,
            "Duration of OTLP span export requests, retries included",
            Unit::Seconds,
            self.export_duration.clone(),
        );
        registry.register(
            SPAN_QUEUE_LENGTH,
            "Spans waiting for export (bounded by otlp.queue_size)",
            self.queue_length.clone(),
        );
        registry.register(
            SPAN_RETRY_BUFFER,
            "Spans of failed export requests waiting for a retry (bounded by otlp.retry_buffer)",
            self.retry_buffer.clone(),
        );
        registry.register(
            CLIENT_SPANS_UNPARENTED,
            "Outgoing-request spans with one candidate parent that became roots because its \
             incoming request did not arrive in time (parent=\"unconfirmed\"), by reason",
            self.client_unparented.clone(),
        );
        registry.register(
            CLIENT_SPANS,
            "Outgoing-request spans by how their parent was decided: traceparent (the request's \
             own), exact (the one request its thread served), or roots: ambiguous, none, \
             unconfirmed",
            self.client_spans.clone(),
        );
    }

    pub fn count(&self, outcome: Outcome, n: u64) {
        self.spans
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc_by(n);
    }

    pub fn spans(&self, outcome: Outcome) -> u64 {
        self.spans
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub fn unparented(&self, reason: Unparented) {
        self.client_unparented
            .get_or_create(&UnparentedLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// One client exchange of `workload`, parented as `kind` says.
    pub fn client_span(&self, kind: ParentKind, workload: &Arc<str>) {
        self.client_spans
            .get_or_create(&ClientSpanLabels {
                parent: kind.as_str(),
                workload: crate::aggregate::http::Label(workload.clone()),
            })
            .inc();
    }

    pub fn client_spans(&self, kind: ParentKind, workload: &str) -> u64 {
        self.client_spans
            .get_or_create(&ClientSpanLabels {
                parent: kind.as_str(),
                workload: crate::aggregate::http::Label(workload.into()),
            })
            .get()
    }

    /// Forgets the client-span counts of workloads whose labels expired.
    pub fn forget_workloads(&self, expired: &[Arc<str>]) {
        for workload in expired {
            for kind in ParentKind::ALL {
                self.client_spans.remove(&ClientSpanLabels {
                    parent: kind.as_str(),
                    workload: crate::aggregate::http::Label(workload.clone()),
                });
            }
        }
    }

    pub fn unparented_count(&self, reason: Unparented) -> u64 {
        self.client_unparented
            .get_or_create(&UnparentedLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    pub fn queue_length(&self) -> i64 {
        self.queue_length.get()
    }

    pub fn retry_buffer(&self) -> i64 {
        self.retry_buffer.get()
    }
}

/// Where the pipeline puts finished spans. Cloneable; [`SpanSink::offer`] never blocks. The
/// export task ends (after a last flush) once every sink is dropped.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: mpsc::Sender<AgentSpan>,
    metrics: SpanMetrics,
}

impl SpanSink {
    /// Queues `span` for export, or counts it dropped if the queue is full or the export task
    /// has stopped.
    pub fn offer(&self, span: AgentSpan) {
        self.metrics.queue_length.inc();
        let outcome = match self.tx.try_send(span) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => Outcome::DroppedQueueFull,
            Err(TrySendError::Closed(_)) => Outcome::DroppedExportFailed,
        };
        self.metrics.queue_length.dec();
        self.metrics.count(outcome, 1);
    }

    pub fn metrics(&self) -> &SpanMetrics {
        &self.metrics
    }
}

/// The exporter's settings, resolved from `[otlp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub protocol: OtlpProtocol,
    /// The URL requests go to (for http/protobuf, with `/v1/traces`).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub retry_buffer: usize,
    pub retry_max_backoff: Duration,
    /// The CA certificates to trust when `url` is `https://` (`None`: the Mozilla roots).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl ExportSettings {
    pub fn from_config(cfg: &OtlpConfig) -> Self {
        Self {
            tls_ca_pem: cfg.tls_ca_pem.clone(),
            protocol: cfg.protocol,
            url: cfg.signal_url("traces"),
            headers: cfg.header_pairs(),
            timeout: cfg.timeout,
            batch_size: cfg.batch_size.max(1),
            batch_timeout: cfg.batch_timeout,
            retry_buffer: cfg.retry_buffer,
            retry_max_backoff: cfg.retry_max_backoff,
        }
    }
}

/// The export task; run it with [`SpanExporterTask::run`] on the agent's runtime. Spans still
/// queued when it is dropped unrun are counted as `dropped_export_failed`.
pub struct SpanExporterTask {
    rx: Option<mpsc::Receiver<AgentSpan>>,
    settings: ExportSettings,
    resource: ResourceBase,
    metrics: SpanMetrics,
}

impl Drop for SpanExporterTask {
    fn drop(&mut self) {
        if let Some(rx) = &self.rx {
            lost(&self.metrics, rx.len());
        }
    }
}

impl SpanExporterTask {
    /// Moves what is queued into `out`, as if exported (tests, and the replay of
    /// `crate::replay`, which encodes the spans itself).
    pub fn take_queued(&mut self, out: &mut Vec<AgentSpan>) {
        if let Some(rx) = &mut self.rx {
            while let Ok(span) = rx.try_recv() {
                self.metrics.queue_length.dec();
                out.push(span);
            }
        }
    }
}

/// Counts spans that left the queue without an export attempt.
fn lost(metrics: &SpanMetrics, n: usize) {
    if n > 0 {
        metrics.count(Outcome::DroppedExportFailed, n as u64);
        metrics.queue_length.dec_by(n as i64);
    }
}

/// The sink for the pipeline and the task that drains it. Nothing is connected until the task
/// runs (inside the runtime, which the gRPC channel needs).
pub fn start(
    cfg: &OtlpConfig,
    resource: ResourceBase,
    metrics: SpanMetrics,
) -> (SpanSink, SpanExporterTask) {
    let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
    (
        SpanSink {
            tx,
            metrics: metrics.clone(),
        },
        SpanExporterTask {
            rx: Some(rx),
            settings: ExportSettings::from_config(cfg),
            resource,
            metrics,
        },
    )
}

/// Builds the exporter. Its retries (two, with backoff, for retryable errors only) stay within
/// `timeout`; the standard `OTEL_EXPORTER_OTLP_TRACES_*` variables the crate reads itself apply
/// only where the settings leave something unset (compression).
/// Header on the agent's own OTLP/HTTP export requests; captured requests carrying it are not
/// traced or counted (gRPC exports are HTTP/2, which the HTTP/1.x probe does not capture).
pub const OWN_EXPORT_HEADER: &str = "x-tenantscope-agent";

/// The TLS client settings of an `https://` endpoint: the certificates of `ca_pem` as the only
/// trust anchors, or the Mozilla root store without it; rustls with ring, TLS 1.2 and 1.3.
pub fn tls_client_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("holds no PEM certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// tonic's TLS settings for an `https://` gRPC endpoint (the same trust as `tls_client_config`).
pub fn grpc_tls(ca_pem: Option<&[u8]>) -> tonic::transport::ClientTlsConfig {
    let tls = tonic::transport::ClientTlsConfig::new();
    match ca_pem {
        Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        None => tls.with_webpki_roots(),
    }
}

/// An HTTP/1.1 connector that speaks TLS to `https://` URLs (and plain TCP to `http://`).
pub fn https_connector(
    ca_pem: Option<&[u8]>,
    connect_timeout: Duration,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(ca_pem)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

pub fn build_exporter(s: &ExportSettings) -> Result<SpanExporter, String> {
    let tls = s.url.starts_with("https://");
    let retry = RetryPolicy::default()
        .with_max_retries(MAX_RETRIES)
        .with_initial_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(1))
        .with_max_jitter(Duration::from_millis(100));
    let built = match s.protocol {
        OtlpProtocol::Grpc => {
            let mut headers = axum::http::HeaderMap::new();
            for (k, v) in &s.headers {
                let name = axum::http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header {k:?}: {e}"))?;
                let value = axum::http::HeaderValue::from_str(v)
                    .map_err(|e| format!("header {k:?}: {e}"))?;
                headers.insert(name, value);
            }
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.url.clone())
                .with_timeout(s.timeout)
                .with_metadata(tonic::metadata::MetadataMap::from_headers(headers))
                .with_retry_policy(retry);
            if tls {
                builder = builder.with_tls_config(grpc_tls(s.tls_ca_pem.as_deref()));
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            // Marks the agent's own export requests so that an agent seeing the receiver's end
            // (a collector on this node) does not trace them: one span per export otherwise.
            let mut headers: std::collections::HashMap<String, String> =
                s.headers.iter().cloned().collect();
            headers.insert(
                OWN_EXPORT_HEADER.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            );
            let mut builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(s.url.clone())
                .with_timeout(s.timeout)
                .with_headers(headers)
                .with_retry_policy(retry);
            if tls {
                let connector = https_connector(s.tls_ca_pem.as_deref(), s.timeout)?;
                builder = builder.with_http_client(opentelemetry_http::hyper::HyperClient::new(
                    connector, s.timeout, None,
                ));
            }
            builder.build()
        }
    };
    built.map_err(|e| e.to_string())
}

/// A warning that is logged at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The export loop's state. Dropped before the end (the runtime shut down mid-export), it
/// counts the spans it still held as `dropped_export_failed`.
struct Exporting {
    rx: mpsc::Receiver<AgentSpan>,
    batch: Vec<AgentSpan>,
    /// Spans of the batch being exported whose outcome is not counted yet.
    in_flight: usize,
    exporter: Option<SpanExporter>,
    settings: ExportSettings,
    base: ResourceBase,
    resources: HashMap<Origin, Resource>,
    metrics: SpanMetrics,
    failures: Throttle,
    failed_since_log: u64,
    failing: bool,
    queue_full: Throttle,
    queue_full_seen: u64,
    /// Failed export requests, oldest first, waiting for the collector to come back; at most
    /// `retry_buffer` spans in all.
    retry: VecDeque<(Origin, Vec<SpanData>)>,
    retry_spans: usize,
    /// When the oldest failed request is tried again.
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        lost(
            &self.metrics,
            self.batch.len() + self.in_flight + self.rx.len(),
        );
        self.give_up_retries();
    }
}

/// Exponential backoff with jitter between retries of failed exports: the wait doubles from
/// [`RETRY_INITIAL`] up to the configured maximum, and each wait is drawn from the upper half
/// of that value so that agents cut off together do not come back in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self::starting_at(RETRY_INITIAL, max)
    }

    /// Waits from `initial` (at most `max`), doubling up to `max`.
    pub(crate) fn starting_at(initial: Duration, max: Duration) -> Self {
        Self {
            initial: initial.min(max),
            max,
            next: initial.min(max),
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// The wait after one more failure in a row.
    pub(crate) fn failed(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        self.draws += 1;
        // 53 random bits as a fraction in [0, 1).
        let fraction = (self.random.hash_one(self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        base / 2 + base.mul_f64(fraction / 2.0)
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = self.initial;
    }
}

impl SpanExporterTask {
    /// Exports until every [`SpanSink`] is dropped or `shutdown` resolves, then exports what is
    /// queued within one more `otlp.timeout` (spans left after it are counted as
    /// `dropped_export_failed`) and returns. Shutdown therefore takes at most about twice
    /// `otlp.timeout` (an export in flight, then the final flush).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let Some(rx) = self.rx.take() else {
            return;
        };
        let settings = self.settings.clone();
        let exporter = match build_exporter(&settings) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(url = %settings.url, error = %e,
                    "cannot build the OTLP span exporter; spans will be counted as dropped");
                None
            }
        };
        tracing::info!(url = %settings.url, protocol = ?settings.protocol, "exporting spans over OTLP");
        let mut st = Exporting {
            rx,
            batch: Vec::with_capacity(settings.batch_size),
            in_flight: 0,
            exporter,
            resources: HashMap::new(),
            base: self.resource.clone(),
            failures: Throttle::default(),
            failed_since_log: 0,
            failing: false,
            queue_full: Throttle::default(),
            queue_full_seen: self.metrics.spans(Outcome::DroppedQueueFull),
            metrics: self.metrics.clone(),
            retry: VecDeque::new(),
            retry_spans: 0,
            retry_at: None,
            backoff: Backoff::new(settings.retry_max_backoff),
            settings,
        };
        let batch_size = st.settings.batch_size;
        let mut flush_at: Option<Instant> = None;
        let mut stop_by: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let timer = async {
                match flush_at {
                    // While stopping, batches go out as soon as they are full or the queue is empty.
                    Some(at) if stop_by.is_none() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            // No retries while stopping: the last flush makes one attempt each.
            let retry_at = st.retry_at.filter(|_| stop_by.is_none());
            let retry_timer = async move {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let closed = tokio::select! {
                () = &mut shutdown, if stop_by.is_none() => {
                    stop_by = Some(Instant::now() + st.settings.timeout);
                    // Take no more spans; what is queued is still received.
                    st.rx.close();
                    continue;
                }
                span = st.rx.recv() => match span {
                    Some(span) => {
                        if st.batch.is_empty() {
                            flush_at = Some(Instant::now() + st.settings.batch_timeout);
                        }
                        st.batch.push(span);
                        if st.batch.len() < batch_size {
                            continue;
                        }
                        false
                    }
                    None => true,
                },
                () = timer => false,
                () = retry_timer => {
                    st.retry_at = None;
                    st.retry_failed(None).await;
                    continue;
                }
            };
            flush_at = None;
            let deadline = if closed {
                // The last flush: bounded even if the sinks were dropped without a shutdown.
                Some(stop_by.unwrap_or_else(|| Instant::now() + st.settings.timeout))
            } else {
                stop_by
            };
            if closed {
                // The failed requests first (they are older), one attempt each.
                st.retry_failed(deadline).await;
                st.give_up_retries();
            }
            st.export_batch(deadline).await;
            st.warn_queue_full();
            if closed {
                st.give_up_retries();
                break;
            }
        }
        if let Some(e) = &st.exporter {
            let _ = e.shutdown();
        }
        tracing::info!(
            exported = st.metrics.spans(Outcome::Exported),
            dropped_queue_full = st.metrics.spans(Outcome::DroppedQueueFull),
            dropped_retry_full = st.metrics.spans(Outcome::DroppedRetryFull),
            dropped_export_failed = st.metrics.spans(Outcome::DroppedExportFailed),
            "span export stopped"
        );
    }
}

impl Exporting {
    /// Exports the batch, one request per workload; with a `deadline`, nothing is attempted
    /// after it. While older requests wait for a retry, the batch joins them instead (order is
    /// kept, and the collector is not hammered while it is down).
    async fn export_batch(&mut self, deadline: Option<Instant>) {
        let batch = std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(self.settings.batch_size),
        );
        self.in_flight = batch.len();
        for (origin, spans) in group_by_origin(batch) {
            let n = spans.len();
            self.in_flight -= n;
            self.metrics.queue_length.dec_by(n as i64);
            if self.retry.is_empty() {
                self.attempt(origin, spans, deadline).await;
            } else {
                self.keep_for_retry(origin, spans);
            }
        }
    }

    /// Tries the failed requests again, oldest first, until one fails (then the backoff grows)
    /// or none is left (then it is reset).
    async fn retry_failed(&mut self, deadline: Option<Instant>) {
        while let Some((origin, spans)) = self.retry.pop_front() {
            self.retry_spans -= spans.len();
            self.metrics.retry_buffer.dec_by(spans.len() as i64);
            if !self.attempt(origin, spans, deadline).await {
                return;
            }
        }
    }

    /// One export request; its outcome is counted, or on failure it is kept for a retry.
    /// Returns whether it was exported.
    async fn attempt(
        &mut self,
        origin: Origin,
        spans: Vec<SpanData>,
        deadline: Option<Instant>,
    ) -> bool {
        let n = spans.len();
        // A copy only when a failure could be retried: the exporter consumes its input.
        let kept = (self.settings.retry_buffer > 0).then(|| spans.clone());
        self.in_flight += n;
        let result = self.export_one(&origin, spans, deadline).await;
        self.in_flight -= n;
        match result {
            Ok(()) => {
                self.metrics.count(Outcome::Exported, n as u64);
                self.backoff.succeeded();
                if std::mem::take(&mut self.failing) {
                    tracing::info!(url = %self.settings.url, "OTLP span export works again");
                }
                true
            }
            Err(error) => {
                self.failing = true;
                self.failed_since_log += n as u64;
                if self.failures.ready() {
                    tracing::warn!(
                        url = %self.settings.url,
                        %error,
                        failed_spans = self.failed_since_log,
                        retry_buffer = self.retry_spans + n,
                        "OTLP span export failed; spans kept for retry up to otlp.retry_buffer \
                         (next warning in a minute at the earliest, see \
                         tenantscope_agent_spans_total)"
                    );
                    self.failed_since_log = 0;
                }
                match kept {
                    Some(spans) => {
                        // Back in front: it is the oldest.
                        self.retry.push_front((origin, spans));
                        self.retry_spans += n;
                        self.metrics.retry_buffer.inc_by(n as i64);
                        self.trim_retries();
                        let wait = self.backoff.failed();
                        self.retry_at = Some(Instant::now() + wait);
                    }
                    None => self.metrics.count(Outcome::DroppedExportFailed, n as u64),
                }
                false
            }
        }
    }

    /// Queues a request behind the failed ones.
    fn keep_for_retry(&mut self, origin: Origin, spans: Vec<SpanData>) {
        let n = spans.len();
        self.retry.push_back((origin, spans));
        self.retry_spans += n;
        self.metrics.retry_buffer.inc_by(n as i64);
        self.trim_retries();
    }

    /// Drops the oldest requests until at most `retry_buffer` spans wait.
    fn trim_retries(&mut self) {
        while self.retry_spans > self.settings.retry_buffer {
            let Some((_, spans)) = self.retry.pop_front() else {
                break;
            };
            let n = spans.len();
            self.retry_spans -= n;
            self.metrics.retry_buffer.dec_by(n as i64);
            self.metrics.count(Outcome::DroppedRetryFull, n as u64);
        }
        if self.retry.is_empty() {
            self.retry_at = None;
        }
    }

    /// Counts what still waits for a retry as `dropped_export_failed` (shutdown).
    fn give_up_retries(&mut self) {
        let n = std::mem::take(&mut self.retry_spans);
        if n > 0 {
            self.retry.clear();
            self.retry_at = None;
            self.metrics.retry_buffer.dec_by(n as i64);
            self.metrics.count(Outcome::DroppedExportFailed, n as u64);
        }
    }

    async fn export_one(
        &mut self,
        origin: &Origin,
        spans: Vec<opentelemetry_sdk::trace::SpanData>,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let Some(exporter) = self.exporter.as_mut() else {
            return Err("no exporter (see the error at startup)".to_owned());
        };
        let deadline =
            deadline.unwrap_or_else(|| Instant::now() + self.settings.timeout + EXPORT_GRACE);
        if Instant::now() >= deadline {
            return Err("shutdown deadline passed".to_owned());
        }
        if self.resources.len() >= MAX_CACHED_RESOURCES && !self.resources.contains_key(origin) {
            self.resources.clear();
        }
        let resource = self
            .resources
            .entry(origin.clone())
            .or_insert_with(|| self.base.for_origin(origin));
        exporter.set_resource(resource);
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline, exporter.export(spans)).await;
        self.metrics
            .export_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("export timed out".to_owned()),
        }
    }

    fn warn_queue_full(&mut self) {
        let dropped = self.metrics.spans(Outcome::DroppedQueueFull);
        if dropped > self.queue_full_seen && self.queue_full.ready() {
            tracing::warn!(
                dropped = dropped - self.queue_full_seen,
                queue_size = self.rx.max_capacity(),
                "span queue full; spans dropped (raise otlp.queue_size or lower the sampling ratio)"
            );
            self.queue_full_seen = dropped;
        }
    }
}

/// The resource base of this node: `host.name` and `k8s.node.name` as given, then
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` from the environment (a malformed
/// `OTEL_RESOURCE_ATTRIBUTES` is logged and ignored).
pub fn resource_from_env(host_name: Option<&str>, node_name: Option<&str>) -> ResourceBase {
    let service_name = std::env::var("OTEL_SERVICE_NAME").ok();
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok();
    let (base, error) = ResourceBase::new(host_name, node_name)
        .with_env(service_name.as_deref(), attributes.as_deref());
    if let Some(error) = error {
        tracing::warn!(%error, "ignoring a malformed resource variable");
    }
    base
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the kernel's timestamps
/// (`bpf_ktime_get_ns`), for [`crate::aggregate::http::HttpPipeline::tick`].
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Reads both clocks, for span times; take a new reading now and then (e.g. every minute) to
/// follow wall-clock corrections.
pub fn mono_to_unix_now() -> MonoToUnix {
    let mono = monotonic_now_ns();
    MonoToUnix::from_readings(mono, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::http::ExchangeRecord;
    use crate::{
        aggregate::http::{HttpMetrics, HttpPipeline, SpanSetup},
        config::TracesSampler,
        http::{
            pairing::Role,
            route::{RouteTable, RoutesConfig},
            tenant::{TenantConfig, TenantResolver},
            trace::hex,
        },
        spans::SpanOptions,
    };
    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
        common::v1::any_value,
        trace::v1::{Span as ProtoSpan, span::SpanKind as ProtoKind, status::StatusCode},
    };
    use prost::Message as _;
    use tokio::{net::TcpListener, sync::mpsc::UnboundedSender};

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    /// A minimal OTLP/HTTP receiver: every decoded request goes to the channel.
    async fn http_receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
        http_receiver_on(TcpListener::bind("127.0.0.1:0").await.expect("bind")).await
    }

    async fn http_receiver_on(
        listener: TcpListener,
    ) -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
        use axum::{
            Router,
            body::Bytes,
            extract::State,
            http::{StatusCode as Http, header},
            routing::post,
        };
        async fn traces(
            State(tx): State<UnboundedSender<ExportTraceServiceRequest>>,
            headers: axum::http::HeaderMap,
            body: Bytes,
        ) -> (Http, [(header::HeaderName, &'static str); 1], Vec<u8>) {
            assert_eq!(
                headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some("application/x-protobuf")
            );
            assert_eq!(
                headers
                    .get("x-tenantscope-test")
                    .and_then(|v| v.to_str().ok()),
                Some("yes"),
                "configured headers are sent"
            );
            let request = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
            tx.send(request).expect("test still listening");
            (
                Http::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = listener.local_addr().expect("address");
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(tx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), rx)
    }

    struct GrpcReceiver(UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for GrpcReceiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            assert_eq!(
                request
                    .metadata()
                    .get("x-tenantscope-test")
                    .and_then(|v| v.to_str().ok()),
                Some("yes"),
                "configured headers are sent as metadata"
            );
            self.0.send(request.into_inner()).expect("test listening");
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    async fn grpc_receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(GrpcReceiver(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (format!("http://{addr}"), rx)
    }

    fn config(protocol: OtlpProtocol, endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            protocol,
            endpoint: endpoint.to_owned(),
            batch_timeout: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            headers: [("x-tenantscope-test".to_owned(), "yes".to_owned())].into(),
            ..OtlpConfig::default()
        }
    }

    fn pipeline(sink: SpanSink, metrics: SpanMetrics) -> HttpPipeline {
        HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).expect("default routes"),
            TenantResolver::new(&TenantConfig::default()).expect("default tenants"),
            1000,
            HttpMetrics::default(),
            &[],
        )
        .with_spans(SpanSetup {
            options: SpanOptions::default(),
            metrics,
            sink: Some(sink),
            clock: MonoToUnix::from_readings(0, SystemTime::UNIX_EPOCH),
        })
    }

    /// Feeds real HTTP bytes through the pipeline: a server request with a traceparent on
    /// thread 7 of process 7, an outgoing request the same thread made while serving it (503),
    /// and a server request of another workload without trace context (500).
    fn traffic(p: &mut HttpPipeline) {
        let label = |tgid: u32| Origin::host(if tgid == 7 { "api" } else { "web" });
        p.on_record(
            &ExchangeRecord::test(
                2,
                Role::Client,
                7,
                7,
                b"GET /users/9 HTTP/1.1\r\nHost: users.internal\r\nX-Tenant-ID: acme\r\n\r\n",
                b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                2_000_000,
                4_000_000,
            )
            .serving(crate::parenting::Serving::One {
                conn: 1,
                req_ts: 1_000_000,
            }),
            label,
        );
        let req = format!(
            "GET /posts/42?secret=1 HTTP/1.1\r\nHost: acme.platform.example\r\nX-Tenant-ID: acme\r\n\
             traceparent: 00-{TRACE_ID}-{PARENT_ID}-01\r\n\r\n"
        );
        p.on_record(
            &ExchangeRecord::test(
                1,
                Role::Server,
                7,
                7,
                req.as_bytes(),
                b"HTTP/1.1 200 OK\r\n\r\n",
                1_000_000,
                21_000_000,
            ),
            label,
        );
        p.on_record(
            &ExchangeRecord::test(
                3,
                Role::Server,
                8,
                8,
                b"POST /posts HTTP/1.0\r\nHost: x\r\nX-Tenant-ID: globex\r\n\r\n",
                b"HTTP/1.0 500 Oops\r\n\r\n",
                30_000_000,
                31_000_000,
            ),
            label,
        );
    }

    fn attr(span: &ProtoSpan, key: &str) -> Option<any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn string(s: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(s.to_owned()))
    }

    /// (service.name, span) for every span received.
    fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<(String, ProtoSpan)> {
        let mut out = Vec::new();
        for r in requests {
            for rs in &r.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.clone()?.value);
                let Some(any_value::Value::StringValue(service)) = service else {
                    panic!("every resource has a service.name: {rs:?}");
                };
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((service.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }

    async fn export_traffic(protocol: OtlpProtocol) {
        let (endpoint, mut rx) = match protocol {
            OtlpProtocol::HttpProtobuf => http_receiver().await,
            OtlpProtocol::Grpc => grpc_receiver().await,
        };
        let metrics = SpanMetrics::default();
        let (sink, task) = start(
            &config(protocol, &endpoint),
            ResourceBase::new(Some("node-1"), Some("node-1")),
            metrics.clone(),
        );
        let task = tokio::spawn(task.run(std::future::pending()));
        let mut p = pipeline(sink, metrics.clone());
        traffic(&mut p);
        assert_eq!(
            p.pending_client_spans(),
            0,
            "the server span claimed its client"
        );
        // Dropping the pipeline drops the last sink: the task flushes and ends.
        drop(p);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends once the sink is gone")
            .expect("no panic");

        let mut requests = Vec::new();
        while let Ok(r) = rx.try_recv() {
            requests.push(r);
        }
        let spans = flatten(&requests);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        assert_eq!(metrics.spans(Outcome::Exported), 3);
        assert_eq!(metrics.spans(Outcome::DroppedExportFailed), 0);
        assert_eq!(metrics.queue_length(), 0);

        let find = |name: &str| {
            spans
                .iter()
                .find(|(_, s)| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
        };
        let (service, server) = find("GET /posts/{id}");
        assert_eq!(service, "api");
        assert_eq!(hex(&server.trace_id), TRACE_ID);
        assert_eq!(hex(&server.parent_span_id), PARENT_ID);
        assert_eq!(server.kind, ProtoKind::Server as i32);
        let status = server.status.clone().unwrap_or_default();
        assert_eq!(status.code, StatusCode::Unset as i32);
        assert_eq!(attr(server, "tenant.id"), string("acme"));
        assert_eq!(attr(server, "url.path"), string("/posts/42"));
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(server.start_time_unix_nano, 1_000_000);
        assert_eq!(server.end_time_unix_nano, 21_000_000);
        // The remote-parent bit of the span flags (OTLP 1.4+): set, and known.
        assert_eq!(server.flags & 0x300, 0x300, "flags {:#x}", server.flags);

        let (service, client) = find("GET /users/{id}");
        assert_eq!(service, "api");
        assert_eq!(hex(&client.trace_id), TRACE_ID);
        assert_eq!(client.parent_span_id, server.span_id);
        assert_eq!(client.kind, ProtoKind::Client as i32);
        let status = client.status.clone().unwrap_or_default();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(attr(client, "error.type"), string("503"));
        assert_eq!(attr(client, "tenant.id"), string("acme"));

        let (service, other) = find("POST /posts");
        assert_eq!(service, "web");
        assert_ne!(hex(&other.trace_id), TRACE_ID);
        assert!(other.parent_span_id.is_empty(), "a root span");
        assert_eq!(other.kind, ProtoKind::Server as i32);
        let status = other.status.clone().unwrap_or_default();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(attr(other, "error.type"), string("500"));
        assert_eq!(attr(other, "tenant.id"), string("globex"));
        assert_eq!(attr(other, "network.protocol.version"), string("1.0"));

        // One resource per workload, with the node's attributes.
        for r in &requests {
            for rs in &r.resource_spans {
                let res = rs.resource.as_ref().expect("resource");
                assert!(
                    res.attributes.iter().any(|kv| kv.key == "host.name"
                        && kv.value.clone().and_then(|v| v.value) == string("node-1")),
                    "{res:?}"
                );
                assert!(rs.scope_spans.iter().all(|ss| {
                    ss.scope
                        .as_ref()
                        .is_some_and(|s| s.name == "tenantscope-agent")
                }));
            }
        }
    }

    #[tokio::test]
    async fn spans_reach_an_otlp_http_receiver() {
        export_traffic(OtlpProtocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn spans_reach_an_otlp_grpc_receiver() {
        export_traffic(OtlpProtocol::Grpc).await;
    }

    #[tokio::test]
    async fn unreachable_collector_drops_and_counts() {
        // A port that was free a moment ago: connections are refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").port()
        };
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let metrics = SpanMetrics::default();
            let (sink, task) = start(
                &config(protocol, &format!("http://127.0.0.1:{port}")),
                ResourceBase::default(),
                metrics.clone(),
            );
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(task.run(async {
                let _ = stop_rx.await;
            }));
            let mut p = pipeline(sink, metrics.clone());
            traffic(&mut p);
            // Wait for the batch to fail (retries included) and wait for a retry, with the
            // pipeline still alive.
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                while metrics.retry_buffer() < 3 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "{protocol:?}: failed spans should wait for a retry"
            );
            assert_eq!(metrics.spans(Outcome::DroppedExportFailed), 0);
            // At shutdown they get one more attempt, then are counted as dropped.
            // After shutdown began, offers are counted as dropped too, never blocking.
            stop_tx.send(()).expect("task running");
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("shutdown is bounded")
                .expect("no panic");
            traffic(&mut p);
            assert_eq!(metrics.spans(Outcome::Exported), 0);
            assert_eq!(
                metrics.spans(Outcome::DroppedExportFailed),
                6,
                "{protocol:?}"
            );
            assert_eq!(metrics.queue_length(), 0);
            assert_eq!(metrics.retry_buffer(), 0);
        }
    }

    /// A port that was free a moment ago (connections to it are refused) and a listener that
    /// takes it later.
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").port()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    #[tokio::test]
    async fn spans_wait_out_a_collector_outage_and_arrive() {
        let port = free_port();
        let cfg = OtlpConfig {
            retry_max_backoff: Duration::from_secs(1),
            ..config(
                OtlpProtocol::HttpProtobuf,
                &format!("http://127.0.0.1:{port}"),
            )
        };
        let metrics = SpanMetrics::default();
        let (sink, task) = start(&cfg, ResourceBase::default(), metrics.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(task.run(async {
            let _ = stop_rx.await;
        }));
        let mut p = pipeline(sink, metrics.clone());
        // Ten rounds of three spans while nothing listens, a batch every 20 ms.
        for _ in 0..10 {
            traffic(&mut p);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for("30 spans in the retry buffer", || {
            metrics.retry_buffer() == 30
        })
        .await;
        assert_eq!(metrics.spans(Outcome::Exported), 0);
        // The collector comes back on the same port.
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind");
        let (_, mut rx) = http_receiver_on(listener).await;
        wait_for("the retries to be exported", || {
            metrics.spans(Outcome::Exported) == 30
        })
        .await;
        traffic(&mut p);
        wait_for("a new batch", || metrics.spans(Outcome::Exported) == 33).await;
        stop_tx.send(()).expect("task running");
        task.await.expect("no panic");
        let mut received = Vec::new();
        while let Ok(r) = rx.try_recv() {
            received.push(r);
        }
        let spans = flatten(&received);
        assert_eq!(spans.len(), 33, "every span arrives once");
        let ids: std::collections::HashSet<_> =
            spans.iter().map(|(_, s)| s.span_id.clone()).collect();
        assert_eq!(ids.len(), 33, "no duplicates");
        for o in [
            Outcome::DroppedExportFailed,
            Outcome::DroppedRetryFull,
            Outcome::DroppedQueueFull,
        ] {
            assert_eq!(metrics.spans(o), 0, "{o:?}");
        }
        assert_eq!(metrics.retry_buffer(), 0);
    }

    #[tokio::test]
    async fn a_full_retry_buffer_drops_the_oldest_and_counts() {
        let port = free_port();
        let cfg = OtlpConfig {
            retry_buffer: 7,
            ..config(
                OtlpProtocol::HttpProtobuf,
                &format!("http://127.0.0.1:{port}"),
            )
        };
        let metrics = SpanMetrics::default();
        let (sink, task) = start(&cfg, ResourceBase::default(), metrics.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(task.run(async {
            let _ = stop_rx.await;
        }));
        let mut p = pipeline(sink, metrics.clone());
        for _ in 0..10 {
            traffic(&mut p);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for("every batch to be handled", || {
            metrics.retry_buffer() + metrics.spans(Outcome::DroppedRetryFull) as i64 == 30
        })
        .await;
        assert!(metrics.retry_buffer() <= 7);
        let kept = metrics.retry_buffer() as u64;
        stop_tx.send(()).expect("task running");
        task.await.expect("no panic");
        assert_eq!(metrics.spans(Outcome::DroppedRetryFull), 30 - kept);
        assert_eq!(
            metrics.spans(Outcome::DroppedExportFailed),
            kept,
            "given up at shutdown"
        );
        assert_eq!(metrics.spans(Outcome::Exported), 0);
        assert_eq!(metrics.retry_buffer(), 0);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let mut bases = Vec::new();
        for _ in 0..6 {
            let base = b.next;
            let wait = b.failed();
            assert!(
                wait >= base / 2 && wait <= base,
                "{wait:?} within [{base:?}/2, {base:?}]"
            );
            bases.push(base.as_secs());
        }
        assert_eq!(bases, [1, 2, 4, 8, 10, 10]);
        // At the maximum the base no longer moves: only the jitter does.
        let waits: std::collections::HashSet<_> = (0..8).map(|_| b.failed()).collect();
        assert!(waits.len() > 1, "the waits are jittered");
        b.succeeded();
        assert_eq!(b.next, RETRY_INITIAL);
    }

    #[tokio::test]
    async fn full_queue_drops_without_blocking() {
        let metrics = SpanMetrics::default();
        let cfg = OtlpConfig {
            queue_size: 64,
            batch_size: 64,
            ..config(OtlpProtocol::HttpProtobuf, "http://127.0.0.1:9")
        };
        let (sink, task) = start(&cfg, ResourceBase::default(), metrics.clone());
        let mut p = pipeline(sink, metrics.clone());
        // The task is not running: nothing leaves the queue.
        for _ in 0..30 {
            traffic(&mut p);
        }
        assert_eq!(metrics.spans(Outcome::DroppedQueueFull), 90 - 64);
        assert_eq!(metrics.queue_length(), 64);
        // Dropped unrun, the task counts what it held; later offers count as failed too.
        drop(task);
        assert_eq!(metrics.spans(Outcome::DroppedExportFailed), 64);
        assert_eq!(metrics.queue_length(), 0);
        traffic(&mut p);
        assert_eq!(metrics.spans(Outcome::DroppedExportFailed), 67);
        assert_eq!(metrics.queue_length(), 0);
    }

    #[tokio::test]
    async fn unsampled_spans_are_counted_not_queued() {
        let metrics = SpanMetrics::default();
        let (sink, _task) = start(
            &config(OtlpProtocol::Grpc, ""),
            ResourceBase::default(),
            metrics.clone(),
        );
        let mut p = HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).expect("default routes"),
            TenantResolver::new(&TenantConfig::default()).expect("default tenants"),
            1000,
            HttpMetrics::default(),
            &[],
        )
        .with_spans(SpanSetup {
            options: SpanOptions {
                sampler: crate::spans::sampler(TracesSampler::ParentbasedAlwaysOff, 1.0),
                ..SpanOptions::default()
            },
            metrics: metrics.clone(),
            sink: Some(sink),
            clock: MonoToUnix::from_readings(0, SystemTime::UNIX_EPOCH),
        });
        traffic(&mut p);
        // The traceparent is sampled: its server span and the client under it are kept; the
        // new trace is not.
        assert_eq!(metrics.queue_length(), 2);
        assert_eq!(metrics.spans(Outcome::NotSampled), 1);
    }

    #[test]
    fn metrics_are_registered_with_their_names() {
        let m = SpanMetrics::default();
        m.count(Outcome::Exported, 2);
        m.unparented(Unparented::BufferFull);
        let mut r = Registry::default();
        m.register(&mut r);
        let text = crate::telemetry::encode(&r);
        for needle in [
            "tenantscope_agent_spans_total{outcome=\"exported\"} 2",
            "tenantscope_agent_spans_total{outcome=\"dropped_queue_full\"} 0",
            "tenantscope_agent_spans_total{outcome=\"dropped_export_failed\"} 0",
            "tenantscope_agent_spans_total{outcome=\"not_sampled\"} 0",
            "tenantscope_agent_span_export_duration_seconds_bucket{le=\"+Inf\"} 0",
            "tenantscope_agent_span_queue_length 0",
            "tenantscope_agent_client_spans_unparented_total{reason=\"buffer_full\"} 1",
            "tenantscope_agent_client_spans_unparented_total{reason=\"no_server_span\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
    }

    #[test]
    fn settings_resolve_the_endpoint_per_protocol() {
        let mut cfg = OtlpConfig::default();
        assert_eq!(
            ExportSettings::from_config(&cfg).url,
            "http://127.0.0.1:4317"
        );
        cfg.protocol = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            ExportSettings::from_config(&cfg).url,
            "http://127.0.0.1:4318/v1/traces"
        );
        cfg.endpoint = "http://collector:4318/".into();
        assert_eq!(
            ExportSettings::from_config(&cfg).url,
            "http://collector:4318/v1/traces"
        );
        cfg.protocol = OtlpProtocol::Grpc;
        cfg.endpoint = "http://collector:4317".into();
        assert_eq!(
            ExportSettings::from_config(&cfg).url,
            "http://collector:4317"
        );
    }

    #[test]
    fn clocks_are_read() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
        let clock = mono_to_unix_now();
        let now = clock.to_system_time(monotonic_now_ns());
        let drift = now
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }
}
