//! The SLA math: attainment, error budgets, burn-down, worst days and routes, evidence and burn
//! rates of one tenant over one period. Pure and synchronous: every function takes `now` (Unix
//! seconds) as a parameter, reads no clock and does no I/O (`report::build` fetches the rows).
//!
//! One rule places every row in time: a slot counts at its midpoint. A row belongs to a period,
//! a day, a burn-rate window or a maintenance window when the midpoint of its slot lies inside
//! it. Minute rows never straddle a day; hour rows straddle only the edges of a rolling period
//! and maintenance windows, and there the midpoint keeps the error under half an hour.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::objectives::{Objective, PeriodKind, Window, budget_of};
use crate::sli::{Evidence, MINUTE, SliCounts, SliRow};

/// Seconds in a day (Unix time has no leap seconds, so a UTC day is always this long).
pub const DAY: i64 = 86_400;
/// Length of a rolling period.
pub const ROLLING_DAYS: i64 = 30;
/// Evidence entries kept in a report.
pub const MAX_EVIDENCE: usize = 20;
/// Entries of the worst-days list.
pub const MAX_WORST_DAYS: usize = 5;
/// Entries of the worst-routes list.
pub const MAX_WORST_ROUTES: usize = 10;

/// Why a period spec cannot be reported on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "invalid period {0:?}: expected YYYY-MM (a UTC calendar month), \"rolling\" or \"30d\" \
         (the 30 days ending now) or \"current\" (the tenant's own period containing now)"
    )]
    Invalid(String),
    #[error("period {spec:?} starts at {start}, in the future (now is {now})")]
    Future {
        spec: String,
        start: String,
        now: String,
    },
}

/// A reporting period, `[start, end)` in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    /// `2026-11` for a calendar month, `rolling-30d` for a rolling period.
    pub label: String,
    pub kind: PeriodKind,
    pub start: i64,
    pub end: i64,
}

/// Resolves a period spec at `now`: `YYYY-MM` (that UTC calendar month), `rolling` or `30d` (the
/// 30 days ending at the start of the current minute), or `current` (the period of kind `kind`
/// containing `now`). A month that has not started yet is an error; the current month resolves
/// to its whole length, and the report stops at `now` (see [`SlaReport::in_progress`]).
pub fn resolve_period(spec: &str, kind: PeriodKind, now: i64) -> Result<Period, PeriodError> {
    let invalid = || PeriodError::Invalid(spec.to_owned());
    let period = match spec {
        "rolling" | "30d" => rolling(now),
        "current" => match kind {
            PeriodKind::Rolling30d => rolling(now),
            PeriodKind::CalendarMonth => {
                let date = Timestamp::from_second(now)
                    .map_err(|_| invalid())?
                    .to_zoned(TimeZone::UTC)
                    .date();
                month(date.year(), date.month()).ok_or_else(invalid)?
            }
        },
        _ => {
            let (y, m) = parse_month(spec).ok_or_else(invalid)?;
            month(y, m).ok_or_else(invalid)?
        }
    };
    if period.start > now {
        return Err(PeriodError::Future {
            spec: spec.to_owned(),
            start: rfc3339(period.start),
            now: rfc3339(now),
        });
    }
    Ok(period)
}

fn rolling(now: i64) -> Period {
    let end = now.saturating_sub(now.rem_euclid(MINUTE));
    Period {
        label: "rolling-30d".to_owned(),
        kind: PeriodKind::Rolling30d,
        start: end.saturating_sub(ROLLING_DAYS * DAY),
        end,
    }
}

/// `YYYY-MM`, exactly four and two digits.
fn parse_month(s: &str) -> Option<(i16, i8)> {
    let (y, m) = s.split_once('-')?;
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(y, 4) || !digits(m, 2) {
        return None;
    }
    Some((y.parse().ok()?, m.parse().ok()?))
}

/// The UTC calendar month `year-month`; `None` when it is not a valid month or out of range.
fn month(year: i16, month: i8) -> Option<Period> {
    let start = Date::new(year, month, 1).ok()?;
    let end = if month == 12 {
        Date::new(year.checked_add(1)?, 1, 1).ok()?
    } else {
        Date::new(year, month + 1, 1).ok()?
    };
    let secs = |d: Date| {
        d.to_zoned(TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_second())
    };
    Some(Period {
        label: format!("{year:04}-{month:02}"),
        kind: PeriodKind::CalendarMonth,
        start: secs(start)?,
        end: secs(end)?,
    })
}

/// `2026-11-01T00:00:00Z`; the plain number for an instant outside jiff's range.
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// `2026-11-01T09:00:05.250Z` (always three decimals) for Unix milliseconds; the plain number
/// outside jiff's range.
pub fn rfc3339_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_else(|_| ms.to_string())
}

/// `2026-11-01`, the UTC date of an instant.
pub fn utc_date(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_zoned(TimeZone::UTC).date().to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// UTC midnight at or before `t`.
pub fn day_start(t: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(DAY))
}

/// Where a row counts in time: the midpoint of its slot. Saturating: a corrupt row cannot
/// overflow, and a non-positive length counts at its start.
fn midpoint(row: &SliRow) -> i64 {
    row.start.saturating_add(row.seconds.max(0) / 2)
}

/// Where a row counts for a report or window ending at `end`: its midpoint, except that the
/// slot still in progress at `end` counts just before it (its requests have happened; without
/// this, the current minute's traffic would be missing for up to 30 s).
fn counts_at(row: &SliRow, end: i64) -> i64 {
    let mid = midpoint(row);
    if row.start < end && mid >= end {
        end - 1
    } else {
        mid
    }
}

/// A row's counts with no more errors than requests, so a corrupt row cannot make another
/// row's errors disappear from the totals.
fn sane(c: &SliCounts) -> SliCounts {
    SliCounts {
        errors: c.errors.min(c.requests),
        ..*c
    }
}

/// Whether an objective is met over the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Attainment at or above the target (so far, for a period in progress).
    Met,
    /// Period in progress, target met so far, but the budget burns faster than time passes:
    /// the share of the budget consumed exceeds the share of the period elapsed.
    AtRisk,
    /// Attainment below the target: the budget is exhausted (remaining < 0). For a period in
    /// progress more good traffic could still bring it back, but it is reported as breached.
    Breached,
    /// No valid request in the period: nothing to measure, the budget is untouched.
    NoData,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::AtRisk => "at_risk",
            Status::Breached => "breached",
            Status::NoData => "no_data",
        }
    }
}

/// Request counts of some scope (a day, a route, a service) and its attainments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    /// Requests slower than the latency threshold.
    pub slow: u64,
    /// (requests - errors) / requests; `None` without requests.
    pub availability: Option<f64>,
    /// (requests - slow) / requests; `None` without requests.
    pub latency_attainment: Option<f64>,
}

