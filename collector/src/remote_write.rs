//! Prometheus remote_write of the SLI rollups: the scale-out path to any Prometheus-compatible
//! engine (Prometheus with `--web.enable-remote-write-receiver`, Mimir, Thanos receive,
//! VictoriaMetrics).
//!
//! Every closed minute row (tenant, service, route, minute) becomes one sample in each of these
//! series, timestamped at the middle of the minute (`start + 30 s`), so a `[1m]` range that ends
//! on a minute boundary holds exactly that minute's sample (Prometheus 2 ranges are closed,
//! Prometheus 3 ranges are left-open; the middle is inside both):
//!
//! | series | value |
//! |---|---|
//! | [`REQUESTS_METRIC`] | requests of the minute |
//! | [`ERRORS_METRIC`] | failed requests (5xx or no response) of the minute |
//! | [`LATENCY_BUCKET_METRIC`]`{le="..."}` | requests of the minute no slower than `le` seconds, cumulative like a classic histogram, `+Inf` = all |
//!
//! Labels: `tenant`, `service`, `route` and `collector` (this collector's id), so several
//! collectors writing the same tenant never collide: `sum without (collector)` merges them.
//! Empty label values are left out (in Prometheus an empty label is an absent one).
//!
//! The shipping position (the watermark: every minute that starts before it was shipped or
//! counted as dropped) lives in the store's `meta` table and moves only after the endpoint
//! acknowledged, so a restart neither skips nor repeats minutes. A batch interrupted in the
//! middle of a minute is sent again from that minute's start: the engine receives identical
//! samples, which Prometheus, Mimir and VictoriaMetrics accept as duplicates.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::sli::{BUCKETS, LATENCY_BOUNDS, MINUTE, SliCounts, SliRow};
use crate::store::Store;

/// Requests of one minute (gauge).
pub const REQUESTS_METRIC: &str = "tenantscope_sli_requests_per_minute";
/// Failed requests of one minute (gauge).
pub const ERRORS_METRIC: &str = "tenantscope_sli_errors_per_minute";
/// Requests of one minute no slower than `le` seconds (cumulative buckets of a gauge histogram).
pub const LATENCY_BUCKET_METRIC: &str = "tenantscope_sli_latency_seconds_per_minute_bucket";
/// The family name of [`LATENCY_BUCKET_METRIC`] (for metadata).
const LATENCY_FAMILY: &str = "tenantscope_sli_latency_seconds_per_minute";

/// Samples per minute row: requests, errors and one per latency bucket (`+Inf` included).
pub const SAMPLES_PER_ROW: usize = 2 + BUCKETS;

/// Minutes read from the store at a time: bounds memory whatever the backlog.
const READ_CHUNK_MINUTES: i64 = 10;
/// Minutes re-read after shipping to notice rows that arrived late (best effort).
const LATE_CHECK_MINUTES: usize = 5;
/// Response bodies are logged up to this many bytes.
pub(crate) const MAX_LOGGED_BODY: usize = 512;

/// The remote_write wire format (prometheus/prompb `remote.proto` and `types.proto`, v1),
/// written by hand with the upstream field numbers.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        // Field 2 is reserved upstream.
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Sorted by name; `__name__` included.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Unix milliseconds.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct MetricMetadata {
        #[prost(enumeration = "MetricType", tag = "1")]
        pub r#type: i32,
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        #[prost(string, tag = "4")]
        pub help: String,
        #[prost(string, tag = "5")]
        pub unit: String,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MetricType {
        Unknown = 0,
        Counter = 1,
        Gauge = 2,
        Histogram = 3,
        Gaugehistogram = 4,
        Summary = 5,
        Info = 6,
        Stateset = 7,
    }
}

use proto::{Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest};

// ---------------------------------------------------------------------------------------------
// Configuration

/// HTTP basic authentication.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `[remote_write]`: where and how the SLI rollups are shipped.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// The receiver, e.g. `http://prometheus:9090/api/v1/write` or
    /// `http://mimir/api/v1/push`. Empty: remote_write is off.
    pub url: String,
    /// Extra request headers, e.g. `X-Scope-OrgID` for Mimir.
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    pub basic_auth: Option<BasicAuth>,
    /// How often closed minutes are shipped.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long after its end a minute is shipped: the time agents' delta exports may be late.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Minutes older than this that were never shipped are skipped (counted as dropped with
    /// reason `backlog`): engines reject samples too far in the past anyway.
    #[serde(with = "humantime_serde")]
    pub max_backlog: Duration,
    /// At most this many samples per request.
    pub max_samples_per_request: usize,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a request that failed with a 5xx, a 429 or a network error, before the
    /// flush gives up (and the next flush starts again from the watermark).
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Value of the `collector` label. Empty: the host name (the pod name in Kubernetes).
    pub collector_id: String,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            headers: BTreeMap::new(),
            bearer_token: None,
            basic_auth: None,
            flush_interval: Duration::from_secs(15),
            grace: Duration::from_secs(90),
            max_backlog: Duration::from_secs(3600),
            // Prometheus' own remote_write default (max_samples_per_send).
            max_samples_per_request: 2000,
            timeout: Duration::from_secs(30),
            max_retries: 5,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            collector_id: String::new(),
        }
    }
}

impl fmt::Debug for RemoteWriteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteWriteConfig")
            .field("url", &redact_url(&self.url))
            .field("headers", &redact_headers(&self.headers))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("basic_auth", &self.basic_auth)
            .field("flush_interval", &self.flush_interval)
            .field("grace", &self.grace)
            .field("max_backlog", &self.max_backlog)
            .field("max_samples_per_request", &self.max_samples_per_request)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("collector_id", &self.collector_id)
            .finish()
    }
}

/// Headers the remote_write protocol sets itself.
const RESERVED_HEADERS: [&str; 5] = [
    "content-encoding",
    "content-type",
    "content-length",
    "x-prometheus-remote-write-version",
    "host",
];

