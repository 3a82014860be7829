//! OTLP to SLI rollups: pure conversion of decoded export requests into store batches.
//!
//! Metrics: the `http.server.request.duration` histogram (the agent's SLI export, and what any
//! OpenTelemetry HTTP server instrumentation emits). Each data point becomes request, error and
//! latency-bucket counts of the minute its interval ends in, for (`tenant.id`,
//! `service.name`, `http.route`). Delta temporality is used as is; cumulative points are turned
//! into deltas against the previous point of the same series (bounded state, see
//! [`CumulativeState`]). Errors are 5xx responses, and points without a status code that carry
//! `error.type` (no response at all).
//!
//! Traces: server spans are not counted (they are sampled); the bad and slow ones become
//! evidence trace ids.
//!
//! Whatever is not usable is counted by reason and skipped, never guessed.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{AggregationTemporality, HistogramDataPoint, metric::Data},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use sha2::{Digest, Sha256};

use crate::sli::{
    BUCKETS, Evidence, EvidenceKind, LATENCY_BOUNDS, MINUTE, SliCounts, SliRow, bucket_of,
};

/// The histogram the SLIs come from (OpenTelemetry HTTP semantic conventions).
pub const DURATION_METRIC: &str = "http.server.request.duration";
/// Tenant of a request: the data point's (or span's) attribute, else the resource's.
pub const TENANT_ATTRIBUTE: &str = "tenant.id";
/// Tenant value of requests without one, as the agent names it.
pub const UNKNOWN_TENANT: &str = "unknown";
/// Tenant value of requests whose tenant is not a valid id.
pub const INVALID_TENANT: &str = "invalid";
const UNKNOWN_SERVICE: &str = "unknown_service";
/// Route value of requests without `http.route`.
pub const NO_ROUTE: &str = "";
const MAX_TENANT_LEN: usize = 253;
const MAX_NAME_LEN: usize = 512;

/// Why a data point was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Bucket counts do not match the bounds, bounds not increasing, missing timestamps.
    Malformed,
    /// Ends too far in the future, or before what the store keeps.
    OutOfRange,
    /// Temporality unspecified.
    Temporality,
    /// The first cumulative point of a series that started before this collector: what it
    /// holds may already be counted (before a restart), so it only sets the baseline.
    Baseline,
    /// More cumulative series than the state may hold.
    StateFull,
}

impl Reject {
    pub const ALL: [Reject; 5] = [
        Reject::Malformed,
        Reject::OutOfRange,
        Reject::Temporality,
        Reject::Baseline,
        Reject::StateFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::OutOfRange => "out_of_range",
            Reject::Temporality => "temporality",
            Reject::Baseline => "cumulative_baseline",
            Reject::StateFull => "cumulative_state_full",
        }
    }
}

/// The result of converting one metrics export.
#[derive(Debug, Default)]
pub struct MetricsBatch {
    /// Minute rows, one per key (summed within the export).
    pub rows: Vec<SliRow>,
    /// Data points used.
    pub accepted: u64,
    /// Data points skipped, by reason.
    pub rejected: Vec<(Reject, u64)>,
    /// Data points of other metrics (ignored, not an error).
    pub ignored: u64,
    /// Data points whose buckets did not line up with [`LATENCY_BOUNDS`] and were moved to the
    /// next bound up (the request counts as slower, never as faster).
    pub rebucketed: u64,
    /// A message for the first rejection, for the exporter's partial-success response.
    pub first_error: Option<String>,
    /// The cumulative state this conversion replaced, to put back if the batch is not
    /// committed (so the sender's retry computes the same deltas again).
    pub undo: Undo,
}

/// Previous values of the cumulative series a conversion advanced, oldest change first.
#[derive(Debug, Default)]
pub struct Undo(Vec<(String, Option<(u64, SliCounts)>)>);

impl MetricsBatch {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    fn reject(&mut self, why: Reject, detail: impl FnOnce() -> String) {
        match self.rejected.iter_mut().find(|(r, _)| *r == why) {
            Some((_, n)) => *n += 1,
            None => self.rejected.push((why, 1)),
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {}", why.as_str(), detail()));
        }
    }
}