impl Stats {
    fn of(c: &SliCounts, bound: usize) -> Stats {
        let slow = c.requests.saturating_sub(c.within(bound));
        let errors = c.errors.min(c.requests);
        Stats {
            requests: c.requests,
            errors,
            slow,
            availability: ratio(c.requests - errors, c.requests),
            latency_attainment: ratio(c.requests - slow, c.requests),
        }
    }
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// One UTC day of the period (the first and last may be partial), with the burn-down as of its end.
#[derive(Clone, Debug, PartialEq)]
pub struct DayStats {
    /// Start of the day's share of the period: UTC midnight, or the period start.
    pub start: i64,
    /// End: the next UTC midnight, or the report's effective end.
    pub end: i64,
    pub stats: Stats,
    /// Requests of the day inside a maintenance window (not in `stats`).
    pub excluded_requests: u64,
    /// Totals from the period start to the end of this day.
    pub cumulative_requests: u64,
    pub cumulative_errors: u64,
    pub cumulative_slow: u64,
    /// Availability error budget left at the end of this day, as a fraction of the whole report's
    /// budget (`1 - cumulative_errors / allowed_bad`): 1 at the start, the report's
    /// `availability.remaining` on the last day, negative once exhausted.
    pub availability_budget_remaining: f64,
    /// The same for the latency objective.
    pub latency_budget_remaining: f64,
}

/// One (service, route) over the period.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteStats {
    pub service: String,
    pub route: String,
    pub stats: Stats,
}

/// One service over the period.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStats {
    pub service: String,
    pub stats: Stats,
}

/// Request totals of the period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Valid requests: in the period and outside maintenance windows.
    pub requests: u64,
    /// Bad requests (5xx or no response).
    pub errors: u64,
    /// `requests - errors`.
    pub good: u64,
    /// Requests slower than the latency threshold.
    pub slow: u64,
    /// Requests in the period but inside a maintenance window, not counted anywhere else.
    pub excluded_requests: u64,
}

/// One objective (availability or latency) over the period, with its request-based error budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetResult {
    /// Target as a fraction (0.999).
    pub target: f64,
    /// Good requests / valid requests; `None` without traffic.
    pub attainment: Option<f64>,
    /// Bad requests: errors, or slow requests for the latency objective.
    pub bad: u64,
    /// Bad requests the budget allows: `(1 - target) * valid requests`.
    pub allowed_bad: f64,
    /// `bad / allowed_bad`: 0 without bad requests, above 1 once exhausted. When nothing is
    /// allowed (a 100 % target) and some requests are bad, `1 + bad`.
    pub consumed: f64,
    /// `1 - consumed`; negative once the budget is exhausted.
    pub remaining: f64,
    pub status: Status,
}

/// Everything an SLA report shows; `report` renders it as HTML, JSON or CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct SlaReport {
    pub tenant: String,
    pub objective: Objective,
    pub period: Period,
    /// The `now` the report was computed at.
    pub generated_at: i64,
    /// `min(period.end, now)`: data after it is ignored.
    pub effective_end: i64,
    /// The period has not ended yet at `generated_at`.
    pub in_progress: bool,
    pub totals: Totals,
    pub availability: BudgetResult,
    pub latency: BudgetResult,
    /// Every UTC day of the period up to the effective end, in order: the daily figures and the
    /// burn-down.
    pub days: Vec<DayStats>,
    /// Up to [`MAX_WORST_DAYS`] days with traffic, the lowest availability first (ties: more
    /// errors first, then the earlier day).
    pub worst_days: Vec<DayStats>,
    /// Up to [`MAX_WORST_ROUTES`] routes with traffic, the lowest availability first (ties: more
    /// errors first, then by service and route).
    pub worst_routes: Vec<RouteStats>,
    /// Every service with traffic, by name.
    pub services: Vec<ServiceStats>,
    /// Up to [`MAX_EVIDENCE`] sample requests: errors first, then slow ones, the most recent
    /// first, one per trace id.
    pub evidence: Vec<Evidence>,
    /// The maintenance windows that intersect the period.
    pub maintenance: Vec<Window>,
}

/// Fraction of the budget consumed by `bad` requests when `allowed` are allowed.
fn consumed(bad: u64, allowed: f64) -> f64 {
    if bad == 0 {
        0.0
    } else if allowed > 0.0 {
        bad as f64 / allowed
    } else {
        1.0 + bad as f64
    }
}

fn budget_result(
    target: f64,
    valid: u64,
    bad: u64,
    in_progress: bool,
    elapsed: f64,
) -> BudgetResult {
    let attainment = ratio(valid.saturating_sub(bad), valid);
    let allowed_bad = budget_of(target) * valid as f64;
    let consumed = consumed(bad, allowed_bad);
    // Comparing the attainment (a correctly rounded quotient) with the target (the nearest double
    // to the configured decimal) is exact where `bad <= allowed_bad` could be off by an ulp.
    let status = match attainment {
        None => Status::NoData,
        Some(a) if a < target => Status::Breached,
        Some(_) if in_progress && consumed > elapsed => Status::AtRisk,
        Some(_) => Status::Met,
    };
    BudgetResult {
        target,
        attainment,
        bad,
        allowed_bad,
        consumed,
        remaining: 1.0 - consumed,
        status,
    }
}

/// Computes the report of `tenant` over `period` as of `now`. `rows` and `evidence` may hold
/// anything (other tenants, other periods, minute and hour rows, any order): what does not
/// belong to the tenant and the period is ignored. `windows` are the tenant's maintenance
/// windows ([`crate::objectives::ObjectivesConfig::windows_for`]).
pub fn compute(
    tenant: &str,
    objective: &Objective,
    windows: &[Window],
    period: &Period,
    now: i64,
    rows: &[SliRow],
    evidence: &[Evidence],
) -> SlaReport {
    let mut acc = Accumulator::new(tenant, objective, windows, period, now);
    acc.add_rows(rows);
    acc.add_evidence(evidence);
    acc.finish()
}

/// [`compute`] in pieces: rows and evidence can be added in any number of batches (a day at a
/// time), so memory holds one batch and the per-day, per-route and per-service sums, never a whole
/// month of rows. The result does not depend on how the input is split.
pub struct Accumulator {
    tenant: String,
    objective: Objective,
    windows: Vec<Window>,
    period: Period,
    now: i64,
    effective_end: i64,
    /// UTC midnight of the first day; `days[i]` starts `i` days later.
    first_day: i64,
    /// Per day: valid counts, excluded requests.
    days: Vec<(SliCounts, u64)>,
    total: SliCounts,
    excluded: u64,
    /// service -> route -> counts (nested so a lookup needs no allocation).
    routes: BTreeMap<String, BTreeMap<String, SliCounts>>,
    /// The best [`MAX_EVIDENCE`] so far, in report order.
    evidence: Vec<Evidence>,
}

