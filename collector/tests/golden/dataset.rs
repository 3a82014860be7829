//! The fixed synthetic dataset of the report tests (`report_golden.rs`, `html_report.rs`):
//! tenant "acme", November 2026, two services, hour rows for the first 20 days and minute rows
//! after, an error-heavy day (11-17), a slow day (11-23), a maintenance window full of errors
//! (11-10 02:00-04:00), hostile route names, evidence, and another tenant's data that must not
//! show. Everything is computed from formulas: no randomness, no clock.

#![allow(dead_code)] // Each test file uses a different part.

use tenantscope_collector::objectives::ObjectivesConfig;
use tenantscope_collector::report::{self, Progress};
use tenantscope_collector::sla::SlaReport;
use tenantscope_collector::sli::{
    Evidence, EvidenceKind, HOUR, MINUTE, SliCounts, SliRow, SliSource, bucket_of,
};

pub const TENANT: &str = "acme";
pub const PERIOD: &str = "2026-11";
/// The report is made the day after the month ended.
pub const NOW: &str = "2026-12-02T08:00:00Z";
pub const HOSTILE_ROUTE: &str = "/x/<script>alert(1)</script>";

pub const OBJECTIVES: &str = r#"
default_tier = "standard"

[tiers.standard]
availability = 99.5
latency_threshold = "500ms"
latency_target = 99.0
period = "calendar_month"

[tiers.gold]
availability = 99.9
latency_threshold = "250ms"
latency_target = 98.0
period = "calendar_month"

[tenants]
acme = { tier = "gold" }

[[maintenance]]
start = "2026-11-10T02:00:00Z"
end = "2026-11-10T04:00:00Z"
tenants = ["acme"]
reason = "database upgrade <v15> & reindex"

[[maintenance]]
start = "2026-11-12T00:00:00Z"
end = "2026-11-12T06:00:00Z"
tenants = ["globex"]
reason = "not acme's"

[[maintenance]]
start = "2026-12-05T00:00:00Z"
end = "2026-12-05T01:00:00Z"
reason = "after the period"
"#;

pub fn ts(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_second()
}

pub fn now() -> i64 {
    ts(NOW)
}

pub fn objectives() -> ObjectivesConfig {
    let c: ObjectivesConfig = toml::from_str(OBJECTIVES).expect("dataset objectives parse");
    c.validate().expect("dataset objectives are valid");
    c
}

/// (service, route, requests per hour row on a quiet day, errors per 10 000 requests).
const ROUTES: &[(&str, &str, u64, u64)] = &[
    ("checkout", "POST /api/orders", 1800, 4),
    ("checkout", "GET /api/orders/{id}", 3600, 2),
    ("checkout", HOSTILE_ROUTE, 40, 500),
    ("catalog", "GET /api/items", 5400, 1),
    ("catalog", "GET /api/items/{id}", 2400, 3),
    ("catalog", "GET /search?q=\"a,b\"", 300, 10),
    ("catalog", "=HYPERLINK(\"http://evil.invalid\")", 20, 0),
];

/// `requests` requests with `errors` failures, `slow_permille` of them above 250 ms.
fn counts(requests: u64, errors: u64, slow_permille: u64) -> SliCounts {
    let slow = requests * slow_permille / 1000;
    let fast = requests - slow;
    let mut c = SliCounts {
        requests,
        errors,
        ..Default::default()
    };
    c.buckets[bucket_of(0.02)] = fast * 6 / 10;
    c.buckets[bucket_of(0.08)] = fast - fast * 6 / 10;
    c.buckets[bucket_of(0.4)] = slow / 2;
    c.buckets[bucket_of(3.0)] = slow - slow / 2;
    c
}

/// One slot of one route on `day` (1-based) at `second` of the day.
fn slot(tenant: &str, day: i64, second: i64, seconds: i64, route: usize) -> SliRow {
    let (service, path, base, errors_per_10k) = ROUTES[route];
    let start = ts("2026-11-01T00:00:00Z") + (day - 1) * 86_400 + second;
    // Traffic varies over the days and the hours, deterministically.
    let wave = 3 + ((day * 7 + second / HOUR + route as i64 * 3) % 5) as u64;
    let mut requests = base * wave / 5 * seconds as u64 / HOUR as u64;
    let mut errors_per_10k = errors_per_10k;
    let mut slow_permille = 4 + (day % 4) as u64;
    if day == 17 && path == "POST /api/orders" && (9 * HOUR..15 * HOUR).contains(&second) {
        errors_per_10k = 6000; // six hours of a bad deploy
    }
    if day == 23 && service == "catalog" {
        slow_permille = 45; // the slow cache
    }
    if day == 10 && (2 * HOUR..4 * HOUR).contains(&second) {
        errors_per_10k = 5000; // inside the maintenance window: excluded
    }
    if day == 30 && second >= 12 * HOUR {
        requests = 0; // a quiet end of month
    }
    SliRow {
        tenant: tenant.into(),
        service: service.into(),
        route: path.into(),
        start,
        seconds,
        counts: counts(requests, requests * errors_per_10k / 10_000, slow_permille),
    }
}

