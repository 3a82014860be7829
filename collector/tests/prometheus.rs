//! remote_write and PromQL report mode against a real Prometheus (Debian's `prometheus`
//! package, installed by `cargo xtask setup`). Each test starts its own Prometheus on a free
//! loopback port with `--web.enable-remote-write-receiver`, and kills it (by pid) when done,
//! also on panic.
//!
//! The dataset is shipped by two collectors (two stores, `collector` label `collector-a` and
//! `collector-b`) with overlapping keys, so the PromQL side has to merge them; the reference is
//! a third store holding both datasets, where the store itself adds them up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantscope_collector::objectives::ObjectivesConfig;
use tenantscope_collector::promql::{PromqlConfig, PromqlSource};
use tenantscope_collector::remote_write::{
    self, LATENCY_BUCKET_METRIC, REQUESTS_METRIC, RemoteWriteConfig, RemoteWriteMetrics,
    SAMPLES_PER_ROW, Shipper,
};
use tenantscope_collector::report::{self, Format};
use tenantscope_collector::sli::{BUCKETS, MINUTE, SliCounts, SliRow, SliSource};
use tenantscope_collector::store::{Batch, Store, StoreOptions};

// ---------------------------------------------------------------------------------------------
// A Prometheus of our own

struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        path.is_file(),
        "Prometheus not found at {}: this test needs a real Prometheus server. Install it with \
         `cargo xtask setup` (Debian package `prometheus`), or point PROMETHEUS_BIN at one.",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn start_prometheus() -> Prometheus {
    let bin = prometheus_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
        _dir: dir,
    };
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "Prometheus exited ({status}) before it was ready:\n{}",
                tail(&p.log)
            );
        }
        if let Ok(r) = client.get(format!("{}/-/ready", p.url)).send()
            && r.status().is_success()
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready after 60s:\n{}",
            tail(&p.log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An instant query: (labels, value) pairs.
fn query(prom: &Prometheus, q: &str, time: i64) -> Vec<(BTreeMap<String, String>, f64)> {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/query", prom.url))
        .form(&[("query", q.to_string()), ("time", time.to_string())])
        .send()
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    assert!(status.is_success(), "query {q}: {status} {body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (labels, v)
        })
        .collect()
}

