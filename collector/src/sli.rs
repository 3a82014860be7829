//! The SLI rollup: per tenant, service, route and time slot (a minute, or an hour once rolled
//! up), how many requests there were, how many were bad, and how their latencies spread over a
//! fixed set of buckets. Everything the SLA math needs, whatever the store behind it.

/// Upper bounds (seconds) of the latency buckets: the agent's `http.server.request.duration`
/// boundaries (the OpenTelemetry semantic-convention defaults). A latency objective's threshold
/// must be one of them, so "faster than the threshold" is exact, never interpolated.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Buckets per row: one per bound plus the overflow (`+Inf`) bucket.
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Seconds in a minute row and in an hour row.
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;

/// Request counts of one slot. `buckets[i]` counts requests with a latency in
/// `(LATENCY_BOUNDS[i-1], LATENCY_BOUNDS[i]]` (not cumulative); the last one is `+Inf`.
/// The sum of the buckets is `requests`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliCounts {
    pub requests: u64,
    /// Requests that failed: a 5xx response, or no response at all (connection-level failure).
    pub errors: u64,
    pub buckets: [u64; BUCKETS],
}

impl SliCounts {
    /// Saturating: counts from hostile exports may be near `u64::MAX`.
    pub fn add(&mut self, other: &SliCounts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = a.saturating_add(b);
        }
    }

    /// Requests no slower than `LATENCY_BOUNDS[bound]`.
    pub fn within(&self, bound: usize) -> u64 {
        self.buckets[..=bound.min(BUCKETS - 1)]
            .iter()
            .fold(0, |sum, &n| sum.saturating_add(n))
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

/// The index of a latency threshold in [`LATENCY_BOUNDS`], if it is one of them.
pub fn bound_index(threshold_seconds: f64) -> Option<usize> {
    LATENCY_BOUNDS
        .iter()
        .position(|b| (b - threshold_seconds).abs() < 1e-9)
}

/// The bucket a latency (seconds) falls in.
pub fn bucket_of(seconds: f64) -> usize {
    LATENCY_BOUNDS
        .iter()
        .position(|&b| seconds <= b)
        .unwrap_or(BUCKETS - 1)
}

/// One stored slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliRow {
    pub tenant: String,
    pub service: String,
    pub route: String,
    /// Start of the slot, Unix seconds (a multiple of `seconds`).
    pub start: i64,
    /// Length of the slot: [`MINUTE`] or [`HOUR`].
    pub seconds: i64,
    pub counts: SliCounts,
}

/// Why a trace was kept as evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EvidenceKind {
    /// A 5xx response or a failed request.
    Error,
    /// Slower than the tenant's latency threshold.
    Slow,
}

impl EvidenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Error => "error",
            EvidenceKind::Slow => "slow",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "error" => Some(EvidenceKind::Error),
            "slow" => Some(EvidenceKind::Slow),
            _ => None,
        }
    }
}

/// A sample request kept as evidence of a bad or slow minute: the trace to look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub tenant: String,
    pub service: String,
    pub route: String,
    /// End of the request, Unix milliseconds.
    pub at_ms: i64,
    pub kind: EvidenceKind,
    /// W3C trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// HTTP status code; 0 when there was no response.
    pub status: u16,
    pub duration_ms: f64,
}

/// Where the SLA math reads its data from: the embedded store, or a Prometheus-compatible
/// engine through PromQL. Both return the same rows for the same data.
pub trait SliSource {
    /// Rows of `tenant` whose slot starts in `[from, to)` (Unix seconds), any order.
    fn rows(&self, tenant: &str, from: i64, to: i64) -> anyhow::Result<Vec<SliRow>>;
    /// Evidence of `tenant` in `[from, to)`, at most `limit`, the most recent first.
    fn evidence(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<Evidence>>;
    /// Tenants with any row in `[from, to)`, sorted.
    fn tenants(&self, from: i64, to: i64) -> anyhow::Result<Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_map_to_bounds() {
        assert_eq!(bound_index(0.25), Some(6));
        assert_eq!(bound_index(0.3), None);
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.005), 0);
        assert_eq!(bucket_of(0.0051), 1);
        assert_eq!(bucket_of(11.0), BUCKETS - 1);
    }

    #[test]
    fn counts_add_and_split_by_threshold() {
        let mut a = SliCounts::default();
        let mut b = SliCounts {
            requests: 3,
            errors: 1,
            ..Default::default()
        };
        b.buckets[bucket_of(0.004)] += 1;
        b.buckets[bucket_of(0.2)] += 1;
        b.buckets[bucket_of(30.0)] += 1;
        a.add(&b);
        a.add(&b);
        assert_eq!((a.requests, a.errors), (6, 2));
        assert_eq!(a.within(bound_index(0.25).unwrap()), 4);
        assert_eq!(a.within(BUCKETS - 1), 6);
    }
}
