//! The JSON form of a report: its own structs, so the schema (docs/sla-report.md) changes only
//! on purpose. Fields serialize in declaration order; instants are RFC 3339 strings with a
//! `_unix` twin; fractions are full-precision numbers; a missing figure (no traffic) is `null`.

use serde::Serialize;

use crate::sla::{self, BudgetResult, DayStats, SlaReport, Stats};

/// Bumped on any incompatible change of the schema (a field removed, renamed or retyped);
/// adding a field is compatible.
pub const SCHEMA_VERSION: u32 = 1;

pub(super) fn render(r: &SlaReport) -> String {
    let doc = Doc {
        schema_version: SCHEMA_VERSION,
        tenant: &r.tenant,
        generated_at: sla::rfc3339(r.generated_at),
        generated_at_unix: r.generated_at,
        period: PeriodJson {
            label: &r.period.label,
            kind: r.period.kind.as_str(),
            start: sla::rfc3339(r.period.start),
            start_unix: r.period.start,
            end: sla::rfc3339(r.period.end),
            end_unix: r.period.end,
            effective_end: sla::rfc3339(r.effective_end),
            effective_end_unix: r.effective_end,
            in_progress: r.in_progress,
        },
        objective: ObjectiveJson {
            tier: &r.objective.tier,
            availability_target: r.objective.availability,
            latency_threshold_seconds: r.objective.latency_threshold(),
            latency_target: r.objective.latency_target,
            period_kind: r.objective.period.as_str(),
        },
        totals: TotalsJson {
            requests: r.totals.requests,
            errors: r.totals.errors,
            good: r.totals.good,
            slow: r.totals.slow,
            excluded_requests: r.totals.excluded_requests,
        },
        availability: budget(&r.availability),
        latency: budget(&r.latency),
        days: r.days.iter().map(day).collect(),
        worst_days: r.worst_days.iter().map(day).collect(),
        worst_routes: r
            .worst_routes
            .iter()
            .map(|x| RouteJson {
                service: &x.service,
                route: &x.route,
                stats: stats(&x.stats),
            })
            .collect(),
        services: r
            .services
            .iter()
            .map(|x| ServiceJson {
                service: &x.service,
                stats: stats(&x.stats),
            })
            .collect(),
        evidence: r
            .evidence
            .iter()
            .map(|e| EvidenceJson {
                at: sla::rfc3339_ms(e.at_ms),
                at_unix_ms: e.at_ms,
                kind: e.kind.as_str(),
                service: &e.service,
                route: &e.route,
                status: e.status,
                duration_ms: e.duration_ms,
                trace_id: &e.trace_id,
            })
            .collect(),
        maintenance: r
            .maintenance
            .iter()
            .map(|w| WindowJson {
                start: sla::rfc3339(w.start),
                start_unix: w.start,
                end: sla::rfc3339(w.end),
                end_unix: w.end,
                reason: &w.reason,
            })
            .collect(),
    };
    // Plain structs of strings and numbers: serialization cannot fail. NaN or infinite numbers
    // (impossible from `sla::compute`) would become `null`.
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

#[derive(Serialize)]
struct Doc<'a> {
    schema_version: u32,
    tenant: &'a str,
    generated_at: String,
    generated_at_unix: i64,
    period: PeriodJson<'a>,
    objective: ObjectiveJson<'a>,
    totals: TotalsJson,
    availability: BudgetJson,
    latency: BudgetJson,
    days: Vec<DayJson>,
    worst_days: Vec<DayJson>,
    worst_routes: Vec<RouteJson<'a>>,
    services: Vec<ServiceJson<'a>>,
    evidence: Vec<EvidenceJson<'a>>,
    maintenance: Vec<WindowJson<'a>>,
}

#[derive(Serialize)]
struct PeriodJson<'a> {
    label: &'a str,
    kind: &'static str,
    start: String,
    start_unix: i64,
    end: String,
    end_unix: i64,
    effective_end: String,
    effective_end_unix: i64,
    in_progress: bool,
}

#[derive(Serialize)]
struct ObjectiveJson<'a> {
    tier: &'a str,
    availability_target: f64,
    latency_threshold_seconds: f64,
    latency_target: f64,
    period_kind: &'static str,
}

#[derive(Serialize)]
struct TotalsJson {
    requests: u64,
    errors: u64,
    good: u64,
    slow: u64,
    excluded_requests: u64,
}

#[derive(Serialize)]
struct BudgetJson {
    target: f64,
    attainment: Option<f64>,
    bad: u64,
    allowed_bad: f64,
    budget_consumed: f64,
    budget_remaining: f64,
    status: &'static str,
}

fn budget(b: &BudgetResult) -> BudgetJson {
    BudgetJson {
        target: b.target,
        attainment: b.attainment,
        bad: b.bad,
        allowed_bad: b.allowed_bad,
        budget_consumed: b.consumed,
        budget_remaining: b.remaining,
        status: b.status.as_str(),
    }
}

#[derive(Serialize)]
struct StatsJson {
    requests: u64,
    errors: u64,
    slow: u64,
    availability: Option<f64>,
    latency_attainment: Option<f64>,
}

fn stats(s: &Stats) -> StatsJson {
    StatsJson {
        requests: s.requests,
        errors: s.errors,
        slow: s.slow,
        availability: s.availability,
        latency_attainment: s.latency_attainment,
    }
}

#[derive(Serialize)]
struct DayJson {
    date: String,
    start: String,
    start_unix: i64,
    end: String,
    end_unix: i64,
    #[serde(flatten)]
    stats: StatsJson,
    excluded_requests: u64,
    cumulative_requests: u64,
    cumulative_errors: u64,
    cumulative_slow: u64,
    availability_budget_remaining: f64,
    latency_budget_remaining: f64,
}

fn day(d: &DayStats) -> DayJson {
    DayJson {
        date: sla::utc_date(d.start),
        start: sla::rfc3339(d.start),
        start_unix: d.start,
        end: sla::rfc3339(d.end),
        end_unix: d.end,
        stats: stats(&d.stats),
        excluded_requests: d.excluded_requests,
        cumulative_requests: d.cumulative_requests,
        cumulative_errors: d.cumulative_errors,
        cumulative_slow: d.cumulative_slow,
        availability_budget_remaining: d.availability_budget_remaining,
        latency_budget_remaining: d.latency_budget_remaining,
    }
}

#[derive(Serialize)]
struct RouteJson<'a> {
    service: &'a str,
    route: &'a str,
    #[serde(flatten)]
    stats: StatsJson,
}

#[derive(Serialize)]
struct ServiceJson<'a> {
    service: &'a str,
    #[serde(flatten)]
    stats: StatsJson,
}

#[derive(Serialize)]
struct EvidenceJson<'a> {
    at: String,
    at_unix_ms: i64,
    kind: &'static str,
    service: &'a str,
    route: &'a str,
    status: u16,
    duration_ms: f64,
    trace_id: &'a str,
}

#[derive(Serialize)]
struct WindowJson<'a> {
    start: String,
    start_unix: i64,
    end: String,
    end_unix: i64,
    reason: &'a str,
}
