//! `http` probe, span parents end to end: real servers that call a backend while serving, under
//! concurrent keep-alive clients with distinct paths, spans decoded by an independent OTLP
//! receiver. A client span may be a root; it must never sit under another request's server
//! span. Each test prints its exact/ambiguous/none/unconfirmed counts.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command},
    time::Duration,
};

use tenantscope_tests::{
    Agent, Metrics, OK_HANDLER, PyReceiver, nginx, privileged, python_http_server, spawn_with_port,
};

/// Concurrent clients, each on its own keep-alive connection.
const CLIENTS: usize = 16;
/// Requests per client, each to a distinct path `/r/<client>/<n>`.
const PER_CLIENT: usize = 40;
const REQUESTS: usize = CLIENTS * PER_CLIENT;

const SERVER_KIND: i64 = 2;
const CLIENT_KIND: i64 = 3;

/// An OTLP/HTTP trace receiver decoding with PyPI `opentelemetry-proto`: one JSON line per
/// span (service, kind, ids, `url.path`, `tenantscope.parent`). Other signals are ignored.
const RECEIVER: &str = r#"
import http.server, json
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            for rs in ts.ExportTraceServiceRequest.FromString(body).resource_spans:
                res = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        a = {x.key: x.value.string_value for x in sp.attributes}
                        print(json.dumps({"service": res.get("service.name"), "kind": sp.kind,
                            "span_id": sp.span_id.hex(), "parent": sp.parent_span_id.hex(),
                            "path": a.get("url.path"), "why": a.get("tenantscope.parent")}),
                            flush=True)
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

/// `clients` threads, each with one keep-alive connection, `per` distinct paths each
/// (`/r/<prefix><client>/<n>`).
const LOAD: &str = r#"
import http.client, sys, threading
port, clients, per, prefix = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
errors = []
def run(c):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(per):
        conn.request("GET", f"/r/{prefix}{c}/{n}")
        r = conn.getresponse(); r.read()
        if r.status != 200: errors.append(r.status)
threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(1 if errors else 0)
"#;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    kind: i64,
    span_id: String,
    parent: String,
    path: String,
    why: String,
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

/// An agent exporting spans to a fresh receiver; `run` makes the traffic. Returns every span,
/// the agent's last metrics and its log (after SIGTERM flushed what waited).
fn traced(name: &str, run: impl FnOnce()) -> (Vec<Span>, Metrics, String) {
    let receiver = PyReceiver::start(RECEIVER);
    let config = std::env::temp_dir().join(format!("ts-{name}-{}.toml", std::process::id()));
    std::fs::write(&config, "[otlp]\nbatch_timeout = \"100ms\"\n").expect("config");
    let mut agent = Agent::start(&[
        "-c",
        config.to_str().expect("utf-8"),
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &receiver.endpoint,
    ]);
    run();
    // Client spans wait for their parent's server exchange at most client_parent_wait (2 s).
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    assert!(agent.stop().success(), "{}", agent.log_text());
    let log = agent.log_text();
    let _ = std::fs::remove_file(&config);
    let text = receiver.finish();
    let spans = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Span {
            service: field(&v, "service").to_owned(),
            kind: v.get("kind").and_then(|k| k.as_i64()).unwrap_or(-1),
            span_id: field(&v, "span_id").to_owned(),
            parent: field(&v, "parent").to_owned(),
            path: field(&v, "path").to_owned(),
            why: field(&v, "why").to_owned(),
        })
        .collect();
    (spans, m, log)
}

/// How `service`'s calls (client spans whose path starts with `calls`) were parented;
/// `own_server(path)` names the path of the server span that is rightly a call's parent.
/// Panics on any wrong parent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdicts {
    servers: usize,
    clients: usize,
    exact: usize,
    ambiguous: usize,
    none: usize,
    unconfirmed: usize,
}

