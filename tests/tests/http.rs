//! `http` probe, end to end on loopback: a threaded Python server, a scripted client with five
//! tenants, mixed statuses, keep-alive and fresh connections; exact per-series counts.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tenantscope_tests::{
    Agent, Metrics, PyReceiver, free_port, http_get, privileged, python_http_server, python_server,
};

const SERVER: &str = r#"
import http.server, socketserver, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if "/slow/" in self.path:
            time.sleep(3)
        code = int(self.path.split("?")[0].rsplit("/", 1)[1])
        body = b"x" * 10
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"#;

const CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
# Three tenants by header, two by Host subdomain; valid, invalid and no traceparent in turn.
tenants = [("acme", "header"), ("globex", "header"), ("initech", "header"),
           ("umbrella", "host"), ("hooli", "host")]
parents = ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
           "00-zzzz-00f067aa0ba902b7-01", None]
keep = http.client.HTTPConnection("127.0.0.1", port)
n = 0
for t, how in tenants:
    for code in (200, 404, 503):
        h = {"X-Tenant-ID": t} if how == "header" else {"Host": f"{t}.platform.example"}
        tp = parents[n % 3]; n += 1
        if tp: h["traceparent"] = tp
        # Once over a keep-alive connection, once over a fresh one; query strings must not leak.
        keep.request("GET", f"/status/{code}?secret=hunter2", headers=h)
        r = keep.getresponse(); r.read(); assert r.status == code
        fresh = http.client.HTTPConnection("127.0.0.1", port)
        fresh.request("GET", f"/status/{code}", headers={**h, "Connection": "close"})
        r = fresh.getresponse(); r.read(); assert r.status == code
        fresh.close()
keep.close()
"#;

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
const CODES: [&str; 3] = ["200", "404", "503"];

fn count(m: &Metrics, side: &str, tenant: &str, code: &str) -> f64 {
    // Server series carry the route as `http_route`; client series as the opt-in
    // `url_template`, beside the required `server_address`.
    let route = if side == "server" {
        "http_route"
    } else {
        "url_template"
    };
    m.sum(
        &format!("http_{side}_request_duration_seconds_count"),
        &[
            ("tenant", tenant),
            ("http_response_status_code", code),
            ("http_request_method", "GET"),
            (route, "/status/{id}"),
            ("workload", "python3"),
        ],
    )
}

