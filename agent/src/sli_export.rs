//! The OTLP metrics export of the server-side request SLIs. Spans are sampled, so a collector
//! cannot count requests from them; this export counts every server exchange the HTTP pipeline
//! also counts in `http_server_request_duration_seconds`, and the collector turns it into
//! per-tenant SLA rollups.
//!
//! Three parts:
//! - [`SliAccumulator`] (pure, synchronous): owned by the HTTP pipeline, one hash-map update per
//!   server exchange whose key is the RED series key (`Arc<str>` labels, no allocation for a
//!   known series). The agent loop cuts an interval with [`SliAccumulator::take`], which swaps
//!   the map for an empty one.
//! - [`encode_request`] (pure): one interval to one `ExportMetricsServiceRequest`.
//! - [`SliExporter`] / [`SliExporterTask`] (the I/O shell): a bounded queue of encoded requests,
//!   sent over OTLP/gRPC or OTLP/HTTP, retried with the same bytes.
//!
//! # Wire contract (what the collector relies on)
//!
//! - Every `otlp.metrics_interval` (default 10s) the agent sends at most one
//!   `ExportMetricsServiceRequest` (opentelemetry-proto, OTLP 1.x) carrying the server requests
//!   whose response started in that interval. An interval without any request sends nothing
//!   (no empty requests).
//! - One `ResourceMetrics` per workload. Its resource is the one the workload's spans carry
//!   ([`ResourceBase::for_workload`]): `service.name` = the workload label, `host.name`,
//!   `k8s.node.name`, then `OTEL_RESOURCE_ATTRIBUTES` / `OTEL_SERVICE_NAME`, attributes sorted by
//!   key. Workloads whose resources are equal (`OTEL_SERVICE_NAME` set) share one
//!   `ResourceMetrics`, and their series with equal attributes are merged into one data point.
//! - One `ScopeMetrics`, scope name `tenantscope-agent`, version the agent's version.
//! - One metric `http.server.request.duration`, unit `s`, a `Histogram` with
//!   `AGGREGATION_TEMPORALITY_DELTA`.
//! - One `HistogramDataPoint` per (method, status, route, tenant, url.scheme) series that had
//!   requests in the interval (never a zero-count point), sorted by route, method, status,
//!   tenant. Attributes, in this order: `http.request.method` (string; `_OTHER` outside the
//!   known methods), `http.response.status_code` (int), `http.route` (string; the route
//!   template, or the fold-in values `_other` / `_unmatched` exactly as on the Prometheus label),
//!   `tenant.id` (string; including `unknown`, `invalid` and the overflow value), `url.scheme`
//!   (string, `http`).
//! - `explicit_bounds` = [`DURATION_BUCKETS`] (14 bounds, seconds), `bucket_counts` (15, not
//!   cumulative; bucket `i` counts durations in `(bounds[i-1], bounds[i]]`, the last one above
//!   10 s), `count`, `sum` (seconds), `min` and `max` (always set). A duration is first request
//!   byte read to first response byte written, as for the Prometheus histogram.
//! - `start_time_unix_nano` = the end of the previous interval (the agent's start for the first
//!   one), `time_unix_nano` = the end of this interval, wall clock. Consecutive requests of one
//!   agent therefore tile time without gaps or overlaps; an interval the agent could not hand to
//!   the exporter (it was still busy) simply lasts longer.
//! - Only server exchanges (`Role::Server`), and only those the Prometheus series cap
//!   (`http.max_series`) admitted: an exchange counted in
//!   `tenantscope_agent_http_series_overflow_total` is in neither.
//!
//! # Delivery
//!
//! - An encoded request is kept as bytes until the collector accepted it. A failed attempt
//!   (connection error, timeout, non-2xx HTTP status, any gRPC error) leaves it queued, and it is
//!   sent again at a later interval tick with the **same bytes**, after a backoff (from one
//!   interval, doubling up to `otlp.retry_max_backoff`, with jitter: agents coming back after a
//!   collector outage do not all retry at once): the collector deduplicates
//!   retries by content, so a retry after a lost acknowledgement does not count twice. A failed
//!   request is never merged into a later one.
//! - At each tick the queue is sent oldest first, at most one attempt per request, stopping at
//!   the first failure. At most `otlp.metrics_queue` requests wait (default 60, 10 minutes at
//!   the default interval); beyond it the oldest is dropped and counted.
//! - A partial success (`rejected_data_points`) is accepted: the rejected points are counted as
//!   dropped, the rest as exported (a retry would be rejected again).
//! - At shutdown the last, partial interval is encoded and attempted once; if that worked, what
//!   is still queued is attempted oldest first until a failure; all within one `otlp.timeout`.
//!   What is left is dropped and counted.
//! - Transport as for spans: `otlp.protocol`, `otlp.endpoint` (`/v1/metrics` appended for
//!   http/protobuf, with `content-type: application/x-protobuf`), `otlp.headers` (gRPC metadata
//!   or HTTP headers) and the own-export marker header [`OWN_EXPORT_HEADER`]; each attempt is
//!   bounded by `otlp.timeout`.
//! - Self-metrics: `tenantscope_agent_sli_exports_total{outcome}` (`ok`: an attempt the
//!   collector accepted; `failed`: an attempt that failed, the request kept for a retry;
//!   `dropped`: a request given up), `tenantscope_agent_sli_points_total{outcome}` (`exported`,
//!   `dropped`) and `tenantscope_agent_sli_export_queue_length`.
//!
//! Memory is bounded by `http.max_series` (the accumulator) and `otlp.metrics_queue` times one
//! encoded request (about 200 bytes per data point).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, metric,
    },
    resource::v1::Resource,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use prost::{Message as _, bytes::Bytes};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    aggregate::{
        FastMap,
        http::{DURATION_BUCKETS, RedLabels},
    },
    config::{OtlpConfig, OtlpProtocol},
    otlp::{OWN_EXPORT_HEADER, OutcomeLabels},
    spans::ResourceBase,
};

pub const SLI_EXPORTS: &str = "tenantscope_agent_sli_exports";
pub const SLI_POINTS: &str = "tenantscope_agent_sli_points";
pub const SLI_EXPORT_QUEUE_LENGTH: &str = "tenantscope_agent_sli_export_queue_length";

/// The exported metric (OpenTelemetry HTTP semantic conventions).
pub const METRIC_NAME: &str = "http.server.request.duration";
/// The instrumentation scope of the export (the same as the spans').
pub const SCOPE_NAME: &str = env!("CARGO_PKG_NAME");
/// Buckets of a data point: one per bound, plus the one above the last bound.
pub const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// Longest response body read (a partial-success message); the rest is ignored.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Warnings are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Intervals handed from the agent loop to the export task: one waiting, plus the last one at
/// shutdown, which therefore always fits.
const HANDOVER_CAPACITY: usize = 2;

/// What became of an export request (`tenantscope_agent_sli_exports_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportOutcome {
    /// An attempt the collector accepted.
    Ok,
    /// An attempt that failed; the request stays queued for the next tick.
    Failed,
    /// A request given up: the queue was full, or the agent stopped.
    Dropped,
}

impl ExportOutcome {
    pub const ALL: [ExportOutcome; 3] = [
        ExportOutcome::Ok,
        ExportOutcome::Failed,
        ExportOutcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportOutcome::Ok => "ok",
            ExportOutcome::Failed => "failed",
            ExportOutcome::Dropped => "dropped",
        }
    }
}

/// What became of a data point (`tenantscope_agent_sli_points_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointOutcome {
    /// In a request the collector accepted (and did not reject as a partial success).
    Exported,
    /// In a request given up, or rejected by the collector.
    Dropped,
}

impl PointOutcome {
    pub const ALL: [PointOutcome; 2] = [PointOutcome::Exported, PointOutcome::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            PointOutcome::Exported => "exported",
            PointOutcome::Dropped => "dropped",
        }
    }
}

