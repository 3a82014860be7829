//! The CSV form of a report: blocks separated by an empty line, each with its own header row.
//! The first column of every row names its block (`summary`, `day`, `worst_day`, `worst_route`,
//! `service`, `evidence`, `maintenance`; `section` on header rows), so one block is a `grep`
//! away. Layout in docs/sla-report.md.

use std::fmt::Write as _;

use crate::sla::{self, BudgetResult, SlaReport, Stats};

pub(super) fn render(r: &SlaReport) -> String {
    let mut out = Csv::default();

    out.header(&["section", "field", "value"]);
    let summary: Vec<(&str, Field)> = vec![
        ("schema_version", Field::num(super::SCHEMA_VERSION)),
        ("tenant", Field::text(&r.tenant)),
        ("period", Field::text(&r.period.label)),
        ("period_kind", Field::text(r.period.kind.as_str())),
        ("period_start", Field::time(r.period.start)),
        ("period_end", Field::time(r.period.end)),
        ("effective_end", Field::time(r.effective_end)),
        ("in_progress", Field::num(r.in_progress)),
        ("generated_at", Field::time(r.generated_at)),
        ("tier", Field::text(&r.objective.tier)),
        ("availability_target", Field::num(r.objective.availability)),
        (
            "latency_threshold_seconds",
            Field::num(r.objective.latency_threshold()),
        ),
        ("latency_target", Field::num(r.objective.latency_target)),
        ("requests", Field::num(r.totals.requests)),
        ("errors", Field::num(r.totals.errors)),
        ("good", Field::num(r.totals.good)),
        ("slow", Field::num(r.totals.slow)),
        ("excluded_requests", Field::num(r.totals.excluded_requests)),
    ];
    let summary = summary
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .chain(budget("availability", &r.availability))
        .chain(budget("latency", &r.latency));
    for (name, value) in summary {
        out.row("summary", &[Field::Text(name), value]);
    }

    out.header(&[
        "section",
        "date",
        "start",
        "end",
        "requests",
        "errors",
        "slow",
        "availability",
        "latency_attainment",
        "excluded_requests",
        "cumulative_requests",
        "cumulative_errors",
        "cumulative_slow",
        "availability_budget_remaining",
        "latency_budget_remaining",
    ]);
    for d in &r.days {
        let mut fields = vec![
            Field::text(&sla::utc_date(d.start)),
            Field::time(d.start),
            Field::time(d.end),
        ];
        fields.extend(stats(&d.stats));
        fields.extend([
            Field::num(d.excluded_requests),
            Field::num(d.cumulative_requests),
            Field::num(d.cumulative_errors),
            Field::num(d.cumulative_slow),
            Field::num(d.availability_budget_remaining),
            Field::num(d.latency_budget_remaining),
        ]);
        out.row("day", &fields);
    }

    out.header(&[
        "section",
        "rank",
        "date",
        "requests",
        "errors",
        "slow",
        "availability",
        "latency_attainment",
    ]);
    for (i, d) in r.worst_days.iter().enumerate() {
        let mut fields = vec![Field::num(i + 1), Field::text(&sla::utc_date(d.start))];
        fields.extend(stats(&d.stats));
        out.row("worst_day", &fields);
    }

    out.header(&[
        "section",
        "rank",
        "service",
        "route",
        "requests",
        "errors",
        "slow",
        "availability",
        "latency_attainment",
    ]);
    for (i, x) in r.worst_routes.iter().enumerate() {
        let mut fields = vec![
            Field::num(i + 1),
            Field::text(&x.service),
            Field::text(&x.route),
        ];
        fields.extend(stats(&x.stats));
        out.row("worst_route", &fields);
    }

    out.header(&[
        "section",
        "service",
        "requests",
        "errors",
        "slow",
        "availability",
        "latency_attainment",
    ]);
    for x in &r.services {
        let mut fields = vec![Field::text(&x.service)];
        fields.extend(stats(&x.stats));
        out.row("service", &fields);
    }

    out.header(&[
        "section",
        "at",
        "kind",
        "service",
        "route",
        "status",
        "duration_ms",
        "trace_id",
    ]);
    for e in &r.evidence {
        let at = sla::rfc3339_ms(e.at_ms);
        out.row(
            "evidence",
            &[
                Field::text(&at),
                Field::text(e.kind.as_str()),
                Field::text(&e.service),
                Field::text(&e.route),
                Field::num(e.status),
                Field::num(e.duration_ms),
                Field::text(&e.trace_id),
            ],
        );
    }

    out.header(&["section", "start", "end", "reason"]);
    for w in &r.maintenance {
        out.row(
            "maintenance",
            &[
                Field::time(w.start),
                Field::time(w.end),
                Field::text(&w.reason),
            ],
        );
    }
    out.text
}

