//! The HTML report in a real browser: renders the golden dataset's report, loads it in headless
//! Chromium, and checks the DOM Chromium built (what a reader sees, after the browser's own
//! parsing) against the report struct. Leaves the page and a screenshot in
//! `<target>/test-artifacts/` for a human look.
//!
//! Needs `chromium` (installed by `cargo xtask setup`); without it the test fails, it does not
//! skip. `CHROMIUM=/path/to/binary` picks another one.

#[path = "golden/dataset.rs"]
mod dataset;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenantscope_collector::report::{self, Format};

/// `$CARGO_TARGET_DIR/test-artifacts`, or the workspace's `target/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir.canonicalize().expect("artifacts dir")
}

fn chromium() -> String {
    let candidates = match std::env::var("CHROMIUM") {
        Ok(c) => vec![c],
        Err(_) => ["chromium", "chromium-browser", "google-chrome"]
            .map(String::from)
            .to_vec(),
    };
    for c in &candidates {
        let ok = Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return c.clone();
        }
    }
    panic!(
        "no Chromium found (tried {candidates:?}): this test renders the HTML report in a real \
         browser. Install it with `cargo xtask setup` (or `apt-get install chromium`), or point \
         CHROMIUM at a binary."
    );
}

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout. Fails the test after
/// two minutes rather than hanging it.
fn run_chromium(browser: &str, profile: &Path, url: &str, extra: &[&str]) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {browser}: {e}"));
    // Read the pipes on threads so a full pipe cannot block the browser while we wait.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{browser} {extra:?} did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    assert!(
        status.success(),
        "{browser} {extra:?} failed ({status}):\n{stderr}"
    );
    stdout
}

/// The opening tag of the element with `id`.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id:?} in the DOM"));
    let start = dom[..at].rfind('<').expect("tag start");
    let end = at + dom[at..].find('>').expect("tag end");
    &dom[start..=end]
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    &tag[at..at + tag[at..].find('"').expect("attribute end")]
}

/// The text right after the opening tag of `id`, up to the next tag.
fn text<'a>(dom: &'a str, id: &str) -> &'a str {
    let t = tag(dom, id);
    let at = dom.find(t).expect("tag") + t.len();
    &dom[at..at + dom[at..].find('<').expect("text end")]
}

/// The markup of the element with `id`, up to its `</closing>` tag.
fn element<'a>(dom: &'a str, id: &str, closing: &str) -> &'a str {
    let t = tag(dom, id);
    let start = dom.find(t).expect("tag");
    let end = start + dom[start..].find(closing).expect("closing tag");
    &dom[start..end]
}

#[test]
fn html_report_in_headless_chromium() {
    let r = dataset::report();
    let html = report::render(&r, Format::Html);
    let dir = artifacts_dir();
    let page = dir.join("sla-report.html");
    let png = dir.join("sla-report.png");
    std::fs::write(&page, &html).expect("write the report");
    let _ = std::fs::remove_file(&png);
    println!("report: {}", page.display());

    let browser = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("file://{}", page.display());
    let dom = run_chromium(&browser, profile.path(), &url, &["--dump-dom"]);
    std::fs::write(dir.join("sla-report.dom.html"), &dom).expect("write the DOM");
    run_chromium(
        &browser,
        profile.path(),
        &url,
        &[&format!("--screenshot={}", png.display())],
    );
    println!("screenshot: {}", png.display());

    // The page Chromium built is the report.
    assert!(dom.contains("<h1>SLA report: "), "not the report:\n{dom}");
    assert_eq!(text(&dom, "tenant"), "acme");
    assert_eq!(
        attr(tag(&dom, "period"), "data-start"),
        r.period.start.to_string()
    );
    assert_eq!(
        attr(tag(&dom, "availability-attainment"), "data-value"),
        r.availability.attainment.expect("traffic").to_string()
    );
    assert_eq!(
        attr(tag(&dom, "budget-remaining"), "data-value"),
        r.availability.remaining.to_string()
    );
    assert!(
        text(&dom, "budget-remaining").starts_with('-'),
        "exhausted budget shows negative"
    );
    assert_eq!(
        attr(tag(&dom, "latency-attainment"), "data-value"),
        r.latency.attainment.expect("traffic").to_string()
    );
    assert_eq!(
        attr(tag(&dom, "latency-budget-remaining"), "data-value"),
        r.latency.remaining.to_string()
    );
    assert_eq!(text(&dom, "availability-status"), "breached");
    assert_eq!(text(&dom, "latency-status"), "met");
    assert_eq!(
        attr(tag(&dom, "total-requests"), "data-value"),
        r.totals.requests.to_string()
    );
    assert_eq!(
        attr(tag(&dom, "excluded-requests"), "data-value"),
        r.totals.excluded_requests.to_string()
    );

    // Charts: one burn-down point per day, one bar per day with traffic, the objective lines.
    let burndown = element(&dom, "burndown-chart", "</svg>");
    assert_eq!(
        burndown.matches("<circle class=\"point\"").count(),
        r.days.len()
    );
    assert_eq!(burndown.matches("<polyline").count(), 2);
    let last = r.days.last().expect("days");
    assert!(
        burndown.contains(&format!(
            "data-value=\"{}\"",
            last.availability_budget_remaining
        )),
        "the last point is the remaining budget"
    );
    let with_traffic = r.days.iter().filter(|d| d.stats.requests > 0).count();
    for id in ["availability-chart", "latency-chart"] {
        let chart = element(&dom, id, "</svg>");
        assert_eq!(
            chart.matches("<rect class=\"bar").count(),
            with_traffic,
            "{id}"
        );
        assert_eq!(chart.matches("class=\"objective-line\"").count(), 1, "{id}");
    }
    let availability = element(&dom, "availability-chart", "</svg>");
    assert!(
        availability.contains("<rect class=\"bar below\" ")
            && availability.contains("data-date=\"2026-11-17\""),
        "the bad day is below the objective"
    );

    // Tables.
    let routes = element(&dom, "worst-routes", "</table>");
    assert_eq!(routes.matches("<tr>").count(), r.worst_routes.len() + 1);
    let evidence = element(&dom, "evidence", "</table>");
    for e in &r.evidence {
        assert!(
            evidence.contains(&format!("data-trace-id=\"{}\"", e.trace_id)),
            "trace {} missing",
            e.trace_id
        );
    }
    let maintenance = element(&dom, "maintenance", "</table>");
    assert!(maintenance.contains("database upgrade &lt;v15&gt; &amp; reindex"));

    // The hostile route is text, and nothing turned into a script.
    assert!(
        routes.contains("/x/&lt;script&gt;alert(1)&lt;/script&gt;"),
        "hostile route not shown as text:\n{routes}"
    );
    assert!(
        !dom.to_ascii_lowercase().contains("<script"),
        "a script element exists"
    );
    assert!(!html.to_ascii_lowercase().contains("<script"));

    // Self-contained: nothing to fetch.
    for needle in ["src=", "href=", "url(", "@import"] {
        assert!(
            !html.contains(needle),
            "the page references something: {needle}"
        );
    }

    let shot = std::fs::read(&png).expect("screenshot written");
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        shot.len() > 50_000,
        "screenshot suspiciously small: {} bytes",
        shot.len()
    );
}