fn judge(
    spans: &[Span],
    service: &str,
    calls: &str,
    own_server: impl Fn(&str) -> String,
) -> Verdicts {
    let servers: HashMap<&str, &Span> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == SERVER_KIND && s.path.starts_with("/r/"))
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let mut v = Verdicts {
        servers: servers.len(),
        ..Verdicts::default()
    };
    // Not the load generator's own requests (python3 too): they are not made while serving.
    for c in spans
        .iter()
        .filter(|s| s.service == service && s.kind == CLIENT_KIND && s.path.starts_with(calls))
    {
        v.clients += 1;
        match c.why.as_str() {
            "exact" => {
                let parent = servers.get(c.parent.as_str()).unwrap_or_else(|| {
                    panic!("{service}: exact client span {c:?} has no server span as parent")
                });
                assert_eq!(
                    parent.path,
                    own_server(&c.path),
                    "{service}: client span {c:?} under another request's server span {parent:?}"
                );
                v.exact += 1;
            }
            why => {
                assert_eq!(
                    c.parent, "",
                    "{service}: a {why:?} client span has a parent: {c:?}"
                );
                match why {
                    "ambiguous" => v.ambiguous += 1,
                    "none" => v.none += 1,
                    "unconfirmed" => v.unconfirmed += 1,
                    other => panic!("{service}: client span {c:?} says {other:?}"),
                }
            }
        }
    }
    eprintln!("{service}: {v:?}");
    v
}

/// The `parent` counts the agent exported for `workload`, as (exact, ambiguous, none,
/// unconfirmed).
fn exported(m: &Metrics, workload: &str) -> (f64, f64, f64, f64) {
    let n = |p: &str| {
        m.sum(
            "tenantscope_agent_client_spans_total",
            &[("parent", p), ("workload", workload)],
        )
    };
    (n("exact"), n("ambiguous"), n("none"), n("unconfirmed"))
}

/// `CLIENTS` concurrent clients, `PER_CLIENT` requests each.
fn load(port: u16) {
    load_with(port, CLIENTS, "");
}