/// The SLI export self-metrics; cheap to clone (shared handles). Register once with
/// [`SliMetrics::register`].
#[derive(Clone, Debug)]
pub struct SliMetrics {
    exports: Family<OutcomeLabels, Counter>,
    points: Family<OutcomeLabels, Counter>,
    queue_length: Gauge,
}

impl Default for SliMetrics {
    fn default() -> Self {
        let m = Self {
            exports: Family::default(),
            points: Family::default(),
            queue_length: Gauge::default(),
        };
        // Every series exists from the start, so a failure shows as a rate, not a new series.
        for o in ExportOutcome::ALL {
            let _ = m.exports.get_or_create(&OutcomeLabels {
                outcome: o.as_str(),
            });
        }
        for o in PointOutcome::ALL {
            let _ = m.points.get_or_create(&OutcomeLabels {
                outcome: o.as_str(),
            });
        }
        m
    }
}

impl SliMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            SLI_EXPORTS,
            "OTLP export requests of the request SLI metrics, by outcome: ok (an attempt the \
             collector accepted), failed (an attempt that failed; the request is retried at the \
             next interval) or dropped (a request given up: queue full or shutdown)",
            self.exports.clone(),
        );
        registry.register(
            SLI_POINTS,
            "Data points of the request SLI metrics, by outcome: exported (accepted by the \
             collector) or dropped (given up, or rejected by the collector)",
            self.points.clone(),
        );
        registry.register(
            SLI_EXPORT_QUEUE_LENGTH,
            "Request SLI export requests waiting for a retry (bounded by otlp.metrics_queue)",
            self.queue_length.clone(),
        );
    }

    fn count_export(&self, outcome: ExportOutcome) {
        self.exports
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    fn count_points(&self, outcome: PointOutcome, n: u64) {
        if n > 0 {
            self.points
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.as_str(),
                })
                .inc_by(n);
        }
    }

    pub fn exports(&self, outcome: ExportOutcome) -> u64 {
        self.exports
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub fn points(&self, outcome: PointOutcome) -> u64 {
        self.points
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    pub fn queue_length(&self) -> i64 {
        self.queue_length.get()
    }
}

/// The bucket of a duration: the first bound it does not exceed, or the last bucket.
pub fn bucket_of(seconds: f64) -> usize {
    DURATION_BUCKETS.partition_point(|&bound| bound < seconds)
}

/// One series' requests in an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCounts {
    /// Per bucket, not cumulative (see [`bucket_of`]).
    pub bucket_counts: [u64; BUCKETS],
    pub count: u64,
    /// Seconds.
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl SeriesCounts {
    fn first(seconds: f64) -> Self {
        let mut bucket_counts = [0; BUCKETS];
        bucket_counts[bucket_of(seconds)] = 1;
        Self {
            bucket_counts,
            count: 1,
            sum: seconds,
            min: seconds,
            max: seconds,
        }
    }

    #[inline]
    fn observe(&mut self, seconds: f64) {
        self.bucket_counts[bucket_of(seconds)] += 1;
        self.count += 1;
        self.sum += seconds;
        self.min = self.min.min(seconds);
        self.max = self.max.max(seconds);
    }

    fn merge(&mut self, other: &SeriesCounts) {
        for (a, b) in self.bucket_counts.iter_mut().zip(other.bucket_counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// The requests of one interval, per RED series (the workload included).
#[derive(Debug, Clone, PartialEq)]
pub struct SliInterval {
    /// Wall clock: the end of the previous interval, or when accumulation began.
    pub start: SystemTime,
    /// Wall clock; never before `start`.
    pub end: SystemTime,
    pub series: FastMap<RedLabels, SeriesCounts>,
}

impl SliInterval {
    /// An interval without requests, from `at` to `at`.
    pub fn empty(at: SystemTime) -> Self {
        Self {
            start: at,
            end: at,
            series: FastMap::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Server requests per RED series since the last [`SliAccumulator::take`]. Pure: times are
/// parameters.
#[derive(Debug)]
pub struct SliAccumulator {
    series: FastMap<RedLabels, SeriesCounts>,
    start: SystemTime,
}

impl SliAccumulator {
    /// Accumulation begins at `start` (wall clock), the start of the first interval.
    pub fn new(start: SystemTime) -> Self {
        Self {
            series: FastMap::default(),
            start,
        }
    }

    /// Counts one request of `labels` that took `seconds`: one hash-map lookup, plus an insert
    /// (cloning the `Arc` labels) for the first request of a series in the interval.
    #[inline]
    pub fn record(&mut self, labels: &RedLabels, seconds: f64) {
        match self.series.get_mut(labels) {
            Some(counts) => counts.observe(seconds),
            None => {
                self.series
                    .insert(labels.clone(), SeriesCounts::first(seconds));
            }
        }
    }

    /// Series with requests in the current interval.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Ends the current interval at `end` (wall clock; an earlier time than its start, after a
    /// clock step back, is taken as its start) and returns it; the next one starts at `end`,
    /// with an empty map sized like the last one.
    pub fn take(&mut self, end: SystemTime) -> SliInterval {
        let end = end.max(self.start);
        let capacity = self.series.len();
        let series = std::mem::replace(
            &mut self.series,
            FastMap::with_capacity_and_hasher(capacity, Default::default()),
        );
        let start = std::mem::replace(&mut self.start, end);
        SliInterval { start, end, series }
    }
}

/// One data point's identity within a resource: the attributes (sorted by route first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PointKey<'a> {
    route: &'a str,
    method: &'static str,
    status: u16,
    tenant: &'a str,
    scheme: &'static str,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The OTLP form of `workload`'s span resource, attributes sorted by key.
fn resource_of(base: &ResourceBase, workload: &str) -> Resource {
    let resource = base.for_workload(workload);
    let mut attributes: Vec<KeyValue> = resource
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.as_str().to_owned(),
            value: Some(AnyValue::from(v.clone())),
            ..Default::default()
        })
        .collect();
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    Resource {
        attributes,
        ..Default::default()
    }
}

fn data_point(key: &PointKey<'_>, c: &SeriesCounts, start: u64, end: u64) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: vec![
            string_attr("http.request.method", key.method),
            int_attr("http.response.status_code", i64::from(key.status)),
            string_attr("http.route", key.route),
            string_attr("tenant.id", key.tenant),
            string_attr("url.scheme", key.scheme),
        ],
        start_time_unix_nano: start,
        time_unix_nano: end,
        count: c.count,
        sum: Some(c.sum),
        bucket_counts: c.bucket_counts.to_vec(),
        explicit_bounds: DURATION_BUCKETS.to_vec(),
        min: Some(c.min),
        max: Some(c.max),
        ..Default::default()
    }
}

/// The export request of one interval (see the wire contract in the module docs) and its
/// number of data points; `None` when the interval had no request.
pub fn encode_request(
    interval: &SliInterval,
    base: &ResourceBase,
) -> Option<(ExportMetricsServiceRequest, u64)> {
    if interval.is_empty() {
        return None;
    }
    let (start, end) = (unix_nanos(interval.start), unix_nanos(interval.end));
    // Keyed by the encoded resource: workloads with equal resources share one entry.
    let mut groups: BTreeMap<Vec<u8>, (Resource, BTreeMap<PointKey<'_>, SeriesCounts>)> =
        BTreeMap::new();
    let mut group_of: HashMap<&str, Vec<u8>> = HashMap::new();
    for (labels, counts) in &interval.series {
        let workload = &*labels.workload.0;
        let group = match group_of.get(workload) {
            Some(key) => groups.get_mut(key),
            None => {
                let resource = resource_of(base, workload);
                let key = resource.encode_to_vec();
                group_of.insert(workload, key.clone());
                Some(
                    groups
                        .entry(key)
                        .or_insert_with(|| (resource, BTreeMap::new())),
                )
            }
        };
        let Some((_, points)) = group else {
            continue;
        };
        let key = PointKey {
            route: &labels.http_route.0,
            method: labels.http_request_method,
            status: labels.http_response_status_code,
            tenant: &labels.tenant.0,
            scheme: labels.url_scheme,
        };
        points
            .entry(key)
            .and_modify(|c| c.merge(counts))
            .or_insert_with(|| counts.clone());
    }
    let scope = InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let mut total = 0u64;
    let resource_metrics = groups
        .into_values()
        .map(|(resource, points)| {
            total += points.len() as u64;
            let data_points = points
                .iter()
                .map(|(key, counts)| data_point(key, counts, start, end))
                .collect();
            ResourceMetrics {
                resource: Some(resource),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: vec![Metric {
                        name: METRIC_NAME.to_owned(),
                        description: "Duration of HTTP server requests, first request byte read \
                                      to first response byte written"
                            .to_owned(),
                        unit: "s".to_owned(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    Some((ExportMetricsServiceRequest { resource_metrics }, total))
}

/// An encoded export request, sent as is at every attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRequest {
    pub body: Bytes,
    pub points: u64,
}

/// [`encode_request`], encoded.
pub fn encode(interval: &SliInterval, base: &ResourceBase) -> Option<EncodedRequest> {
    encode_request(interval, base).map(|(request, points)| EncodedRequest {
        body: Bytes::from(request.encode_to_vec()),
        points,
    })
}

/// The export's settings, resolved from `[otlp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SliSettings {
    pub protocol: OtlpProtocol,
    /// Where requests go: the endpoint for gRPC, `<endpoint>/v1/metrics` for http/protobuf.
    pub url: String,
    /// `otlp.headers`; the own-export marker is added when sending.
    pub headers: Vec<(String, String)>,
    /// Bound of one attempt, and of the whole flush at shutdown.
    pub timeout: Duration,
    /// Requests kept for retry (`otlp.metrics_queue`).
    pub queue: usize,
    pub interval: Duration,
    /// Longest wait between two attempts after failures (`otlp.retry_max_backoff`).
    pub retry_max_backoff: Duration,
    /// The CA certificates to trust when `url` is `https://` (`None`: the Mozilla roots).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl SliSettings {
    pub fn from_config(cfg: &OtlpConfig) -> Self {
        Self {
            tls_ca_pem: cfg.tls_ca_pem.clone(),
            protocol: cfg.protocol,
            url: cfg.signal_url("metrics"),
            headers: cfg.header_pairs(),
            timeout: cfg.timeout,
            queue: cfg.metrics_queue.max(1),
            interval: cfg.metrics_interval,
            retry_max_backoff: cfg.retry_max_backoff,
        }
    }
}

/// A warning that is logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
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

/// An error with its sources, e.g. `client error (Connect): tcp connect error: refused`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn rejected_points(partial: Option<ExportMetricsPartialSuccess>) -> (u64, String) {
    partial.map_or((0, String::new()), |p| {
        (
            u64::try_from(p.rejected_data_points).unwrap_or(0),
            p.error_message,
        )
    })
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How requests are sent.
enum Transport {
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: Box<HttpClient>,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
    },
    /// The settings could not make a client (logged once); every attempt fails.
    Unusable(String),
}

impl Transport {
    /// Builds the client; connections are made at the first attempt. Needs the runtime.
    fn new(s: &SliSettings) -> Self {
        match Self::build(s) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(url = %s.url, error = %e,
                    "cannot build the OTLP metrics client; request SLIs will be counted as dropped");
                Transport::Unusable(e)
            }
        }
    }

    fn build(s: &SliSettings) -> Result<Self, String> {
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in &s.headers {
            let name = axum::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            let value =
                axum::http::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
            headers.insert(name, value);
        }
        // Marks the agent's own export requests: an agent capturing the receiver's end (a
        // collector on this node) skips them instead of counting them.
        headers.insert(
            OWN_EXPORT_HEADER,
            axum::http::HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        match s.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(s.url.clone())
                    .map_err(|e| chain(&e))?
                    .connect_timeout(s.timeout);
                if s.url.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(crate::otlp::grpc_tls(s.tls_ca_pem.as_deref()))
                        .map_err(|e| chain(&e))?;
                }
                Ok(Transport::Grpc {
                    client: MetricsServiceClient::new(endpoint.connect_lazy()),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let uri: axum::http::Uri = s.url.parse().map_err(|e| format!("{e}"))?;
                headers.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/x-protobuf"),
                );
                let connector = crate::otlp::https_connector(s.tls_ca_pem.as_deref(), s.timeout)?;
                Ok(Transport::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    uri,
                    headers,
                })
            }
        }
    }

    /// One attempt, ended at `deadline`: the points the collector rejected (and why) when it
    /// accepted the request, or why it failed.
    async fn send(&mut self, body: &Bytes, deadline: Instant) -> Result<(u64, String), String> {
        if Instant::now() >= deadline {
            return Err("deadline passed".to_owned());
        }
        match self {
            Transport::Unusable(e) => Err(format!("no client: {e}")),
            Transport::Grpc { client, metadata } => {
                // prost encodes deterministically: the message decoded from the stored bytes is
                // sent as exactly those bytes.
                let message = ExportMetricsServiceRequest::decode(body.clone())
                    .map_err(|e| format!("stored request does not decode: {e}"))?;
                let mut request = tonic::Request::new(message);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(deadline.saturating_duration_since(Instant::now()));
                match tokio::time::timeout_at(deadline, client.export(request)).await {
                    Err(_) => Err("timed out".to_owned()),
                    Ok(Err(status)) => Err(format!(
                        "gRPC status {:?}: {}",
                        status.code(),
                        status.message()
                    )),
                    Ok(Ok(response)) => Ok(rejected_points(response.into_inner().partial_success)),
                }
            }
            Transport::Http {
                client,
                uri,
                headers,
            } => {
                let mut request = axum::http::Request::new(Full::new(body.clone()));
                *request.method_mut() = axum::http::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                let exchange = async {
                    let response = client.request(request).await.map_err(|e| chain(&e))?;
                    let status = response.status();
                    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if !status.is_success() {
                        return Err(format!("HTTP status {status}"));
                    }
                    // An empty or undecodable body is a plain success.
                    let response = ExportMetricsServiceResponse::decode(body).unwrap_or_default();
                    Ok(rejected_points(response.partial_success))
                };
                tokio::time::timeout_at(deadline, exchange)
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_owned()))
            }
        }
    }
}

/// The queue of encoded requests and the client that sends them. Driven by interval ticks
/// ([`SliExporter::tick`]) and one last flush ([`SliExporter::finish`]); dropped with requests
/// still queued, it counts them as dropped.
pub struct SliExporter {
    settings: SliSettings,
    base: ResourceBase,
    transport: Transport,
    queue: VecDeque<EncodedRequest>,
    metrics: SliMetrics,
    failures: Throttle,
    overflows: Throttle,
    failing: bool,
    /// After a failure the queue waits (from one interval, doubling up to
    /// `otlp.retry_max_backoff`, each wait drawn from its upper half) so that agents coming
    /// back after a collector outage spread their retries over several ticks.
    backoff: crate::otlp::Backoff,
    retry_at: Option<Instant>,
}

impl Drop for SliExporter {
    fn drop(&mut self) {
        self.drop_queued();
    }
}

impl SliExporter {
    /// Needs the runtime (the gRPC channel's worker).
    pub fn new(settings: SliSettings, base: ResourceBase, metrics: SliMetrics) -> Self {
        let backoff = crate::otlp::Backoff::starting_at(
            settings.interval,
            settings.retry_max_backoff.max(settings.interval),
        );
        Self {
            transport: Transport::new(&settings),
            settings,
            base,
            queue: VecDeque::new(),
            metrics,
            failures: Throttle::default(),
            overflows: Throttle::default(),
            failing: false,
            backoff,
            retry_at: None,
        }
    }

    /// Requests waiting for (another) attempt.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// One interval tick: queues the interval's request (if it had requests), then, unless a
    /// backoff after a failure is still running, sends the queue oldest first, one attempt
    /// each, until the first failure.
    pub async fn tick(&mut self, interval: SliInterval) {
        self.enqueue(&interval);
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.send_queued(None).await;
    }

    /// The flush at shutdown, within one `otlp.timeout`: the last interval's request is
    /// attempted once, then (unless that failed) the queue oldest first until a failure; what
    /// is left is dropped and counted.
    pub async fn finish(&mut self, last: Option<SliInterval>) {
        let deadline = Instant::now() + self.settings.timeout;
        let mut reachable = true;
        if let Some(request) = last.and_then(|interval| encode(&interval, &self.base)) {
            let result = self.transport.send(&request.body, deadline).await;
            reachable = self.settle(&request, result);
            if !reachable {
                self.give_up(&request);
            }
        }
        if reachable && !self.queue.is_empty() && Instant::now() < deadline {
            self.send_queued(Some(deadline)).await;
        }
        self.drop_queued();
    }

    fn enqueue(&mut self, interval: &SliInterval) {
        let Some(request) = encode(interval, &self.base) else {
            return;
        };
        self.queue.push_back(request);
        let mut dropped = 0;
        while self.queue.len() > self.settings.queue {
            if let Some(old) = self.queue.pop_front() {
                dropped += old.points;
                self.give_up(&old);
            }
        }
        if dropped > 0 && self.overflows.ready() {
            tracing::warn!(
                url = %self.settings.url,
                queue = self.settings.queue,
                dropped_points = dropped,
                "request SLI export queue full; the oldest interval was dropped (next warning in \
                 a minute at the earliest, see tenantscope_agent_sli_points_total)"
            );
        }
        self.metrics.queue_length.set(self.queue.len() as i64);
    }

    /// Sends the queue oldest first until a failure; each attempt ends within `otlp.timeout`,
    /// or at `deadline`.
    async fn send_queued(&mut self, deadline: Option<Instant>) {
        while let Some(request) = self.queue.front() {
            let until = deadline.unwrap_or_else(|| Instant::now() + self.settings.timeout);
            let result = self.transport.send(&request.body, until).await;
            let request = request.clone();
            if !self.settle(&request, result) {
                self.retry_at = Some(Instant::now() + self.backoff.failed());
                break;
            }
            self.backoff.succeeded();
            self.retry_at = None;
            self.queue.pop_front();
            self.metrics.queue_length.set(self.queue.len() as i64);
        }
    }

    /// Counts an attempt; whether the collector took the request.
    fn settle(&mut self, request: &EncodedRequest, result: Result<(u64, String), String>) -> bool {
        match result {
            Ok((rejected, message)) => {
                let rejected = rejected.min(request.points);
                self.metrics.count_export(ExportOutcome::Ok);
                self.metrics
                    .count_points(PointOutcome::Exported, request.points - rejected);
                self.metrics.count_points(PointOutcome::Dropped, rejected);
                if rejected > 0 && self.failures.ready() {
                    tracing::warn!(url = %self.settings.url, rejected, %message,
                        "the collector rejected request SLI data points");
                }
                if std::mem::take(&mut self.failing) {
                    tracing::info!(url = %self.settings.url, "OTLP request SLI export works again");
                }
                true
            }
            Err(error) => {
                self.metrics.count_export(ExportOutcome::Failed);
                self.failing = true;
                if self.failures.ready() {
                    tracing::warn!(
                        url = %self.settings.url,
                        %error,
                        queued = self.queue.len(),
                        "OTLP request SLI export failed; retrying the same request at a later \
                         interval, after a backoff (next warning in a minute at the earliest, see \
                         tenantscope_agent_sli_exports_total)"
                    );
                }
                false
            }
        }
    }

    fn give_up(&self, request: &EncodedRequest) {
        self.metrics.count_export(ExportOutcome::Dropped);
        self.metrics
            .count_points(PointOutcome::Dropped, request.points);
    }

    fn drop_queued(&mut self) {
        let left: Vec<EncodedRequest> = self.queue.drain(..).collect();
        if !left.is_empty() {
            let points: u64 = left.iter().map(|r| r.points).sum();
            tracing::warn!(
                requests = left.len(),
                points,
                "request SLI export stopped with requests unsent; dropped"
            );
        }
        for request in &left {
            self.give_up(request);
        }
        self.metrics.queue_length.set(0);
    }
}

/// An interval handed from the agent loop to the export task.
#[derive(Debug)]
struct Handover {
    interval: SliInterval,
    last: bool,
}

/// The agent loop's end of the export: hands over finished intervals without blocking.
#[derive(Debug)]
pub struct SliSender {
    tx: mpsc::Sender<Handover>,
    metrics: SliMetrics,
    interval: Duration,
}

impl SliSender {
    /// `otlp.metrics_interval`: how often to call [`SliSender::offer`].
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// At an interval tick: when the export task has taken the previous interval, cuts the
    /// next one with `cut` (even an empty one: the tick also retries failed requests) and hands
    /// it over; otherwise leaves the current interval running (it is cut at a later tick,
    /// longer, nothing lost) and returns false.
    pub fn offer(&self, cut: impl FnOnce() -> SliInterval) -> bool {
        // Only this sender sends, so an empty channel stays with room for this and the last one.
        if self.tx.capacity() < self.tx.max_capacity() {
            return false;
        }
        self.hand_over(cut(), false);
        true
    }

    /// At shutdown: hands over the last, partial interval, which the task attempts once before
    /// it ends.
    pub fn finish(self, last: SliInterval) {
        self.hand_over(last, true);
    }

    fn hand_over(&self, interval: SliInterval, last: bool) {
        if let Err(e) = self.tx.try_send(Handover { interval, last }) {
            // Only once the task is gone (its capacity is kept for the last one otherwise).
            let lost = match e {
                mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => h,
            };
            self.metrics
                .count_points(PointOutcome::Dropped, lost.interval.series.len() as u64);
            tracing::warn!("the request SLI export task is gone; an interval was dropped");
        }
    }
}

/// The export task; run it with [`SliExporterTask::run`] on the agent's runtime.
pub struct SliExporterTask {
    rx: Option<mpsc::Receiver<Handover>>,
    settings: SliSettings,
    base: ResourceBase,
    metrics: SliMetrics,
}

impl Drop for SliExporterTask {
    fn drop(&mut self) {
        // Dropped unrun: the intervals handed over are lost, and counted.
        if let Some(rx) = &mut self.rx {
            while let Ok(h) = rx.try_recv() {
                self.metrics
                    .count_points(PointOutcome::Dropped, h.interval.series.len() as u64);
            }
        }
    }
}

/// The sender for the agent loop and the task that exports what it hands over.
pub fn start(
    cfg: &OtlpConfig,
    resource: ResourceBase,
    metrics: SliMetrics,
) -> (SliSender, SliExporterTask) {
    let (tx, rx) = mpsc::channel(HANDOVER_CAPACITY);
    let settings = SliSettings::from_config(cfg);
    (
        SliSender {
            tx,
            metrics: metrics.clone(),
            interval: settings.interval,
        },
        SliExporterTask {
            rx: Some(rx),
            settings,
            base: resource,
            metrics,
        },
    )
}

impl SliExporterTask {
    /// Exports each interval handed over, until the last one (or until the sender is dropped
    /// without one), then flushes within one `otlp.timeout` and returns. Shutdown therefore
    /// takes at most about twice `otlp.timeout` (an attempt in flight, then the flush).
    pub async fn run(mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        tracing::info!(url = %self.settings.url, protocol = ?self.settings.protocol,
            interval = ?self.settings.interval, "exporting request SLIs over OTLP");
        let mut exporter = SliExporter::new(
            self.settings.clone(),
            self.base.clone(),
            self.metrics.clone(),
        );
        let mut last = None;
        while let Some(h) = rx.recv().await {
            if h.last {
                last = Some(h.interval);
                break;
            }
            exporter.tick(h.interval).await;
        }
        exporter.finish(last).await;
        tracing::info!(
            ok = self.metrics.exports(ExportOutcome::Ok),
            failed = self.metrics.exports(ExportOutcome::Failed),
            dropped = self.metrics.exports(ExportOutcome::Dropped),
            "request SLI export stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    impl SliExporter {
        /// A tick once any backoff is over (these tests are about the queue, not the timing).
        async fn tick_now(&mut self, interval: SliInterval) {
            self.retry_at = None;
            self.tick(interval).await;
        }
    }

    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
        MetricsService, MetricsServiceServer,
    };
    use tokio::{net::TcpListener, sync::mpsc::UnboundedReceiver};

    use super::*;
    use crate::probes::http::ExchangeRecord;
    use crate::{
        aggregate::http::{HttpMetrics, HttpPipeline, Label},
        http::{
            pairing::Role,
            route::{RouteTable, RoutesConfig},
            tenant::{TenantConfig, TenantResolver},
        },
    };

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn labels(workload: &str, method: &'static str, status: u16, tenant: &str) -> RedLabels {
        RedLabels {
            http_request_method: method,
            http_response_status_code: status,
            http_route: Label("/posts/{id}".into()),
            tenant: Label(tenant.into()),
            url_scheme: "http",
            workload: Label(workload.into()),
        }
    }

    #[test]
    fn buckets_follow_the_bounds() {
        assert_eq!(BUCKETS, 15);
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.005), 0, "a bound is inclusive (le)");
        assert_eq!(bucket_of(0.0051), 1);
        assert_eq!(bucket_of(0.1), 5);
        assert_eq!(bucket_of(10.0), 13);
        assert_eq!(bucket_of(10.5), 14);
        assert_eq!(bucket_of(1e9), 14);
    }

    #[test]
    fn accumulator_counts_and_resets_at_each_interval() {
        let mut acc = SliAccumulator::new(at(100));
        let get = labels("api", "GET", 200, "acme");
        let post = labels("api", "POST", 500, "acme");
        for s in [0.001, 0.02, 0.02, 3.0] {
            acc.record(&get, s);
        }
        acc.record(&post, 12.0);
        assert_eq!(acc.len(), 2);

        let first = acc.take(at(110));
        assert_eq!((first.start, first.end), (at(100), at(110)));
        assert!(acc.is_empty(), "the map was swapped");
        let g = &first.series[&get];
        assert_eq!(g.count, 4);
        assert!((g.sum - 3.041).abs() < 1e-9, "{}", g.sum);
        assert_eq!((g.min, g.max), (0.001, 3.0));
        let mut expected = [0u64; BUCKETS];
        expected[0] = 1;
        expected[2] = 2;
        expected[11] = 1;
        assert_eq!(g.bucket_counts, expected);
        assert_eq!(g.bucket_counts.iter().sum::<u64>(), g.count);
        let p = &first.series[&post];
        assert_eq!((p.count, p.bucket_counts[14]), (1, 1));

        // Deltas: the next interval starts where this one ended, from zero.
        acc.record(&get, 0.2);
        let second = acc.take(at(120));
        assert_eq!((second.start, second.end), (at(110), at(120)));
        assert_eq!(
            second.series.len(),
            1,
            "a series without requests is absent"
        );
        assert_eq!(second.series[&get].count, 1);
        assert_eq!(second.series[&get].sum, 0.2);

        // A clock step back never makes an interval end before it starts.
        let third = acc.take(at(50));
        assert!(third.is_empty());
        assert_eq!((third.start, third.end), (at(120), at(120)));
        assert_eq!(acc.take(at(130)).start, at(120));
    }

    fn pipeline(max_series: usize) -> (HttpPipeline, HttpMetrics) {
        let metrics = HttpMetrics::default();
        let p = HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).expect("default routes"),
            TenantResolver::new(&TenantConfig::default()).expect("default tenants"),
            max_series,
            metrics.clone(),
            &[],
        )
        .with_sli(at(1_000));
        (p, metrics)
    }

    fn server(p: &mut HttpPipeline, conn: u64, tenant: &str, status: u16, ms: u64) {
        let req = format!("GET /posts/{conn} HTTP/1.1\r\nX-Tenant-ID: {tenant}\r\n\r\n");
        let resp = format!("HTTP/1.1 {status} X\r\n\r\n");
        p.on_record(
            &ExchangeRecord::test(
                conn,
                Role::Server,
                1,
                1,
                req.as_bytes(),
                resp.as_bytes(),
                1_000_000,
                1_000_000 + ms * 1_000_000,
            ),
            |_| crate::workload::Origin::host("api"),
        );
    }

    #[test]
    fn the_pipeline_counts_server_exchanges_within_the_series_cap() {
        let (mut p, m) = pipeline(2);
        server(&mut p, 1, "acme", 200, 20);
        server(&mut p, 2, "acme", 200, 30);
        // An outgoing request: not a server SLI (but it takes one of the two series).
        p.on_record(
            &ExchangeRecord::test(
                3,
                Role::Client,
                1,
                1,
                b"GET /users/1 HTTP/1.1\r\nHost: users\r\nX-Tenant-ID: acme\r\n\r\n",
                b"HTTP/1.1 200 OK\r\n\r\n",
                0,
                1_000_000,
            ),
            |_| crate::workload::Origin::host("api"),
        );
        // Beyond the cap: neither a Prometheus series nor an SLI series.
        server(&mut p, 4, "globex", 503, 5);
        server(&mut p, 5, "acme", 500, 5);
        assert_eq!(m.series_overflow.get(), 2);
        let interval = p.take_sli(at(1_010)).expect("with_sli was called");
        assert_eq!((interval.start, interval.end), (at(1_000), at(1_010)));
        assert_eq!(interval.series.len(), 1, "{interval:?}");
        let (l, c) = interval.series.iter().next().expect("one series");
        assert_eq!(
            (l.http_request_method, l.http_response_status_code),
            ("GET", 200)
        );
        assert_eq!((&*l.http_route.0, &*l.tenant.0), ("/posts/{id}", "acme"));
        assert_eq!(c.count, 2);
        assert!((c.sum - 0.05).abs() < 1e-9);
        // The known series keeps counting; the drained interval is not counted again.
        server(&mut p, 6, "acme", 200, 20);
        let next = p.take_sli(at(1_020)).expect("on");
        assert_eq!(next.series.values().map(|c| c.count).sum::<u64>(), 1);
        // Without with_sli there is nothing to take.
        let mut plain = HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).expect("default routes"),
            TenantResolver::new(&TenantConfig::default()).expect("default tenants"),
            100,
            HttpMetrics::default(),
            &[],
        );
        server(&mut plain, 1, "acme", 200, 20);
        assert!(plain.take_sli(at(1)).is_none());
    }

    fn attr(kvs: &[KeyValue], key: &str) -> Option<any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn string(s: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(s.to_owned()))
    }

    fn sample_interval() -> SliInterval {
        let mut acc = SliAccumulator::new(at(1_700_000_000));
        for s in [0.004, 0.3] {
            acc.record(&labels("api", "GET", 200, "acme"), s);
        }
        acc.record(&labels("api", "_OTHER", 503, "unknown"), 0.01);
        acc.record(&labels("web", "GET", 200, "acme"), 11.0);
        acc.take(at(1_700_000_010))
    }

    #[test]
    fn encoding_follows_the_wire_contract() {
        let base = ResourceBase::new(Some("node-1"), Some("node-1.k8s"));
        let encoded = encode(&sample_interval(), &base).expect("requests");
        assert_eq!(encoded.points, 3);
        let request =
            ExportMetricsServiceRequest::decode(encoded.body.clone()).expect("valid protobuf");
        assert_eq!(request.resource_metrics.len(), 2, "one per workload");
        let mut seen_points = 0;
        for rm in &request.resource_metrics {
            let resource = rm.resource.as_ref().expect("a resource");
            let service = match attr(&resource.attributes, "service.name") {
                Some(any_value::Value::StringValue(s)) => s,
                other => panic!("service.name: {other:?}"),
            };
            assert_eq!(attr(&resource.attributes, "host.name"), string("node-1"));
            assert_eq!(
                attr(&resource.attributes, "k8s.node.name"),
                string("node-1.k8s")
            );
            assert_eq!(resource.attributes.len(), 3, "{resource:?}");
            assert_eq!(rm.scope_metrics.len(), 1);
            let sm = &rm.scope_metrics[0];
            let scope = sm.scope.as_ref().expect("a scope");
            assert_eq!(scope.name, "tenantscope-agent");
            assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
            assert_eq!(sm.metrics.len(), 1);
            let metric = &sm.metrics[0];
            assert_eq!(metric.name, "http.server.request.duration");
            assert_eq!(metric.unit, "s");
            let Some(metric::Data::Histogram(h)) = &metric.data else {
                panic!("a histogram: {metric:?}");
            };
            assert_eq!(
                h.aggregation_temporality,
                AggregationTemporality::Delta as i32
            );
            for dp in &h.data_points {
                seen_points += 1;
                assert_eq!(dp.start_time_unix_nano, 1_700_000_000 * 1_000_000_000);
                assert_eq!(dp.time_unix_nano, 1_700_000_010 * 1_000_000_000);
                assert_eq!(dp.explicit_bounds, DURATION_BUCKETS.to_vec());
                assert_eq!(dp.bucket_counts.len(), 15);
                assert_eq!(dp.bucket_counts.iter().sum::<u64>(), dp.count);
                let keys: Vec<&str> = dp.attributes.iter().map(|kv| kv.key.as_str()).collect();
                assert_eq!(
                    keys,
                    [
                        "http.request.method",
                        "http.response.status_code",
                        "http.route",
                        "tenant.id",
                        "url.scheme"
                    ]
                );
                assert_eq!(attr(&dp.attributes, "http.route"), string("/posts/{id}"));
                assert_eq!(attr(&dp.attributes, "url.scheme"), string("http"));
                let method = attr(&dp.attributes, "http.request.method");
                let status = attr(&dp.attributes, "http.response.status_code");
                let tenant = attr(&dp.attributes, "tenant.id");
                match (service.as_str(), method.clone(), status.clone()) {
                    ("api", m, Some(any_value::Value::IntValue(200))) if m == string("GET") => {
                        assert_eq!(tenant, string("acme"));
                        assert_eq!(dp.count, 2);
                        assert!((dp.sum.expect("sum") - 0.304).abs() < 1e-9);
                        assert_eq!((dp.min, dp.max), (Some(0.004), Some(0.3)));
                        assert_eq!(dp.bucket_counts[0], 1);
                        assert_eq!(dp.bucket_counts[7], 1);
                    }
                    ("api", m, Some(any_value::Value::IntValue(503))) if m == string("_OTHER") => {
                        assert_eq!(tenant, string("unknown"));
                        assert_eq!(dp.count, 1);
                        assert_eq!(dp.bucket_counts[1], 1);
                    }
                    ("web", m, Some(any_value::Value::IntValue(200))) if m == string("GET") => {
                        assert_eq!(dp.count, 1);
                        assert_eq!(dp.bucket_counts[14], 1, "above the last bound");
                        assert_eq!(dp.sum, Some(11.0));
                    }
                    other => panic!("unexpected point {other:?}: {dp:?}"),
                }
            }
        }
        assert_eq!(seen_points, 3);
        // Same interval, same bytes.
        assert_eq!(
            encode(&sample_interval(), &base).expect("requests").body,
            encoded.body
        );
        // Nothing at all: no request.
        let empty = SliAccumulator::new(at(0)).take(at(10));
        assert!(encode(&empty, &base).is_none());
    }

    #[test]
    fn workloads_sharing_a_resource_share_their_points() {
        // OTEL_SERVICE_NAME names every workload alike.
        let (base, _) = ResourceBase::new(Some("node-1"), None).with_env(Some("svc"), None);
        let mut acc = SliAccumulator::new(at(0));
        acc.record(&labels("api", "GET", 200, "acme"), 0.1);
        acc.record(&labels("web", "GET", 200, "acme"), 0.3);
        acc.record(&labels("web", "GET", 404, "acme"), 0.3);
        let (request, points) = encode_request(&acc.take(at(10)), &base).expect("requests");
        assert_eq!(points, 2);
        assert_eq!(request.resource_metrics.len(), 1);
        let Some(metric::Data::Histogram(h)) =
            &request.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("a histogram");
        };
        let ok = h
            .data_points
            .iter()
            .find(|dp| {
                attr(&dp.attributes, "http.response.status_code")
                    == Some(any_value::Value::IntValue(200))
            })
            .expect("the 200 point");
        assert_eq!(ok.count, 2);
        assert_eq!((ok.min, ok.max), (Some(0.1), Some(0.3)));
    }

    // ---- The exporter against in-process receivers ----

    /// What a receiver saw: the request's headers (or metadata) and its protobuf bytes.
    #[derive(Debug)]
    struct Received {
        headers: axum::http::HeaderMap,
        body: Vec<u8>,
        accepted: bool,
    }

    /// Fails (503 / UNAVAILABLE) while `fail` is above zero, counting it down per request.
    #[derive(Clone)]
    struct Behaviour {
        fail: Arc<AtomicUsize>,
        tx: mpsc::UnboundedSender<Received>,
    }

    impl Behaviour {
        fn record(&self, headers: axum::http::HeaderMap, body: Vec<u8>) -> bool {
            let failing = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let _ = self.tx.send(Received {
                headers,
                body,
                accepted: !failing,
            });
            !failing
        }
    }

    async fn http_receiver(fail: Arc<AtomicUsize>) -> (String, UnboundedReceiver<Received>) {
        use axum::{Router, body::Bytes as AxumBytes, extract::State, routing::post};
        async fn metrics(
            State(b): State<Behaviour>,
            headers: axum::http::HeaderMap,
            body: AxumBytes,
        ) -> (axum::http::StatusCode, Vec<u8>) {
            if b.record(headers, body.to_vec()) {
                (
                    axum::http::StatusCode::OK,
                    ExportMetricsServiceResponse::default().encode_to_vec(),
                )
            } else {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, Vec::new())
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = Router::new()
            .route("/v1/metrics", post(metrics))
            .with_state(Behaviour { fail, tx });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), rx)
    }

    struct GrpcReceiver(Behaviour);

    #[tonic::async_trait]
    impl MetricsService for GrpcReceiver {
        async fn export(
            &self,
            request: tonic::Request<ExportMetricsServiceRequest>,
        ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
            let headers = request.metadata().clone().into_headers();
            if self.0.record(headers, request.into_inner().encode_to_vec()) {
                Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
            } else {
                Err(tonic::Status::unavailable("not now"))
            }
        }
    }

    async fn grpc_receiver(fail: Arc<AtomicUsize>) -> (String, UnboundedReceiver<Received>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(GrpcReceiver(Behaviour {
                    fail,
                    tx,
                })))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (format!("http://{addr}"), rx)
    }

    async fn receiver(
        protocol: OtlpProtocol,
        fail: usize,
    ) -> (String, UnboundedReceiver<Received>, Arc<AtomicUsize>) {
        let fail = Arc::new(AtomicUsize::new(fail));
        let (endpoint, rx) = match protocol {
            OtlpProtocol::HttpProtobuf => http_receiver(fail.clone()).await,
            OtlpProtocol::Grpc => grpc_receiver(fail.clone()).await,
        };
        (endpoint, rx, fail)
    }

    fn config(protocol: OtlpProtocol, endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            protocol,
            endpoint: endpoint.to_owned(),
            timeout: Duration::from_secs(5),
            headers: [("authorization".to_owned(), "Bearer t0ken".to_owned())].into(),
            ..OtlpConfig::default()
        }
    }

    fn exporter(cfg: &OtlpConfig, metrics: &SliMetrics) -> SliExporter {
        SliExporter::new(
            SliSettings::from_config(cfg),
            ResourceBase::new(Some("node-1"), Some("node-1")),
            metrics.clone(),
        )
    }

    /// An interval `[n*10, n*10+10)` with `series` series of tenant `t<n>`.
    fn interval(n: u64, series: usize) -> SliInterval {
        let mut acc = SliAccumulator::new(at(1_700_000_000 + n * 10));
        for s in 0..series {
            let tenant = format!("t{n}");
            let status = 200 + s as u16;
            acc.record(&labels("api", "GET", status, &tenant), 0.01);
        }
        acc.take(at(1_700_000_000 + n * 10 + 10))
    }

    fn drain(rx: &mut UnboundedReceiver<Received>) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }

    fn decode_body(body: &[u8]) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest::decode(body).expect("valid OTLP protobuf")
    }

    fn tenants(body: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for rm in decode_body(body).resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    if let Some(metric::Data::Histogram(h)) = m.data {
                        for dp in h.data_points {
                            if let Some(any_value::Value::StringValue(t)) =
                                attr(&dp.attributes, "tenant.id")
                            {
                                out.push(t);
                            }
                        }
                    }
                }
            }
        }
        out.dedup();
        out
    }

    async fn retries_resend_the_same_bytes(protocol: OtlpProtocol) {
        let (endpoint, mut rx, _fail) = receiver(protocol, 2).await;
        let metrics = SliMetrics::default();
        let cfg = config(protocol, &endpoint);
        let mut ex = exporter(&cfg, &metrics);
        let first = interval(0, 3);
        let expected = encode(&first, &ex.base).expect("requests").body;

        ex.tick_now(first).await;
        assert_eq!(ex.queued(), 1, "kept after a failure");
        // An empty interval sends nothing new, but retries.
        ex.tick_now(interval(1, 0)).await;
        assert_eq!(ex.queued(), 1);
        assert_eq!(metrics.queue_length(), 1);
        ex.tick_now(interval(2, 0)).await;
        assert_eq!(ex.queued(), 0, "accepted at the third attempt");
        // Nothing more to send: nothing is sent again.
        ex.tick_now(interval(3, 0)).await;

        let got = drain(&mut rx);
        assert_eq!(got.len(), 3, "{protocol:?}: {got:?}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.body, expected.to_vec(), "{protocol:?}: attempt {i}");
            assert_eq!(r.accepted, i == 2);
            let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
            assert_eq!(header("authorization"), Some("Bearer t0ken"));
            assert_eq!(
                header(OWN_EXPORT_HEADER),
                Some(env!("CARGO_PKG_VERSION")),
                "{protocol:?}: the own-export marker"
            );
            if protocol == OtlpProtocol::HttpProtobuf {
                assert_eq!(header("content-type"), Some("application/x-protobuf"));
            }
        }
        assert_eq!(metrics.exports(ExportOutcome::Ok), 1);
        assert_eq!(metrics.exports(ExportOutcome::Failed), 2);
        assert_eq!(metrics.exports(ExportOutcome::Dropped), 0);
        assert_eq!(metrics.points(PointOutcome::Exported), 3);
        assert_eq!(metrics.points(PointOutcome::Dropped), 0);
        assert_eq!(metrics.queue_length(), 0);

        // Later intervals go out once each, in order.
        ex.tick_now(interval(4, 1)).await;
        ex.tick_now(interval(5, 2)).await;
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        assert_eq!(tenants(&got[0].body), ["t4"]);
        assert_eq!(tenants(&got[1].body), ["t5"]);
        assert_eq!(metrics.points(PointOutcome::Exported), 6);
    }

    #[tokio::test]
    async fn http_retries_resend_the_same_bytes() {
        retries_resend_the_same_bytes(OtlpProtocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn grpc_retries_resend_the_same_bytes() {
        retries_resend_the_same_bytes(OtlpProtocol::Grpc).await;
    }

    async fn full_queue_drops_the_oldest(protocol: OtlpProtocol) {
        let (endpoint, mut rx, fail) = receiver(protocol, usize::MAX).await;
        let metrics = SliMetrics::default();
        let cfg = OtlpConfig {
            metrics_queue: 2,
            ..config(protocol, &endpoint)
        };
        let mut ex = exporter(&cfg, &metrics);
        ex.tick_now(interval(0, 1)).await;
        ex.tick_now(interval(1, 2)).await;
        // Oldest first, stopping at the first failure: one attempt per tick.
        assert_eq!(drain(&mut rx).len(), 2);
        ex.tick_now(interval(2, 3)).await;
        assert_eq!(ex.queued(), 2);
        assert_eq!(metrics.queue_length(), 2);
        assert_eq!(metrics.exports(ExportOutcome::Dropped), 1);
        assert_eq!(
            metrics.points(PointOutcome::Dropped),
            1,
            "interval 0's point"
        );
        let attempts = drain(&mut rx);
        assert_eq!(attempts.len(), 1, "{protocol:?}");
        assert_eq!(tenants(&attempts[0].body), ["t1"], "oldest kept first");

        // The collector is back: both queued requests go out, oldest first.
        fail.store(0, Ordering::SeqCst);
        ex.tick_now(interval(3, 0)).await;
        let sent = drain(&mut rx);
        let order: Vec<Vec<String>> = sent.iter().map(|r| tenants(&r.body)).collect();
        assert_eq!(order, [["t1"], ["t2"]], "{protocol:?}");
        assert!(sent.iter().all(|r| r.accepted));
        assert_eq!(metrics.exports(ExportOutcome::Ok), 2);
        assert_eq!(metrics.exports(ExportOutcome::Failed), 3);
        assert_eq!(metrics.points(PointOutcome::Exported), 5);
        assert_eq!(metrics.points(PointOutcome::Dropped), 1);
        assert_eq!(metrics.queue_length(), 0);
    }

    #[tokio::test]
    async fn http_full_queue_drops_the_oldest() {
        full_queue_drops_the_oldest(OtlpProtocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn grpc_full_queue_drops_the_oldest() {
        full_queue_drops_the_oldest(OtlpProtocol::Grpc).await;
    }

    #[tokio::test]
    async fn unreachable_collector_keeps_requests_then_drops_them_at_shutdown() {
        // A port that was free a moment ago: connections are refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").port()
        };
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let metrics = SliMetrics::default();
            let cfg = config(protocol, &format!("http://127.0.0.1:{port}"));
            let mut ex = exporter(&cfg, &metrics);
            ex.tick_now(interval(0, 2)).await;
            ex.tick_now(interval(1, 1)).await;
            assert_eq!(ex.queued(), 2, "{protocol:?}");
            assert_eq!(metrics.exports(ExportOutcome::Failed), 2);
            ex.finish(Some(interval(2, 4))).await;
            assert_eq!(ex.queued(), 0);
            // The last interval's attempt failed: the queue is not tried again.
            assert_eq!(metrics.exports(ExportOutcome::Failed), 3, "{protocol:?}");
            assert_eq!(metrics.exports(ExportOutcome::Dropped), 3);
            assert_eq!(metrics.points(PointOutcome::Dropped), 7);
            assert_eq!(metrics.points(PointOutcome::Exported), 0);
            assert_eq!(metrics.queue_length(), 0);
        }
    }

    /// After failures the queue waits out a backoff: from one interval, doubling up to
    /// `otlp.retry_max_backoff`, each wait in the upper half of its step; ticks during it only
    /// queue.
    #[tokio::test]
    async fn failures_back_off_with_jitter_before_the_next_attempt() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address").port()
        };
        let metrics = SliMetrics::default();
        let cfg = OtlpConfig {
            metrics_interval: Duration::from_secs(10),
            retry_max_backoff: Duration::from_secs(30),
            ..config(
                OtlpProtocol::HttpProtobuf,
                &format!("http://127.0.0.1:{port}"),
            )
        };
        let mut ex = exporter(&cfg, &metrics);
        let waits = |ex: &SliExporter| {
            ex.retry_at
                .expect("a backoff after a failure")
                .saturating_duration_since(Instant::now())
        };
        ex.tick(interval(0, 1)).await;
        assert_eq!(metrics.exports(ExportOutcome::Failed), 1);
        let first = waits(&ex);
        assert!(
            (Duration::from_millis(4900)..=Duration::from_secs(10)).contains(&first),
            "{first:?}"
        );
        // A tick during the backoff queues its interval and attempts nothing.
        ex.tick(interval(1, 1)).await;
        assert_eq!(
            (ex.queued(), metrics.exports(ExportOutcome::Failed)),
            (2, 1)
        );
        // The next failures wait longer, up to the maximum.
        let mut seen = vec![first];
        for (n, (low, high)) in [(10, 20), (15, 30), (15, 30)].into_iter().enumerate() {
            ex.tick_now(interval(2 + n as u64, 0)).await;
            let w = waits(&ex);
            assert!(
                (Duration::from_millis(low * 1000 - 100)..=Duration::from_secs(high)).contains(&w),
                "failure {}: {w:?}",
                n + 2
            );
            seen.push(w);
        }
        assert_eq!(metrics.exports(ExportOutcome::Failed), 4);
        // Drawn, not fixed: agents failing together do not retry together.
        let draws: std::collections::BTreeSet<Duration> = (0..8)
            .map(|_| {
                crate::otlp::Backoff::starting_at(cfg.metrics_interval, cfg.retry_max_backoff)
                    .failed()
            })
            .collect();
        assert!(draws.len() > 1, "{draws:?}");
    }

    #[tokio::test]
    async fn dropping_the_exporter_counts_what_it_held() {
        let metrics = SliMetrics::default();
        let mut ex = exporter(
            &config(OtlpProtocol::HttpProtobuf, "http://127.0.0.1:9"),
            &metrics,
        );
        ex.enqueue(&interval(0, 3));
        drop(ex);
        assert_eq!(metrics.exports(ExportOutcome::Dropped), 1);
        assert_eq!(metrics.points(PointOutcome::Dropped), 3);
        assert_eq!(metrics.queue_length(), 0);
    }

    async fn shutdown_flushes_the_last_interval(protocol: OtlpProtocol) {
        let (endpoint, mut rx, _fail) = receiver(protocol, 0).await;
        let metrics = SliMetrics::default();
        let (sender, task) = start(
            &config(protocol, &endpoint),
            ResourceBase::default(),
            metrics.clone(),
        );
        assert_eq!(sender.interval(), Duration::from_secs(10));
        let task = tokio::spawn(task.run());
        let (mut p, _) = pipeline(100);
        server(&mut p, 1, "acme", 200, 20);
        assert!(sender.offer(|| p.take_sli(at(1_010)).expect("on")));
        // The partial interval at shutdown.
        server(&mut p, 2, "globex", 500, 20);
        sender.finish(p.take_sli(at(1_013)).expect("on"));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends after the last interval")
            .expect("no panic");
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2, "{protocol:?}: {got:?}");
        assert_eq!(tenants(&got[0].body), ["acme"]);
        assert_eq!(tenants(&got[1].body), ["globex"]);
        let times = |body: &[u8]| {
            let r = decode_body(body);
            let Some(metric::Data::Histogram(h)) =
                &r.resource_metrics[0].scope_metrics[0].metrics[0].data
            else {
                panic!("a histogram");
            };
            (
                h.data_points[0].start_time_unix_nano,
                h.data_points[0].time_unix_nano,
            )
        };
        let s = 1_000_000_000;
        assert_eq!(times(&got[0].body), (1_000 * s, 1_010 * s));
        assert_eq!(times(&got[1].body), (1_010 * s, 1_013 * s), "no gap");
        assert_eq!(metrics.exports(ExportOutcome::Ok), 2);
        assert_eq!(metrics.points(PointOutcome::Exported), 2);
    }

    #[tokio::test]
    async fn http_shutdown_flushes_the_last_interval() {
        shutdown_flushes_the_last_interval(OtlpProtocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn grpc_shutdown_flushes_the_last_interval() {
        shutdown_flushes_the_last_interval(OtlpProtocol::Grpc).await;
    }

    async fn shutdown_also_flushes_the_queue(protocol: OtlpProtocol) {
        let (endpoint, mut rx, _fail) = receiver(protocol, 1).await;
        let metrics = SliMetrics::default();
        let mut ex = exporter(&config(protocol, &endpoint), &metrics);
        ex.tick_now(interval(0, 2)).await;
        assert_eq!(ex.queued(), 1);
        ex.finish(Some(interval(1, 1))).await;
        let got = drain(&mut rx);
        let order: Vec<(Vec<String>, bool)> =
            got.iter().map(|r| (tenants(&r.body), r.accepted)).collect();
        assert_eq!(
            order,
            [
                (vec!["t0".to_owned()], false),
                (vec!["t1".to_owned()], true),
                (vec!["t0".to_owned()], true),
            ],
            "{protocol:?}: the last interval first, then the queue"
        );
        assert_eq!(got[0].body, got[2].body, "{protocol:?}: the same bytes");
        assert_eq!(metrics.exports(ExportOutcome::Ok), 2);
        assert_eq!(metrics.points(PointOutcome::Exported), 3);
        assert_eq!(metrics.exports(ExportOutcome::Dropped), 0);
        assert_eq!(metrics.queue_length(), 0);
    }

    #[tokio::test]
    async fn http_shutdown_also_flushes_the_queue() {
        shutdown_also_flushes_the_queue(OtlpProtocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn grpc_shutdown_also_flushes_the_queue() {
        shutdown_also_flushes_the_queue(OtlpProtocol::Grpc).await;
    }

    #[tokio::test]
    async fn the_sender_never_blocks_and_keeps_room_for_the_last_interval() {
        let metrics = SliMetrics::default();
        let (sender, task) = start(
            &config(OtlpProtocol::HttpProtobuf, "http://127.0.0.1:9"),
            ResourceBase::default(),
            metrics.clone(),
        );
        // The task is not running: the first interval waits, later ticks leave the current
        // interval running (not cut, nothing lost).
        let mut acc = SliAccumulator::new(at(0));
        acc.record(&labels("api", "GET", 200, "a"), 0.1);
        assert!(sender.offer(|| acc.take(at(10))));
        acc.record(&labels("api", "GET", 200, "a"), 0.1);
        assert!(!sender.offer(|| acc.take(at(20))));
        assert_eq!(acc.len(), 1, "still accumulating");
        sender.finish(acc.take(at(30)));
        assert_eq!(metrics.points(PointOutcome::Dropped), 0, "the last one fit");
        // Dropped unrun, the task counts what was handed over.
        drop(task);
        assert_eq!(metrics.points(PointOutcome::Dropped), 2);
    }

    #[test]
    fn metrics_are_registered_with_their_names() {
        let m = SliMetrics::default();
        m.count_export(ExportOutcome::Failed);
        m.count_points(PointOutcome::Exported, 3);
        let mut r = Registry::default();
        m.register(&mut r);
        let text = crate::telemetry::encode(&r);
        for needle in [
            "# TYPE tenantscope_agent_sli_exports counter",
            "tenantscope_agent_sli_exports_total{outcome=\"ok\"} 0",
            "tenantscope_agent_sli_exports_total{outcome=\"failed\"} 1",
            "tenantscope_agent_sli_exports_total{outcome=\"dropped\"} 0",
            "tenantscope_agent_sli_points_total{outcome=\"exported\"} 3",
            "tenantscope_agent_sli_points_total{outcome=\"dropped\"} 0",
            "# TYPE tenantscope_agent_sli_export_queue_length gauge",
            "tenantscope_agent_sli_export_queue_length 0",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
    }

    #[test]
    fn settings_resolve_the_endpoint_per_protocol() {
        let mut cfg = OtlpConfig::default();
        let s = SliSettings::from_config(&cfg);
        assert_eq!(s.url, "http://127.0.0.1:4317");
        assert_eq!((s.queue, s.interval), (60, Duration::from_secs(10)));
        cfg.protocol = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            SliSettings::from_config(&cfg).url,
            "http://127.0.0.1:4318/v1/metrics"
        );
        cfg.endpoint = "http://collector:4318/".into();
        assert_eq!(
            SliSettings::from_config(&cfg).url,
            "http://collector:4318/v1/metrics"
        );
    }
}
