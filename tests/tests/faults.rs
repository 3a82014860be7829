//! Faults, end to end with the real agent (kernel probes, real HTTP traffic on loopback) and the
//! real collector: the collector killed and down for a while, and the agent stopped with
//! SIGTERM. What was sent, acknowledged, stored and dropped is counted on both sides and must
//! add up.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tenantscope_tests::{Agent, Collector, Metrics, http_get, privileged, python_http_server};

const SERVER: &str = r#"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
"#;

/// `n` keep-alive requests from `tenant`.
const CLIENT: &str = r#"
import http.client, sys
port, tenant, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", "/items", headers={"X-Tenant-ID": tenant})
    r = conn.getresponse(); r.read()
conn.close()
"#;

fn requests(port: &str, tenant: &str, n: u64) {
    let status = Command::new("python3")
        .args(["-c", CLIENT, port.trim(), tenant, &n.to_string()])
        .status()
        .expect("client");
    assert!(status.success(), "client: {status}");
}

fn spans(m: &Metrics, outcome: &str) -> f64 {
    m.get("tenantscope_agent_spans_total", &[("outcome", outcome)])
        .unwrap_or(0.0)
}

const DROPS: [&str; 3] = [
    "dropped_queue_full",
    "dropped_retry_full",
    "dropped_export_failed",
];

/// Requests the collector's store holds for `tenant` this month (from the SLA report).
fn stored_requests(c: &Collector, tenant: &str) -> Option<u64> {
    let (code, body) = http_get(
        c.api,
        &format!("/api/v1/tenants/{tenant}/sla?period=current&format=json"),
        None,
    )?;
    if code != 200 {
        return None;
    }
    let r: serde_json::Value = serde_json::from_str(&body).ok()?;
    r["totals"]["requests"].as_u64()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn agent_config(dir: &std::path::Path, collector: &Collector, otlp: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[[http.tenant.sources]]\nsource = \"header\"\nname = \"X-Tenant-ID\"\n\n\
             [otlp]\nendpoint = \"http://127.0.0.1:{}\"\n{otlp}\n",
            collector.grpc
        ),
    )
    .expect("agent config");
    path
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Nothing is waiting in the agent: no spans queued or waiting for a retry, no SLI request
/// waiting for a retry.
fn drained(m: &Metrics) -> bool {
    m.get("tenantscope_agent_span_queue_length", &[]) == Some(0.0)
        && m.get("tenantscope_agent_span_retry_buffer_spans", &[]) == Some(0.0)
        && m.get("tenantscope_agent_sli_export_queue_length", &[]) == Some(0.0)
}