impl RemoteWriteConfig {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The `collector` label value: the configured id, else the host name.
    pub fn resolved_collector_id(&self) -> String {
        if self.collector_id.is_empty() {
            default_collector_id()
        } else {
            self.collector_id.clone()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        check_http_url("remote_write.url", &self.url)?;
        check_headers(
            "remote_write",
            &self.headers,
            &RESERVED_HEADERS,
            self.bearer_token.is_some() || self.basic_auth.is_some(),
        )?;
        if self.bearer_token.is_some() && self.basic_auth.is_some() {
            return Err("remote_write: set bearer_token or basic_auth, not both".into());
        }
        if let Some(t) = &self.bearer_token {
            HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| "remote_write.bearer_token has characters not allowed in a header")?;
        }
        if self.flush_interval < Duration::from_secs(1) {
            return Err("remote_write.flush_interval must be at least 1s".into());
        }
        if self.grace > Duration::from_secs(3600) {
            return Err("remote_write.grace must be at most 1h".into());
        }
        if self.max_backlog < Duration::from_secs(60)
            || self.max_backlog > Duration::from_secs(30 * 86_400)
        {
            return Err("remote_write.max_backlog must be between 1m and 30d".into());
        }
        if self.max_backlog <= self.grace {
            return Err("remote_write.max_backlog must be longer than remote_write.grace".into());
        }
        if !(1..=1_000_000).contains(&self.max_samples_per_request) {
            return Err(
                "remote_write.max_samples_per_request must be between 1 and 1000000".into(),
            );
        }
        if self.timeout < Duration::from_millis(100) {
            return Err("remote_write.timeout must be at least 100ms".into());
        }
        if self.max_retries > 100 {
            return Err("remote_write.max_retries must be at most 100".into());
        }
        if self.min_backoff.is_zero() || self.max_backoff < self.min_backoff {
            return Err(
                "remote_write.min_backoff must be positive and at most remote_write.max_backoff"
                    .into(),
            );
        }
        if self.collector_id.len() > 256 || self.collector_id.chars().any(char::is_control) {
            return Err(
                "remote_write.collector_id must be at most 256 characters, without control characters"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The host name: `$HOSTNAME` (the pod name in Kubernetes), else the kernel's, else
/// `collector`.
pub fn default_collector_id() -> String {
    let valid = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if let Ok(h) = std::env::var("HOSTNAME") {
        let h = h.trim().to_string();
        if valid(&h) {
            return h;
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_string();
        if valid(&h) {
            return h;
        }
    }
    "collector".to_string()
}

pub(crate) fn check_http_url(what: &str, url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("{what}: `{}`: {e}", redact_url(url)))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "{what}: `{}` must be an http:// or https:// URL",
            redact_url(url)
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{what}: `{}` has no host", redact_url(url)));
    }
    Ok(u)
}

pub(crate) fn check_headers(
    what: &str,
    headers: &BTreeMap<String, String>,
    reserved: &[&str],
    has_auth: bool,
) -> Result<(), String> {
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{what}.headers: `{k}` is not a valid header name"))?;
        HeaderValue::from_str(v).map_err(|_| {
            format!("{what}.headers: the value of `{k}` is not a valid header value")
        })?;
        if reserved.contains(&name.as_str()) {
            return Err(format!(
                "{what}.headers: `{k}` is set by the protocol itself"
            ));
        }
        if has_auth && name == reqwest::header::AUTHORIZATION {
            return Err(format!(
                "{what}.headers: `Authorization` conflicts with bearer_token / basic_auth"
            ));
        }
    }
    Ok(())
}

/// Configured headers plus bearer token / basic auth, all marked sensitive where they carry
/// credentials (so they never show up in debug output).
pub(crate) fn build_headers(
    headers: &BTreeMap<String, String>,
    bearer_token: Option<&str>,
    basic_auth: Option<&BasicAuth>,
) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .with_context(|| format!("invalid header name `{k}`"))?;
        let mut value =
            HeaderValue::from_str(v).with_context(|| format!("invalid value of header `{k}`"))?;
        if name == reqwest::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    if let Some(t) = bearer_token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {t}")).context("invalid bearer token")?;
        value.set_sensitive(true);
        map.insert(reqwest::header::AUTHORIZATION, value);
    }
    if let Some(b) = basic_auth {
        let mut value = HeaderValue::from_str(&format!(
            "Basic {}",
            base64_encode(format!("{}:{}", b.username, b.password).as_bytes())
        ))
        .context("invalid basic_auth credentials")?;
        value.set_sensitive(true);
        map.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(map)
}

/// Standard base64 with padding (basic auth only; not worth a dependency).
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A URL without credentials, query or fragment: safe to log and to use as a key.
pub(crate) fn redact_url(url: &str) -> String {
    if url.trim().is_empty() {
        return String::new();
    }
    match reqwest::Url::parse(url.trim()) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

pub(crate) fn redact_headers(h: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            let secret = k.eq_ignore_ascii_case("authorization")
                || k.to_ascii_lowercase().contains("token")
                || k.to_ascii_lowercase().contains("key");
            (
                k.clone(),
                if secret {
                    "<redacted>".into()
                } else {
                    v.clone()
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Series and encoding (pure)

/// The `le` label of bucket `i`, formatted like Prometheus' classic histograms (Go's shortest
/// float formatting: `0.005`, `1`, `2.5`, `10`; `+Inf` last).
pub fn le_label(i: usize) -> String {
    match LATENCY_BOUNDS.get(i) {
        // Rust's shortest round-trip formatting matches Go's `'g', -1` for these magnitudes.
        Some(b) => format!("{b}"),
        None => "+Inf".to_string(),
    }
}

/// Sample `i` of a row: 0 = requests, 1 = errors, 2.. = cumulative latency buckets.
fn sample_value(c: &SliCounts, i: usize) -> f64 {
    match i {
        0 => c.requests as f64,
        1 => c.errors as f64,
        _ => c.buckets[..=(i - 2).min(BUCKETS - 1)].iter().sum::<u64>() as f64,
    }
}

fn series_labels(
    (tenant, service, route): (&str, &str, &str),
    i: usize,
    collector: &str,
) -> Vec<Label> {
    let name = match i {
        0 => REQUESTS_METRIC,
        1 => ERRORS_METRIC,
        _ => LATENCY_BUCKET_METRIC,
    };
    let le = (i >= 2).then(|| le_label(i - 2));
    // Sorted by label name, as receivers require.
    let pairs = [
        ("__name__", Some(name)),
        ("collector", Some(collector)),
        ("le", le.as_deref()),
        ("route", Some(route)),
        ("service", Some(service)),
        ("tenant", Some(tenant)),
    ];
    pairs
        .into_iter()
        .filter_map(|(n, v)| {
            v.filter(|v| !v.is_empty()).map(|v| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

/// Metadata sent with every request (Mimir and VictoriaMetrics keep it; Prometheus ignores it).
fn metadata() -> Vec<MetricMetadata> {
    vec![
        MetricMetadata {
            r#type: MetricType::Gauge as i32,
            metric_family_name: REQUESTS_METRIC.into(),
            help: "Tenantscope SLI: requests of the minute (sample at the middle of the minute)."
                .into(),
            unit: String::new(),
        },
        MetricMetadata {
            r#type: MetricType::Gauge as i32,
            metric_family_name: ERRORS_METRIC.into(),
            help: "Tenantscope SLI: failed requests (5xx or no response) of the minute.".into(),
            unit: String::new(),
        },
        MetricMetadata {
            r#type: MetricType::Gaugehistogram as i32,
            metric_family_name: LATENCY_FAMILY.into(),
            help: "Tenantscope SLI: requests of the minute no slower than le seconds.".into(),
            unit: "seconds".into(),
        },
    ]
}

/// Sorts minute rows by (start, tenant, service, route) and adds up rows with the same key
/// (the store never returns two, but two samples with one timestamp would make a receiver
/// reject the whole request).
pub fn normalize_rows(rows: &mut Vec<SliRow>) {
    rows.sort_by(|a, b| {
        (a.start, &a.tenant, &a.service, &a.route).cmp(&(b.start, &b.tenant, &b.service, &b.route))
    });
    rows.dedup_by(|later, kept| {
        let same = later.start == kept.start
            && later.tenant == kept.tenant
            && later.service == kept.service
            && later.route == kept.route;
        if same {
            kept.counts.add(&later.counts);
        }
        same
    });
}

/// One request ready to send.
#[derive(Debug)]
pub struct Packed {
    pub request: WriteRequest,
    pub samples: usize,
    /// The watermark once this request is acknowledged: every minute before it is in this
    /// request or an earlier one.
    pub watermark: i64,
}

/// Cuts normalized minute rows into requests of at most `max_samples` samples, oldest minutes
/// first, so each series' samples reach the receiver in time order across requests. One
/// request is built at a time: memory stays at one request plus the rows.
pub struct Packer<'a> {
    rows: &'a [SliRow],
    /// The watermark once every row is sent: the end of the range the rows were read from.
    end: i64,
    collector: &'a str,
    max_samples: usize,
    row: usize,
    sample: usize,
}

impl<'a> Packer<'a> {
    pub fn new(rows: &'a [SliRow], end: i64, collector: &'a str, max_samples: usize) -> Self {
        Self {
            rows,
            end,
            collector,
            max_samples: max_samples.max(1),
            row: 0,
            sample: 0,
        }
    }

    pub fn next_request(&mut self) -> Option<Packed> {
        if self.row >= self.rows.len() {
            return None;
        }
        // Keyed by series so one request carries each series once, with its samples in order.
        let mut series: BTreeMap<(&str, &str, &str, usize), Vec<Sample>> = BTreeMap::new();
        let mut n = 0;
        while n < self.max_samples && self.row < self.rows.len() {
            let r = &self.rows[self.row];
            series
                .entry((&r.tenant, &r.service, &r.route, self.sample))
                .or_default()
                .push(Sample {
                    value: sample_value(&r.counts, self.sample),
                    timestamp: r.start.saturating_add(MINUTE / 2).saturating_mul(1000),
                });
            n += 1;
            self.sample += 1;
            if self.sample == SAMPLES_PER_ROW {
                self.sample = 0;
                self.row += 1;
            }
        }
        let watermark = match self.rows.get(self.row) {
            Some(next) => next.start,
            None => self.end,
        };
        let timeseries = series
            .into_iter()
            .map(|((tenant, service, route, i), samples)| TimeSeries {
                labels: series_labels((tenant, service, route), i, self.collector),
                samples,
            })
            .collect();
        Some(Packed {
            request: WriteRequest {
                timeseries,
                metadata: metadata(),
            },
            samples: n,
            watermark,
        })
    }
}

/// Protobuf, then snappy block format: the remote_write 1.0 body.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>> {
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .context("snappy-compressing a remote_write request")
}

/// The inverse of [`encode`] (tests, and receivers written for tests).
pub fn decode(body: &[u8]) -> Result<WriteRequest> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .context("snappy-decompressing a remote_write body")?;
    WriteRequest::decode(raw.as_slice()).context("decoding a remote_write WriteRequest")
}

/// What to do at `now`, given the persisted watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Ship the minutes starting in `[from, to)`; nothing when `from >= to`.
    pub from: i64,
    pub to: i64,
    /// Minutes never shipped that fell out of the backlog: count them as dropped, then move
    /// the watermark to `from`.
    pub skipped: Option<(i64, i64)>,
}

fn floor_minute(t: i64) -> i64 {
    t.div_euclid(MINUTE) * MINUTE
}

fn ceil_minute(t: i64) -> i64 {
    floor_minute(t.saturating_add(MINUTE - 1))
}

/// Closed minutes (`start + 60 + grace <= now`) from the watermark on, no older than
/// `now - max_backlog`. Without a watermark (first start) shipping starts at the backlog
/// horizon and nothing older counts as dropped: it was never meant to be shipped.
pub fn plan(now: i64, watermark: Option<i64>, grace: i64, max_backlog: i64) -> Plan {
    let to = floor_minute(now.saturating_sub(grace.max(0)));
    let horizon = ceil_minute(now.saturating_sub(max_backlog.max(MINUTE)));
    match watermark.map(floor_minute) {
        None => Plan {
            from: horizon,
            to,
            skipped: None,
        },
        Some(w) if w < horizon => Plan {
            from: horizon,
            to,
            skipped: Some((w, horizon)),
        },
        Some(w) => Plan {
            from: w,
            to,
            skipped: None,
        },
    }
}

/// Exponential backoff with jitter: `min * 2^attempt`, capped at `max`, then a random point
/// in its upper half (so retries of many collectors do not align).
pub(crate) fn backoff_delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = base / 2;
    let jitter_ns = random_u64() % (half.as_nanos().max(1) as u64);
    half + Duration::from_nanos(jitter_ns)
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process and per instance: enough for jitter.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// At most `MAX_LOGGED_BODY` bytes of a response body, lossily decoded, on one line.
pub(crate) fn truncate_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_LOGGED_BODY)];
    let mut s = String::from_utf8_lossy(cut).replace(['\n', '\r'], " ");
    if body.len() > MAX_LOGGED_BODY {
        s.push_str("...");
    }
    s
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: backoff applies).
pub(crate) fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Self-metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Drop reasons of `tenantscope_collector_remote_write_samples_dropped_total`.
pub mod reason {
    /// The receiver answered 4xx (other than 429): the request is not retried.
    pub const REJECTED: &str = "rejected";
    /// The minute was older than `max_backlog` before it could be shipped.
    pub const BACKLOG: &str = "backlog";
    /// The minute was already rolled up into an hour row in the store when its turn came.
    pub const ROLLED_UP: &str = "rolled_up";
}

/// Outcomes of `tenantscope_collector_remote_write_requests_total`.
pub mod outcome {
    /// 2xx.
    pub const SUCCESS: &str = "success";
    /// 5xx, 429 or a network error: retried.
    pub const RETRYABLE: &str = "retryable";
    /// Other 4xx: not retried, its samples dropped.
    pub const REJECTED: &str = "rejected";
}

/// The shipper's own metrics; cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct RemoteWriteMetrics {
    samples_sent: Counter,
    samples_dropped: Family<ReasonLabels, Counter>,
    requests: Family<OutcomeLabels, Counter>,
    late_requests: Counter,
    lag_seconds: Gauge,
    backlog_minutes: Gauge,
    watermark_seconds: Gauge,
}

impl RemoteWriteMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tenantscope_collector_remote_write_samples_sent",
            "Samples acknowledged by the remote_write endpoint",
            self.samples_sent.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_samples_dropped",
            "Samples that will never reach the remote_write endpoint, by reason (rejected, backlog, rolled_up)",
            self.samples_dropped.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_requests",
            "remote_write requests by outcome (success, retryable, rejected)",
            self.requests.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_late_requests",
            "Requests that reached the store for minutes already shipped, not sent (best effort; raise remote_write.grace if this grows)",
            self.late_requests.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_lag_seconds",
            "Now minus the remote_write watermark (includes remote_write.grace)",
            self.lag_seconds.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_backlog_minutes",
            "Closed minutes not yet shipped",
            self.backlog_minutes.clone(),
        );
        registry.register(
            "tenantscope_collector_remote_write_watermark_seconds",
            "Unix time before which every minute was shipped or counted as dropped",
            self.watermark_seconds.clone(),
        );
    }

    pub fn samples_sent(&self) -> u64 {
        self.samples_sent.get()
    }

    pub fn samples_dropped(&self, reason: &'static str) -> u64 {
        self.samples_dropped
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    pub fn requests(&self, outcome: &'static str) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    pub fn late_requests(&self) -> u64 {
        self.late_requests.get()
    }

    fn drop_samples(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.samples_dropped
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
    }

    fn request(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn positions(&self, now: i64, watermark: i64, closed_end: i64) {
        self.lag_seconds.set(now.saturating_sub(watermark));
        self.backlog_minutes
            .set(closed_end.saturating_sub(watermark).max(0) / MINUTE);
        self.watermark_seconds.set(watermark);
    }
}

// ---------------------------------------------------------------------------------------------
// The shipper

/// What one [`Shipper::ship_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Requests acknowledged or rejected (not counting retries).
    pub requests: u64,
    pub samples_sent: u64,
    pub samples_dropped: u64,
    /// The watermark afterwards.
    pub watermark: i64,
}

