//! The HTML form of a report: one self-contained page (inline CSS and SVG; no script, fonts,
//! images or links to fetch), readable on screen and on paper. Every string that comes from data
//! (tenant, services, routes, trace ids, reasons) goes through [`esc`]: routes are
//! attacker-influenced. A Content-Security-Policy forbidding scripts backs that up.
//!
//! Elements tests and tools can rely on: `#tenant`, `#period`, `#availability-attainment`,
//! `#budget-remaining`, `#latency-attainment`, `#latency-budget-remaining`,
//! `#availability-status`, `#latency-status`, `#total-requests`, `#excluded-requests` (figures
//! carry their exact value in `data-value`), `#burndown-chart` (one `circle.point` per day),
//! `#availability-chart` and `#latency-chart` (one `rect.bar` per day with traffic, one
//! `line.objective-line`), tables `#worst-days`, `#worst-routes`, `#services`, `#evidence`
//! (rows carry `data-trace-id`) and `#maintenance`.

use std::fmt::Write as _;

use crate::sla::{self, BudgetResult, DAY, DayStats, SlaReport, Stats, Status};

use super::{percent_of_target, threshold_label};

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  background: #fff; max-width: 1100px; margin: 24px auto; padding: 0 24px; }
h1 { font-size: 1.6em; margin: 0 0 .4em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin: 1.6em 0 .6em; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; margin: 0; }
dl.meta dt { color: #57606a; }
dl.meta dd { margin: 0; }
.notice { border-left: 4px solid #bf8700; padding: .4em .8em; background: #fff8c5; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { border: 1px solid #d0d7de; border-top: 6px solid #8c959f; border-radius: 6px; padding: 10px 12px; }
.card.met { border-top-color: #1a7f37; }
.card.at_risk { border-top-color: #bf8700; }
.card.breached { border-top-color: #cf222e; }
.card .label { color: #57606a; }
.card .value { font-size: 1.9em; font-weight: 600; font-variant-numeric: tabular-nums; }
.status { font-weight: 700; text-transform: uppercase; font-size: .85em; letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { font-weight: 600; }
.num { text-align: right; white-space: nowrap; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .92em;
  word-break: break-all; }
figure { margin: 0 0 1em; }
figcaption { color: #57606a; font-size: .9em; }
svg.chart { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #57606a; }
.grid { stroke: #eaeef2; }
.axis { stroke: #8c959f; }
.zero-line { stroke: #cf222e; }
.objective-line { stroke: #cf222e; stroke-width: 1.5; stroke-dasharray: 6 4; }
.ideal { stroke: #8c959f; stroke-dasharray: 4 4; fill: none; }
.series { fill: none; stroke: #0969da; stroke-width: 2; }
.series-latency { fill: none; stroke: #8250df; stroke-width: 2; stroke-dasharray: 2 3; }
.point { fill: #0969da; }
.bar { fill: #0969da; }
.bar.below { fill: #cf222e; }
.legend-latency { fill: #8250df; }
svg text.halo { fill: #1f2328; paint-order: stroke; stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }
footer { margin-top: 2em; color: #57606a; font-size: .9em; }
@page { size: A4; margin: 14mm; }
@media print {
  body { margin: 0; padding: 0; max-width: none; font-size: 10pt; }
  /* Whole figures, cards and rows; a long section may break between them. */
  figure, .cards, tr { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
  thead { display: table-header-group; }
  .notice { background: none; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
@media screen and (max-width: 700px) { .cards { grid-template-columns: repeat(2, 1fr); } }
"#;

pub(super) fn render(r: &SlaReport) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let tenant = esc(&r.tenant);
    let threshold = threshold_label(r.objective.latency_threshold());
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>SLA report: {tenant}, {period}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        period = esc(&r.period.label),
    );

    // Header.
    let _ = writeln!(
        h,
        "<header>\n<h1>SLA report: <span id=\"tenant\">{tenant}</span></h1>\n<dl class=\"meta\">\n\
         <dt>Period</dt><dd id=\"period\" data-start=\"{ps}\" data-end=\"{pe}\">{label} \
         ({start} to {end})</dd>\n\
         <dt>Tier</dt><dd id=\"tier\">{tier}</dd>\n\
         <dt>Objectives</dt><dd>availability {avail} %; {lat} % of requests within {threshold}</dd>\n\
         <dt>Generated</dt><dd id=\"generated-at\" data-unix=\"{now}\">{generated}</dd>\n</dl>",
        ps = r.period.start,
        pe = r.period.end,
        label = esc(&r.period.label),
        start = sla::rfc3339(r.period.start),
        end = sla::rfc3339(r.period.end),
        tier = esc(&r.objective.tier),
        avail = percent_of_target(r.objective.availability),
        lat = percent_of_target(r.objective.latency_target),
        now = r.generated_at,
        generated = sla::rfc3339(r.generated_at),
    );
    if r.in_progress {
        let _ = writeln!(
            h,
            "<p id=\"in-progress\" class=\"notice\"><strong>Period in progress.</strong> \
             Figures cover {} to {}; statuses are as of then.</p>",
            sla::rfc3339(r.period.start),
            sla::rfc3339(r.effective_end)
        );
    }
    h.push_str("</header>\n");

    summary(&mut h, r, &threshold);

    // Charts.
    h.push_str("<section id=\"charts\">\n<h2>Error budget burn-down</h2>\n<figure>\n");
    burndown(&mut h, r);
    h.push_str(
        "<figcaption>Share of the period's error budget left at the end of each day (solid: \
         availability, one dot per day; dotted: latency). The dashed grey line spends the budget \
         evenly over the period; below zero the budget is exhausted.</figcaption>\n</figure>\n",
    );
    h.push_str("<h2>Daily availability</h2>\n<figure>\n");
    daily_chart(
        &mut h,
        r,
        "availability-chart",
        "Daily availability",
        r.objective.availability,
        |s| s.availability,
    );
    h.push_str(
        "<figcaption>Share of requests that did not fail, per day with traffic; the dashed line \
         is the objective, red bars are below it.</figcaption>\n</figure>\n",
    );
    let _ = writeln!(h, "<h2>Daily latency attainment</h2>\n<figure>");
    daily_chart(
        &mut h,
        r,
        "latency-chart",
        &format!("Daily share of requests within {threshold}"),
        r.objective.latency_target,
        |s| s.latency_attainment,
    );
    let _ = writeln!(
        h,
        "<figcaption>Share of requests no slower than {threshold}, per day with traffic; the \
         dashed line is the objective.</figcaption>\n</figure>\n</section>"
    );

    tables(&mut h, r, &threshold);

    h.push_str(
        "<footer>\n<p>Availability is the share of valid requests that got a response other than \
         5xx; latency attainment the share no slower than the threshold. Valid requests are those \
         of the period outside maintenance windows; each stored minute or hour counts at its \
         midpoint. The error budget is request-based: the objective allows (1 &minus; target) \
         &times; valid requests to be bad; consumed is bad / allowed. Times are UTC.</p>\n\
         </footer>\n</body>\n</html>\n",
    );
    h
}

fn summary(h: &mut String, r: &SlaReport, threshold: &str) {
    h.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<div class=\"cards\">\n");
    card(
        h,
        &r.availability,
        "Availability",
        "availability-attainment",
        "availability-status",
        r.availability.attainment,
        true,
    );
    card(
        h,
        &r.availability,
        "Error budget remaining",
        "budget-remaining",
        "",
        Some(r.availability.remaining),
        false,
    );
    card(
        h,
        &r.latency,
        &format!("Requests within {threshold}"),
        "latency-attainment",
        "latency-status",
        r.latency.attainment,
        true,
    );
    card(
        h,
        &r.latency,
        "Latency budget remaining",
        "latency-budget-remaining",
        "",
        Some(r.latency.remaining),
        false,
    );
    h.push_str("</div>\n");

    let a = &r.availability;
    let l = &r.latency;
    let _ = writeln!(
        h,
        "<table id=\"summary-table\">\n<thead><tr><th></th><th class=\"num\">Availability</th>\
         <th class=\"num\">Latency (within {threshold})</th></tr></thead>\n<tbody>\n\
         <tr><th>Target</th><td class=\"num\">{at} %</td><td class=\"num\">{lt} %</td></tr>\n\
         <tr><th>Attainment</th><td class=\"num\">{aa}</td><td class=\"num\">{la}</td></tr>\n\
         <tr><th>Status</th><td class=\"num\">{ast}</td><td class=\"num\">{lst}</td></tr>\n\
         <tr><th>Bad requests</th><td class=\"num\">{ab} failed</td><td class=\"num\">{lb} slow</td></tr>\n\
         <tr><th>Bad requests allowed</th><td class=\"num\">{aal}</td><td class=\"num\">{lal}</td></tr>\n\
         <tr><th>Budget consumed</th><td class=\"num\">{ac}</td><td class=\"num\">{lc}</td></tr>\n\
         <tr><th>Budget remaining</th><td class=\"num\">{ar}</td><td class=\"num\">{lr}</td></tr>\n\
         </tbody>\n</table>",
        at = percent_of_target(a.target),
        lt = percent_of_target(l.target),
        aa = attainment(a.attainment),
        la = attainment(l.attainment),
        ast = status_label(a.status),
        lst = status_label(l.status),
        ab = group(a.bad),
        lb = group(l.bad),
        aal = allowed(a.allowed_bad),
        lal = allowed(l.allowed_bad),
        ac = share(a.consumed),
        lc = share(l.consumed),
        ar = share(a.remaining),
        lr = share(l.remaining),
    );
    let _ = writeln!(
        h,
        "<p>Valid requests: <span id=\"total-requests\" data-value=\"{req}\">{reqs}</span>, \
         failed: <span id=\"total-errors\" data-value=\"{err}\">{errs}</span>, slower than \
         {threshold}: <span id=\"total-slow\" data-value=\"{slow}\">{slows}</span>. Excluded by \
         maintenance windows: <span id=\"excluded-requests\" data-value=\"{exc}\">{excs}</span>.\
         </p>\n</section>",
        req = r.totals.requests,
        reqs = group(r.totals.requests),
        err = r.totals.errors,
        errs = group(r.totals.errors),
        slow = r.totals.slow,
        slows = group(r.totals.slow),
        exc = r.totals.excluded_requests,
        excs = group(r.totals.excluded_requests),
    );
}

/// A headline figure. `is_attainment`: shown floored (never rounded up to the target), else a
/// budget share.
fn card(
    h: &mut String,
    b: &BudgetResult,
    label: &str,
    id: &str,
    status_id: &str,
    value: Option<f64>,
    is_attainment: bool,
) {
    let shown = match value {
        None => "no data".to_owned(),
        Some(_) if is_attainment => attainment(value),
        Some(v) => share(v),
    };
    let data = value.map(|v| v.to_string()).unwrap_or_default();
    let detail = if is_attainment {
        format!(
            "target {} % &middot; <span class=\"status\" id=\"{status_id}\">{}</span>",
            percent_of_target(b.target),
            status_label(b.status)
        )
    } else {
        format!(
            "{} consumed ({} of {} allowed)",
            share(b.consumed),
            group(b.bad),
            allowed(b.allowed_bad)
        )
    };
    let _ = writeln!(
        h,
        "<div class=\"card {class}\"><div class=\"label\">{label}</div>\
         <div class=\"value\" id=\"{id}\" data-value=\"{data}\">{shown}</div>\
         <div class=\"detail\">{detail}</div></div>",
        class = b.status.as_str(),
        label = esc(label),
    );
}

/// Geometry shared by the charts (SVG user units).
const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

/// Number of UTC days the whole period spans: the x axis covers the whole period, so a period in
/// progress shows how much is left.
fn period_days(r: &SlaReport) -> usize {
    if r.period.end <= r.period.start {
        return 0;
    }
    let first = sla::day_start(r.period.start);
    let last = sla::day_start(r.period.end - 1);
    usize::try_from((last - first) / DAY + 1).unwrap_or(0)
}

fn svg_open(h: &mut String, id: &str, title: &str) {
    let _ = writeln!(
        h,
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-labelledby=\"{id}-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}-title\">{}</title>",
        esc(title)
    );
}

/// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) giving about five intervals from
/// `lo` to `hi`, and `lo` moved down to a multiple of it so the axis starts on a tick.
fn nice_axis(lo: f64, hi: f64) -> (f64, f64) {
    let raw = ((hi - lo) / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    ((lo / step).floor() * step, step)
}

/// Horizontal grid lines with percent labels every `step` from `lo` up to `hi`.
fn y_grid(h: &mut String, lo: f64, hi: f64, step: f64, y: &dyn Fn(f64) -> f64) {
    let ticks: Vec<f64> = (0..=40)
        .map(|i| lo + step * f64::from(i))
        .take_while(|v| *v <= hi + step * 1e-6)
        .collect();
    // As few decimals as show every tick exactly.
    let decimals = (0..6)
        .find(|&d| {
            let scale = 10f64.powi(d);
            ticks
                .iter()
                .all(|v| ((v * 100.0 * scale).round() - v * 100.0 * scale).abs() < 1e-6)
        })
        .unwrap_or(6) as usize;
    for v in ticks {
        let py = y(v);
        let _ = writeln!(
            h,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{py:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v:.decimals$} %</text>",
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = py + 4.0,
            // Without the + 0.0, a tick at zero can print as -0.
            v = v * 100.0 + 0.0,
        );
    }
}

/// Date labels under the x axis: at most ~16, `x(i)` the position of day `i`.
fn x_labels(h: &mut String, r: &SlaReport, total: usize, x: &dyn Fn(usize) -> f64) {
    let every = total.div_ceil(16).max(1);
    let _ = writeln!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y}\" y2=\"{y}\"/>",
        x2 = W - RIGHT,
        y = H - BOTTOM
    );
    for i in (0..total).step_by(every) {
        let day = sla::day_start(r.period.start) + i as i64 * DAY;
        let date = sla::utc_date(day);
        let label = date.get(5..).unwrap_or(&date);
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(i),
            H - BOTTOM + 16.0,
            esc(label)
        );
    }
}

fn burndown(h: &mut String, r: &SlaReport) {
    svg_open(h, "burndown-chart", "Error budget burn-down");
    let total = period_days(r).max(r.days.len()).max(1);
    let lowest = r
        .days
        .iter()
        .flat_map(|d| [d.availability_budget_remaining, d.latency_budget_remaining])
        .fold(0.0_f64, f64::min);
    let (lo, step) = nice_axis(lowest, 1.0);
    let hi = 1.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * plot_h;
    // Day i's point sits at the end of the day.
    let x = |i: usize| LEFT + (i as f64 + 1.0) / total as f64 * plot_w;
    y_grid(h, lo, hi, step, &y);
    x_labels(h, r, total, &x);
    if lo < 0.0 {
        let _ = writeln!(
            h,
            "<line class=\"zero-line\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\"/>",
            x2 = W - RIGHT,
            y0 = y(0.0)
        );
    }
    let _ = writeln!(
        h,
        "<line class=\"ideal\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
        y(1.0),
        W - RIGHT,
        y(0.0)
    );
    if r.days.is_empty() {
        let _ = writeln!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>",
            W / 2.0,
            H / 2.0
        );
    }
    let line = |h: &mut String, class: &str, value: fn(&DayStats) -> f64| {
        let mut points = format!("{LEFT},{:.1}", y(1.0));
        for (i, d) in r.days.iter().enumerate() {
            let _ = write!(points, " {:.1},{:.1}", x(i), y(value(d)));
        }
        let _ = writeln!(h, "<polyline class=\"{class}\" points=\"{points}\"/>");
    };
    line(h, "series-latency", |d| d.latency_budget_remaining);
    line(h, "series", |d| d.availability_budget_remaining);
    for (i, d) in r.days.iter().enumerate() {
        let v = d.availability_budget_remaining;
        let date = sla::utc_date(d.start);
        let _ = writeln!(
            h,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" data-date=\"{date}\" \
             data-value=\"{v}\"><title>{date}: {} of the error budget left</title></circle>",
            x(i),
            y(v),
            share(v),
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">&#8212; availability</text>\
         <text class=\"legend-latency\" x=\"{lx}\" y=\"{ly2}\" text-anchor=\"end\">&#183;&#183;&#183; latency</text>\n</svg>",
        lx = W - RIGHT - 4.0,
        ly = TOP + 12.0,
        ly2 = TOP + 26.0,
    );
}

fn daily_chart(
    h: &mut String,
    r: &SlaReport,
    id: &str,
    title: &str,
    target: f64,
    value: fn(&Stats) -> Option<f64>,
) {
    svg_open(h, id, title);
    let total = period_days(r).max(r.days.len()).max(1);
    // Zoom on the interesting band: from a bit below the worst day (or the objective) to 100 %.
    let worst = r
        .days
        .iter()
        .filter_map(|d| value(&d.stats))
        .fold(target, f64::min);
    let (lo, step) = nice_axis((worst - (1.0 - worst) * 0.5).max(0.0), 1.0);
    let (lo, hi) = (lo.max(0.0), 1.0);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * plot_h;
    let slot = plot_w / total as f64;
    let x = |i: usize| LEFT + (i as f64 + 0.5) * slot;
    y_grid(h, lo, hi, step, &y);
    x_labels(h, r, total, &x);
    let bar_w = slot * 0.7;
    for (i, d) in r.days.iter().enumerate() {
        let Some(v) = value(&d.stats) else { continue };
        let top = y(v);
        let date = sla::utc_date(d.start);
        let _ = writeln!(
            h,
            "<rect class=\"bar{below}\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{bar_w:.1}\" \
             height=\"{:.1}\" data-date=\"{date}\" data-value=\"{v}\"><title>{date}: {} of {} \
             requests</title></rect>",
            x(i) - bar_w / 2.0,
            (H - BOTTOM - top).max(0.0),
            attainment(Some(v)),
            group(d.stats.requests),
            below = if v < target { " below" } else { "" },
        );
    }
    let ty = y(target);
    let _ = writeln!(
        h,
        "<line class=\"objective-line\" x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" \
         data-value=\"{target}\"/><text class=\"halo\" x=\"{tx}\" y=\"{ly:.1}\" text-anchor=\"end\">objective \
         {pct} %</text>\n</svg>",
        x2 = W - RIGHT,
        tx = W - RIGHT - 4.0,
        ly = ty - 4.0,
        pct = percent_of_target(target),
    );
}

fn tables(h: &mut String, r: &SlaReport, threshold: &str) {
    let stats_head = format!(
        "<th class=\"num\">Requests</th><th class=\"num\">Failed</th>\
         <th class=\"num\">Availability</th><th class=\"num\">Within {threshold}</th>"
    );
    let stats_cells = |s: &Stats| {
        format!(
            "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td>",
            group(s.requests),
            group(s.errors),
            attainment(s.availability),
            attainment(s.latency_attainment)
        )
    };

    let _ = writeln!(
        h,
        "<section>\n<h2>Worst days</h2>\n<table id=\"worst-days\">\n<thead><tr><th>Day</th>\
         {stats_head}</tr></thead>\n<tbody>"
    );
    for d in &r.worst_days {
        let date = sla::utc_date(d.start);
        let _ = writeln!(
            h,
            "<tr data-date=\"{date}\"><td>{date}</td>{}</tr>",
            stats_cells(&d.stats)
        );
    }
    empty_row(h, r.worst_days.is_empty(), 5, "No traffic in the period.");
    h.push_str("</tbody>\n</table>\n</section>\n");

    let _ = writeln!(
        h,
        "<section>\n<h2>Worst routes</h2>\n<table id=\"worst-routes\">\n<thead><tr>\
         <th>Service</th><th>Route</th>{stats_head}</tr></thead>\n<tbody>"
    );
    for x in &r.worst_routes {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"mono\">{}</td>{}</tr>",
            esc(&x.service),
            esc(&x.route),
            stats_cells(&x.stats)
        );
    }
    empty_row(h, r.worst_routes.is_empty(), 6, "No traffic in the period.");
    h.push_str("</tbody>\n</table>\n</section>\n");

    let _ = writeln!(
        h,
        "<section>\n<h2>Services</h2>\n<table id=\"services\">\n<thead><tr><th>Service</th>\
         {stats_head}</tr></thead>\n<tbody>"
    );
    for x in &r.services {
        let _ = writeln!(
            h,
            "<tr><td>{}</td>{}</tr>",
            esc(&x.service),
            stats_cells(&x.stats)
        );
    }
    empty_row(h, r.services.is_empty(), 5, "No traffic in the period.");
    h.push_str("</tbody>\n</table>\n</section>\n");

    h.push_str(
        "<section>\n<h2>Evidence</h2>\n<p>Sample requests to look up in the tracing backend: \
         failed ones first, then slow ones, the most recent first.</p>\n\
         <table id=\"evidence\">\n<thead><tr><th>Time (UTC)</th><th>Kind</th><th>Service</th>\
         <th>Route</th><th class=\"num\">Status</th><th class=\"num\">Duration</th>\
         <th>Trace id</th></tr></thead>\n<tbody>\n",
    );
    for e in &r.evidence {
        let at = sla::rfc3339_ms(e.at_ms);
        let status = if e.status == 0 {
            "no response".to_owned()
        } else {
            e.status.to_string()
        };
        let _ = writeln!(
            h,
            "<tr data-trace-id=\"{trace}\"><td>{at}</td><td>{kind}</td><td>{service}</td>\
             <td class=\"mono\">{route}</td><td class=\"num\">{status}</td>\
             <td class=\"num\">{duration:.1} ms</td><td class=\"mono\">{trace}</td></tr>",
            trace = esc(&e.trace_id),
            kind = e.kind.as_str(),
            service = esc(&e.service),
            route = esc(&e.route),
            duration = e.duration_ms,
        );
    }
    empty_row(
        h,
        r.evidence.is_empty(),
        7,
        "No sample kept for the period.",
    );
    h.push_str("</tbody>\n</table>\n</section>\n");

    h.push_str(
        "<section>\n<h2>Maintenance windows</h2>\n<p>Requests inside these windows count for \
         neither the objectives nor the budgets.</p>\n<table id=\"maintenance\">\n<thead><tr>\
         <th>Start (UTC)</th><th>End (UTC)</th><th>Reason</th></tr></thead>\n<tbody>\n",
    );
    for w in &r.maintenance {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            sla::rfc3339(w.start),
            sla::rfc3339(w.end),
            esc(&w.reason)
        );
    }
    empty_row(h, r.maintenance.is_empty(), 3, "None in the period.");
    let _ = writeln!(
        h,
        "</tbody>\n</table>\n<p>Requests excluded: {}.</p>\n</section>",
        group(r.totals.excluded_requests)
    );
}

fn empty_row(h: &mut String, empty: bool, columns: usize, text: &str) {
    if empty {
        let _ = writeln!(
            h,
            "<tr class=\"empty\"><td colspan=\"{columns}\">{text}</td></tr>"
        );
    }
}

/// Escapes text for HTML content and double- or single-quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An attainment as a percentage with 3 decimals, floored: 99.8996 % shows as 99.899 %, never
/// as a 99.9 % that would read as meeting a 99.9 % objective.
fn attainment(v: Option<f64>) -> String {
    match v {
        None => "no data".to_owned(),
        // The epsilon keeps 0.999 (99.89999999999999 after the multiplication) at 99.900.
        Some(v) => format!("{:.3} %", ((v * 100_000.0) + 1e-6).floor() / 1000.0),
    }
}

/// A budget share, one decimal.
fn share(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// Allowed bad requests: fractional, two decimals.
fn allowed(v: f64) -> String {
    format!("{v:.2}")
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn status_label(s: Status) -> &'static str {
    match s {
        Status::Met => "met",
        Status::AtRisk => "at risk",
        Status::Breached => "breached",
        Status::NoData => "no data",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("/x/<script>alert(1)</script>?a=1&b='2'\""),
            "/x/&lt;script&gt;alert(1)&lt;/script&gt;?a=1&amp;b=&#39;2&#39;&quot;"
        );
    }

    #[test]
    fn hostile_names_and_a_period_in_progress() {
        use crate::objectives::ObjectivesConfig;
        use crate::sli::{SliCounts, SliRow};

        let tenant = "<img src=x onerror=alert(1)>\"'&";
        let config = ObjectivesConfig::default();
        let objective = config.objective_for(tenant);
        let now = 1_794_621_600; // 2026-11-14T02:00:00Z
        let period = sla::resolve_period("current", objective.period, now).unwrap();
        let row = SliRow {
            tenant: tenant.into(),
            service: "</td></tr></table><script>x</script>".into(),
            route: "\"><svg onload=alert(1)>".into(),
            start: now - 3600,
            seconds: 60,
            counts: SliCounts {
                requests: 10,
                errors: 1,
                buckets: [10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
        };
        let r = sla::compute(tenant, &objective, &[], &period, now, &[row], &[]);
        let html = render(&r);
        assert!(html.contains("id=\"in-progress\""));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
        assert!(
            !html.contains("<img") && !html.contains("<script") && !html.contains("<svg onload")
        );
        assert!(html.contains("&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;script&gt;"));
        // The whole month is on the x axis: 30 days, 14 of them with a point so far.
        let burndown = &html[html.find("id=\"burndown-chart\"").unwrap()..];
        let burndown = &burndown[..burndown.find("</svg>").unwrap()];
        assert_eq!(burndown.matches("<circle class=\"point\"").count(), 14);
        assert!(burndown.contains(">11-30<") || burndown.contains(">11-29<"));
    }

    #[test]
    fn axes_start_and_step_on_round_values() {
        let close = |(a, b): (f64, f64), (c, d): (f64, f64)| {
            assert!(
                (a - c).abs() < 1e-12 && (b - d).abs() < 1e-12,
                "{a},{b} vs {c},{d}"
            );
        };
        close(nice_axis(-0.19, 1.0), (-0.25, 0.25));
        close(nice_axis(0.0, 1.0), (0.0, 0.2));
        close(nice_axis(0.969, 1.0), (0.96, 0.01));
        close(nice_axis(0.9985, 1.0), (0.9985, 0.0005));
        close(nice_axis(0.9, 1.0), (0.9, 0.02));
        close(nice_axis(-30.0, 1.0), (-30.0, 10.0));
        // Degenerate: no panic, no NaN, still an axis.
        let (lo, step) = nice_axis(1.0, 1.0);
        assert!(lo < 1.0 && step > 0.0);
    }

    #[test]
    fn figures() {
        assert_eq!(attainment(Some(0.999)), "99.900 %");
        assert_eq!(attainment(Some(0.998996)), "99.899 %");
        assert_eq!(attainment(Some(0.9999999)), "99.999 %");
        assert_eq!(attainment(Some(1.0)), "100.000 %");
        assert_eq!(attainment(Some(0.0)), "0.000 %");
        assert_eq!(attainment(None), "no data");
        assert_eq!(share(-1.5), "-150.0 %");
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(u64::MAX), "18,446,744,073,709,551,615");
    }
}