/// Limits on what a point's time may be.
#[derive(Clone, Copy, Debug)]
pub struct TimeLimits {
    /// Unix seconds now.
    pub now: i64,
    /// Oldest accepted minute (what the store still keeps as minutes).
    pub oldest: i64,
    /// Tolerated clock skew into the future, seconds.
    pub future: i64,
}

/// Previous cumulative points per series, to turn cumulative points into deltas. Bounded; lost
/// on restart (the first point after a restart is a baseline, counted as such).
#[derive(Debug)]
pub struct CumulativeState {
    /// Unix nanoseconds this collector started: series started after it are counted from their
    /// first point.
    started_ns: u64,
    max_series: usize,
    last: HashMap<String, (u64, SliCounts)>,
}

impl CumulativeState {
    pub fn new(started_ns: u64, max_series: usize) -> Self {
        Self {
            started_ns,
            max_series,
            last: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Puts back what a conversion changed (its batch was not committed).
    pub fn rollback(&mut self, undo: Undo) {
        for (key, previous) in undo.0.into_iter().rev() {
            match previous {
                Some(p) => self.last.insert(key, p),
                None => self.last.remove(&key),
            };
        }
    }

    /// The delta of `counts` since the previous point of `key`, or why there is none.
    fn delta(
        &mut self,
        key: String,
        start_ns: u64,
        counts: SliCounts,
        undo: &mut Undo,
    ) -> Result<SliCounts, Reject> {
        let full = self.last.len() >= self.max_series && !self.last.contains_key(&key);
        if full {
            return Err(Reject::StateFull);
        }
        let previous = self.last.insert(key.clone(), (start_ns, counts));
        undo.0.push((key, previous));
        match previous {
            // Same series, not reset: the difference. A decrease (of the requests or of any
            // bucket) is a reset without a new start time; the new point is then all new. (A
            // bucket that shrank while the total grew would otherwise leave buckets that no
            // longer add up to the requests.)
            Some((prev_start, prev))
                if prev_start == start_ns
                    && prev.requests <= counts.requests
                    && prev
                        .buckets
                        .iter()
                        .zip(&counts.buckets)
                        .all(|(p, c)| p <= c) =>
            {
                let mut d = SliCounts {
                    requests: counts.requests - prev.requests,
                    errors: counts.errors.saturating_sub(prev.errors),
                    ..Default::default()
                };
                for (i, b) in d.buckets.iter_mut().enumerate() {
                    *b = counts.buckets[i] - prev.buckets[i];
                }
                Ok(d)
            }
            Some(_) => Ok(counts),
            None if start_ns >= self.started_ns => Ok(counts),
            None => Err(Reject::Baseline),
        }
    }
}

fn string_of(v: &Option<AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Option<AnyValue>> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attr(attrs, key).and_then(string_of)
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)?.as_ref()?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

/// A tenant id as stored: valid ids lowercased (as the agent does, so `Acme` from another SDK
/// is the same tenant), anything else `invalid`, absent `unknown`.
pub fn tenant_of(value: Option<&str>) -> String {
    match value {
        None | Some("") => UNKNOWN_TENANT.to_string(),
        Some(t) if valid_tenant(t) => t.to_ascii_lowercase(),
        Some(_) => INVALID_TENANT.to_string(),
    }
}

fn valid_tenant(t: &str) -> bool {
    t.len() <= MAX_TENANT_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Service and route names are bounded so a hostile exporter cannot store megabytes per row.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_NAME_LEN {
        return s.to_string();
    }
    let mut end = MAX_NAME_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn is_error(status: Option<i64>, attrs: &[KeyValue]) -> bool {
    match status {
        Some(code) => code >= 500,
        None => attr(attrs, "error.type").is_some(),
    }
}

/// Seconds per unit of the histogram's bounds.
fn unit_scale(unit: &str) -> Option<f64> {
    match unit {
        "s" | "" => Some(1.0),
        "ms" => Some(1e-3),
        "us" => Some(1e-6),
        _ => None,
    }
}

/// The digest of an export, for deduplication of retries: SHA-256 over the signal and its
/// canonical protobuf encoding (the same whether it came as protobuf or JSON, gRPC or HTTP).
pub fn digest(signal: &str, message: &impl prost::Message) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(signal.as_bytes());
    h.update([0]);
    h.update(message.encode_to_vec());
    h.finalize().into()
}

/// Converts one metrics export into minute rows.
pub fn metrics(
    req: &ExportMetricsServiceRequest,
    limits: TimeLimits,
    state: &mut CumulativeState,
) -> MetricsBatch {
    let mut out = MetricsBatch::default();
    let mut rows: HashMap<(String, String, String, i64), SliCounts> = HashMap::new();
    for rm in &req.resource_metrics {
        let res_attrs = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = bounded(str_attr(res_attrs, "service.name").unwrap_or(UNKNOWN_SERVICE));
        let res_tenant = str_attr(res_attrs, TENANT_ATTRIBUTE);
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let points = match &m.data {
                    Some(Data::Histogram(h)) if m.name == DURATION_METRIC => h,
                    Some(d) => {
                        out.ignored += data_points(d);
                        continue;
                    }
                    None => continue,
                };
                let Some(scale) = unit_scale(&m.unit) else {
                    for _ in &points.data_points {
                        out.reject(Reject::Malformed, || format!("unit {:?}", m.unit));
                    }
                    continue;
                };
                let temporality = AggregationTemporality::try_from(points.aggregation_temporality)
                    .unwrap_or(AggregationTemporality::Unspecified);
                for p in &points.data_points {
                    point(
                        &mut out,
                        &mut rows,
                        state,
                        limits,
                        (&service, res_tenant, res_attrs),
                        temporality,
                        scale,
                        p,
                    );
                }
            }
        }
    }
    out.rows = rows
        .into_iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|((tenant, service, route, start), counts)| SliRow {
            tenant,
            service,
            route,
            start,
            seconds: MINUTE,
            counts,
        })
        .collect();
    out.rows.sort_by(|a, b| {
        (&a.tenant, a.start, &a.service, &a.route).cmp(&(&b.tenant, b.start, &b.service, &b.route))
    });
    out
}

