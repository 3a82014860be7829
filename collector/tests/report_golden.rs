//! Golden-file tests of the JSON and CSV reports: the fixed dataset of `golden/dataset.rs`
//! rendered and compared byte for byte with `golden/sla-report.{json,csv}`. After an intended
//! change, regenerate them with `UPDATE_GOLDEN=1 cargo test -p tenantscope-collector --test
//! report_golden` and review the diff.

#[path = "golden/dataset.rs"]
mod dataset;

use std::path::PathBuf;

use tenantscope_collector::report::{self, Format, SCHEMA_VERSION};
use tenantscope_collector::sla::Status;

fn check_golden(name: &str, actual: &str) {
    // The checkout this run is in (not the one a shared CARGO_TARGET_DIR compiled it in).
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendered report from line {}:\n  expected: {:?}\n  actual:   {:?}\n\
             If the change is intended, run with UPDATE_GOLDEN=1 and review the diff.",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[test]
fn json_matches_golden() {
    check_golden(
        "sla-report.json",
        &report::render(&dataset::report(), Format::Json),
    );
}

#[test]
fn csv_matches_golden() {
    check_golden(
        "sla-report.csv",
        &report::render(&dataset::report(), Format::Csv),
    );
}

/// What the golden files are meant to show, checked on the report itself so a regenerated
/// golden file cannot quietly lose it.
#[test]
fn dataset_covers_the_interesting_cases() {
    let mut progress = Vec::new();
    let r = dataset::report_with_progress(&mut |p| progress.push(p.to_string()));
    assert_eq!(progress.len(), 30);
    assert_eq!(progress[11], "day 12/30 (2026-11-12)");

    assert!(!r.in_progress);
    assert_eq!(r.objective.tier, "gold");
    assert_eq!(r.days.len(), 30);
    assert_eq!(r.availability.status, Status::Breached);
    assert!(r.availability.remaining < 0.0);
    assert_eq!(r.latency.status, Status::Met);
    // The maintenance window's errors are excluded, and only acme's windows in the period show.
    assert!(r.totals.excluded_requests > 0);
    assert_eq!(r.maintenance.len(), 1);
    assert_eq!(r.maintenance[0].reason, "database upgrade <v15> & reindex");
    // The bad deploy day is the worst; the quiet end of the month still has traffic.
    assert_eq!(
        tenantscope_collector::sla::utc_date(r.worst_days[0].start),
        "2026-11-17"
    );
    assert!(r.days[29].stats.requests > 0);
    // The hostile route is the worst route, and nothing of globex or outside the period leaks.
    assert_eq!(r.worst_routes[0].route, dataset::HOSTILE_ROUTE);
    assert_eq!(r.services.len(), 2);
    assert_eq!(r.evidence.len(), 20);
    assert!(r.evidence.iter().all(|e| e.tenant == "acme"));
    assert_eq!(r.evidence[0].kind.as_str(), "error");
    assert_eq!(r.evidence[19].kind.as_str(), "slow");
    assert!(
        !r.evidence
            .iter()
            .any(|e| e.at_ms < dataset::ts("2026-11-01T00:00:00Z") * 1000)
    );

    // The JSON is valid and carries the schema version.
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&r, Format::Json)).expect("valid JSON");
    assert_eq!(json["schema_version"], SCHEMA_VERSION);
    assert_eq!(json["tenant"], "acme");
    assert_eq!(json["days"].as_array().map(Vec::len), Some(30));
    assert_eq!(
        json["availability"]["budget_remaining"].as_f64(),
        Some(r.availability.remaining)
    );
    assert!(!report::render(&r, Format::Csv).contains("globex"));
}

/// Zero traffic renders too: `null` figures, empty CSV blocks.
#[test]
fn empty_report_renders() {
    let source = dataset::MemorySource {
        rows: Vec::new(),
        evidence: Vec::new(),
    };
    let r = report::build(
        &source,
        &dataset::objectives(),
        "nobody",
        "2026-11",
        dataset::now(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.availability.status, Status::NoData);
    let json: serde_json::Value = serde_json::from_str(&report::render(&r, Format::Json)).unwrap();
    assert!(json["availability"]["attainment"].is_null());
    assert_eq!(json["availability"]["status"], "no_data");
    assert_eq!(json["availability"]["budget_remaining"], 1.0);
    let csv = report::render(&r, Format::Csv);
    assert!(
        csv.contains("\nsummary,availability_attainment,\n"),
        "{csv}"
    );
    assert!(
        csv.contains("\nsummary,availability_status,no_data\n"),
        "{csv}"
    );
    let html = report::render(&r, Format::Html);
    assert!(html.contains("no data"));
}