impl Accumulator {
    pub fn new(
        tenant: &str,
        objective: &Objective,
        windows: &[Window],
        period: &Period,
        now: i64,
    ) -> Self {
        let effective_end = period.end.min(now).max(period.start);
        let first_day = day_start(period.start);
        let mut days = 0;
        let mut d = first_day;
        while d < effective_end {
            days += 1;
            d = d.saturating_add(DAY);
        }
        Accumulator {
            tenant: tenant.to_owned(),
            objective: objective.clone(),
            windows: windows.to_vec(),
            period: period.clone(),
            now,
            effective_end,
            first_day,
            days: vec![(SliCounts::default(), 0); days],
            total: SliCounts::default(),
            excluded: 0,
            routes: BTreeMap::new(),
            evidence: Vec::new(),
        }
    }

    pub fn add_rows(&mut self, rows: &[SliRow]) {
        for row in rows.iter().filter(|r| r.tenant == self.tenant) {
            let mid = counts_at(row, self.effective_end);
            if mid < self.period.start || mid >= self.effective_end {
                continue;
            }
            let Some(day) = mid
                .checked_sub(self.first_day)
                .and_then(|offset| usize::try_from(offset / DAY).ok())
                .and_then(|i| self.days.get_mut(i))
            else {
                continue;
            };
            if self.windows.iter().any(|w| w.contains(mid)) {
                self.excluded += row.counts.requests;
                day.1 += row.counts.requests;
                continue;
            }
            let counts = sane(&row.counts);
            day.0.add(&counts);
            self.total.add(&counts);
            let service = match self.routes.get_mut(&row.service) {
                Some(s) => s,
                None => self.routes.entry(row.service.clone()).or_default(),
            };
            match service.get_mut(&row.route) {
                Some(c) => c.add(&counts),
                None => {
                    service.insert(row.route.clone(), counts);
                }
            }
        }
    }

    pub fn add_evidence(&mut self, evidence: &[Evidence]) {
        let (from, to) = (self.period.start, self.effective_end);
        self.evidence.extend(
            evidence
                .iter()
                .filter(|e| {
                    let at = e.at_ms.div_euclid(1000);
                    e.tenant == self.tenant
                        && from <= at
                        && at < to
                        && !self.windows.iter().any(|w| w.contains(at))
                })
                .cloned(),
        );
        // Errors first, then slow; the most recent first. Keeping the best MAX_EVIDENCE after
        // each batch selects the same as sorting everything at the end.
        self.evidence.sort_by(|a, b| {
            (a.kind.cmp(&b.kind))
                .then(b.at_ms.cmp(&a.at_ms))
                .then(a.trace_id.cmp(&b.trace_id))
        });
        // The same trace can be both an error and slow: show it once, as its worse kind.
        let mut seen = HashSet::new();
        self.evidence.retain(|e| seen.insert(e.trace_id.clone()));
        self.evidence.truncate(MAX_EVIDENCE);
    }

    pub fn finish(self) -> SlaReport {
        let Accumulator {
            tenant,
            objective,
            windows,
            period,
            now,
            effective_end,
            first_day,
            days: day_counts,
            total,
            excluded,
            routes,
            evidence,
        } = self;
        let in_progress = now < period.end;
        let bound = objective.latency_bound;
        let overall = Stats::of(&total, bound);
        let span = period.end.saturating_sub(period.start).max(1) as f64;
        let elapsed = effective_end.saturating_sub(period.start) as f64 / span;
        let availability = budget_result(
            objective.availability,
            overall.requests,
            overall.errors,
            in_progress,
            elapsed,
        );
        let latency = budget_result(
            objective.latency_target,
            overall.requests,
            overall.slow,
            in_progress,
            elapsed,
        );

        let mut days = Vec::with_capacity(day_counts.len());
        let (mut cum_requests, mut cum_errors, mut cum_slow) = (0u64, 0u64, 0u64);
        let mut start = first_day;
        for (counts, excluded) in &day_counts {
            let stats = Stats::of(counts, bound);
            cum_requests += stats.requests;
            cum_errors += stats.errors;
            cum_slow += stats.slow;
            days.push(DayStats {
                start: start.max(period.start),
                end: start.saturating_add(DAY).min(effective_end),
                stats,
                excluded_requests: *excluded,
                cumulative_requests: cum_requests,
                cumulative_errors: cum_errors,
                cumulative_slow: cum_slow,
                availability_budget_remaining: 1.0 - consumed(cum_errors, availability.allowed_bad),
                latency_budget_remaining: 1.0 - consumed(cum_slow, latency.allowed_bad),
            });
            start = start.saturating_add(DAY);
        }

        let mut worst_days: Vec<DayStats> = days
            .iter()
            .filter(|d| d.stats.requests > 0)
            .cloned()
            .collect();
        worst_days.sort_by(|a, b| worse(&a.stats, &b.stats).then(a.start.cmp(&b.start)));
        worst_days.truncate(MAX_WORST_DAYS);

        let mut services = Vec::new();
        let mut worst_routes = Vec::new();
        for (service, service_routes) in routes {
            let mut sum = SliCounts::default();
            for (route, c) in service_routes {
                sum.add(&c);
                if c.requests > 0 {
                    worst_routes.push(RouteStats {
                        service: service.clone(),
                        route,
                        stats: Stats::of(&c, bound),
                    });
                }
            }
            if sum.requests > 0 {
                services.push(ServiceStats {
                    service,
                    stats: Stats::of(&sum, bound),
                });
            }
        }
        // Stable sort over (service, route) order: that is the final tie-break.
        worst_routes.sort_by(|a, b| worse(&a.stats, &b.stats));
        worst_routes.truncate(MAX_WORST_ROUTES);

        let maintenance = windows
            .into_iter()
            .filter(|w| w.start < period.end && w.end > period.start)
            .collect();
        SlaReport {
            tenant,
            objective,
            generated_at: now,
            effective_end,
            in_progress,
            totals: Totals {
                requests: overall.requests,
                errors: overall.errors,
                good: overall.requests - overall.errors,
                slow: overall.slow,
                excluded_requests: excluded,
            },
            availability,
            latency,
            days,
            worst_days,
            worst_routes,
            services,
            evidence,
            maintenance,
            period,
        }
    }
}

/// Lower availability first, then more errors first. Both sides have traffic.
fn worse(a: &Stats, b: &Stats) -> std::cmp::Ordering {
    let av = |s: &Stats| s.availability.unwrap_or(1.0);
    av(a).total_cmp(&av(b)).then(b.errors.cmp(&a.errors))
}

/// Counts of the valid rows whose midpoint lies in `[now - window_seconds, now)`.
fn window_counts(rows: &[SliRow], windows: &[Window], now: i64, window_seconds: i64) -> SliCounts {
    let from = now.saturating_sub(window_seconds);
    let mut c = SliCounts::default();
    for row in rows {
        let mid = counts_at(row, now);
        if from <= mid && mid < now && !windows.iter().any(|w| w.contains(mid)) {
            c.add(&sane(&row.counts));
        }
    }
    c
}