fn data_points(d: &Data) -> u64 {
    (match d {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    }) as u64
}

#[allow(clippy::too_many_arguments)]
fn point(
    out: &mut MetricsBatch,
    rows: &mut HashMap<(String, String, String, i64), SliCounts>,
    state: &mut CumulativeState,
    limits: TimeLimits,
    (service, res_tenant, res_attrs): (&str, Option<&str>, &[KeyValue]),
    temporality: AggregationTemporality,
    scale: f64,
    p: &HistogramDataPoint,
) {
    let bounds = &p.explicit_bounds;
    if p.bucket_counts.len() != bounds.len() + 1
        || bounds.windows(2).any(|w| w[0] >= w[1])
        || bounds.iter().any(|b| !b.is_finite())
    {
        out.reject(Reject::Malformed, || {
            format!(
                "{} bucket counts for {} bounds, or bounds not increasing",
                p.bucket_counts.len(),
                bounds.len()
            )
        });
        return;
    }
    if p.time_unix_nano == 0 {
        out.reject(Reject::Malformed, || "time_unix_nano is 0".into());
        return;
    }
    // The minute the interval ends in (an end exactly on a minute boundary belongs to the
    // minute before it: the interval is (start, end]).
    let end_s = ((p.time_unix_nano - 1) / 1_000_000_000) as i64;
    let minute = end_s.div_euclid(MINUTE) * MINUTE;
    if minute > limits.now + limits.future || minute < limits.oldest {
        out.reject(Reject::OutOfRange, || {
            format!("point ends at {end_s}, now is {}", limits.now)
        });
        return;
    }
    // More requests than a u64 holds is no real histogram (and would wrap).
    let Some(requests) = p
        .bucket_counts
        .iter()
        .try_fold(0u64, |sum, &n| sum.checked_add(n))
    else {
        out.reject(Reject::Malformed, || "bucket counts overflow".into());
        return;
    };
    let status = int_attr(&p.attributes, "http.response.status_code");
    let mut counts = SliCounts {
        requests,
        errors: if is_error(status, &p.attributes) {
            requests
        } else {
            0
        },
        ..Default::default()
    };
    let mut moved = false;
    for (i, &n) in p.bucket_counts.iter().enumerate() {
        let target = match bounds.get(i) {
            Some(&b) => {
                let t = bucket_of(b * scale * (1.0 - 1e-9));
                moved |= t == BUCKETS - 1 || (LATENCY_BOUNDS[t] - b * scale).abs() > 1e-9;
                t
            }
            None => BUCKETS - 1,
        };
        counts.buckets[target] += n;
    }
    let tenant = tenant_of(str_attr(&p.attributes, TENANT_ATTRIBUTE).or(res_tenant));
    let route = bounded(str_attr(&p.attributes, "http.route").unwrap_or(NO_ROUTE));
    let counts = match temporality {
        AggregationTemporality::Delta => counts,
        AggregationTemporality::Cumulative => {
            let key = series_key(res_attrs, &p.attributes);
            match state.delta(key, p.start_time_unix_nano, counts, &mut out.undo) {
                Ok(d) => d,
                Err(why) => {
                    out.reject(why, || format!("series of {tenant} {service} {route}"));
                    return;
                }
            }
        }
        AggregationTemporality::Unspecified => {
            out.reject(Reject::Temporality, || {
                "aggregation temporality unspecified".into()
            });
            return;
        }
    };
    if moved && counts.requests > 0 {
        out.rebucketed += 1;
    }
    out.accepted += 1;
    rows.entry((tenant, service.to_string(), route, minute))
        .or_default()
        .add(&counts);
}

