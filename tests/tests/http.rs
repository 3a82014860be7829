//! `http` probe, end to end on loopback: a threaded Python server, a scripted client with five
//! tenants, mixed statuses, keep-alive and fresh connections; exact per-series counts.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use tenantscope_tests::{Agent, Metrics, privileged};

const SERVER: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = int(self.path.split("?")[0].rsplit("/", 1)[1])
        body = b"x" * 10
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

const CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
tenants = ["acme", "globex", "initech", "umbrella", "hooli"]
keep = http.client.HTTPConnection("127.0.0.1", port)
for t in tenants:
    for code in (200, 404, 503):
        # Once over a keep-alive connection, once over a fresh one; query strings must not leak.
        keep.request("GET", f"/status/{code}?secret=hunter2", headers={"X-Tenant-ID": t})
        r = keep.getresponse(); r.read(); assert r.status == code
        fresh = http.client.HTTPConnection("127.0.0.1", port)
        fresh.request("GET", f"/status/{code}", headers={"X-Tenant-ID": t, "Connection": "close"})
        r = fresh.getresponse(); r.read(); assert r.status == code
        fresh.close()
keep.close()
"#;

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
const CODES: [&str; 3] = ["200", "404", "503"];

fn count(m: &Metrics, side: &str, tenant: &str, code: &str) -> f64 {
    m.sum(
        &format!("http_{side}_request_duration_seconds_count"),
        &[
            ("tenant", tenant),
            ("http_response_status_code", code),
            ("http_request_method", "GET"),
            ("http_route", "/status/{id}"),
            ("workload", "python3"),
        ],
    )
}

#[test]
fn http_red_metrics_per_tenant_exact() {
    if !privileged("http_red_metrics_per_tenant_exact") {
        return;
    }
    let agent = Agent::start(&[]);
    let mut server = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("port");
    let port = line.trim().to_owned();
    let status = Command::new("python3")
        .args(["-c", CLIENT, &port])
        .status()
        .expect("client");
    assert!(status.success(), "client: {status}");

    let all_there = |m: &Metrics| {
        TENANTS.iter().all(|t| {
            CODES
                .iter()
                .all(|c| count(m, "server", t, c) >= 2.0 && count(m, "client", t, c) >= 2.0)
        })
    };
    let m = agent.wait_metrics(Duration::from_secs(15), all_there);
    let _ = server.kill();
    let _ = server.wait();
    for side in ["server", "client"] {
        for t in TENANTS {
            for c in CODES {
                assert_eq!(
                    count(&m, side, t, c),
                    2.0,
                    "{side} {t} {c}\n{}",
                    agent.log_text()
                );
            }
        }
    }
    assert!(!m.raw.contains("hunter2"), "a query string was exported");
    // Exemplars carry trace ids (OpenMetrics only).
    let (_, om) = agent
        .get_with("/metrics", Some("application/openmetrics-text"))
        .expect("scrape");
    assert!(
        om.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_bucket")
                && l.contains("# {trace_id=\"")
        ),
        "no exemplar"
    );
}