fn budget(name: &str, b: &BudgetResult) -> Vec<(String, Field)> {
    vec![
        (format!("{name}_attainment"), Field::opt(b.attainment)),
        (format!("{name}_bad"), Field::num(b.bad)),
        (format!("{name}_allowed_bad"), Field::num(b.allowed_bad)),
        (format!("{name}_budget_consumed"), Field::num(b.consumed)),
        (format!("{name}_budget_remaining"), Field::num(b.remaining)),
        (format!("{name}_status"), Field::text(b.status.as_str())),
    ]
}

fn stats(s: &Stats) -> [Field; 5] {
    [
        Field::num(s.requests),
        Field::num(s.errors),
        Field::num(s.slow),
        Field::opt(s.availability),
        Field::opt(s.latency_attainment),
    ]
}

/// One cell: a number (written as is: Rust's shortest round-trip form) or text (quoted when
/// needed, and defused for spreadsheets).
enum Field {
    Num(String),
    Text(String),
}

impl Field {
    fn num(v: impl ToString) -> Field {
        Field::Num(v.to_string())
    }

    /// An optional figure: empty when absent (no traffic).
    fn opt(v: Option<f64>) -> Field {
        Field::Num(v.map(|v| v.to_string()).unwrap_or_default())
    }

    fn time(secs: i64) -> Field {
        Field::Text(sla::rfc3339(secs))
    }

    fn text(s: &str) -> Field {
        Field::Text(s.to_owned())
    }
}

#[derive(Default)]
struct Csv {
    text: String,
}

impl Csv {
    /// A block's header row, after an empty line unless it is the first block.
    fn header(&mut self, names: &[&str]) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(&names.join(","));
        self.text.push('\n');
    }

    fn row(&mut self, section: &str, fields: &[Field]) {
        self.text.push_str(section);
        for f in fields {
            self.text.push(',');
            match f {
                Field::Num(s) => self.text.push_str(s),
                Field::Text(s) => {
                    let _ = write!(self.text, "{}", quote(s));
                }
            }
        }
        self.text.push('\n');
    }
}

/// RFC 4180 quoting, plus a defence against spreadsheet formula injection (routes and service
/// names come from traffic): text starting with `=`, `+`, `-`, `@`, a tab or a carriage return
/// gets a leading `'`, which spreadsheets show as text and do not evaluate.
fn quote(s: &str) -> String {
    let defused;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        defused = format!("'{s}");
        defused.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote("/api/v1/items"), "/api/v1/items");
        assert_eq!(quote("/a,b"), "\"/a,b\"");
        assert_eq!(quote("/say \"hi\""), "\"/say \"\"hi\"\"\"");
        assert_eq!(quote("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(quote(" padded"), "\" padded\"");
        assert_eq!(quote(""), "");
    }

    #[test]
    fn formulas_are_defused() {
        assert_eq!(quote("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(quote("+1"), "'+1");
        assert_eq!(quote("-1"), "'-1");
        assert_eq!(quote("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(quote("\tx"), "'\tx");
        assert_eq!(quote("a=b"), "a=b");
    }
}