#[test]
fn http_red_metrics_per_tenant_exact() {
    if !privileged("http_red_metrics_per_tenant_exact") {
        return;
    }
    let config = std::env::temp_dir().join(format!("ts-http-red-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[http.tenant.sources]]\nsource = \"header\"\nname = \"X-Tenant-ID\"\n\n\
         [[http.tenant.sources]]\nsource = \"host_subdomain\"\ndomains = [\"platform.example\"]\n",
    )
    .expect("config");
    let agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    let (mut server, line) = python_http_server(SERVER);
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
    let _ = std::fs::remove_file(&config);
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
    tenantscope_tests::assert_promtool_clean(&m.raw);
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

/// An OTLP/HTTP receiver that decodes with PyPI `opentelemetry-proto` (independent of the
/// agent's Rust encoder) and prints one JSON line per span.
const RECEIVER: &str = r#"
import http.server, json, sys
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        # Only spans: the agent's SLI metrics go to /v1/metrics on the same endpoint.
        req = ts.ExportTraceServiceRequest.FromString(body if self.path == "/v1/traces" else b"")
        for rs in req.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    attrs = {a.key: a.value.string_value or a.value.int_value
                             or ",".join(v.string_value for v in a.value.array_value.values)
                             for a in sp.attributes}
                    print(json.dumps({"service": res.get("service.name"), "name": sp.name,
                        "kind": sp.kind, "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                        "parent": sp.parent_span_id.hex(), "status": sp.status.code,
                        "tenant": attrs.get("tenant.id"), "path": attrs.get("url.path"),
                        "code": attrs.get("http.response.status_code"),
                        "request_id": attrs.get("http.request.header.x-request-id"),
                        "attrs": sorted(attrs)}), flush=True)
        out = ts.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// Valid, invalid and missing traceparent; tenants by header and by Host subdomain.
const TRACED_CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
def get(path, headers):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", path, headers=headers)
    r = c.getresponse(); r.read(); c.close()
valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
invalid = "ff-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
get("/status/200", {"X-Tenant-ID": "acme", "traceparent": valid, "X-Request-Id": "req-42",
                    "Cookie": "session=hunter2", "Authorization": "Bearer hunter3"})
get("/status/503", {"X-Tenant-ID": "globex", "traceparent": invalid})
get("/status/404", {"Host": "initech.platform.example"})
"#;

const STATUS_UNSET: i64 = 0;
const STATUS_ERROR: i64 = 2;

#[derive(Debug)]
struct Span {
    name: String,
    kind: i64,
    trace_id: String,
    parent: String,
    status: i64,
    tenant: String,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    // The receiver prints flat JSON with string or integer values and no nested quotes.
    let k = format!("\"{key}\": ");
    let rest = &line[line.find(&k).map_or(line.len(), |i| i + k.len())..];
    match rest.strip_prefix('"') {
        Some(s) => &s[..s.find('"').unwrap_or(s.len())],
        None => &rest[..rest.find([',', '}']).unwrap_or(rest.len())],
    }
}

#[test]
fn http_spans_reach_an_otlp_receiver_decoded_independently() {
    if !privileged("http_spans_reach_an_otlp_receiver_decoded_independently") {
        return;
    }
    let receiver = PyReceiver::start(RECEIVER);
    let endpoint = receiver.endpoint.clone();
    let config = std::env::temp_dir().join(format!("ts-http-spans-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[http]\nspan_headers = [\"x-request-id\", \"cookie\", \"authorization\"]\n\n\
         [[http.tenant.sources]]\nsource = \"header\"\nname = \"X-Tenant-ID\"\n\n\
         [[http.tenant.sources]]\nsource = \"host_subdomain\"\ndomains = [\"platform.example\"]\n\n\
         [otlp]\nbatch_timeout = \"100ms\"\n",
    )
    .expect("config");
    let mut agent = Agent::start(&[
        "-c",
        config.to_str().expect("utf-8"),
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let (mut server, line) = python_http_server(SERVER);
    let status = Command::new("python3")
        .args(["-c", TRACED_CLIENT, line.trim()])
        .status()
        .expect("client");
    assert!(status.success());
    // The receiver's own end of the agent's exports is seen by the agent too, and skipped.
    let own = |m: &Metrics| m.sum("tenantscope_agent_http_own_exports_skipped_total", &[]);
    let m = agent.wait_metrics(Duration::from_secs(10), |m| own(m) >= 1.0);
    assert!(
        own(&m) >= 1.0,
        "the agent's exports were not recognised\n{}",
        m.raw
    );
    // SIGTERM flushes pending spans; then the receiver has everything.
    assert!(agent.stop().success(), "{}", agent.log_text());
    let _ = server.kill();
    let _ = server.wait();
    let rest = receiver.finish();
    assert!(
        !rest.contains("/v1/traces"),
        "the agent traced its own exports:\n{rest}"
    );
    let spans: Vec<Span> = rest
        .lines()
        .filter(|l| field(l, "service") == "python3")
        .map(|l| Span {
            name: field(l, "name").to_owned(),
            kind: field(l, "kind").parse().unwrap_or(-1),
            trace_id: field(l, "trace_id").to_owned(),
            parent: field(l, "parent").to_owned(),
            status: field(l, "status").parse().unwrap_or(-1),
            tenant: field(l, "tenant").to_owned(),
        })
        .collect();
    const SERVER_KIND: i64 = 2;
    const CLIENT_KIND: i64 = 3;
    // Server and client are both `python3`: the kind tells their spans apart.
    let of = |t: &str, kind: i64| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.tenant == t && s.kind == kind)
            .collect()
    };
    let (acme, globex, initech) = (
        of("acme", SERVER_KIND),
        of("globex", SERVER_KIND),
        of("initech", SERVER_KIND),
    );
    assert_eq!(
        (acme.len(), globex.len(), initech.len()),
        (1, 1, 1),
        "one server span per request: {spans:#?}\n{rest}"
    );
    // The client propagated the valid traceparent itself: its span joins that trace too.
    let acme_client = of("acme", CLIENT_KIND);
    assert_eq!(acme_client.len(), 1, "{spans:#?}");
    assert_eq!(acme_client[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        of("globex", CLIENT_KIND)[0].status,
        STATUS_ERROR,
        "5xx is an error on client spans"
    );
    assert_eq!(
        of("initech", CLIENT_KIND)[0].status,
        STATUS_ERROR,
        "4xx is an error on client spans"
    );
    // A valid traceparent: the caller's trace, the caller's span as parent.
    assert_eq!(acme[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(acme[0].parent, "00f067aa0ba902b7");
    assert_eq!((acme[0].kind, acme[0].status), (SERVER_KIND, STATUS_UNSET));
    assert_eq!(acme[0].name, "GET /status/{id}");
    // Allowlisted headers only; Cookie and Authorization never, even when listed.
    let acme_line = rest
        .lines()
        .find(|l| field(l, "tenant") == "acme" && field(l, "kind") == "2")
        .expect("acme server span");
    assert_eq!(field(acme_line, "request_id"), "req-42", "{acme_line}");
    assert!(
        !rest.contains("hunter2") && !rest.contains("hunter3"),
        "a cookie or authorization header left the node:\n{rest}"
    );
    // An invalid one (version ff) is ignored: a new root trace, not the invalid id.
    assert_eq!(globex[0].parent, "");
    assert_ne!(globex[0].trace_id, "5bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(globex[0].trace_id.len(), 32);
    assert_eq!(
        globex[0].status, STATUS_ERROR,
        "5xx is an error on server spans"
    );
    // None: a new root; 4xx is not an error on server spans; tenant from the Host subdomain.
    assert_eq!(initech[0].parent, "");
    assert_eq!(initech[0].status, STATUS_UNSET);
    assert_ne!(initech[0].trace_id, globex[0].trace_id);
    let _ = std::fs::remove_file(config);
}

/// nginx (one worker, its own config and prefix in a temp dir) answering by location; the
/// client makes keep-alive and fresh requests for three tenants.
#[test]
fn http_nginx_server_counts_per_tenant_and_status() {
    if !privileged("http_nginx_server_counts_per_tenant_and_status") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-nginx-{}", std::process::id()));
    // Spans go to an independent OTLP receiver, as in the Python-server test.
    let receiver = PyReceiver::start(RECEIVER);
    let endpoint = receiver.endpoint.clone();
    let mut agent = Agent::start(&[
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let (mut nginx, port) = tenantscope_tests::nginx(
        &dir,
        "  location = /api/items/1 { return 200 \"ok\"; }\n\
         location = /api/items/2 { return 404; }\n\
         location = /api/items/3 { return 500; }",
    );
    let client = format!(
        r#"
import http.client, time
for _ in range(50):
    try:
        c = http.client.HTTPConnection("127.0.0.1", {port}); c.connect(); c.close(); break
    except OSError:
        time.sleep(0.1)
keep = http.client.HTTPConnection("127.0.0.1", {port})
for t in ("acme", "globex", "initech"):
    for i, code in ((1, 200), (2, 404), (3, 500)):
        for conn in (keep, None):
            c = conn or http.client.HTTPConnection("127.0.0.1", {port})
            c.request("GET", f"/api/items/{{i}}?token=abc", headers={{"X-Tenant-ID": t}})
            r = c.getresponse(); r.read(); assert r.status == code, (r.status, code)
            if conn is None: c.close()
"#
    );
    let status = Command::new("python3")
        .args(["-c", &client])
        .status()
        .expect("client");
    let count = |m: &Metrics, t: &str, code: &str| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("tenant", t),
                ("http_response_status_code", code),
                ("http_route", "/api/items/{id}"),
                ("workload", "nginx"),
            ],
        )
    };
    let tenants = ["acme", "globex", "initech"];
    let codes = ["200", "404", "500"];
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        tenants
            .iter()
            .all(|t| codes.iter().all(|c| count(m, t, c) >= 2.0))
    });
    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "client: {status}");
    for t in tenants {
        for c in codes {
            // The connectivity probe before the requests is not HTTP: only the 2 requests count.
            assert_eq!(count(&m, t, c), 2.0, "nginx {t} {c}\n{}", agent.log_text());
        }
    }
    assert!(!m.raw.contains("token=abc"), "a query string was exported");
    assert!(agent.stop().success(), "{}", agent.log_text());
    let rest = receiver.finish();
    let nginx: Vec<&str> = rest
        .lines()
        .filter(|l| field(l, "service") == "nginx")
        .collect();
    assert_eq!(nginx.len(), 18, "one server span per request:\n{rest}");
    for l in &nginx {
        assert_eq!(field(l, "name"), "GET /api/items/{id}", "{l}");
        assert_eq!(field(l, "kind"), "2", "server span: {l}");
        let want = if field(l, "code") == "500" { "2" } else { "0" };
        assert_eq!(field(l, "status"), want, "5xx only is an error: {l}");
    }
    assert!(
        !rest.contains("token=abc"),
        "a query string was exported in a span"
    );
}

/// A real Prometheus (apt) with exemplar storage scrapes the agent over OpenMetrics and returns
/// the trace id of a request as the exemplar of its duration bucket.
#[test]
fn http_exemplars_reach_a_real_prometheus() {
    if !privileged("http_exemplars_reach_a_real_prometheus") {
        return;
    }
    let agent = Agent::start(&[]);
    let (mut server, line) = python_http_server(SERVER);
    let status = Command::new("python3")
        .args(["-c", TRACED_CLIENT, line.trim()])
        .status()
        .expect("client");
    assert!(status.success());
    let dir = std::env::temp_dir().join(format!("ts-prom-ex-{}", agent.port));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: agent\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            agent.port
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt) is installed by `cargo xtask setup`");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let path = format!(
        "/api/v1/query_exemplars?query=http_server_request_duration_seconds_bucket%7Btenant%3D%22acme%22%7D&start={}&end={}",
        now - 600,
        now + 600
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        last = http_get(prom_port, &path, None)
            .map(|r| r.1)
            .unwrap_or_default();
        if last.contains("4bf92f3577b34da6a3ce929d0e0e4736") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        last.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "Prometheus has no exemplar with the request's trace id: {last}"
    );
}

/// Requests in flight: two slow requests served at once show as 2 active, then 0.
#[test]
fn http_active_requests_follow_requests_in_flight() {
    if !privileged("http_active_requests_follow_requests_in_flight") {
        return;
    }
    let agent = Agent::start(&[]);
    let (mut server, line) = python_http_server(SERVER);
    let client = format!(
        r#"
import http.client, threading
def get():
    c = http.client.HTTPConnection("127.0.0.1", {port})
    c.request("GET", "/slow/200", headers={{"X-Tenant-ID": "acme"}})
    c.getresponse().read()
ts = [threading.Thread(target=get) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
"#,
        port = line.trim()
    );
    let mut slow = Command::new("python3")
        .args(["-c", &client])
        .spawn()
        .expect("client");
    let active = |m: &Metrics| {
        m.sum(
            "http_server_active_requests",
            &[("workload", "python3"), ("http_request_method", "GET")],
        )
    };
    let during = agent.wait_metrics(Duration::from_secs(3), |m| active(m) >= 2.0);
    assert!(slow.wait().expect("client").success());
    let after = agent.wait_metrics(Duration::from_secs(5), |m| active(m) == 0.0);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        active(&during),
        2.0,
        "two requests in flight\n{}",
        during.raw
    );
    assert_eq!(active(&after), 0.0, "none in flight after the responses");
}

/// A `101` WebSocket upgrade is tracked as a connection (active, then its duration per
/// tenant), not as a request.
#[test]
fn http_websocket_upgrade_is_a_connection_not_a_request() {
    if !privileged("http_websocket_upgrade_is_a_connection_not_a_request") {
        return;
    }
    const WS_SERVER: &str = r#"
import socket, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
def serve(c):
    c.recv(4096)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let agent = Agent::start(&[]);
    let (mut server, line) = python_server(WS_SERVER);
    let client = format!(
        r#"
import socket, time
c = socket.create_connection(("127.0.0.1", {port}))
c.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
assert c.recv(4096).startswith(b"HTTP/1.1 101")
for _ in range(20):
    c.sendall(b"\x81\x02hi"); c.recv(16); time.sleep(0.1)
time.sleep(1.5)
c.close()
"#,
        port = line.trim()
    );
    let mut ws = Command::new("python3")
        .args(["-c", &client])
        .spawn()
        .expect("client");
    let active = |m: &Metrics| {
        m.sum(
            "tenantscope_http_websocket_connections_active",
            &[
                ("side", "server"),
                ("tenant", "acme"),
                ("workload", "python3"),
            ],
        )
    };
    let during = agent.wait_metrics(Duration::from_secs(3), |m| active(m) >= 1.0);
    assert!(ws.wait().expect("client").success());
    let closed = |m: &Metrics| {
        m.sum(
            "tenantscope_http_websocket_connection_duration_seconds_count",
            &[
                ("side", "server"),
                ("tenant", "acme"),
                ("workload", "python3"),
            ],
        )
    };
    let after = agent.wait_metrics(Duration::from_secs(5), |m| closed(m) >= 1.0);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(active(&during), 1.0, "one open WebSocket\n{}", during.raw);
    assert_eq!(active(&after), 0.0);
    assert_eq!(closed(&after), 1.0, "one closed WebSocket");
    let duration = after.sum(
        "tenantscope_http_websocket_connection_duration_seconds_sum",
        &[("side", "server"), ("tenant", "acme")],
    );
    assert!((3.0..30.0).contains(&duration), "lasted ~3.5 s: {duration}");
    // The upgrade and the frames after it are not requests.
    assert_eq!(
        after.sum(
            "http_server_request_duration_seconds_count",
            &[("tenant", "acme"), ("workload", "python3")]
        ),
        0.0
    );
}

/// `Expect: 100-continue`: the interim `100` is not a response; the request counts once, with
/// its final status, timed from its first byte to the final response.
#[test]
fn http_100_continue_counts_the_final_response() {
    if !privileged("http_100_continue_counts_the_final_response") {
        return;
    }
    const CONTINUE_SERVER: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
"#;
    let agent = Agent::start(&[]);
    let (mut server, line) = python_http_server(CONTINUE_SERVER);
    let client = format!(
        r#"
import socket
c = socket.create_connection(("127.0.0.1", {port}))
body = b"x" * 5000
c.sendall(b"POST /uploads/77 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
assert c.recv(4096).startswith(b"HTTP/1.1 100"), "no 100 Continue"
c.sendall(body)
assert c.recv(4096).startswith(b"HTTP/1.1 201")
c.close()
"#,
        port = line.trim()
    );
    let status = Command::new("python3")
        .args(["-c", &client])
        .status()
        .expect("client");
    assert!(status.success());
    let count = |m: &Metrics, code: &str| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[
                ("tenant", "acme"),
                ("workload", "python3"),
                ("http_request_method", "POST"),
                ("http_route", "/uploads/{id}"),
                ("http_response_status_code", code),
            ],
        )
    };
    let m = agent.wait_metrics(Duration::from_secs(10), |m| count(m, "201") >= 1.0);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(count(&m, "201"), 1.0, "the request counts once\n{}", m.raw);
    assert_eq!(
        count(&m, "100"),
        0.0,
        "the interim response is not a response"
    );
}