#[test]
fn fault_collector_killed_and_down_agent_keeps_and_delivers() {
    if !privileged("fault_collector_killed_and_down_agent_keeps_and_delivers") {
        return;
    }
    let dir = temp_dir("fault-outage");
    let mut collector = Collector::start(&dir, "");
    let config = agent_config(
        &dir,
        &collector,
        "metrics_interval = \"1s\"\nbatch_timeout = \"200ms\"\ntimeout = \"2s\"\n\
         retry_max_backoff = \"2s\"",
    );
    let agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    let (mut server, port) = python_http_server(SERVER);

    // Before: delivered and stored.
    const BEFORE: u64 = 40;
    requests(&port, "before", BEFORE);
    wait_until(
        "the first requests to be stored",
        Duration::from_secs(30),
        || stored_requests(&collector, "before") == Some(BEFORE),
    );
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        drained(m) && spans(m, "exported") > 0.0
    });
    assert!(drained(&m), "agent still holds data:\n{}", agent.log_text());
    let exported_before = spans(&m, "exported");
    let acknowledged_before = collector
        .metrics()
        .get("tenantscope_collector_otlp_spans_total", &[])
        .expect("collector span counter");
    assert_eq!(
        acknowledged_before, exported_before,
        "spans the agent counts as exported are the spans the collector acknowledged"
    );

    // The collector dies (no flush) and stays down while requests go on.
    collector.kill();
    let down = Instant::now();
    const DURING: u64 = 60;
    requests(&port, "during", DURING);
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        m.get("tenantscope_agent_span_retry_buffer_spans", &[])
            .is_some_and(|v| v > 0.0)
            && m.get("tenantscope_agent_sli_export_queue_length", &[])
                .is_some_and(|v| v > 0.0)
    });
    let waiting = m
        .get("tenantscope_agent_span_retry_buffer_spans", &[])
        .unwrap_or(0.0);
    assert!(
        waiting > 0.0,
        "spans wait for a retry:\n{}",
        agent.log_text()
    );
    // Down for 20 s in all: several SLI intervals and retries at the backoff's ceiling.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(down.elapsed()));
    let m = agent.metrics();
    for outcome in DROPS {
        assert_eq!(spans(&m, outcome), 0.0, "{outcome} during the outage");
    }
    let failed_attempts = m
        .get(
            "tenantscope_agent_sli_exports_total",
            &[("outcome", "failed")],
        )
        .unwrap_or(0.0);
    assert!(
        failed_attempts >= 5.0,
        "SLI exports were attempted and failed"
    );

    // Back, on the same ports and store: everything arrives, nothing twice.
    collector.restart();
    let m = agent.wait_metrics(Duration::from_secs(30), drained);
    assert!(drained(&m), "agent did not deliver:\n{}", agent.log_text());
    wait_until(
        "the outage's requests to be stored",
        Duration::from_secs(30),
        || stored_requests(&collector, "during") == Some(DURING),
    );
    assert_eq!(
        stored_requests(&collector, "before"),
        Some(BEFORE),
        "what was stored before the SIGKILL is still there"
    );
    for outcome in DROPS {
        assert_eq!(spans(&m, outcome), 0.0, "{outcome}");
    }
    let exported = spans(&m, "exported");
    assert!(
        exported > exported_before,
        "the outage's spans were exported"
    );
    let acknowledged_after = collector
        .metrics()
        .get("tenantscope_collector_otlp_spans_total", &[])
        .expect("collector span counter");
    assert_eq!(
        acknowledged_before + acknowledged_after,
        exported,
        "every span exported was acknowledged once (before the kill + after the restart)"
    );
    let _ = server.kill();
    let _ = server.wait();
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fault_sigterm_flushes_pending_spans_and_slis() {
    if !privileged("fault_sigterm_flushes_pending_spans_and_slis") {
        return;
    }
    let dir = temp_dir("fault-sigterm");
    let collector = Collector::start(&dir, "");
    // Nothing would leave before a minute: only the flush at SIGTERM can deliver.
    let config = agent_config(
        &dir,
        &collector,
        "metrics_interval = \"5m\"\nbatch_timeout = \"1m\"\ntimeout = \"5s\"",
    );
    let mut agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    let (mut server, port) = python_http_server(SERVER);
    const N: u64 = 25;
    requests(&port, "flush", N);
    // Both ends are on this node: a server and a client span per request (the client's once
    // its wait for a parent span is over). This test's own scrapes of the agent are traced
    // too (client spans of this process), so at least that many.
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "flush")],
        ) == N as f64
            && m.get("tenantscope_agent_span_queue_length", &[]) >= Some(2.0 * N as f64)
    });
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "flush")]
        ),
        N as f64
    );
    let queued = m
        .get("tenantscope_agent_span_queue_length", &[])
        .unwrap_or(0.0);
    assert!(
        queued >= 2.0 * N as f64,
        "spans wait for their batch: {queued}"
    );
    assert_eq!(
        stored_requests(&collector, "flush").unwrap_or(0),
        0,
        "nothing sent yet"
    );

    let started = Instant::now();
    let status = agent.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status}:\n{}", agent.log_text());
    // The deadline: one `otlp.timeout` per exporter, with slack for the runtime's shutdown.
    assert!(took < Duration::from_secs(12), "stopping took {took:?}");
    assert_eq!(
        stored_requests(&collector, "flush"),
        Some(N),
        "the SLIs were flushed:\n{}",
        agent.log_text()
    );
    let acknowledged = collector
        .metrics()
        .get("tenantscope_collector_otlp_spans_total", &[])
        .expect("collector span counter");
    // The agent's last word on its spans; this test's own requests to the collector's API
    // may have added a span after the scrape above.
    let log = agent.log_text();
    let last = log
        .lines()
        .rfind(|l| l.contains("span export stopped"))
        .expect("the exporter's final line");
    let field = |key: &str| -> f64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {last}"))
    };
    for outcome in DROPS {
        assert_eq!(field(outcome), 0.0, "{last}");
    }
    assert!(field("exported") >= queued, "{last}");
    assert_eq!(
        acknowledged,
        field("exported"),
        "every span flushed at SIGTERM was acknowledged:\n{log}"
    );
    let _ = server.kill();
    let _ = server.wait();
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent stopped three times, by SIGTERM, SIGKILL and SIGTERM, and started again each time:
/// every program and map it held is freed each time (nothing is pinned, so even SIGKILL leaks
/// nothing), each new agent counts its own requests from zero (a counter reset to Prometheus,
/// never a jump), and the collector's store holds every request exactly once.
#[test]
fn fault_agent_restarted_leaks_nothing_and_counts_continue() {
    if !privileged("fault_agent_restarted_leaks_nothing_and_counts_continue") {
        return;
    }
    let dir = temp_dir("fault-restart");
    let collector = Collector::start(&dir, "");
    let config = agent_config(
        &dir,
        &collector,
        "metrics_interval = \"1s\"\nbatch_timeout = \"200ms\"",
    );
    let (mut server, port) = python_http_server(SERVER);
    let count = |m: &Metrics| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "restart")],
        )
    };
    let mut stored = 0;
    for (round, (n, kill)) in [(20u64, false), (30, true), (10, false)]
        .into_iter()
        .enumerate()
    {
        let mut agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
        let (progs, maps) = tenantscope_tests::bpf_objects_of(agent.pid());
        assert!(
            progs.len() >= 9 && maps.len() >= 10,
            "round {round}: the agent's programs {progs:?} and maps {maps:?}"
        );
        requests(&port, "restart", n);
        let m = agent.wait_metrics(Duration::from_secs(20), |m| count(m) >= n as f64);
        assert_eq!(count(&m), n as f64, "round {round}: from zero\n{}", m.raw);
        stored += n;
        // Stored before the stop: what a SIGKILLed agent had not exported yet would be lost.
        wait_until(
            "the round's requests to be stored",
            Duration::from_secs(30),
            || stored_requests(&collector, "restart") == Some(stored),
        );
        if kill {
            let mut child = agent.child.take().expect("running");
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        } else {
            let status = agent.stop();
            assert!(status.success(), "{status}:\n{}", agent.log_text());
        }
        // Freed asynchronously (after an RCU grace period) once the last reference goes.
        wait_until(
            "the agent's programs and maps to be freed",
            Duration::from_secs(10),
            || {
                let (p, m) = tenantscope_tests::bpf_still_loaded(&progs, &maps);
                p.is_empty() && m.is_empty()
            },
        );
    }
    // Every request once: nothing counted twice across the restarts, nothing lost.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stored_requests(&collector, "restart"), Some(stored));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The collector SIGKILLed in the middle of a load of OTLP/HTTP metric exports (4 connections,
