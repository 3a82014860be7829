//! SLA reports: [`build`] reads a tenant's rows and evidence from an [`SliSource`] and runs the
//! SLA math; [`render`] turns the result into HTML (self-contained, with charts), JSON or CSV.
//! The JSON schema, the CSV layout and the math are documented in docs/sla-report.md.

mod csv;
mod html;
mod json;

use std::fmt;
use std::str::FromStr;

use anyhow::Context as _;

use crate::objectives::ObjectivesConfig;
use crate::sla::{self, DAY, SlaReport};
use crate::sli::{HOUR, SliSource};

pub use json::SCHEMA_VERSION;

/// Evidence asked from the source per day. The report keeps [`sla::MAX_EVIDENCE`] (errors first),
/// so each day offers more than that: the source returns the most recent first, whatever the kind.
pub const EVIDENCE_PER_DAY: usize = 200;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One self-contained page with inline SVG charts, printable.
    Html,
    /// The stable, versioned schema of docs/sla-report.md.
    Json,
    /// Sections of rows, for spreadsheets.
    Csv,
}

impl Format {
    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8; header=present",
        }
    }

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    /// `html`, `json` or `csv`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "html" => Ok(Format::Html),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(format!(
                "unknown report format {s:?}: expected html, json or csv"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Renders a report.
pub fn render(report: &SlaReport, format: Format) -> String {
    match format {
        Format::Html => html::render(report),
        Format::Json => json::render(report),
        Format::Csv => csv::render(report),
    }
}

/// Where [`build`] is: `day` of `days` read (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub day: usize,
    pub days: usize,
    /// Start of the day just read, Unix seconds.
    pub start: i64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "day {}/{} ({})",
            self.day,
            self.days,
            sla::utc_date(self.start)
        )
    }
}

/// Builds the report of `tenant` over `period_spec` (see [`sla::resolve_period`]) as of `now`.
/// Reads one UTC day at a time into an [`sla::Accumulator`], so memory holds one day of rows,
/// never a month, and calls `progress` after each day.
pub fn build(
    source: &dyn SliSource,
    objectives: &ObjectivesConfig,
    tenant: &str,
    period_spec: &str,
    now: i64,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<SlaReport> {
    let objective = objectives.objective_for(tenant);
    let windows = objectives.windows_for(tenant);
    let period = sla::resolve_period(period_spec, objective.period, now)?;
    let end = period.end.min(now).max(period.start);

    let mut days = Vec::new();
    let mut from = period.start;
    while from < end {
        let to = sla::day_start(from).saturating_add(DAY).min(end);
        days.push((from, to));
        from = to;
    }

    let mut acc = sla::Accumulator::new(tenant, &objective, &windows, &period, now);
    for (i, &(from, to)) in days.iter().enumerate() {
        // Sources select rows by slot start, the math places them at their midpoint: an hour row
        // starting up to half an hour before the period counts in it, so reach back an hour.
        let rows_from = if i == 0 {
            from.saturating_sub(HOUR)
        } else {
            from
        };
        let rows = source.rows(tenant, rows_from, to).with_context(|| {
            format!("reading SLI rows of {tenant:?} for {}", sla::utc_date(from))
        })?;
        acc.add_rows(&rows);
        let evidence = source
            .evidence(tenant, from, to, EVIDENCE_PER_DAY)
            .with_context(|| {
                format!("reading evidence of {tenant:?} for {}", sla::utc_date(from))
            })?;
        acc.add_evidence(&evidence);
        progress(Progress {
            day: i + 1,
            days: days.len(),
            start: from,
        });
    }
    Ok(acc.finish())
}

/// `0.999` as `99.9`: a fraction as a percentage with at most 6 decimals and no trailing zeros
/// (for targets, which come from short decimals in the config).
fn percent_of_target(fraction: f64) -> String {
    let s = format!("{:.6}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// A latency threshold for people: `500 ms`, `2.5 s`.
fn threshold_label(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{} ms", (seconds * 1000.0).round())
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sli::{Evidence, SliRow};
    use std::cell::RefCell;

    #[test]
    fn formats_parse() {
        assert_eq!("html".parse(), Ok(Format::Html));
        assert_eq!("JSON".parse(), Ok(Format::Json));
        assert_eq!("Csv".parse(), Ok(Format::Csv));
        let e = "pdf".parse::<Format>().unwrap_err();
        assert!(e.contains("pdf") && e.contains("html, json or csv"), "{e}");
        assert_eq!(Format::Csv.to_string(), "csv");
    }

    #[test]
    fn labels() {
        assert_eq!(percent_of_target(0.999), "99.9");
        assert_eq!(percent_of_target(0.9995), "99.95");
        assert_eq!(percent_of_target(0.99), "99");
        assert_eq!(threshold_label(0.005), "5 ms");
        assert_eq!(threshold_label(0.5), "500 ms");
        assert_eq!(threshold_label(2.5), "2.5 s");
        assert_eq!(threshold_label(10.0), "10 s");
    }

    /// Records the queries it gets.
    #[derive(Default)]
    struct Recorder {
        queries: RefCell<Vec<(i64, i64)>>,
        fail: bool,
    }

    impl SliSource for Recorder {
        fn rows(&self, _: &str, from: i64, to: i64) -> anyhow::Result<Vec<SliRow>> {
            if self.fail {
                anyhow::bail!("store is gone");
            }
            self.queries.borrow_mut().push((from, to));
            Ok(Vec::new())
        }
        fn evidence(&self, _: &str, _: i64, _: i64, _: usize) -> anyhow::Result<Vec<Evidence>> {
            Ok(Vec::new())
        }
        fn tenants(&self, _: i64, _: i64) -> anyhow::Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn build_reads_one_day_at_a_time() {
        let source = Recorder::default();
        let now = "2026-11-06T20:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let mut seen = Vec::new();
        let r = build(
            &source,
            &ObjectivesConfig::default(),
            "t",
            "current",
            now,
            &mut |p| seen.push(p.to_string()),
        )
        .unwrap();
        assert!(r.in_progress);
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], "day 1/6 (2026-11-01)");
        assert_eq!(seen[5], "day 6/6 (2026-11-06)");
        let q = source.queries.borrow();
        assert_eq!(q[0], (r.period.start - HOUR, r.period.start + DAY));
        assert_eq!(q[5], (r.period.start + 5 * DAY, now));
        assert!(q.windows(2).all(|w| w[0].1 == w[1].0));
    }

    #[test]
    fn build_reports_errors() {
        let cfg = ObjectivesConfig::default();
        let e = build(
            &Recorder::default(),
            &cfg,
            "t",
            "2026-13",
            2_000_000_000,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid period"), "{e}");
        let failing = Recorder {
            fail: true,
            ..Default::default()
        };
        let e = build(&failing, &cfg, "t", "2026-11", 2_000_000_000, &mut |_| {}).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("2026-11-01") && e.contains("store is gone"),
            "{e}"
        );
    }
}