enum Delivery {
    Acknowledged,
    Rejected,
}

/// Ships closed minutes from the store to the remote_write endpoint.
pub struct Shipper {
    cfg: RemoteWriteConfig,
    store: Arc<Store>,
    client: reqwest::Client,
    url: reqwest::Url,
    collector: String,
    meta_key: String,
    metrics: RemoteWriteMetrics,
    /// (minute start, requests shipped) of the last minutes shipped, to notice late rows.
    recent: VecDeque<(i64, u64)>,
}

impl Shipper {
    /// The config must be enabled and valid.
    pub fn new(
        cfg: RemoteWriteConfig,
        store: Arc<Store>,
        metrics: RemoteWriteMetrics,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!(e))?;
        if !cfg.enabled() {
            anyhow::bail!("remote_write.url is empty: remote_write is off");
        }
        let url = reqwest::Url::parse(cfg.url.trim()).context("remote_write.url")?;
        let mut headers = build_headers(
            &cfg.headers,
            cfg.bearer_token.as_deref(),
            cfg.basic_auth.as_ref(),
        )?;
        headers.insert(
            reqwest::header::CONTENT_ENCODING,
            HeaderValue::from_static("snappy"),
        );
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            HeaderName::from_static("x-prometheus-remote-write-version"),
            HeaderValue::from_static("0.1.0"),
        );
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("tenantscope-collector/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .context("building the remote_write HTTP client")?;
        // One position per endpoint: pointing the collector at a new endpoint ships that one
        // the backlog it can take, independently of what the old one got.
        let meta_key = format!("remote_write.watermark {}", redact_url(&cfg.url));
        Ok(Self {
            collector: cfg.resolved_collector_id(),
            cfg,
            store,
            client,
            url,
            meta_key,
            metrics,
            recent: VecDeque::new(),
        })
    }

    pub fn metrics(&self) -> &RemoteWriteMetrics {
        &self.metrics
    }

    /// The store's `meta` key holding this endpoint's watermark.
    pub fn meta_key(&self) -> &str {
        &self.meta_key
    }

    /// The persisted watermark, if any.
    pub async fn watermark(&self) -> Result<Option<i64>> {
        let store = self.store.clone();
        let key = self.meta_key.clone();
        let value = tokio::task::spawn_blocking(move || store.meta_get(&key))
            .await
            .context("reading the remote_write watermark")??;
        Ok(value.and_then(|v| match v.trim().parse::<i64>() {
            Ok(w) => Some(w),
            Err(_) => {
                tracing::warn!(value = %v, key = %self.meta_key, "unreadable remote_write watermark; starting from the backlog horizon");
                None
            }
        }))
    }

    async fn set_watermark(&self, w: i64) -> Result<()> {
        let store = self.store.clone();
        let key = self.meta_key.clone();
        tokio::task::spawn_blocking(move || store.meta_set(&key, &w.to_string()))
            .await
            .context("writing the remote_write watermark")?
            .context("writing the remote_write watermark")
    }

    async fn rows(&self, from: i64, to: i64) -> Result<Vec<SliRow>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.rows_between(from, to))
            .await
            .context("reading rows to ship")?
            .with_context(|| format!("reading rows in [{from}, {to}) to ship"))
    }

    /// Ships every closed minute not shipped yet, as of `now` (Unix seconds). Returns an error
    /// when the endpoint stayed unreachable through every retry or the store failed; the
    /// watermark then stays where the last acknowledged request put it.
    pub async fn ship_once(&mut self, now: i64) -> Result<ShipReport> {
        let mut report = ShipReport::default();
        self.check_late().await;
        let stored = self.watermark().await?;
        let p = plan(
            now,
            stored,
            secs(self.cfg.grace),
            secs(self.cfg.max_backlog),
        );
        let mut watermark = stored.map(floor_minute).unwrap_or(p.from);
        if let Some((from, to)) = p.skipped {
            let dropped = self.count_skipped(from, to).await?;
            if dropped > 0 {
                tracing::warn!(
                    from,
                    to,
                    samples = dropped,
                    "remote_write backlog exceeded remote_write.max_backlog; skipping minutes never shipped"
                );
            }
            self.metrics.drop_samples(reason::BACKLOG, dropped);
            report.samples_dropped += dropped;
            self.set_watermark(to).await?;
            watermark = to;
        }
        if watermark > p.to {
            // The clock went back (or grace grew): wait until time catches up.
            self.metrics.positions(now, watermark, p.to);
            report.watermark = watermark;
            return Ok(report);
        }
        if stored.is_none() {
            self.set_watermark(watermark).await?;
        }
        let mut chunk_from = watermark;
        while chunk_from < p.to {
            let chunk_to = chunk_from
                .saturating_add(READ_CHUNK_MINUTES * MINUTE)
                .min(p.to);
            let mut rows = self.rows(chunk_from, chunk_to).await?;
            // Hour rows: only possible when the store rolled minutes up before they were
            // shipped. Counted as the minutes' samples they stand for.
            let n: u64 = rows
                .iter()
                .filter(|r| r.seconds != MINUTE)
                .map(|r| SAMPLES_PER_ROW as u64 * (r.seconds / MINUTE).max(1) as u64)
                .sum();
            rows.retain(|r| r.seconds == MINUTE && r.start >= chunk_from && r.start < chunk_to);
            if n > 0 {
                tracing::warn!(
                    samples = n,
                    "remote_write: rows already rolled up into hours are not shipped"
                );
                self.metrics.drop_samples(reason::ROLLED_UP, n);
                report.samples_dropped += n;
            }
            normalize_rows(&mut rows);
            let mut packer = Packer::new(
                &rows,
                chunk_to,
                &self.collector,
                self.cfg.max_samples_per_request,
            );
            while let Some(packed) = packer.next_request() {
                let body = encode(&packed.request)?;
                drop(packed.request);
                match self.deliver(body).await? {
                    Delivery::Acknowledged => {
                        self.metrics.samples_sent.inc_by(packed.samples as u64);
                        report.samples_sent += packed.samples as u64;
                    }
                    Delivery::Rejected => {
                        self.metrics
                            .drop_samples(reason::REJECTED, packed.samples as u64);
                        report.samples_dropped += packed.samples as u64;
                    }
                }
                report.requests += 1;
                if packed.watermark > watermark {
                    self.set_watermark(packed.watermark).await?;
                    watermark = packed.watermark;
                    self.metrics.positions(now, watermark, p.to);
                }
            }
            if chunk_to > watermark {
                self.set_watermark(chunk_to).await?;
                watermark = chunk_to;
            }
            self.remember(&rows, chunk_from, chunk_to);
            chunk_from = chunk_to;
        }
        self.metrics.positions(now, watermark, p.to);
        report.watermark = watermark;
        Ok(report)
    }

    /// Samples of the rows in `[from, to)`, read an hour at a time to bound memory.
    async fn count_skipped(&self, from: i64, to: i64) -> Result<u64> {
        let mut n = 0u64;
        let mut t = from;
        while t < to {
            let end = t.saturating_add(3600).min(to);
            for r in self.rows(t, end).await? {
                let minutes = (r.seconds / MINUTE).max(1) as u64;
                n = n.saturating_add(SAMPLES_PER_ROW as u64 * minutes);
            }
            t = end;
        }
        Ok(n)
    }

    /// Keeps the requests shipped per minute for the last few minutes.
    fn remember(&mut self, rows: &[SliRow], from: i64, to: i64) {
        let mut m = from;
        while m < to {
            let requests = rows
                .iter()
                .filter(|r| r.start == m)
                .map(|r| r.counts.requests)
                .fold(0u64, u64::saturating_add);
            self.recent.push_back((m, requests));
            while self.recent.len() > LATE_CHECK_MINUTES {
                self.recent.pop_front();
            }
            m += MINUTE;
        }
    }

    /// Counts requests that reached the store after their minute was shipped (best effort:
    /// only the last few minutes shipped by this process are checked).
    async fn check_late(&mut self) {
        let (Some(&(first, _)), Some(&(last, _))) = (self.recent.front(), self.recent.back())
        else {
            return;
        };
        let rows = match self.rows(first, last + MINUTE).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "remote_write: late-row check skipped");
                return;
            }
        };
        for (minute, shipped) in self.recent.iter_mut() {
            let now: u64 = rows
                .iter()
                .filter(|r| r.start == *minute && r.seconds == MINUTE)
                .map(|r| r.counts.requests)
                .fold(0, u64::saturating_add);
            if now > *shipped {
                self.metrics.late_requests.inc_by(now - *shipped);
                *shipped = now;
            }
        }
    }

    /// Sends one body, retrying 5xx, 429 and network errors with backoff. `Err` = gave up.
    async fn deliver(&self, body: Vec<u8>) -> Result<Delivery> {
        let mut last_error = String::new();
        let mut retry_after: Option<Duration> = None;
        for attempt in 0..=self.cfg.max_retries {
            if attempt > 0 {
                let mut delay =
                    backoff_delay(attempt - 1, self.cfg.min_backoff, self.cfg.max_backoff);
                if let Some(after) = retry_after.take() {
                    // Honour the receiver's Retry-After, within our own ceiling.
                    delay = delay.max(after.min(self.cfg.max_backoff));
                }
                tokio::time::sleep(delay).await;
            }
            match self
                .client
                .post(self.url.clone())
                .body(body.clone())
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    self.metrics.request(outcome::SUCCESS);
                    return Ok(Delivery::Acknowledged);
                }
                Ok(resp) => {
                    let status = resp.status();
                    retry_after = retry_after_header(resp.headers());
                    let body = resp
                        .bytes()
                        .await
                        .map(|b| truncate_body(&b))
                        .unwrap_or_default();
                    if status.as_u16() == 429 || status.is_server_error() {
                        self.metrics.request(outcome::RETRYABLE);
                        last_error = format!("HTTP {status}: {body}");
                        if attempt == 0 {
                            tracing::warn!(%status, body = %body, url = %redact_url(self.url.as_str()), "remote_write request failed; retrying");
                        }
                    } else {
                        self.metrics.request(outcome::REJECTED);
                        tracing::error!(%status, body = %body, url = %redact_url(self.url.as_str()), "remote_write request rejected; its samples are dropped");
                        return Ok(Delivery::Rejected);
                    }
                }
                Err(e) => {
                    self.metrics.request(outcome::RETRYABLE);
                    last_error = format!("{e}");
                    if attempt == 0 {
                        tracing::warn!(error = %e, url = %redact_url(self.url.as_str()), "remote_write request failed; retrying");
                    }
                }
            }
        }
        Err(anyhow!(
            "remote_write to {} failed after {} attempts: {last_error}",
            redact_url(self.url.as_str()),
            self.cfg.max_retries + 1
        ))
    }

    /// Ships every `flush_interval` until `shutdown` completes. Failures are logged and
    /// counted; the next flush starts again from the watermark.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.cfg.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let now = unix_now();
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.ship_once(now) => match r {
                    Ok(r) => tracing::debug!(?r, "remote_write flush"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "remote_write flush failed; retrying at the next flush"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, StoreOptions};

    fn row(tenant: &str, service: &str, route: &str, start: i64, requests: u64) -> SliRow {
        let mut counts = SliCounts {
            requests,
            errors: requests / 10,
            ..Default::default()
        };
        // Spread over a few buckets, deterministic.
        for i in 0..requests {
            counts.buckets[(i as usize * 7) % BUCKETS] += 1;
        }
        SliRow {
            tenant: tenant.into(),
            service: service.into(),
            route: route.into(),
            start,
            seconds: MINUTE,
            counts,
        }
    }

    fn label<'a>(ts: &'a TimeSeries, name: &str) -> Option<&'a str> {
        ts.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    #[test]
    fn le_labels_match_prometheus_formatting() {
        let all: Vec<String> = (0..BUCKETS).map(le_label).collect();
        assert_eq!(
            all,
            [
                "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1",
                "2.5", "5", "7.5", "10", "+Inf"
            ]
        );
    }

    #[test]
    fn plan_ships_closed_minutes_within_the_backlog() {
        let grace = 90;
        let backlog = 3600;
        // 12:00:00 = 43200. A minute [s, s+60) is closed when s + 60 + 90 <= now.
        let now = 1_000_000 * 60 + 150; // exactly start+60+90 of minute 1_000_000*60
        let p = plan(now, Some(1_000_000 * 60), grace, backlog);
        assert_eq!(
            (p.from, p.to, p.skipped),
            (1_000_000 * 60, 1_000_001 * 60, None)
        );
        // One second earlier, that minute is not closed yet.
        let p = plan(now - 1, Some(1_000_000 * 60), grace, backlog);
        assert_eq!(p.from, p.to);
        // First start: from the horizon, nothing counted as skipped.
        let p = plan(now, None, grace, backlog);
        assert_eq!(p.from, ceil_minute(now - backlog));
        assert_eq!(p.skipped, None);
        // A watermark older than the horizon: the gap is skipped.
        let p = plan(now, Some(now - 10 * 3600), grace, backlog);
        assert_eq!(p.skipped, Some((floor_minute(now - 10 * 3600), p.from)));
        assert_eq!(p.from, ceil_minute(now - backlog));
        // A minute starting exactly at now - max_backlog is still shipped.
        let aligned_now = 1_000_000 * 60;
        let p = plan(aligned_now, Some(0), 0, 3600);
        assert_eq!(p.from, aligned_now - 3600);
        // A watermark in the future (clock went back): nothing to ship.
        let p = plan(now, Some(now + 600), grace, backlog);
        assert!(p.from > p.to);
        // Unaligned watermark is floored.
        let p = plan(now, Some(1_000_000 * 60 + 17), grace, backlog);
        assert_eq!(p.from, 1_000_000 * 60);
    }

    #[test]
    fn one_row_becomes_seventeen_series_with_cumulative_buckets() {
        let mut r = row("acme", "api", "/posts/{id}", 6000, 0);
        r.counts.requests = 6;
        r.counts.errors = 2;
        r.counts.buckets[0] = 1;
        r.counts.buckets[3] = 2;
        r.counts.buckets[BUCKETS - 1] = 3;
        let rows = vec![r];
        let mut p = Packer::new(&rows, 6060, "c1", 1000);
        let packed = p.next_request().unwrap();
        assert!(p.next_request().is_none());
        assert_eq!(packed.samples, SAMPLES_PER_ROW);
        assert_eq!(packed.watermark, 6060);
        let req = packed.request;
        assert_eq!(req.timeseries.len(), SAMPLES_PER_ROW);
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted by name");
            assert_eq!(label(ts, "tenant"), Some("acme"));
            assert_eq!(label(ts, "service"), Some("api"));
            assert_eq!(label(ts, "route"), Some("/posts/{id}"));
            assert_eq!(label(ts, "collector"), Some("c1"));
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, 6_030_000);
        }
        let value = |name: &str, le: Option<&str>| {
            req.timeseries
                .iter()
                .find(|t| label(t, "__name__") == Some(name) && label(t, "le") == le)
                .map(|t| t.samples[0].value)
                .unwrap()
        };
        assert_eq!(value(REQUESTS_METRIC, None), 6.0);
        assert_eq!(value(ERRORS_METRIC, None), 2.0);
        assert_eq!(value(LATENCY_BUCKET_METRIC, Some("0.005")), 1.0);
        assert_eq!(value(LATENCY_BUCKET_METRIC, Some("0.025")), 1.0);
        assert_eq!(value(LATENCY_BUCKET_METRIC, Some("0.05")), 3.0);
        assert_eq!(value(LATENCY_BUCKET_METRIC, Some("10")), 3.0);
        assert_eq!(value(LATENCY_BUCKET_METRIC, Some("+Inf")), 6.0);
        assert_eq!(req.metadata.len(), 3);
    }

    #[test]
    fn empty_label_values_are_left_out() {
        let rows = vec![row("acme", "", "", 60, 1)];
        let packed = Packer::new(&rows, 120, "c1", 1000).next_request().unwrap();
        for ts in &packed.request.timeseries {
            assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
            assert_eq!(label(ts, "service"), None);
        }
    }

    #[test]
    fn requests_are_cut_at_max_samples_and_keep_time_order() {
        let mut rows = Vec::new();
        for m in 0..5 {
            rows.push(row("b", "s", "/x", 6000 + m * 60, 3));
            rows.push(row("a", "s", "/y", 6000 + m * 60, 4));
        }
        normalize_rows(&mut rows);
        let max = 20;
        let mut p = Packer::new(&rows, 6000 + 10 * 60, "c", max);
        let mut last_ts: BTreeMap<Vec<(String, String)>, i64> = BTreeMap::new();
        let mut total = 0;
        let mut last_watermark = 0;
        let mut requests = 0;
        while let Some(packed) = p.next_request() {
            requests += 1;
            assert!(packed.samples <= max);
            let n: usize = packed
                .request
                .timeseries
                .iter()
                .map(|t| t.samples.len())
                .sum();
            assert_eq!(n, packed.samples);
            total += n;
            assert!(packed.watermark >= last_watermark);
            last_watermark = packed.watermark;
            for ts in &packed.request.timeseries {
                let key: Vec<(String, String)> = ts
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                for s in &ts.samples {
                    let prev = last_ts.insert(key.clone(), s.timestamp);
                    assert!(
                        prev.is_none_or(|p| p < s.timestamp),
                        "time order per series"
                    );
                }
            }
        }
        assert_eq!(total, rows.len() * SAMPLES_PER_ROW);
        assert_eq!(requests, (rows.len() * SAMPLES_PER_ROW).div_ceil(max));
        assert_eq!(last_watermark, 6000 + 10 * 60);
    }

    #[test]
    fn watermark_only_counts_complete_minutes() {
        let rows = vec![row("a", "s", "/", 60, 1), row("b", "s", "/", 60, 1)];
        let mut p = Packer::new(&rows, 600, "c", SAMPLES_PER_ROW + 3);
        // The first request ends inside the second row of minute 60: minute 60 is incomplete.
        assert_eq!(p.next_request().unwrap().watermark, 60);
        assert_eq!(p.next_request().unwrap().watermark, 600);
        assert!(p.next_request().is_none());
    }

    #[test]
    fn normalize_sorts_and_merges_duplicate_keys() {
        let mut rows = vec![
            row("b", "s", "/", 120, 2),
            row("a", "s", "/", 120, 1),
            row("a", "s", "/", 60, 5),
            row("a", "s", "/", 120, 3),
        ];
        normalize_rows(&mut rows);
        let keys: Vec<(i64, &str, u64)> = rows
            .iter()
            .map(|r| (r.start, r.tenant.as_str(), r.counts.requests))
            .collect();
        assert_eq!(keys, [(60, "a", 5), (120, "a", 4), (120, "b", 2)]);
    }

    #[test]
    fn encoding_round_trips_through_snappy_and_protobuf() {
        let rows = vec![row("acme", "api", "/a\"b\\c", 600, 9)];
        let packed = Packer::new(&rows, 660, "c", 1000).next_request().unwrap();
        let body = encode(&packed.request).unwrap();
        // Plain snap block decoding, then prost.
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(raw, packed.request.encode_to_vec());
        assert_eq!(
            WriteRequest::decode(raw.as_slice()).unwrap(),
            packed.request
        );
        assert_eq!(decode(&body).unwrap(), packed.request);
        // The snappy *framed* format would start with a stream identifier chunk.
        assert_ne!(body.first(), Some(&0xff));
        assert!(decode(b"not snappy").is_err());
    }

    #[test]
    fn field_numbers_match_prompb() {
        // Hand-encoded: WriteRequest{timeseries:[{labels:[{name:"a",value:"b"}],
        // samples:[{value:1.0,timestamp:2}]}]}.
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "a".into(),
                    value: "b".into(),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 2,
                }],
            }],
            metadata: vec![],
        };
        let mut sample = vec![0x09];
        sample.extend(1.0f64.to_le_bytes());
        sample.extend([0x10, 0x02]);
        let label = vec![0x0a, 1, b'a', 0x12, 1, b'b'];
        let mut ts = vec![0x0a, label.len() as u8];
        ts.extend(&label);
        ts.extend([0x12, sample.len() as u8]);
        ts.extend(&sample);
        let mut expected = vec![0x0a, ts.len() as u8];
        expected.extend(&ts);
        assert_eq!(req.encode_to_vec(), expected);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            let d = backoff_delay(attempt, min, max);
            let base = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn config_parses_and_validates() {
        let cfg: RemoteWriteConfig = toml::from_str(
            r#"
            url = "https://mimir.example/api/v1/push"
            headers = { "X-Scope-OrgID" = "platform" }
            bearer_token = "s3cret"
            flush_interval = "30s"
            grace = "2m"
            max_backlog = "2h"
            max_samples_per_request = 5000
            collector_id = "collector-0"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.grace, Duration::from_secs(120));
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(!RemoteWriteConfig::default().enabled());
        assert_eq!(RemoteWriteConfig::default().validate(), Ok(()));
        assert!(toml::from_str::<RemoteWriteConfig>("urll = \"x\"").is_err());

        let bad = |f: fn(&mut RemoteWriteConfig)| {
            let mut c = RemoteWriteConfig {
                url: "http://p:9090/api/v1/write".into(),
                ..Default::default()
            };
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.url = "ftp://x".into()).contains("http"));
        assert!(bad(|c| c.url = "not a url".into()).contains("remote_write.url"));
        assert!(
            bad(|c| {
                c.headers.insert("Content-Type".into(), "x".into());
            })
            .contains("protocol")
        );
        assert!(
            bad(|c| {
                c.headers.insert("bad header".into(), "x".into());
            })
            .contains("header name")
        );
        assert!(
            bad(|c| {
                c.bearer_token = Some("a".into());
                c.headers.insert("Authorization".into(), "x".into());
            })
            .contains("Authorization")
        );
        assert!(bad(|c| c.max_samples_per_request = 0).contains("max_samples"));
        assert!(bad(|c| c.max_backlog = Duration::from_secs(10)).contains("max_backlog"));
        assert!(bad(|c| c.flush_interval = Duration::ZERO).contains("flush_interval"));
        assert!(bad(|c| c.collector_id = "a\nb".into()).contains("collector_id"));
    }

    #[test]
    fn redaction_hides_credentials() {
        assert_eq!(
            redact_url("https://user:pw@host:9/api/v1/write?token=x#f"),
            "https://host:9/api/v1/write"
        );
        let mut h = BTreeMap::new();
        h.insert("X-Api-Key".to_string(), "k".to_string());
        h.insert("X-Scope-OrgID".to_string(), "t".to_string());
        let r = redact_headers(&h);
        assert_eq!(r["X-Api-Key"], "<redacted>");
        assert_eq!(r["X-Scope-OrgID"], "t");
    }

    // ---- the shipper against an in-process receiver ----

    use std::sync::Mutex as StdMutex;

    type Bodies = Arc<StdMutex<Vec<(HeaderMap, Vec<u8>)>>>;

    #[derive(Clone, Default)]
    struct Received {
        bodies: Bodies,
        /// Status codes to answer, in order; 204 once exhausted.
        script: Arc<StdMutex<VecDeque<u16>>>,
    }

    async fn receiver(rx: Received) -> String {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/api/v1/write",
            post(
                |axum::extract::State(rx): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let status = rx.script.lock().unwrap().pop_front().unwrap_or(204);
                    let mut h = HeaderMap::new();
                    for (k, v) in headers.iter() {
                        h.insert(
                            HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                        );
                    }
                    if status == 204 {
                        rx.bodies.lock().unwrap().push((h, body.to_vec()));
                    }
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        "receiver says no",
                    )
                },
            ),
        );
        let app = app.with_state(rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/api/v1/write")
    }

    fn store_with(rows: Vec<SliRow>) -> Arc<Store> {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        store
            .apply(
                &Batch {
                    digest: [7; 32],
                    rows,
                    evidence: vec![],
                },
                0,
            )
            .unwrap();
        Arc::new(store)
    }

    fn cfg(url: String) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url,
            collector_id: "test-collector".into(),
            max_retries: 2,
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            headers: [("X-Scope-OrgID".to_string(), "platform".to_string())].into(),
            bearer_token: Some("tok".into()),
            ..Default::default()
        }
    }

    /// A minute boundary.
    const NOW: i64 = 1_800_000_000;

    #[tokio::test]
    async fn ships_with_protocol_headers_and_persists_the_watermark() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        let rows = vec![
            row("acme", "api", "/a", NOW - 600, 5),
            row("acme", "api", "/a", NOW - 300, 4),
            row("beta", "web", "/b", NOW - 300, 3),
        ];
        let store = store_with(rows);
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url.clone()), store.clone(), metrics.clone()).unwrap();
        let r = s.ship_once(NOW).await.unwrap();
        assert_eq!(r.samples_sent, 3 * SAMPLES_PER_ROW as u64);
        assert_eq!(r.samples_dropped, 0);
        // Closed minutes: start + 60 + 90 <= NOW, so the minute [NOW - 180, NOW - 120) is the
        // last one shipped.
        assert_eq!(r.watermark, NOW - 120);
        assert_eq!(s.watermark().await.unwrap(), Some(NOW - 120));
        assert_eq!(metrics.samples_sent(), 3 * SAMPLES_PER_ROW as u64);
        let bodies = rx.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1);
        let (h, body) = &bodies[0];
        assert_eq!(h["content-encoding"], "snappy");
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
        assert_eq!(h["x-scope-orgid"], "platform");
        assert_eq!(h["authorization"], "Bearer tok");
        let req = decode(body).unwrap();
        let samples: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
        assert_eq!(samples, 3 * SAMPLES_PER_ROW);

        // A new shipper on the same store sends nothing new.
        let mut again = Shipper::new(cfg(url), store, metrics.clone()).unwrap();
        let r = again.ship_once(NOW + 30).await.unwrap();
        assert_eq!((r.requests, r.samples_sent), (0, 0));
        assert_eq!(rx.bodies.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rejected_batches_are_dropped_and_counted_and_5xx_is_retried() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        rx.script.lock().unwrap().extend([503, 429, 400]);
        let store = store_with(vec![row("acme", "api", "/a", NOW - 600, 5)]);
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url), store, metrics.clone()).unwrap();
        let r = s.ship_once(NOW).await.unwrap();
        assert_eq!(r.samples_dropped, SAMPLES_PER_ROW as u64);
        assert_eq!(
            metrics.samples_dropped(reason::REJECTED),
            SAMPLES_PER_ROW as u64
        );
        assert_eq!(metrics.requests(outcome::RETRYABLE), 2);
        assert_eq!(metrics.requests(outcome::REJECTED), 1);
        // Rejected is final: the watermark moves on.
        assert_eq!(r.watermark, NOW - 120);
    }

    #[tokio::test]
    async fn giving_up_keeps_the_watermark() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        rx.script.lock().unwrap().extend([500, 500, 500]);
        let store = store_with(vec![row("acme", "api", "/a", NOW - 600, 5)]);
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url), store, metrics.clone()).unwrap();
        let start = s.watermark().await.unwrap();
        let err = s.ship_once(NOW).await.unwrap_err();
        assert!(format!("{err:#}").contains("500"), "{err:#}");
        assert_eq!(metrics.requests(outcome::RETRYABLE), 3);
        assert_eq!(metrics.samples_sent(), 0);
        // The first flush started at the backlog horizon and got as far as the failed minute.
        assert_eq!(start, None);
        assert_eq!(s.watermark().await.unwrap(), Some(NOW - 600));
        // The receiver recovers: the same minute is shipped at the next flush.
        let r = s.ship_once(NOW).await.unwrap();
        assert_eq!(r.samples_sent, SAMPLES_PER_ROW as u64);
    }

    #[tokio::test]
    async fn minutes_past_the_backlog_are_counted_as_dropped() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        let store = store_with(vec![
            row("acme", "api", "/a", NOW - 3 * 3600, 5),
            row("acme", "api", "/a", NOW - 2 * 3600, 5),
            row("acme", "api", "/a", NOW - 600, 5),
        ]);
        store
            .meta_set(
                &format!("remote_write.watermark {}", redact_url(&url)),
                &(NOW - 4 * 3600).to_string(),
            )
            .unwrap();
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url), store, metrics.clone()).unwrap();
        let r = s.ship_once(NOW).await.unwrap();
        assert_eq!(
            metrics.samples_dropped(reason::BACKLOG),
            2 * SAMPLES_PER_ROW as u64
        );
        assert_eq!(r.samples_sent, SAMPLES_PER_ROW as u64);
    }

    #[tokio::test]
    async fn late_rows_for_shipped_minutes_are_counted() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        let store = store_with(vec![row("acme", "api", "/a", NOW - 600, 5)]);
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url), store.clone(), metrics.clone()).unwrap();
        s.ship_once(NOW - 240).await.unwrap();
        store
            .apply(
                &Batch {
                    digest: [8; 32],
                    rows: vec![row("acme", "api", "/a", NOW - 600, 2)],
                    evidence: vec![],
                },
                0,
            )
            .unwrap();
        s.ship_once(NOW).await.unwrap();
        assert_eq!(metrics.late_requests(), 2);
        // Not sent again.
        assert_eq!(metrics.samples_sent(), SAMPLES_PER_ROW as u64);
    }

    #[tokio::test]
    async fn hour_rows_in_the_window_are_counted_as_rolled_up() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        let mut hour = row("acme", "api", "/a", NOW - 3600, 5);
        hour.seconds = crate::sli::HOUR;
        let store = store_with(vec![hour, row("acme", "api", "/a", NOW - 600, 5)]);
        let metrics = RemoteWriteMetrics::default();
        let mut s = Shipper::new(cfg(url), store, metrics.clone()).unwrap();
        let r = s.ship_once(NOW).await.unwrap();
        assert_eq!(
            metrics.samples_dropped(reason::ROLLED_UP),
            60 * SAMPLES_PER_ROW as u64
        );
        assert_eq!(r.samples_sent, SAMPLES_PER_ROW as u64);
    }

    #[tokio::test]
    async fn run_ships_until_shutdown() {
        let rx = Received::default();
        let url = receiver(rx.clone()).await;
        let now = unix_now();
        let store = store_with(vec![row("acme", "api", "/a", floor_minute(now) - 600, 5)]);
        let metrics = RemoteWriteMetrics::default();
        let mut c = cfg(url);
        c.flush_interval = Duration::from_secs(1);
        let s = Shipper::new(c, store, metrics.clone()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(s.run(async {
            let _ = stopped.await;
        }));
        for _ in 0..500 {
            if metrics.samples_sent() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.samples_sent(), SAMPLES_PER_ROW as u64);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run ends at shutdown")
            .unwrap();
    }

    #[test]
    fn metrics_register_and_encode() {
        let m = RemoteWriteMetrics::default();
        m.drop_samples(reason::BACKLOG, 3);
        m.request(outcome::SUCCESS);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains(
            "tenantscope_collector_remote_write_samples_dropped_total{reason=\"backlog\"} 3"
        ));
        assert!(
            out.contains(
                "tenantscope_collector_remote_write_requests_total{outcome=\"success\"} 1"
            )
        );
        assert!(out.contains("tenantscope_collector_remote_write_lag_seconds"));
    }
}