fn by_label(
    result: &[(BTreeMap<String, String>, f64)],
    keys: &[&str],
) -> BTreeMap<Vec<String>, f64> {
    result
        .iter()
        .map(|(l, v)| {
            (
                keys.iter()
                    .map(|k| l.get(*k).cloned().unwrap_or_default())
                    .collect(),
                *v,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The dataset

const TENANTS: [&str; 2] = ["acme", "globex"];
const SERVICES: [&str; 2] = ["api", "web"];
/// A route with `"` and `\` (escaped in PromQL strings) and an empty one (absent label).
const ROUTES: [&str; 4] = [
    "/posts/{id}",
    "/boards/{board}/threads",
    "/odd \"quoted\" \\ path",
    "",
];
/// Minutes of data; the last one ends 5 minutes before `now` (closed, past the grace).
const MINUTES: i64 = 45;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn first_minute(now: i64) -> i64 {
    now - now.rem_euclid(MINUTE) - (MINUTES + 5) * MINUTE
}

fn counts(k: u64, requests: u64) -> SliCounts {
    let mut c = SliCounts {
        requests,
        errors: (k % 5).min(requests),
        ..Default::default()
    };
    for j in 0..requests {
        c.buckets[((k + j * j) % BUCKETS as u64) as usize] += 1;
    }
    c
}

/// Collector A: both tenants, most keys; collector B: some keys of `acme`, overlapping.
fn datasets(base: i64) -> (Vec<SliRow>, Vec<SliRow>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for m in 0..MINUTES {
        for (ti, tenant) in TENANTS.iter().enumerate() {
            for (si, service) in SERVICES.iter().enumerate() {
                for (ri, route) in ROUTES.iter().enumerate() {
                    let k = (m * 31 + ti as i64 * 7 + si as i64 * 5 + ri as i64 * 3) as u64;
                    let row = |requests| SliRow {
                        tenant: tenant.to_string(),
                        service: service.to_string(),
                        route: route.to_string(),
                        start: base + m * MINUTE,
                        seconds: MINUTE,
                        counts: counts(k, requests),
                    };
                    if !k.is_multiple_of(4) {
                        a.push(row(1 + k * 13 % 97));
                    }
                    if ti == 0 && k.is_multiple_of(3) {
                        b.push(row(1 + k % 11));
                    }
                }
            }
        }
    }
    (a, b)
}

fn store_with(batches: &[&[SliRow]]) -> Arc<Store> {
    let store = Store::open_in_memory(StoreOptions::default()).unwrap();
    for (i, rows) in batches.iter().enumerate() {
        store
            .apply(
                &Batch {
                    digest: [i as u8 + 1; 32],
                    rows: rows.to_vec(),
                    evidence: vec![],
                },
                now(),
            )
            .unwrap();
    }
    Arc::new(store)
}

fn shipper(prom_url: &str, store: &Arc<Store>, collector: &str) -> (Shipper, RemoteWriteMetrics) {
    let metrics = RemoteWriteMetrics::default();
    let cfg = RemoteWriteConfig {
        url: format!("{prom_url}/api/v1/write"),
        collector_id: collector.into(),
        // Small requests: several per flush, so ordering across requests is exercised.
        max_samples_per_request: 500,
        max_retries: 2,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    (
        Shipper::new(cfg, store.clone(), metrics.clone()).unwrap(),
        metrics,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sorted(mut rows: Vec<SliRow>) -> Vec<SliRow> {
    rows.sort_by(|a, b| {
        (&a.tenant, a.start, &a.service, &a.route).cmp(&(&b.tenant, b.start, &b.service, &b.route))
    });
    rows
}

fn promql(prom: &Prometheus) -> PromqlSource {
    PromqlSource::new(&PromqlConfig {
        url: prom.url.clone(),
        ..Default::default()
    })
    .unwrap()
}

/// Starts Prometheus, ships both collectors' datasets; returns the reference store.
fn shipped() -> (Prometheus, Arc<Store>, i64, i64) {
    let prom = start_prometheus();
    let now = now();
    let base = first_minute(now);
    let (a, b) = datasets(base);
    let rt = runtime();
    for (rows, collector) in [(&a, "collector-a"), (&b, "collector-b")] {
        let store = store_with(&[rows]);
        let (mut s, metrics) = shipper(&prom.url, &store, collector);
        let r = rt.block_on(s.ship_once(now)).unwrap();
        assert_eq!(
            r.samples_sent,
            (rows.len() * SAMPLES_PER_ROW) as u64,
            "{collector}"
        );
        assert_eq!(r.samples_dropped, 0);
        assert_eq!(metrics.samples_sent(), r.samples_sent);
        assert!(r.requests > 1, "several requests per flush");
    }
    (prom, store_with(&[&a, &b]), base, now)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn prometheus_holds_exactly_the_shipped_sums() {
    let (prom, reference, base, now) = shipped();
    let rows = reference
        .rows_between(base, base + MINUTES * MINUTE)
        .unwrap();
    let mut requests: BTreeMap<String, f64> = BTreeMap::new();
    let mut errors: BTreeMap<String, f64> = BTreeMap::new();
    let mut buckets: BTreeMap<(String, String), f64> = BTreeMap::new();
    for r in &rows {
        *requests.entry(r.tenant.clone()).or_default() += r.counts.requests as f64;
        *errors.entry(r.tenant.clone()).or_default() += r.counts.errors as f64;
        let mut cum = 0;
        for i in 0..BUCKETS {
            cum += r.counts.buckets[i];
            *buckets
                .entry((r.tenant.clone(), remote_write::le_label(i)))
                .or_default() += cum as f64;
        }
    }
    let got = query(
        &prom,
        &format!("sum by (tenant) (sum_over_time({REQUESTS_METRIC}[1h]))"),
        now,
    );
    let got = by_label(&got, &["tenant"]);
    for t in TENANTS {
        assert_eq!(got[&vec![t.to_string()]], requests[t], "requests of {t}");
    }
    let got = query(
        &prom,
        "sum by (tenant) (sum_over_time(tenantscope_sli_errors_per_minute[1h]))",
        now,
    );
    let got = by_label(&got, &["tenant"]);
    for t in TENANTS {
        assert_eq!(got[&vec![t.to_string()]], errors[t], "errors of {t}");
    }
    let got = query(
        &prom,
        &format!("sum by (tenant, le) (sum_over_time({LATENCY_BUCKET_METRIC}[1h]))"),
        now,
    );
    let got = by_label(&got, &["tenant", "le"]);
    assert_eq!(got.len(), TENANTS.len() * BUCKETS);
    for ((t, le), v) in &buckets {
        assert_eq!(
            got[&vec![t.clone(), le.clone()]],
            *v,
            "bucket le={le} of {t}"
        );
    }
    // One sample per series and minute: nothing doubled.
    let got = query(
        &prom,
        &format!("sum(count_over_time({REQUESTS_METRIC}[1h]))"),
        now,
    );
    let (a, b) = datasets(base);
    assert_eq!(got[0].1, (a.len() + b.len()) as f64);
    // The series work as a histogram.
    let got = query(
        &prom,
        &format!(
            "histogram_quantile(0.9, sum by (le) (sum_over_time({LATENCY_BUCKET_METRIC}{{tenant=\"acme\"}}[1h])))"
        ),
        now,
    );
    assert!(got[0].1.is_finite() && got[0].1 > 0.0, "{got:?}");
}

#[test]
fn promql_source_returns_the_store_rows() {
    let (prom, reference, base, now) = shipped();
    let end = base + MINUTES * MINUTE;
    // PromqlSource is blocking: used here on the test thread, outside any runtime.
    let source = promql(&prom);
    for t in TENANTS {
        let expected = sorted(reference.rows(t, base, end).unwrap());
        assert!(!expected.is_empty());
        assert_eq!(sorted(source.rows(t, base, end).unwrap()), expected, "{t}");
        // Unaligned bounds select by slot start exactly like the store.
        let (from, to) = (base + 7 * MINUTE + 13, base + 31 * MINUTE - 1);
        assert_eq!(
            sorted(source.rows(t, from, to).unwrap()),
            sorted(reference.rows(t, from, to).unwrap()),
            "{t} [{from}, {to})"
        );
        // A whole day back: chunked queries, same rows.
        assert_eq!(
            sorted(source.rows(t, now - 86_400, now).unwrap()),
            sorted(reference.rows(t, now - 86_400, now).unwrap())
        );
    }
    assert!(source.rows("nobody", base, end).unwrap().is_empty());
    assert_eq!(
        source.tenants(base, end).unwrap(),
        reference.tenants(base, end).unwrap()
    );
    assert_eq!(source.tenants(base, end).unwrap(), ["acme", "globex"]);
    // Range edges: the minute before `base` holds nothing, the first minute is found alone.
    assert!(source.tenants(base - 600, base).unwrap().is_empty());
    assert_eq!(
        source.tenants(base, base + MINUTE).unwrap(),
        ["acme", "globex"]
    );
    assert!(source.evidence("acme", base, end, 10).unwrap().is_empty());
}

#[test]
fn sla_report_from_promql_equals_the_store_report() {
    let (prom, reference, _base, now) = shipped();
    let source = promql(&prom);
    let objectives = ObjectivesConfig::default();
    for t in TENANTS {
        for period in ["rolling", "current"] {
            let from_store =
                report::build(reference.as_ref(), &objectives, t, period, now, &mut |_| {})
                    .unwrap();
            let from_promql =
                report::build(&source, &objectives, t, period, now, &mut |_| {}).unwrap();
            // Not trivially equal: the rolling period holds the whole dataset (the current
            // month may have started during it).
            if period == "rolling" {
                let expected: u64 = reference
                    .rows(t, 0, now)
                    .unwrap()
                    .iter()
                    .map(|r| r.counts.requests)
                    .sum();
                assert_eq!(from_store.totals.requests, expected);
                assert!(from_store.totals.errors > 0 && from_store.totals.slow > 0);
            }
            assert_eq!(
                report::render(&from_promql, Format::Json),
                report::render(&from_store, Format::Json),
                "{t} {period}"
            );
        }
    }
}

#[test]
fn the_watermark_survives_restarts_and_outages() {
    let prom = start_prometheus();
    let now = now();
    let base = first_minute(now);
    let (rows, _) = datasets(base);
    let store = store_with(&[&rows]);
    let rt = runtime();
    let earlier = now - 20 * MINUTE;

    // First flush, as of 20 minutes ago: only the minutes closed then.
    let (mut s, _) = shipper(&prom.url, &store, "collector-a");
    let first = rt.block_on(s.ship_once(earlier)).unwrap();
    assert!(first.samples_sent > 0);
    let w1 = first.watermark;
    assert_eq!(rt.block_on(s.watermark()).unwrap(), Some(w1));
    drop(s);

    // A restarted shipper on the same store, same time: nothing to send.
    let (mut s, metrics) = shipper(&prom.url, &store, "collector-a");
    let again = rt.block_on(s.ship_once(earlier)).unwrap();
    assert_eq!((again.requests, again.samples_sent), (0, 0));
    assert_eq!(metrics.requests(remote_write::outcome::SUCCESS), 0);

    // Now: the rest, from the watermark on.
    let rest = rt.block_on(s.ship_once(now)).unwrap();
    let expected_rest = rows.iter().filter(|r| r.start >= w1).count() * SAMPLES_PER_ROW;
    assert_eq!(rest.samples_sent, expected_rest as u64);
    assert_eq!(
        first.samples_sent + rest.samples_sent,
        (rows.len() * SAMPLES_PER_ROW) as u64
    );
    let w2 = rest.watermark;
    assert!(w2 > w1);
    drop(s);

    // Restarted again: nothing new, and Prometheus has each minute exactly once.
    let (mut s, _) = shipper(&prom.url, &store, "collector-a");
    assert_eq!(rt.block_on(s.ship_once(now)).unwrap().samples_sent, 0);
    let got = query(
        &prom,
        &format!("sum(count_over_time({REQUESTS_METRIC}[1h]))"),
        now,
    );
    assert_eq!(got[0].1, rows.len() as f64);

    // The endpoint goes away; a new minute is waiting.
    let url = prom.url.clone();
    drop(prom);
    store
        .apply(
            &Batch {
                digest: [99; 32],
                rows: vec![SliRow {
                    tenant: "acme".into(),
                    service: "api".into(),
                    route: "/late".into(),
                    start: w2,
                    seconds: MINUTE,
                    counts: counts(1, 3),
                }],
                evidence: vec![],
            },
            now,
        )
        .unwrap();
    let (mut s, metrics) = shipper(&url, &store, "collector-a");
    let err = rt.block_on(s.ship_once(w2 + 300)).unwrap_err();
    assert!(format!("{err:#}").contains("after 3 attempts"), "{err:#}");
    assert_eq!(metrics.requests(remote_write::outcome::RETRYABLE), 3);
    assert_eq!(metrics.samples_sent(), 0);
    assert_eq!(rt.block_on(s.watermark()).unwrap(), Some(w2));
}