/// Availability burn rate over the `window_seconds` before `now`: the error ratio divided by the
/// error budget (1 = the budget would last exactly the period). Rows in maintenance windows are
/// left out; `None` without traffic. `rows` are one tenant's (the caller filters).
pub fn burn_rate(
    rows: &[SliRow],
    objective: &Objective,
    windows: &[Window],
    now: i64,
    window_seconds: i64,
) -> Option<f64> {
    let c = window_counts(rows, windows, now, window_seconds);
    let errors = c.errors.min(c.requests);
    rate(errors, c.requests, objective.availability_budget())
}

/// Latency burn rate: the share of requests slower than the threshold divided by the latency
/// budget. Same windows and rules as [`burn_rate`].
pub fn latency_burn_rate(
    rows: &[SliRow],
    objective: &Objective,
    windows: &[Window],
    now: i64,
    window_seconds: i64,
) -> Option<f64> {
    let c = window_counts(rows, windows, now, window_seconds);
    let slow = c.requests.saturating_sub(c.within(objective.latency_bound));
    rate(slow, c.requests, objective.latency_budget())
}

/// `None` without traffic, or with no budget at all (a 100 % target has no burn rate).
fn rate(bad: u64, requests: u64, budget: f64) -> Option<f64> {
    if requests == 0 || budget <= 0.0 {
        return None;
    }
    Some(bad as f64 / requests as f64 / budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objectives::ObjectivesConfig;
    use crate::sli::{EvidenceKind, HOUR, bucket_of};

    const T: &str = "t";

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_second()
    }

    /// `requests` requests of tenant T, `errors` of them failed, `slow` of them at 1 s (slower
    /// than the standard 500 ms threshold), the others at 100 ms.
    fn row_on(
        service: &str,
        route: &str,
        start: &str,
        seconds: i64,
        requests: u64,
        errors: u64,
        slow: u64,
    ) -> SliRow {
        let mut counts = SliCounts {
            requests,
            errors,
            ..Default::default()
        };
        counts.buckets[bucket_of(0.1)] = requests - slow;
        counts.buckets[bucket_of(1.0)] = slow;
        SliRow {
            tenant: T.into(),
            service: service.into(),
            route: route.into(),
            start: ts(start),
            seconds,
            counts,
        }
    }

    fn minute(start: &str, requests: u64, errors: u64) -> SliRow {
        row_on("api", "/", start, MINUTE, requests, errors, 0)
    }

    fn hour(start: &str, requests: u64, errors: u64) -> SliRow {
        row_on("api", "/", start, HOUR, requests, errors, 0)
    }

    fn win(start: &str, end: &str) -> Window {
        Window {
            start: ts(start),
            end: ts(end),
            reason: "maintenance".into(),
        }
    }

    fn evidence(at: &str, kind: EvidenceKind, trace: &str) -> Evidence {
        Evidence {
            tenant: T.into(),
            service: "api".into(),
            route: "/".into(),
            at_ms: ts(at) * 1000,
            kind,
            trace_id: trace.into(),
            status: if kind == EvidenceKind::Error {
                503
            } else {
                200
            },
            duration_ms: 1200.0,
        }
    }

    /// The built-in standard objective: 99.9 %, 500 ms at 99 %, calendar month.
    fn standard() -> Objective {
        ObjectivesConfig::default().objective_for(T)
    }

    fn report_full(
        spec: &str,
        now: &str,
        rows: &[SliRow],
        windows: &[Window],
        ev: &[Evidence],
    ) -> SlaReport {
        let now = ts(now);
        let o = standard();
        let p = resolve_period(spec, o.period, now).unwrap_or_else(|e| panic!("{e}"));
        compute(T, &o, windows, &p, now, rows, ev)
    }

    fn report(spec: &str, now: &str, rows: &[SliRow]) -> SlaReport {
        report_full(spec, now, rows, &[], &[])
    }

    const AFTER: &str = "2030-01-01T00:00:00Z";

    #[test]
    fn months_resolve_to_utc_bounds() {
        let now = ts(AFTER);
        let m = |s| resolve_period(s, PeriodKind::CalendarMonth, now).unwrap();
        let p = m("2026-11");
        assert_eq!(p.label, "2026-11");
        assert_eq!(p.kind, PeriodKind::CalendarMonth);
        assert_eq!(
            (p.start, p.end),
            (ts("2026-11-01T00:00:00Z"), ts("2026-12-01T00:00:00Z"))
        );
        let p = m("2026-12");
        assert_eq!(
            (p.start, p.end),
            (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(m("2026-02").end - m("2026-02").start, 28 * DAY);
        assert_eq!(m("2028-02").end - m("2028-02").start, 29 * DAY);
        assert_eq!(m("2027-01").start, ts("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn invalid_period_specs_are_rejected() {
        let now = ts(AFTER);
        for spec in [
            "",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            " 2026-11",
            "2026-11 ",
            "2026-11-01",
            "rolling30",
            "Current",
            "+026-11",
            "2026--1",
            "२०२६-११",
        ] {
            let e = resolve_period(spec, PeriodKind::CalendarMonth, now).unwrap_err();
            assert_eq!(e, PeriodError::Invalid(spec.into()), "{spec:?}");
            assert!(e.to_string().contains("YYYY-MM"), "{e}");
        }
    }

    #[test]
    fn the_minute_in_progress_counts_at_once() {
        // 10 s into a minute: its requests have happened, the report and burn rates show them.
        let rows = [minute("2026-11-15T12:00:00Z", 7, 1)];
        let r = report("current", "2026-11-15T12:00:10Z", &rows);
        assert_eq!((r.totals.requests, r.totals.errors), (7, 1));
        let burn = burn_rate(&rows, &standard(), &[], ts("2026-11-15T12:00:10Z"), 300);
        assert!(
            burn.is_some_and(|b| (b - 1.0 / 7.0 / 0.001).abs() < 1e-6),
            "{burn:?}"
        );
        // A minute that starts at the report's end does not count yet.
        let r = report("current", "2026-11-15T12:00:00Z", &rows);
        assert_eq!(r.totals.requests, 0);
    }

    #[test]
    fn future_periods_are_an_error() {
        let now = ts("2026-11-15T12:00:00Z");
        let e = resolve_period("2026-12", PeriodKind::CalendarMonth, now).unwrap_err();
        assert_eq!(
            e,
            PeriodError::Future {
                spec: "2026-12".into(),
                start: "2026-12-01T00:00:00Z".into(),
                now: "2026-11-15T12:00:00Z".into(),
            }
        );
        assert!(e.to_string().contains("future"), "{e}");
        // A month starting exactly now is in progress, not in the future.
        let now = ts("2026-12-01T00:00:00Z");
        let p = resolve_period("2026-12", PeriodKind::CalendarMonth, now).unwrap();
        let r = compute(T, &standard(), &[], &p, now, &[], &[]);
        assert!(r.in_progress);
        assert!(r.days.is_empty());
        assert_eq!(r.availability.status, Status::NoData);
    }

    #[test]
    fn current_and_rolling_periods() {
        let now = ts("2026-11-15T12:34:56Z");
        let p = resolve_period("current", PeriodKind::CalendarMonth, now).unwrap();
        assert_eq!(p.label, "2026-11");
        assert_eq!(p.start, ts("2026-11-01T00:00:00Z"));
        let rolling = resolve_period("rolling", PeriodKind::CalendarMonth, now).unwrap();
        assert_eq!(rolling.label, "rolling-30d");
        assert_eq!(rolling.kind, PeriodKind::Rolling30d);
        assert_eq!(rolling.end, ts("2026-11-15T12:34:00Z"));
        assert_eq!(rolling.start, ts("2026-10-16T12:34:00Z"));
        assert_eq!(
            resolve_period("30d", PeriodKind::CalendarMonth, now).unwrap(),
            rolling
        );
        assert_eq!(
            resolve_period("current", PeriodKind::Rolling30d, now).unwrap(),
            rolling
        );
    }

    #[test]
    fn rows_on_month_boundaries_belong_to_one_month() {
        let rows = [
            minute("2026-10-31T23:59:00Z", 7, 0),
            minute("2026-11-30T23:59:00Z", 10, 1),
            minute("2026-12-01T00:00:00Z", 20, 2),
            minute("2026-12-31T23:59:00Z", 30, 3),
            minute("2027-01-01T00:00:00Z", 40, 4),
        ];
        let nov = report("2026-11", AFTER, &rows);
        assert_eq!((nov.totals.requests, nov.totals.errors), (10, 1));
        assert_eq!(nov.days.len(), 30);
        assert_eq!(nov.days[29].stats.requests, 10);
        assert_eq!(utc_date(nov.days[29].start), "2026-11-30");
        let dec = report("2026-12", AFTER, &rows);
        assert_eq!((dec.totals.requests, dec.totals.errors), (50, 5));
        assert_eq!(dec.days.len(), 31);
        assert_eq!(dec.days[0].stats.requests, 20);
        assert_eq!(dec.days[30].stats.requests, 30);
        let jan = report("2027-01", AFTER, &rows);
        assert_eq!(jan.totals.requests, 40);
        assert_eq!(jan.days[0].stats.requests, 40);
        assert!(!jan.in_progress);
    }

    #[test]
    fn february_and_leap_years() {
        let rows = [
            minute("2028-02-28T23:59:00Z", 1, 0),
            minute("2028-02-29T12:00:00Z", 2, 0),
            minute("2028-03-01T00:00:00Z", 4, 0),
            minute("2026-02-28T23:59:00Z", 8, 0),
            minute("2026-03-01T00:00:00Z", 16, 0),
        ];
        let leap = report("2028-02", AFTER, &rows);
        assert_eq!(leap.days.len(), 29);
        assert_eq!(leap.totals.requests, 3);
        assert_eq!(utc_date(leap.days[28].start), "2028-02-29");
        assert_eq!(leap.days[28].stats.requests, 2);
        let feb = report("2026-02", AFTER, &rows);
        assert_eq!(feb.days.len(), 28);
        assert_eq!(feb.totals.requests, 8);
        assert_eq!(feb.days[27].end, ts("2026-03-01T00:00:00Z"));
    }

    #[test]
    fn empty_period_has_no_data_and_an_untouched_budget() {
        let r = report("2026-11", AFTER, &[]);
        assert_eq!(r.totals, Totals::default());
        for b in [&r.availability, &r.latency] {
            assert_eq!(b.status, Status::NoData);
            assert_eq!(b.attainment, None);
            assert_eq!(
                (b.bad, b.allowed_bad, b.consumed, b.remaining),
                (0, 0.0, 0.0, 1.0)
            );
        }
        assert_eq!(r.days.len(), 30);
        assert!(
            r.days
                .iter()
                .all(|d| d.availability_budget_remaining == 1.0 && d.stats.availability.is_none())
        );
        assert!(r.worst_days.is_empty() && r.worst_routes.is_empty() && r.services.is_empty());
    }

    #[test]
    fn other_tenants_are_ignored() {
        let mut other = minute("2026-11-10T00:00:00Z", 100, 100);
        other.tenant = "someone-else".into();
        let mut ev = evidence("2026-11-10T00:00:10Z", EvidenceKind::Error, "aa");
        ev.tenant = "someone-else".into();
        let r = report_full("2026-11", AFTER, &[other], &[], &[ev]);
        assert_eq!(r.totals.requests, 0);
        assert_eq!(r.availability.status, Status::NoData);
        assert!(r.evidence.is_empty());
    }

    #[test]
    fn budget_math() {
        // 100 000 requests at 99.9 %: 100 errors allowed; 50 errors consume half the budget.
        let rows = [
            minute("2026-11-02T10:00:00Z", 60_000, 30),
            hour("2026-11-03T10:00:00Z", 40_000, 20),
        ];
        let r = report("2026-11", AFTER, &rows);
        let a = &r.availability;
        assert_eq!(a.target, 0.999);
        assert_eq!(a.attainment, Some(99_950.0 / 100_000.0));
        assert_eq!(a.bad, 50);
        assert!((a.allowed_bad - 100.0).abs() < 1e-9, "{}", a.allowed_bad);
        assert!((a.consumed - 0.5).abs() < 1e-12);
        assert!((a.remaining - 0.5).abs() < 1e-12);
        assert_eq!(a.status, Status::Met);
        assert_eq!(r.totals.good, 99_950);
        assert_eq!(r.latency.status, Status::Met);
        assert_eq!(r.latency.attainment, Some(1.0));
        assert_eq!(r.latency.consumed, 0.0);
    }

    #[test]
    fn attainment_exactly_at_target_is_met() {
        let r = report("2026-11", AFTER, &[minute("2026-11-02T10:00:00Z", 1000, 1)]);
        assert_eq!(r.availability.attainment, Some(0.999));
        assert_eq!(r.availability.status, Status::Met);
        let r = report("2026-11", AFTER, &[minute("2026-11-02T10:00:00Z", 1000, 2)]);
        assert_eq!(r.availability.status, Status::Breached);
    }

    #[test]
    fn exhausted_budget_goes_negative() {
        let rows = [
            minute("2026-11-02T10:00:00Z", 1000, 0),
            minute("2026-11-05T10:00:00Z", 1000, 5),
        ];
        let r = report("2026-11", AFTER, &rows);
        let a = &r.availability;
        assert_eq!(a.status, Status::Breached);
        assert!((a.allowed_bad - 2.0).abs() < 1e-9);
        assert!((a.consumed - 2.5).abs() < 1e-9);
        assert!((a.remaining + 1.5).abs() < 1e-9);
        // The burn-down ends at the report's remaining budget.
        assert_eq!(r.days[0].availability_budget_remaining, 1.0);
        assert_eq!(r.days[1].availability_budget_remaining, 1.0);
        assert_eq!(r.days[4].availability_budget_remaining, a.remaining);
        assert_eq!(r.days[29].availability_budget_remaining, a.remaining);
        assert_eq!(r.days[29].cumulative_requests, 2000);
        assert_eq!(r.days[29].cumulative_errors, 5);
    }

    #[test]
    fn burn_down_is_monotonic_and_ends_at_the_remaining_budget() {
        let rows: Vec<SliRow> = (1..=30)
            .map(|d| {
                row_on(
                    "api",
                    "/",
                    &format!("2026-11-{d:02}T08:00:00Z"),
                    HOUR,
                    1000,
                    d % 3,
                    d % 5,
                )
            })
            .collect();
        let r = report("2026-11", AFTER, &rows);
        assert_eq!(r.days.len(), 30);
        for w in r.days.windows(2) {
            assert!(w[1].availability_budget_remaining <= w[0].availability_budget_remaining);
            assert!(w[1].latency_budget_remaining <= w[0].latency_budget_remaining);
            assert_eq!(w[1].start, w[0].end);
        }
        let last = r.days.last().unwrap();
        assert_eq!(last.availability_budget_remaining, r.availability.remaining);
        assert_eq!(last.latency_budget_remaining, r.latency.remaining);
        assert_eq!(last.cumulative_slow, r.totals.slow);
        assert_eq!(r.totals.slow, (1..=30u64).map(|d| d % 5).sum::<u64>());
    }

    #[test]
    fn latency_objective_counts_requests_slower_than_the_threshold() {
        // 500 ms is a bucket bound: a request at exactly 500 ms is within it.
        let mut row = minute("2026-11-02T10:00:00Z", 200, 0);
        row.counts.buckets = [0; crate::sli::BUCKETS];
        row.counts.buckets[bucket_of(0.5)] = 197;
        row.counts.buckets[bucket_of(0.75)] = 3;
        let r = report("2026-11", AFTER, &[row]);
        assert_eq!(r.totals.slow, 3);
        assert_eq!(r.latency.attainment, Some(197.0 / 200.0));
        assert_eq!(r.latency.status, Status::Breached);
        assert!((r.latency.allowed_bad - 2.0).abs() < 1e-9);
        assert!((r.latency.remaining + 0.5).abs() < 1e-9);
        assert_eq!(r.availability.status, Status::Met);
    }

    #[test]
    fn hour_rows_mix_with_minute_rows() {
        let rows = [
            hour("2026-11-03T00:00:00Z", 600, 6),
            minute("2026-11-03T01:00:00Z", 10, 1),
            minute("2026-11-03T23:59:00Z", 10, 0),
            hour("2026-11-03T23:00:00Z", 5, 0),
            hour("2026-11-04T00:00:00Z", 100, 0),
        ];
        let r = report("2026-11", AFTER, &rows);
        assert_eq!(r.totals.requests, 725);
        assert_eq!(r.totals.errors, 7);
        assert_eq!(r.days[2].stats.requests, 625);
        assert_eq!(r.days[3].stats.requests, 100);
        assert_eq!(r.services.len(), 1);
        assert_eq!(r.services[0].stats.requests, 725);
    }

    #[test]
    fn maintenance_excludes_rows_whose_midpoint_is_inside() {
        let rows = [
            minute("2026-11-10T01:59:00Z", 10, 10),
            minute("2026-11-10T02:00:00Z", 20, 20),
            minute("2026-11-10T02:30:00Z", 40, 40),
            minute("2026-11-10T03:59:00Z", 80, 80),
            minute("2026-11-10T04:00:00Z", 160, 0),
        ];
        let w = [win("2026-11-10T02:00:00Z", "2026-11-10T04:00:00Z")];
        let r = report_full("2026-11", AFTER, &rows, &w, &[]);
        assert_eq!(r.totals.excluded_requests, 140);
        assert_eq!(r.totals.requests, 170);
        assert_eq!(r.totals.errors, 10);
        assert_eq!(r.days[9].excluded_requests, 140);
        assert_eq!(r.maintenance, w);

        // The midpoint of a minute row is 30 s in; windows are half-open.
        let one = [minute("2026-11-10T02:00:00Z", 1, 1)];
        let excluded = |start: &str, end: &str| {
            report_full("2026-11", AFTER, &one, &[win(start, end)], &[])
                .totals
                .excluded_requests
        };
        assert_eq!(excluded("2026-11-10T02:00:30Z", "2026-11-10T03:00:00Z"), 1);
        assert_eq!(excluded("2026-11-10T02:00:31Z", "2026-11-10T03:00:00Z"), 0);
        assert_eq!(excluded("2026-11-10T01:00:00Z", "2026-11-10T02:00:30Z"), 0);
        assert_eq!(excluded("2026-11-10T01:00:00Z", "2026-11-10T02:00:31Z"), 1);

        // An hour row counts at half past.
        let one = [hour("2026-11-10T02:00:00Z", 1, 1)];
        let excluded = |start: &str, end: &str| {
            report_full("2026-11", AFTER, &one, &[win(start, end)], &[])
                .totals
                .excluded_requests
        };
        assert_eq!(excluded("2026-11-10T02:00:00Z", "2026-11-10T02:20:00Z"), 0);
        assert_eq!(excluded("2026-11-10T02:15:00Z", "2026-11-10T02:45:00Z"), 1);
    }

    #[test]
    fn maintenance_across_a_period_boundary() {
        let rows = [
            minute("2026-11-30T23:30:00Z", 10, 10),
            minute("2026-12-01T00:30:00Z", 10, 10),
            minute("2026-12-01T01:30:00Z", 10, 0),
        ];
        let w = [win("2026-11-30T23:00:00Z", "2026-12-01T01:00:00Z")];
        let nov = report_full("2026-11", AFTER, &rows, &w, &[]);
        assert_eq!(nov.totals.requests, 0);
        assert_eq!(nov.totals.excluded_requests, 10);
        assert_eq!(nov.maintenance, w);
        let dec = report_full("2026-12", AFTER, &rows, &w, &[]);
        assert_eq!(dec.totals.requests, 10);
        assert_eq!(dec.totals.excluded_requests, 10);
        assert_eq!(dec.availability.status, Status::Met);
        assert_eq!(dec.maintenance, w);
        // Windows outside the period are not listed.
        let oct = report_full("2026-10", AFTER, &rows, &w, &[]);
        assert!(oct.maintenance.is_empty());
    }

    #[test]
    fn maintenance_for_one_tenant_or_all() {
        let config: ObjectivesConfig = toml::from_str(
            r#"
            [[maintenance]]
            start = "2026-11-10T00:00:00Z"
            end = "2026-11-10T01:00:00Z"
            tenants = ["t"]
            reason = "t only"
            [[maintenance]]
            start = "2026-11-11T00:00:00Z"
            end = "2026-11-11T01:00:00Z"
            reason = "everyone"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let rows = |tenant: &str| {
            ["2026-11-10T00:10:00Z", "2026-11-11T00:10:00Z"].map(|at| SliRow {
                tenant: tenant.into(),
                ..minute(at, 5, 5)
            })
        };
        let now = ts(AFTER);
        let p = resolve_period("2026-11", PeriodKind::CalendarMonth, now).unwrap();
        let for_t = compute(
            T,
            &standard(),
            &config.windows_for(T),
            &p,
            now,
            &rows(T),
            &[],
        );
        assert_eq!(for_t.totals.excluded_requests, 10);
        assert_eq!(for_t.totals.requests, 0);
        assert_eq!(for_t.maintenance.len(), 2);
        let u = "u";
        let for_u = compute(
            u,
            &standard(),
            &config.windows_for(u),
            &p,
            now,
            &rows(u),
            &[],
        );
        assert_eq!(for_u.totals.excluded_requests, 5);
        assert_eq!(for_u.totals.requests, 5);
        assert_eq!(for_u.maintenance.len(), 1);
        assert_eq!(for_u.maintenance[0].reason, "everyone");
    }

    #[test]
    fn rolling_thirty_days() {
        let now = "2026-11-15T12:34:56Z";
        let rows = [
            minute("2026-10-16T12:33:00Z", 1, 1), // before the period
            minute("2026-10-16T12:34:00Z", 2, 0), // first minute
            hour("2026-10-16T12:00:00Z", 4, 0),   // midpoint 12:30, before
            hour("2026-10-16T13:00:00Z", 8, 0),
            minute("2026-11-15T12:33:00Z", 16, 0), // last complete minute
            minute("2026-11-15T12:34:00Z", 32, 0), // the current minute: after the end
        ];
        let r = report("rolling", now, &rows);
        assert!(!r.in_progress);
        assert_eq!(r.effective_end, ts("2026-11-15T12:34:00Z"));
        assert_eq!(r.totals.requests, 26);
        // Partial first and last UTC days: 31 of them.
        assert_eq!(r.days.len(), 31);
        assert_eq!(r.days[0].start, ts("2026-10-16T12:34:00Z"));
        assert_eq!(r.days[0].end, ts("2026-10-17T00:00:00Z"));
        assert_eq!(r.days[0].stats.requests, 10);
        assert_eq!(r.days[30].start, ts("2026-11-15T00:00:00Z"));
        assert_eq!(r.days[30].end, r.effective_end);
        assert_eq!(r.days[30].stats.requests, 16);
    }

    #[test]
    fn period_in_progress_stops_at_now() {
        let now = "2026-11-10T12:00:00Z";
        let rows = [
            minute("2026-11-01T00:00:00Z", 100_000, 50),
            minute("2026-11-10T11:59:00Z", 100, 0),
            minute("2026-11-10T12:00:00Z", 100, 100), // after now
            minute("2026-11-20T00:00:00Z", 100, 100), // in the future: a skewed clock
        ];
        let r = report("current", now, &rows);
        assert!(r.in_progress);
        assert_eq!(r.period.end, ts("2026-12-01T00:00:00Z"));
        assert_eq!(r.effective_end, ts(now));
        assert_eq!(r.totals.requests, 100_100);
        assert_eq!(r.days.len(), 10);
        assert_eq!(r.days[9].end, ts(now));
        // Half the budget spent in a third of the month: met so far, but at risk.
        assert_eq!(r.availability.status, Status::AtRisk);
        assert_eq!(r.latency.status, Status::Met);
        // The same figures over the whole month, once it is over: met.
        let r = report("2026-11", AFTER, &rows[..2]);
        assert_eq!(r.availability.status, Status::Met);
    }

    #[test]
    fn worst_days_and_routes() {
        let rows = [
            row_on("api", "/a", "2026-11-01T10:00:00Z", HOUR, 100, 1, 0),
            row_on("api", "/b", "2026-11-02T10:00:00Z", HOUR, 100, 10, 0),
            row_on("api", "/b", "2026-11-03T10:00:00Z", HOUR, 10, 1, 0), // same 90 % as 11-02
            row_on("web", "/c", "2026-11-04T10:00:00Z", HOUR, 100, 0, 0),
            row_on("web", "/c", "2026-11-05T10:00:00Z", HOUR, 100, 50, 0),
            row_on("web", "/d", "2026-11-06T10:00:00Z", HOUR, 100, 2, 0),
            row_on("web", "/e", "2026-11-07T10:00:00Z", HOUR, 100, 3, 0),
            row_on("web", "/zero", "2026-11-08T10:00:00Z", HOUR, 0, 0, 0),
        ];
        let r = report("2026-11", AFTER, &rows);
        let days: Vec<String> = r.worst_days.iter().map(|d| utc_date(d.start)).collect();
        assert_eq!(
            days,
            [
                "2026-11-05",
                "2026-11-02",
                "2026-11-03",
                "2026-11-07",
                "2026-11-06"
            ]
        );
        assert_eq!(r.worst_days[0].stats.availability, Some(0.5));
        let routes: Vec<&str> = r.worst_routes.iter().map(|x| x.route.as_str()).collect();
        assert_eq!(routes, ["/c", "/b", "/e", "/d", "/a"]);
        assert_eq!(r.worst_routes[1].stats.requests, 110);
        let services: Vec<(&str, u64)> = r
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.stats.errors))
            .collect();
        assert_eq!(services, [("api", 12), ("web", 55)]);
    }

    #[test]
    fn worst_routes_are_capped() {
        let rows: Vec<SliRow> = (0..25u64)
            .map(|i| {
                row_on(
                    "api",
                    &format!("/r{i:02}"),
                    "2026-11-01T10:00:00Z",
                    MINUTE,
                    100,
                    i,
                    0,
                )
            })
            .collect();
        let r = report("2026-11", AFTER, &rows);
        assert_eq!(r.worst_routes.len(), MAX_WORST_ROUTES);
        assert_eq!(r.worst_routes[0].route, "/r24");
        assert_eq!(r.worst_routes[9].route, "/r15");
        assert_eq!(r.worst_days.len(), 1);
    }

    #[test]
    fn evidence_errors_first_then_slow_most_recent_first() {
        use EvidenceKind::{Error, Slow};
        let mut ev = vec![
            evidence("2026-11-02T00:00:00Z", Slow, "s1"),
            evidence("2026-11-03T00:00:00Z", Slow, "s2"),
            evidence("2026-11-01T00:00:00Z", Error, "e1"),
            evidence("2026-11-04T00:00:00Z", Error, "e2"),
            evidence("2026-11-05T00:00:00Z", Slow, "e2"), // same trace: kept once, as an error
            evidence("2026-10-31T23:59:59Z", Error, "before"),
            evidence("2026-12-01T00:00:00Z", Error, "after"),
            evidence("2026-11-10T02:30:00Z", Error, "in-maintenance"),
        ];
        ev[0].at_ms += 999; // still in the same second
        let w = [win("2026-11-10T02:00:00Z", "2026-11-10T04:00:00Z")];
        let r = report_full("2026-11", AFTER, &[], &w, &ev);
        let ids: Vec<&str> = r.evidence.iter().map(|e| e.trace_id.as_str()).collect();
        assert_eq!(ids, ["e2", "e1", "s2", "s1"]);

        let many: Vec<Evidence> = (0..50)
            .map(|i| evidence("2026-11-02T00:00:00Z", Slow, &format!("{i:032x}")))
            .collect();
        let r = report_full("2026-11", AFTER, &[], &[], &many);
        assert_eq!(r.evidence.len(), MAX_EVIDENCE);
    }

    #[test]
    fn batches_give_the_same_report() {
        use EvidenceKind::{Error, Slow};
        let rows: Vec<SliRow> = (1..=30)
            .flat_map(|d| {
                [
                    row_on(
                        "api",
                        "/a",
                        &format!("2026-11-{d:02}T08:00:00Z"),
                        HOUR,
                        1000,
                        d % 4,
                        d % 7,
                    ),
                    row_on(
                        "web",
                        "/b",
                        &format!("2026-11-{d:02}T09:17:00Z"),
                        MINUTE,
                        50,
                        d % 2,
                        1,
                    ),
                ]
            })
            .collect();
        let ev: Vec<Evidence> = (1..=30)
            .map(|d| {
                let kind = if d % 3 == 0 { Error } else { Slow };
                evidence(
                    &format!("2026-11-{d:02}T09:00:00Z"),
                    kind,
                    &format!("t{}", d % 25),
                )
            })
            .collect();
        let w = [win("2026-11-10T00:00:00Z", "2026-11-11T00:00:00Z")];
        let now = ts(AFTER);
        let p = resolve_period("2026-11", PeriodKind::CalendarMonth, now).unwrap();
        let whole = compute(T, &standard(), &w, &p, now, &rows, &ev);
        let mut acc = Accumulator::new(T, &standard(), &w, &p, now);
        // Uneven batches, evidence in between.
        for (i, r) in rows.chunks(7).enumerate() {
            acc.add_rows(r);
            acc.add_evidence(ev.get(i * 3..(i * 3 + 3).min(ev.len())).unwrap_or(&[]));
        }
        acc.add_evidence(&ev[27..]);
        assert!(acc.finish() == whole, "batched and whole reports differ");
        assert_eq!(whole.evidence.len(), MAX_EVIDENCE);
        assert_eq!(whole.evidence[0].trace_id, "t5"); // day 30, an error
    }

    #[test]
    fn corrupt_rows_do_not_panic() {
        let mut rows = vec![
            SliRow {
                start: i64::MAX,
                ..minute("2026-11-02T00:00:00Z", 1, 1)
            },
            SliRow {
                start: i64::MIN,
                seconds: i64::MIN,
                ..minute("2026-11-02T00:00:00Z", 1, 1)
            },
            SliRow {
                seconds: 0,
                ..minute("2026-11-02T00:00:00Z", 3, 1)
            },
        ];
        // More errors than requests, and buckets that do not add up.
        rows.push(minute("2026-11-03T00:00:00Z", 5, 9));
        rows[3].counts.buckets = [0; crate::sli::BUCKETS];
        let r = report("2026-11", AFTER, &rows);
        assert_eq!(r.totals.requests, 8);
        assert_eq!(r.totals.errors, 6);
        assert_eq!(r.totals.slow, 5);
        assert!(r.availability.remaining.is_finite());
        // Periods and instants at the edges of the calendar.
        for spec in ["9999-12", "0000-01", "-001-01"] {
            let _ = resolve_period(spec, PeriodKind::CalendarMonth, i64::MAX);
        }
        let _ = resolve_period("current", PeriodKind::CalendarMonth, i64::MAX);
        let _ = resolve_period("rolling", PeriodKind::CalendarMonth, i64::MIN);
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
        assert_eq!(rfc3339_ms(i64::MIN), i64::MIN.to_string());
        assert_eq!(rfc3339_ms(1_000), "1970-01-01T00:00:01.000Z");
        let _ = burn_rate(&rows, &standard(), &[], i64::MIN, i64::MAX);
    }

    #[test]
    fn a_hundred_percent_objective_has_no_budget() {
        let mut o = standard();
        o.availability = 1.0;
        let now = ts(AFTER);
        let p = resolve_period("2026-11", o.period, now).unwrap();
        let rows = [minute("2026-11-02T00:00:00Z", 10, 2)];
        let r = compute(T, &o, &[], &p, now, &rows, &[]);
        assert_eq!(r.availability.allowed_bad, 0.0);
        assert_eq!(r.availability.consumed, 3.0);
        assert_eq!(r.availability.remaining, -2.0);
        assert_eq!(r.availability.status, Status::Breached);
        assert_eq!(burn_rate(&rows, &o, &[], now, 1 << 40), None);
        let ok = compute(
            T,
            &o,
            &[],
            &p,
            now,
            &[minute("2026-11-02T00:00:00Z", 10, 0)],
            &[],
        );
        assert_eq!(ok.availability.status, Status::Met);
        assert_eq!(ok.availability.remaining, 1.0);
    }

    #[test]
    fn burn_rates() {
        let o = standard();
        let now = ts("2026-11-10T12:00:00Z");
        let rows = [
            row_on("api", "/", "2026-11-10T11:00:00Z", MINUTE, 1000, 2, 20),
            row_on("api", "/", "2026-11-10T11:59:00Z", MINUTE, 1000, 0, 0),
            row_on("api", "/", "2026-11-10T10:59:00Z", MINUTE, 1000, 1000, 1000), // outside 1h
            row_on("api", "/", "2026-11-10T12:00:00Z", MINUTE, 1000, 1000, 1000), // not yet
        ];
        // 2 errors in 2000 requests = 0.1 % = exactly the 99.9 % budget.
        let r = burn_rate(&rows, &o, &[], now, HOUR).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        // 20 slow in 2000 = 1 % = exactly the 99 % latency budget.
        let l = latency_burn_rate(&rows, &o, &[], now, HOUR).unwrap();
        assert!((l - 1.0).abs() < 1e-9, "{l}");
        // Over 6 hours the bad minute at 10:59 is in.
        let r6 = burn_rate(&rows, &o, &[], now, 6 * HOUR).unwrap();
        assert!((r6 - 1002.0 / 3000.0 / 0.001).abs() < 1e-6, "{r6}");
        // Maintenance removes it again.
        let w = [win("2026-11-10T10:00:00Z", "2026-11-10T11:00:00Z")];
        let r6 = burn_rate(&rows, &o, &w, now, 6 * HOUR).unwrap();
        assert!((r6 - 1.0).abs() < 1e-9, "{r6}");
        // No traffic, no burn rate.
        assert_eq!(
            burn_rate(&rows, &o, &[], ts("2026-11-01T00:00:00Z"), HOUR),
            None
        );
        assert_eq!(latency_burn_rate(&[], &o, &[], now, DAY), None);
    }
}