fn load_with(port: u16, clients: usize, prefix: &str) {
    let status = Command::new("python3")
        .args([
            "-c",
            LOAD,
            &port.to_string(),
            &clients.to_string(),
            &PER_CLIENT.to_string(),
            prefix,
        ])
        .status()
        .expect("load client");
    assert!(status.success(), "the load client saw errors");
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A Python thread-per-request service (one thread per connection) that calls the backend
/// for `/b<its path>` on a keep-alive connection of its thread, then answers: every call is
/// made by the thread that read the request, between reading it and answering.
const FRONT_THREADED: &str = r#"
import http.client, threading
backend = int(BACKEND_PORT)
local = threading.local()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection("127.0.0.1", backend)
        local.c.request("GET", "/b" + self.path)
        r = local.c.getresponse(); r.read()
        self.send_response(r.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
"#;

#[test]
fn http_parents_thread_per_request_python_calls_are_exact() {
    if !privileged("http_parents_thread_per_request_python_calls_are_exact") {
        return;
    }
    let (spans, m, _) = traced("parents-python", || {
        let (backend, port) = python_http_server(OK_HANDLER);
        let front = FRONT_THREADED.replace("BACKEND_PORT", port.trim());
        let (front, port) = python_http_server(&front);
        load(port.trim().parse().expect("port"));
        kill(front);
        kill(backend);
    });
    let v = judge(&spans, "python3", "/b/", |c| c["/b".len()..].to_owned());
    assert_eq!(
        (v.servers, v.clients, v.exact),
        (REQUESTS, REQUESTS, REQUESTS),
        "every call under its own server span: {v:?}"
    );
    let (exact, ..) = exported(&m, "python3");
    assert!(
        exact >= REQUESTS as f64,
        "exported exact {exact}\n{}",
        m.raw
    );
}

#[test]
fn http_parents_nginx_reverse_proxy_is_never_wrong() {
    if !privileged("http_parents_nginx_reverse_proxy_is_never_wrong") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-parents-nginx-{}", std::process::id()));
    let (spans, m, _) = traced("parents-nginx", || {
        let (backend, port) = python_http_server(OK_HANDLER);
        let locations = format!(
            "  location / {{ proxy_pass http://127.0.0.1:{}; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }}",
            port.trim()
        );
        let (nginx, port) = nginx(&dir, &locations);
        load(port);
        kill(nginx);
        kill(backend);
    });
    let _ = std::fs::remove_dir_all(&dir);
    // nginx forwards the path as it is.
    let v = judge(&spans, "nginx", "/r/", str::to_owned);
    assert_eq!(
        (v.servers, v.clients),
        (REQUESTS, REQUESTS),
        "every request has its server and its client span: {v:?}"
    );
    assert_eq!(v.unconfirmed, 0, "{v:?}");
    // One worker serves 16 connections at once: it multiplexes, so its calls are roots.
    assert!(v.ambiguous > 0, "{v:?}");
    let (exact, ambiguous, none, _) = exported(&m, "nginx");
    assert_eq!(
        (exact, ambiguous, none),
        (v.exact as f64, v.ambiguous as f64, v.none as f64),
        "the exported counts are the spans'\n{}",
        m.raw
    );
}

/// One reader thread (a selector over every connection) reads each request and hands it to a
/// pool whose workers call the backend and answer on the connection.
const FRONT_POOL: &str = r#"
import concurrent.futures, http.client, selectors, socket, threading
backend = int(BACKEND_PORT)
pool = concurrent.futures.ThreadPoolExecutor(8)
local = threading.local()
sel = selectors.DefaultSelector()
def work(conn, path):
    if not hasattr(local, "c"):
        local.c = http.client.HTTPConnection("127.0.0.1", backend)
    local.c.request("GET", "/b" + path)
    r = local.c.getresponse(); r.read()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sel_lock.acquire(); sel.register(conn, selectors.EVENT_READ); sel_lock.release()
sel_lock = threading.Lock()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select(timeout=0.01):
        s = key.fileobj
        if s is srv:
            c, _ = srv.accept(); sel.register(c, selectors.EVENT_READ)
            continue
        data = s.recv(4096)
        sel_lock.acquire(); sel.unregister(s); sel_lock.release()
        if not data:
            s.close(); continue
        pool.submit(work, s, data.split(b" ")[1].decode())
"#;

#[test]
fn http_parents_pool_calls_on_other_threads_are_roots() {
    if !privileged("http_parents_pool_calls_on_other_threads_are_roots") {
        return;
    }
    let (spans, ..) = traced("parents-pool", || {
        let (backend, port) = python_http_server(OK_HANDLER);
        let front = FRONT_POOL.replace("BACKEND_PORT", port.trim());
        let (front, port) = tenantscope_tests::python_server(&front);
        load(port.trim().parse().expect("port"));
        kill(front);
        kill(backend);
    });
    let v = judge(&spans, "python3", "/b/", |c| c["/b".len()..].to_owned());
    assert_eq!((v.servers, v.clients), (REQUESTS, REQUESTS), "{v:?}");
    assert_eq!(
        v.exact, 0,
        "calls on worker threads have no thread evidence: {v:?}"
    );
}

/// A Go `net/http` service calling the backend through `http.Client` (its keep-alive pool).
const GO_FRONT: &str = r#"package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	backend := os.Args[1]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://127.0.0.1:" + backend + "/b" + r.URL.Path)
		if err != nil {
			w.WriteHeader(502)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, nil)
}
"#;

/// Builds `source` with Debian's Go 1.19 (standard library only, offline, GOPATH mode).
fn go_build(dir: &Path, source: &str, name: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("go dir");
    let main = dir.join("main.go");
    std::fs::write(&main, source).expect("main.go");
    let bin = dir.join(name);
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&main)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .output()
        .expect("go (cargo xtask setup installs golang-go)");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn http_parents_go_calls_are_never_wrong() {
    if !privileged("http_parents_go_calls_are_never_wrong") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-parents-go-{}", std::process::id()));
    let bin = go_build(&dir, GO_FRONT, "ts-go-front");
    let (spans, m, log) = traced("parents-go", || {
        let (backend, port) = python_http_server(OK_HANDLER);
        let mut cmd = Command::new(&bin);
        cmd.arg(port.trim());
        let (front, line) = spawn_with_port(cmd);
        let port = line.trim().parse().expect("port");
        // One client first: the service then reads one request at a time, so only the Go
        // check keeps its calls from thread-based parents; then 16 at once.
        load_with(port, 1, "seq");
        load(port);
        kill(front);
        kill(backend);
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        log.lines()
            .any(|l| l.contains("read a process's runtime") && l.contains("runtime=Go")),
        "the Go executable was not recognised:\n{log}"
    );
    let requests = REQUESTS + PER_CLIENT;
    let v = judge(&spans, "ts-go-front", "/b/", |c| c["/b".len()..].to_owned());
    assert_eq!((v.servers, v.clients), (requests, requests), "{v:?}");
    // Goroutines move between threads: the executable is recognised as Go and no call gets a
    // thread-based parent (a call on a thread serving nothing is `none`, as anywhere).
    assert_eq!(v.exact, 0, "{v:?}");
    assert_eq!(v.ambiguous + v.none, requests, "{v:?}");
    assert!(v.ambiguous > requests / 2, "{v:?}");
    let (exact, ambiguous, none, _) = exported(&m, "ts-go-front");
    assert_eq!(
        (exact, ambiguous, none),
        (0.0, v.ambiguous as f64, v.none as f64),
        "{}",
        m.raw
    );
}