pub fn rows() -> Vec<SliRow> {
    let mut rows = Vec::new();
    for day in 1..=30 {
        for route in 0..ROUTES.len() {
            if day <= 20 {
                // Older data, rolled up into hours: every hour of the day.
                for hour in 0..24 {
                    rows.push(slot(TENANT, day, hour * HOUR, HOUR, route));
                }
            } else {
                // Recent data in minutes: a sample minute per hour keeps the dataset small.
                for hour in 0..24 {
                    rows.push(slot(TENANT, day, hour * HOUR + 17 * MINUTE, MINUTE, route));
                }
            }
        }
    }
    // Another tenant, with terrible figures, and acme's rows outside the period.
    rows.push(slot("globex", 5, 0, HOUR, 0));
    rows.last_mut().unwrap().counts.errors = 100;
    let mut before = slot(TENANT, 1, 0, HOUR, 0);
    before.start -= 2 * HOUR;
    before.counts.errors = before.counts.requests;
    rows.push(before);
    let mut after = slot(TENANT, 30, 0, HOUR, 0);
    after.start += DAY_SECONDS;
    after.counts.errors = after.counts.requests;
    rows.push(after);
    // Stores return rows in no particular order.
    rows.reverse();
    rows
}

const DAY_SECONDS: i64 = 86_400;

fn evidence(at: &str, kind: EvidenceKind, route: usize, n: u32) -> Evidence {
    let (service, path, ..) = ROUTES[route];
    Evidence {
        tenant: TENANT.into(),
        service: service.into(),
        route: path.into(),
        at_ms: ts(at) * 1000 + i64::from(n % 1000),
        kind,
        trace_id: format!(
            "{:08x}{:024x}",
            0x4bf9_2f35u32.wrapping_add(n),
            u64::from(n) * 7919
        ),
        status: match kind {
            EvidenceKind::Error if n.is_multiple_of(3) => 0,
            EvidenceKind::Error => 503,
            EvidenceKind::Slow => 200,
        },
        duration_ms: match kind {
            EvidenceKind::Error => 12.5 + f64::from(n),
            EvidenceKind::Slow => 1250.0 + f64::from(n) * 10.0,
        },
    }
}

pub fn all_evidence() -> Vec<Evidence> {
    let mut out = Vec::new();
    for n in 0..12 {
        let at = format!("2026-11-17T{:02}:{:02}:05Z", 9 + n / 4, (n % 4) * 13);
        out.push(evidence(&at, EvidenceKind::Error, 0, n));
    }
    for n in 0..12 {
        let at = format!("2026-11-23T{:02}:30:00Z", 8 + n);
        out.push(evidence(
            &at,
            EvidenceKind::Slow,
            3 + (n as usize % 3),
            100 + n,
        ));
    }
    out.push(evidence(
        "2026-11-05T11:00:00Z",
        EvidenceKind::Error,
        2,
        200,
    ));
    // Not shown: in the maintenance window, before the period, another tenant's.
    out.push(evidence(
        "2026-11-10T02:30:00Z",
        EvidenceKind::Error,
        0,
        300,
    ));
    out.push(evidence(
        "2026-10-31T23:59:59Z",
        EvidenceKind::Error,
        0,
        301,
    ));
    let mut other = evidence("2026-11-20T10:00:00Z", EvidenceKind::Error, 0, 302);
    other.tenant = "globex".into();
    out.push(other);
    out
}

/// An in-memory [`SliSource`] with the semantics of the real ones.
pub struct MemorySource {
    pub rows: Vec<SliRow>,
    pub evidence: Vec<Evidence>,
}

impl MemorySource {
    pub fn dataset() -> Self {
        MemorySource {
            rows: rows(),
            evidence: all_evidence(),
        }
    }
}

impl SliSource for MemorySource {
    fn rows(&self, tenant: &str, from: i64, to: i64) -> anyhow::Result<Vec<SliRow>> {
        Ok(self
            .rows
            .iter()
            .filter(|r| r.tenant == tenant && from <= r.start && r.start < to)
            .cloned()
            .collect())
    }

    fn evidence(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<Evidence>> {
        let mut out: Vec<Evidence> = self
            .evidence
            .iter()
            .filter(|e| {
                let at = e.at_ms.div_euclid(1000);
                e.tenant == tenant && from <= at && at < to
            })
            .cloned()
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        out.truncate(limit);
        Ok(out)
    }

    fn tenants(&self, from: i64, to: i64) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = self
            .rows
            .iter()
            .filter(|r| from <= r.start && r.start < to)
            .map(|r| r.tenant.clone())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The report of the dataset, built through the public API like the CLI does.
pub fn report() -> SlaReport {
    report_with_progress(&mut |_| {})
}

pub fn report_with_progress(progress: &mut dyn FnMut(Progress)) -> SlaReport {
    report::build(
        &MemorySource::dataset(),
        &objectives(),
        TENANT,
        PERIOD,
        now(),
        progress,
    )
    .expect("the dataset report builds")
}
