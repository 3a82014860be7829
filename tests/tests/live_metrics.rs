//! Every metric name a dashboard or a rule references is one the real agent or collector
//! exports. Starts both (the agent with all probes, exporting to the collector; the collector
//! with remote_write and trace forwarding to a receiver that refuses everything, so that their
//! loss counters exist), makes HTTP traffic of several kinds (ok, 5xx, a WebSocket upgrade, a
//! malformed request), then scrapes both `/metrics` pages the way Prometheus does (OpenMetrics)
//! until every referenced name is there, or a deadline passes.
//!
//! Exported names come from the scrapes only: `# TYPE` lines (with the suffixes each type's
//! samples carry in Prometheus) and sample names. Labelled families appear with their first
//! event, hence the traffic; remote_write's samples are shipped once their minute closed, hence
//! a deadline of two minutes.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::promql;
use tenantscope_tests::{Agent, Collector, http_get, privileged, python_http_server};

/// Tenant traffic and the refusing receiver in one server: GET answers by path (`/fail` 503,
/// `/ws` a WebSocket upgrade held open briefly), POST (remote_write, OTLP/HTTP traces) 400.
const SERVER: &str = r#"
import http.server, socketserver, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/ws":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            time.sleep(0.3)
            self.close_connection = True
            return
        code = 503 if path == "/fail" else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.send_response(400)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"refused")
"#;

/// The collector's remote_write and forward requests carry the agent's own-export marker, so the
/// agent does not trace them (each forwarded span would otherwise make a new one).
fn start_collector(dir: &std::path::Path, receiver: u16) -> Collector {
    Collector::start(
        dir,
        &format!(
            "[ingest]\nslo_refresh_interval = \"1s\"\n\n\
             [remote_write]\nurl = \"http://127.0.0.1:{receiver}/api/v1/write\"\n\
             flush_interval = \"1s\"\ngrace = \"0s\"\n\
             headers = {{ \"x-tenantscope-agent\" = \"collector\" }}\n\n\
             [forward]\nendpoint = \"http://127.0.0.1:{receiver}\"\nprotocol = \"http/protobuf\"\n\
             headers = {{ \"x-tenantscope-agent\" = \"collector\" }}\n"
        ),
    )
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// Metric names as Prometheus stores them, from an OpenMetrics (or classic) exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(ty)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match ty {
                // OpenMetrics names the family without the suffix its samples carry.
                "counter" if !name.ends_with("_total") => &["_total"],
                "info" => &["_info"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn exported_names_from_an_exposition() {
    let text = "# TYPE a counter\na_total 1\n# TYPE b histogram\n# TYPE c info\n\
                c_info{x=\"1\"} 1\n# TYPE d gauge\nd{e=\"{ }\"} 2\n# TYPE f_total counter\n# EOF\n";
    let want: BTreeSet<String> = [
        "a_total", "b_bucket", "b_sum", "b_count", "c_info", "d", "f_total",
    ]
    .map(String::from)
    .into();
    assert_eq!(exported_names(text), want);
}

/// Requests of the kinds the dashboards show: per tenant ok and 5xx, a WebSocket upgrade, and a
/// malformed request (an unpaired message).
fn traffic(port: u16) {
    let get = |path: &str, tenant: &str| {
        tenantscope_tests::http_get_headers(port, path, &[("X-Tenant-ID", tenant)])
            .unwrap_or_else(|| panic!("GET {path}"))
    };
    for _ in 0..10 {
        get("/ok", "acme");
        get("/fail", "acme");
        get("/ok", "globex");
    }
    let mut ws = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    ws.set_read_timeout(Some(Duration::from_secs(5))).ok();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-ID: acme\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("upgrade");
    let mut buf = Vec::new();
    let _ = ws.read_to_end(&mut buf);
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let mut bad = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(5))).ok();
    bad.write_all(b"GET /ok HTTP/1.1\r\nHost 127.0.0.1\r\n\x01\x02 not a header\r\n\r\n")
        .expect("malformed request");
    let _ = bad.read_to_end(&mut Vec::new());
}

#[test]
fn every_metric_a_dashboard_or_rule_references_is_exported() {
    if !privileged("every_metric_a_dashboard_or_rule_references_is_exported") {
        return;
    }
    let referenced = promql::referenced_exported_names();
    assert!(referenced.len() > 20, "{referenced:?}");

    let dir = std::env::temp_dir().join(format!("ts-live-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut server, port) = python_http_server(SERVER);
    let port: u16 = port.trim().parse().expect("the server's port");
    let collector = start_collector(&dir, port);
    let grpc = collector.grpc;
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[[http.tenant.sources]]\nsource = \"header\"\nname = \"X-Tenant-ID\"\n\n\
             [otlp]\nendpoint = \"http://127.0.0.1:{grpc}\"\nmetrics_interval = \"1s\"\n\
             batch_timeout = \"200ms\"\n"
        ),
    )
    .expect("agent config");
    let agent = Agent::start(&["-c", agent_config.to_str().expect("utf-8")]);
    traffic(port);

    let scrape = |p: u16| {
        let (code, body) = http_get(p, "/metrics", Some(OPENMETRICS)).expect("scrape");
        assert_eq!(code, 200, "{body}");
        body
    };
    let deadline = Instant::now() + Duration::from_secs(150);
    let (missing, exported) = loop {
        let exported: BTreeSet<String> = exported_names(&scrape(agent.port))
            .into_iter()
            .chain(exported_names(&scrape(collector.api)))
            .collect();
        let missing: BTreeMap<&String, &Vec<String>> = referenced
            .iter()
            .filter(|(n, _)| !exported.contains(*n))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, exported);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let _ = server.kill();
    let _ = server.wait();
    let report: Vec<String> = missing
        .iter()
        .map(|(n, used)| format!("{n}, used by:\n    {}", used.join("\n    ")))
        .collect();
    assert!(
        missing.is_empty(),
        "referenced but not exported by the agent or the collector:\n{}\n\nexported:\n{}\n\n\
         agent log:\n{}\ncollector log:\n{}",
        report.join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join(" "),
        tail(&agent.log_text()),
        tail(&collector.log_text())
    );
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{} referenced metric names, all exported: {}",
        referenced.len(),
        referenced.keys().cloned().collect::<Vec<_>>().join(" ")
    );
}