/// A cumulative series' identity: its resource and point attributes.
fn series_key(res: &[KeyValue], point: &[KeyValue]) -> String {
    let mut parts: Vec<String> = res
        .iter()
        .map(|kv| format!("r:{}={:?}", kv.key, kv.value))
        .chain(
            point
                .iter()
                .map(|kv| format!("p:{}={:?}", kv.key, kv.value)),
        )
        .collect();
    parts.sort_unstable();
    parts.join("\u{1f}")
}

/// The result of converting one trace export.
#[derive(Debug, Default)]
pub struct TraceBatch {
    pub spans: u64,
    pub evidence: Vec<Evidence>,
}

/// Keeps bad and slow server spans as evidence; `threshold_ms` gives the tenant's latency
/// threshold.
pub fn traces(req: &ExportTraceServiceRequest, threshold_ms: &dyn Fn(&str) -> f64) -> TraceBatch {
    let mut out = TraceBatch::default();
    for rs in &req.resource_spans {
        let res_attrs = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = str_attr(res_attrs, "service.name").unwrap_or(UNKNOWN_SERVICE);
        let res_tenant = str_attr(res_attrs, TENANT_ATTRIBUTE);
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.spans += 1;
                if s.kind != SpanKind::Server as i32 || s.trace_id.len() != 16 {
                    continue;
                }
                let status = int_attr(&s.attributes, "http.response.status_code");
                let failed = s
                    .status
                    .as_ref()
                    .is_some_and(|st| st.code == StatusCode::Error as i32);
                let duration_ms =
                    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6;
                let tenant = tenant_of(str_attr(&s.attributes, TENANT_ATTRIBUTE).or(res_tenant));
                let kind = if status.is_some_and(|c| c >= 500) || (status.is_none() && failed) {
                    EvidenceKind::Error
                } else if duration_ms > threshold_ms(&tenant) {
                    EvidenceKind::Slow
                } else {
                    continue;
                };
                out.evidence.push(Evidence {
                    tenant,
                    service: bounded(service),
                    route: bounded(str_attr(&s.attributes, "http.route").unwrap_or(NO_ROUTE)),
                    at_ms: (s.end_time_unix_nano / 1_000_000) as i64,
                    kind,
                    trace_id: hex(&s.trace_id),
                    status: status.and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
                    duration_ms,
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        metrics::v1::{Histogram, Metric, ResourceMetrics, ScopeMetrics},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
    };

    pub const T0: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z

    pub fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    /// A delta point: `counts` over the agent's bounds, ending `end_s`.
    pub fn hist_point(
        tenant: &str,
        route: &str,
        status: i64,
        counts: [u64; 15],
        end_s: i64,
    ) -> HistogramDataPoint {
        HistogramDataPoint {
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv("http.response.status_code", Value::IntValue(status)),
                kv("http.route", s(route)),
                kv(TENANT_ATTRIBUTE, s(tenant)),
            ],
            start_time_unix_nano: ((end_s - 10) * 1_000_000_000) as u64,
            time_unix_nano: (end_s * 1_000_000_000) as u64,
            count: counts.iter().sum(),
            sum: Some(0.1),
            bucket_counts: counts.to_vec(),
            explicit_bounds: LATENCY_BOUNDS.to_vec(),
            ..Default::default()
        }
    }

    pub fn request(
        service: &str,
        temporality: AggregationTemporality,
        points: Vec<HistogramDataPoint>,
    ) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s(service)), kv("host.name", s("node-1"))],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: DURATION_METRIC.into(),
                        unit: "s".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: points,
                            aggregation_temporality: temporality as i32,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn limits() -> TimeLimits {
        TimeLimits {
            now: T0 + 3600,
            oldest: T0 - 86_400,
            future: 300,
        }
    }

    fn one_at(i: usize, n: u64) -> [u64; 15] {
        let mut c = [0; 15];
        c[i] = n;
        c
    }

    #[test]
    fn delta_points_become_minute_rows() {
        let req = request(
            "api",
            AggregationTemporality::Delta,
            vec![
                hist_point("acme", "/posts/{id}", 200, one_at(2, 7), T0 + 70),
                hist_point("acme", "/posts/{id}", 503, one_at(9, 2), T0 + 80),
                // Ends exactly at a minute boundary: the minute before.
                hist_point("acme", "/posts/{id}", 200, one_at(0, 1), T0 + 60),
                hist_point("globex", "/", 404, one_at(14, 3), T0 + 70),
            ],
        );
        let mut state = CumulativeState::new(0, 10);
        let b = metrics(&req, limits(), &mut state);
        assert_eq!((b.accepted, b.rejected_total(), b.rebucketed), (4, 0, 0));
        assert_eq!(b.rows.len(), 3);
        let acme: Vec<_> = b.rows.iter().filter(|r| r.tenant == "acme").collect();
        assert_eq!(acme[0].start, T0);
        assert_eq!(acme[0].counts.requests, 1);
        assert_eq!(acme[1].start, T0 + 60);
        assert_eq!((acme[1].counts.requests, acme[1].counts.errors), (9, 2));
        assert_eq!(acme[1].counts.buckets[2], 7);
        assert_eq!(acme[1].counts.buckets[9], 2);
        assert_eq!(acme[1].service, "api");
        let globex = b.rows.iter().find(|r| r.tenant == "globex").unwrap();
        assert_eq!(
            (globex.counts.requests, globex.counts.errors),
            (3, 0),
            "4xx is not an error"
        );
        assert_eq!(globex.counts.buckets[14], 3);
    }

    #[test]
    fn bad_points_are_counted_by_reason() {
        let mut short = hist_point("acme", "/", 200, one_at(0, 1), T0 + 70);
        short.bucket_counts.pop();
        let mut unordered = hist_point("acme", "/", 200, one_at(0, 1), T0 + 70);
        unordered.explicit_bounds.swap(0, 1);
        let mut no_time = hist_point("acme", "/", 200, one_at(0, 1), T0 + 70);
        no_time.time_unix_nano = 0;
        let future = hist_point("acme", "/", 200, one_at(0, 1), T0 + 3600 + 1000);
        let old = hist_point("acme", "/", 200, one_at(0, 1), T0 - 2 * 86_400);
        let req = request(
            "api",
            AggregationTemporality::Delta,
            vec![short, unordered, no_time, future, old],
        );
        let b = metrics(&req, limits(), &mut CumulativeState::new(0, 10));
        assert_eq!(b.accepted, 0);
        assert_eq!(
            b.rejected,
            vec![(Reject::Malformed, 3), (Reject::OutOfRange, 2)]
        );
        assert!(b.first_error.unwrap().starts_with("malformed"));
        assert!(b.rows.is_empty());
        let req = request(
            "api",
            AggregationTemporality::Unspecified,
            vec![hist_point("a", "/", 200, one_at(0, 1), T0 + 70)],
        );
        let b = metrics(&req, limits(), &mut CumulativeState::new(0, 10));
        assert_eq!(b.rejected, vec![(Reject::Temporality, 1)]);
    }

    #[test]
    fn tenants_are_validated_and_defaulted() {
        assert_eq!(tenant_of(Some("acme-1.eu_x")), "acme-1.eu_x");
        assert_eq!(tenant_of(Some("Acme")), "acme");
        assert_eq!(tenant_of(Some("")), UNKNOWN_TENANT);
        assert_eq!(tenant_of(None), UNKNOWN_TENANT);
        assert_eq!(tenant_of(Some("a b")), INVALID_TENANT);
        assert_eq!(tenant_of(Some("<script>")), INVALID_TENANT);
        assert_eq!(tenant_of(Some(&"a".repeat(300))), INVALID_TENANT);
        assert_eq!(bounded(&"é".repeat(400)).len(), 512);
    }

    #[test]
    fn other_bounds_move_up_never_down_and_ms_units_convert() {
        let mut p = hist_point("acme", "/", 200, [0; 15], T0 + 70);
        // 0.3 s is not one of ours: its bucket counts as 0.5 s.
        p.explicit_bounds = vec![0.3, 5.0];
        p.bucket_counts = vec![4, 1, 2];
        let req = request("api", AggregationTemporality::Delta, vec![p]);
        let b = metrics(&req, limits(), &mut CumulativeState::new(0, 10));
        assert_eq!(b.rebucketed, 1);
        let c = b.rows[0].counts;
        assert_eq!((c.buckets[7], c.buckets[11], c.buckets[14]), (4, 1, 2));
        let mut p = hist_point("acme", "/", 200, [0; 15], T0 + 70);
        p.explicit_bounds = LATENCY_BOUNDS.iter().map(|b| b * 1000.0).collect();
        p.bucket_counts = one_at(6, 5).to_vec();
        let mut req = request("api", AggregationTemporality::Delta, vec![p]);
        req.resource_metrics[0].scope_metrics[0].metrics[0].unit = "ms".into();
        let b = metrics(&req, limits(), &mut CumulativeState::new(0, 10));
        assert_eq!((b.rebucketed, b.rows[0].counts.buckets[6]), (0, 5));
    }

    #[test]
    fn counts_beyond_u64_are_malformed_and_sums_saturate() {
        // Found by fuzzing (fuzz/ collector_otlp_ingest): the sum of a point's bucket counts
        // overflowed (a panic in debug builds, wrapped counts in release).
        let mut huge = hist_point("acme", "/", 200, [0; 15], T0 + 70);
        huge.bucket_counts[0] = 1;
        huge.bucket_counts[14] = u64::MAX;
        let ok = hist_point("acme", "/", 200, one_at(3, u64::MAX - 1), T0 + 70);
        let again = hist_point("acme", "/", 200, one_at(3, 5), T0 + 70);
        let req = request("api", AggregationTemporality::Delta, vec![huge, ok, again]);
        let b = metrics(&req, limits(), &mut CumulativeState::new(0, 10));
        assert_eq!(b.rejected, vec![(Reject::Malformed, 1)]);
        assert!(b.first_error.unwrap().contains("overflow"));
        // Two valid points of one row add up to more than a u64: the row saturates.
        assert_eq!(b.accepted, 2);
        let c = b.rows[0].counts;
        assert_eq!((c.requests, c.buckets[3]), (u64::MAX, u64::MAX));
    }

    #[test]
    fn cumulative_points_become_deltas() {
        let started = ((T0 - 100) * 1_000_000_000) as u64;
        let mut state = CumulativeState::new(started, 2);
        let mut p = hist_point("acme", "/", 200, one_at(1, 5), T0 + 70);
        p.start_time_unix_nano = started + 1;
        let next = |state: &mut CumulativeState,
                    p: &HistogramDataPoint,
                    counts: [u64; 15],
                    end: i64,
                    start_ns: u64| {
            let mut q = p.clone();
            q.bucket_counts = counts.to_vec();
            q.time_unix_nano = (end * 1_000_000_000) as u64;
            q.start_time_unix_nano = start_ns;
            let req = request("api", AggregationTemporality::Cumulative, vec![q]);
            metrics(&req, limits(), state)
        };
        // Started after the collector: counted from its first point.
        let b = next(&mut state, &p, one_at(1, 5), T0 + 70, started + 1);
        assert_eq!(b.rows[0].counts.requests, 5);
        let b = next(&mut state, &p, one_at(1, 8), T0 + 130, started + 1);
        assert_eq!((b.rows[0].counts.requests, b.rows[0].start), (3, T0 + 120));
        // A reset (new start time): the whole new value.
        let b = next(&mut state, &p, one_at(1, 2), T0 + 190, started + 50);
        assert_eq!(b.rows[0].counts.requests, 2);
        // A series older than the collector: the first point is only a baseline.
        p.attributes[2] = kv("http.route", s("/old"));
        let b = next(&mut state, &p, one_at(1, 100), T0 + 190, started - 1);
        assert_eq!(b.rejected, vec![(Reject::Baseline, 1)]);
        // A batch that was not committed is rolled back: its retry gets the same delta.
        let b = next(&mut state, &p, one_at(1, 110), T0 + 250, started - 1);
        assert_eq!(b.rows[0].counts.requests, 10);
        state.rollback(b.undo);
        let b = next(&mut state, &p, one_at(1, 110), T0 + 250, started - 1);
        assert_eq!(b.rows[0].counts.requests, 10, "the retry counts the same");
        // The state is full (2 series).
        p.attributes[2] = kv("http.route", s("/third"));
        let b = next(&mut state, &p, one_at(1, 1), T0 + 190, started + 1);
        assert_eq!(b.rejected, vec![(Reject::StateFull, 1)]);
    }

    #[test]
    fn a_cumulative_bucket_that_shrinks_is_a_reset() {
        // Found by fuzzing (fuzz/ collector_otlp_ingest): the total grew by 3 while one bucket
        // grew by 5 and another shrank by 2; the delta's buckets added up to 5 requests, not 3.
        let started = ((T0 - 100) * 1_000_000_000) as u64;
        let mut state = CumulativeState::new(started, 4);
        let point = |counts: [u64; 15], end: i64| {
            let mut p = hist_point("acme", "/", 200, counts, end);
            p.start_time_unix_nano = started + 1;
            request("api", AggregationTemporality::Cumulative, vec![p])
        };
        let mut first = one_at(3, 10);
        first[5] = 4;
        let mut second = one_at(3, 15);
        second[5] = 2;
        metrics(&point(first, T0 + 70), limits(), &mut state);
        let b = metrics(&point(second, T0 + 130), limits(), &mut state);
        let c = b.rows[0].counts;
        assert_eq!(c.buckets.iter().sum::<u64>(), c.requests);
        assert_eq!(
            (c.requests, c.buckets[3], c.buckets[5]),
            (17, 15, 2),
            "all new"
        );
    }

    #[test]
    fn digests_are_stable_and_distinct() {
        let a = request(
            "api",
            AggregationTemporality::Delta,
            vec![hist_point("a", "/", 200, one_at(0, 1), T0 + 70)],
        );
        let b = request(
            "api",
            AggregationTemporality::Delta,
            vec![hist_point("a", "/", 200, one_at(0, 2), T0 + 70)],
        );
        assert_eq!(digest("metrics", &a), digest("metrics", &a.clone()));
        assert_ne!(digest("metrics", &a), digest("metrics", &b));
        assert_ne!(digest("metrics", &a), digest("traces", &a));
    }

    pub fn span(tenant: &str, status: i64, ms: u64, kind: SpanKind, trace: u8) -> Span {
        let start = (T0 as u64) * 1_000_000_000;
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![1; 8],
            name: "GET /".into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + ms * 1_000_000,
            attributes: vec![
                kv(TENANT_ATTRIBUTE, s(tenant)),
                kv("http.route", s("/posts")),
                kv("http.response.status_code", Value::IntValue(status)),
            ],
            status: Some(Status {
                code: if status >= 500 {
                    StatusCode::Error as i32
                } else {
                    0
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn bad_and_slow_server_spans_become_evidence() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("api"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span("acme", 503, 5, SpanKind::Server, 1),
                        span("acme", 200, 900, SpanKind::Server, 2),
                        span("acme", 200, 100, SpanKind::Server, 3),
                        span("acme", 500, 5, SpanKind::Client, 4),
                        span("slowpoke", 200, 900, SpanKind::Server, 5),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let threshold = |t: &str| if t == "slowpoke" { 1000.0 } else { 500.0 };
        let b = traces(&req, &threshold);
        assert_eq!(b.spans, 5);
        let got: Vec<_> = b
            .evidence
            .iter()
            .map(|e| (e.kind, e.status, e.trace_id.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (EvidenceKind::Error, 503, "01".repeat(16)),
                (EvidenceKind::Slow, 200, "02".repeat(16)),
            ]
        );
        assert_eq!(b.evidence[0].service, "api");
        assert_eq!(b.evidence[0].route, "/posts");
        assert_eq!(b.evidence[1].duration_ms, 900.0);
    }
}
