//! The collector's own metrics: ingest health and per-tenant SLO gauges, served on `/metrics`
//! of the API listener (OpenMetrics text).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use crate::ingest::Reject;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `metrics` or `traces`.
    pub signal: &'static str,
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// `ok`, `duplicate`, `unauthenticated`, `forbidden`, `too_large`, `bad_request`,
    /// `unsupported_media_type`, `rate_limited`, `store_failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointLabels {
    /// `accepted`, `rejected` or `ignored` (other metrics).
    pub outcome: &'static str,
    /// The rejection reason; empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SloLabels {
    pub tenant: String,
    /// `availability` or `latency`.
    pub slo: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BurnLabels {
    pub tenant: String,
    pub slo: &'static str,
    /// `5m`, `30m`, `1h`, `6h`, `1d`, `3d` (see `gauges::BURN_WINDOWS`).
    pub window: &'static str,
}

/// Every metric the collector itself exports (other components register theirs beside these).
pub struct CollectorMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub points: Family<PointLabels, Counter>,
    pub rebucketed: Counter,
    pub spans: Counter,
    pub evidence: Counter,
    pub rows_written: Counter,
    pub commit_seconds: Histogram,
    pub lag_seconds: Histogram,
    pub store_rows: Gauge,
    pub store_evidence: Gauge,
    pub store_bytes: Gauge,
    pub cumulative_series: Gauge,
    pub maintenance_failures: Counter,
    pub slo_target: Family<SloLabels, Gauge<f64, AtomicU64>>,
    pub slo_attainment: Family<SloLabels, Gauge<f64, AtomicU64>>,
    pub slo_budget_remaining: Family<SloLabels, Gauge<f64, AtomicU64>>,
    pub slo_burn_rate: Family<BurnLabels, Gauge<f64, AtomicU64>>,
    pub slo_tenants_overflow: Gauge,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectorMetrics {
    pub fn new() -> Self {
        Self {
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
            ),
            lag_seconds: Histogram::new([1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0]),
            requests: Family::default(),
            points: Family::default(),
            rebucketed: Counter::default(),
            spans: Counter::default(),
            evidence: Counter::default(),
            rows_written: Counter::default(),
            store_rows: Gauge::default(),
            store_evidence: Gauge::default(),
            store_bytes: Gauge::default(),
            cumulative_series: Gauge::default(),
            maintenance_failures: Counter::default(),
            slo_target: Family::default(),
            slo_attainment: Family::default(),
            slo_budget_remaining: Family::default(),
            slo_burn_rate: Family::default(),
            slo_tenants_overflow: Gauge::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("tenantscope_collector");
        r.register(
            "otlp_requests",
            "OTLP export requests by signal, transport and outcome",
            self.requests.clone(),
        );
        r.register(
            "otlp_data_points",
            "http.server.request.duration data points by outcome and rejection reason",
            self.points.clone(),
        );
        r.register(
            "otlp_data_points_rebucketed",
            "Data points whose histogram bounds differ from the store's (moved to the next bound up)",
            self.rebucketed.clone(),
        );
        r.register("otlp_spans", "Spans received", self.spans.clone());
        r.register(
            "evidence_stored",
            "Trace ids of bad or slow requests kept as evidence",
            self.evidence.clone(),
        );
        r.register(
            "store_rows_written",
            "SLI rows upserted into the store",
            self.rows_written.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Time to commit one export to the store",
            self.commit_seconds.clone(),
        );
        r.register(
            "ingest_lag_seconds",
            "Age of an export's newest data point when it was committed",
            self.lag_seconds.clone(),
        );
        r.register(
            "store_rows",
            "SLI rows in the store",
            self.store_rows.clone(),
        );
        r.register(
            "store_evidence",
            "Evidence trace ids in the store",
            self.store_evidence.clone(),
        );
        r.register(
            "store_size_bytes",
            "Size of the store's database and WAL files",
            self.store_bytes.clone(),
        );
        r.register(
            "cumulative_series",
            "Cumulative series remembered to compute deltas",
            self.cumulative_series.clone(),
        );
        r.register(
            "store_maintenance_failures",
            "Store rollup or expiry runs that failed",
            self.maintenance_failures.clone(),
        );
        r.register(
            "slo_objective_ratio",
            "Objective of each tenant's SLO for the current period (0-1)",
            self.slo_target.clone(),
        );
        r.register(
            "slo_attainment_ratio",
            "Share of good requests so far in the current period (0-1; absent without traffic)",
            self.slo_attainment.clone(),
        );
        r.register(
            "slo_error_budget_remaining_ratio",
            "Error budget left in the current period (1 = untouched, below 0 = exhausted)",
            self.slo_budget_remaining.clone(),
        );
        r.register(
            "slo_burn_rate",
            "Error budget burn rate over a trailing window (1 = exactly on budget)",
            self.slo_burn_rate.clone(),
        );
        r.register(
            "slo_tenants_overflow",
            "Tenants with traffic but no SLO gauges (over ingest.max_slo_tenants)",
            self.slo_tenants_overflow.clone(),
        );
    }

    pub fn request(&self, signal: &'static str, transport: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                signal,
                transport,
                outcome,
            })
            .inc();
    }

    pub fn points(&self, outcome: &'static str, reason: Option<Reject>, n: u64) {
        if n > 0 {
            self.points
                .get_or_create(&PointLabels {
                    outcome,
                    reason: reason.map_or("", Reject::as_str),
                })
                .inc_by(n);
        }
    }
}

/// Encodes a registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}