/// 80 exports/s of 50 data points): every export it acknowledged is in the store after a
/// restart, nothing is stored that was not sent, and SQLite's integrity check passes.
#[test]
fn fault_collector_sigkilled_under_load_keeps_every_acknowledged_export() {
    const TENANTS: usize = 3;
    let dir = temp_dir("fault-kill-load");
    let mut collector = Collector::start(&dir, "");
    let load = Command::new(env!("CARGO_BIN_EXE_ts-otlp-load"))
        .args(["--endpoint", &format!("127.0.0.1:{}", collector.http)])
        .args(["--signal", "metrics", "--rate", "4000", "--batch", "50"])
        .args(["--seconds", "6", "--connections", "4", "--routes", "4"])
        .args(["--tenants", &TENANTS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ts-otlp-load");
    std::thread::sleep(Duration::from_millis(2500));
    collector.kill();
    let out = load.wait_with_output().expect("ts-otlp-load output");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the load generator's JSON line");
    let field = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    let (acked, sent) = (
        field("described_requests_ok"),
        field("described_requests_sent"),
    );
    assert!(
        field("requests_ok") >= 50 && field("requests_failed") >= 50,
        "the kill must land mid-load: {report}"
    );
    assert_eq!(field("items_rejected"), 0, "{report}");

    // The database as the crash left it (WAL included).
    let check = Command::new("sqlite3")
        .arg(dir.join("collector.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("sqlite3");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    collector.restart();
    let stored: u64 = (0..TENANTS)
        .map(|t| stored_requests(&collector, &format!("tenant-{t:04}")).unwrap_or(0))
        .sum();
    assert!(
        stored >= acked,
        "acknowledged data lost: {stored} requests stored, {acked} acknowledged\n{report}"
    );
    // More than acknowledged only by exports committed whose answer the kill cut off: at most
    // one per connection (a data point describes at most 54 requests).
    let per_export_max = 50 * 54;
    eprintln!("sent {sent}, acknowledged {acked}, stored {stored} (requests described)");
    assert!(
        stored <= sent && stored - acked <= 4 * per_export_max,
        "stored {stored}, acknowledged {acked}, sent {sent}\n{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 100,000 distinct tenants sent straight to the collector (the agents' tenant cap does not
/// protect it from a misconfigured or hostile sender), twice: every data point is accepted and
/// stored, the SLO gauges stop at `ingest.max_slo_tenants` (the rest counted), and the
/// collector's memory stays under its bound and does not grow with the second wave.
#[test]
fn collector_hundred_thousand_tenants_stay_within_the_bounds() {
    // The StatefulSet's memory request; the limit is 1 GiB.
    const RSS_BOUND_MIB: f64 = 128.0;
    const TENANTS: u64 = 100_000;
    let dir = temp_dir("collector-100k");
    let collector = Collector::start(&dir, "");
    let mut rss = Vec::new();
    for wave in 0..2 {
        // Two points (200 and 503) per tenant on one route: 200,000 points, 100,000 rows.
        let out = Command::new(env!("CARGO_BIN_EXE_ts-otlp-load"))
            .args(["--endpoint", &format!("127.0.0.1:{}", collector.http)])
            .args(["--signal", "metrics", "--rate", "20000", "--batch", "1000"])
            .args(["--seconds", "10", "--connections", "2", "--routes", "1"])
            .args(["--tenants", &TENANTS.to_string()])
            .output()
            .expect("ts-otlp-load");
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("the load generator's JSON line");
        let field = |k: &str| {
            report[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {report}"))
        };
        assert_eq!(field("items_ok"), 2 * TENANTS, "{report}");
        assert_eq!(field("items_rejected"), 0, "{report}");
        // The SLO gauges are refreshed by the maintenance pass.
        let m = {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let m = collector.metrics();
                if m.get("tenantscope_collector_slo_tenants_overflow", &[]) > Some(0.0) {
                    break m;
                }
                assert!(
                    Instant::now() < deadline,
                    "no SLO overflow reported:\n{}",
                    m.raw
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        let gauges: std::collections::BTreeSet<&str> = m
            .samples
            .iter()
            .filter(|s| s.name == "tenantscope_collector_slo_attainment_ratio")
            .filter_map(|s| s.labels.get("tenant").map(String::as_str))
            .collect();
        let r = tenantscope_tests::vm_rss_mib(collector.child.id());
        eprintln!(
            "wave {wave}: {} points accepted, {} rows, {} tenants with SLO gauges, overflow {:?}, \
             RSS {r:.1} MiB",
            field("items_ok"),
            m.get("tenantscope_collector_store_rows", &[])
                .unwrap_or(-1.0),
            gauges.len(),
            m.get("tenantscope_collector_slo_tenants_overflow", &[])
        );
        assert!(
            gauges.len() <= 1000,
            "{} tenants with SLO gauges",
            gauges.len()
        );
        assert!(
            m.get("tenantscope_collector_store_rows", &[]) >= Some(TENANTS as f64),
            "every tenant's row is stored"
        );
        assert!(r <= RSS_BOUND_MIB, "wave {wave}: collector RSS {r:.1} MiB");
        rss.push(r);
    }
    assert!(
        rss[1] <= rss[0] * 1.1 + 4.0,
        "memory grows with distinct tenants: {rss:?} MiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
