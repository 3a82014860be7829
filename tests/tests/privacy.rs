//! The privacy defaults, verified on everything the system exports and stores during an end to
//! end run: requests carrying secrets in the query string, cookies, authorization headers and
//! bodies (request and response) go through the real agent (kernel probes), its spans and SLIs
//! go to the real collector, which stores them and forwards the spans to an OTLP/HTTP receiver
//! that keeps the raw bytes. No secret may appear in the agent's metrics (text and OpenMetrics),
//! its log, the collector's metrics, log, database files and reports, or the forwarded spans;
//! a header listed in `http.span_headers` that is not a secret must appear, so the inspection
//! is known to see what was exported.

use std::{path::Path, process::Command, time::Duration};

use tenantscope_tests::{
    Agent, Collector, http_get, privileged, python_http_server, python_server,
};

/// In every secret: one search finds them all.
const MARK: &str = "SECRET7f3a";

const SERVER: &str = r#"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        body = b"RESPBODY-SECRET7f3a"
        self.send_response(200)
        self.send_header("Set-Cookie", "session=SETCOOKIE-SECRET7f3a; HttpOnly")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.answer()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer()
"#;

const CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
headers = {
    "X-Tenant-ID": "privacy",
    "X-Request-ID": "visible-req-42",
    "Cookie": "session=COOKIE-SECRET7f3a",
    "Authorization": "Bearer AUTH-SECRET7f3a",
    "Proxy-Authorization": "Basic PROXY-SECRET7f3a",
}
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(5):
    c.request("GET", f"/orders/{100 + i}?token=QUERY-SECRET7f3a&page=2", headers=headers)
    r = c.getresponse(); r.read(); assert r.status == 200
    c.request("POST", "/orders", body=b'{"card": "BODY-SECRET7f3a"}',
              headers={**headers, "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 200
c.close()
"#;

/// An OTLP/HTTP receiver that appends every request body, raw, to a file.
const RECEIVER: &str = r#"
import http.server, sys
out = open(sys.argv[1], "ab")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        out.write(self.rfile.read(int(self.headers["Content-Length"])))
        out.flush()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

fn bytes_contain(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
fn nothing_secret_is_exported_or_stored() {
    if !privileged("nothing_secret_is_exported_or_stored") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-privacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let forwarded = dir.join("forwarded.bin");
    let (mut receiver, receiver_port) = {
        let script = format!("import sys\nsys.argv = ['r', {:?}]\n{RECEIVER}", forwarded);
        python_server(&script)
    };
    let collector = Collector::start(
        &dir,
        &format!(
            "[forward]\nendpoint = \"http://127.0.0.1:{}\"\nprotocol = \"http/protobuf\"\n",
            receiver_port.trim()
        ),
    );
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[otlp]\nendpoint = \"http://127.0.0.1:{}\"\nmetrics_interval = \"1s\"\n\
             batch_timeout = \"200ms\"\n\n\
             [http]\nspan_headers = [\"authorization\", \"cookie\", \"proxy-authorization\", \
             \"x-request-id\"]\n",
            collector.grpc
        ),
    )
    .expect("agent config");
    let agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    let (mut server, port) = python_http_server(SERVER);
    let status = Command::new("python3")
        .args(["-c", CLIENT, port.trim()])
        .status()
        .expect("client");
    assert!(status.success(), "client: {status}");

    // Everything has gone through: counted, stored, forwarded.
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "privacy")],
        ) >= 10.0
    });
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "privacy")]
        ),
        10.0,
        "{}",
        m.raw
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = http_get(
            collector.api,
            "/api/v1/tenants/privacy/sla?period=current&format=json",
            None,
        );
        let stored = r
            .as_ref()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
            .and_then(|v| v["totals"]["requests"].as_u64());
        if stored == Some(10) && bytes_contain(&file_bytes(&forwarded), "visible-req-42") {
            break r.expect("report").1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not stored or forwarded yet: {stored:?}\n{}",
            collector.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let (_, html) = http_get(
        collector.api,
        "/api/v1/tenants/privacy/sla?period=current&format=html",
        None,
    )
    .expect("HTML report");
    let (_, openmetrics) = agent
        .get_with("/metrics", Some("application/openmetrics-text"))
        .expect("OpenMetrics scrape");
    let collector_metrics = collector.metrics().raw;
    let agent_log = agent.log_text().into_bytes();
    let _ = server.kill();
    let _ = server.wait();
    drop(agent);
    drop(collector);
    let _ = receiver.kill();
    let _ = receiver.wait();

    // The collector is stopped: its database files are complete on disk.
    let mut artifacts: Vec<(String, Vec<u8>)> = vec![
        ("agent /metrics".into(), m.raw.clone().into_bytes()),
        (
            "agent /metrics (OpenMetrics)".into(),
            openmetrics.into_bytes(),
        ),
        ("collector /metrics".into(), collector_metrics.into_bytes()),
        ("SLA report (JSON)".into(), report.into_bytes()),
        ("SLA report (HTML)".into(), html.into_bytes()),
        ("forwarded spans".into(), file_bytes(&forwarded)),
    ];
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // The database and its WAL, the logs (agent and collector), the configurations.
        if entry.path().is_file() && name != "forwarded.bin" {
            artifacts.push((name, file_bytes(&entry.path())));
        }
    }
    artifacts.push(("agent log".into(), agent_log));
    let names: Vec<&str> = artifacts.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().any(|n| n.starts_with("collector.db")),
        "the database was inspected: {names:?}"
    );
    for (name, bytes) in &artifacts {
        eprintln!("inspected {name}: {} bytes", bytes.len());
        assert!(!bytes.is_empty(), "{name} is empty");
        // Configurations name the secret-bearing headers but hold no secret.
        assert!(
            !bytes_contain(bytes, MARK),
            "{name} holds a secret: {}",
            String::from_utf8_lossy(bytes)
                .lines()
                .filter(|l| l.contains(MARK))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Positive controls: the inspection sees what was exported.
    let forwarded = file_bytes(&forwarded);
    for visible in ["visible-req-42", "/orders/{id}", "privacy"] {
        assert!(
            bytes_contain(&forwarded, visible),
            "{visible} not in the forwarded spans"
        );
    }
    assert!(m.raw.contains("http_route=\"/orders/{id}\""), "{}", m.raw);
    assert!(
        !m.raw.contains("page=2") && !bytes_contain(&forwarded, "page=2"),
        "a query string was exported"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
