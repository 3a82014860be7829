//! Hostile and broken HTTP clients against a real server, with the agent's kernel probes:
//! request lines sent a byte at a time, a request left half-open, oversized and too many
//! headers, a request line longer than the capture window, invalid UTF-8. Every request is
//! either counted in its series or accounted for in a loss counter, and the kernel's own count
//! of requests (the coverage figure's denominator) agrees.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread::sleep,
    time::Duration,
};

use tenantscope_tests::{Agent, Metrics, privileged, python_http_server};

/// Answers every GET with 200; gives up on a connection idle for 2 s (a half-open request).
const SERVER: &str = r#"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"ok")
"#;

const COUNT: &str = "http_server_request_duration_seconds_count";
const WORKLOAD: (&str, &str) = ("workload", "python3");

/// Sends `parts` as separate writes, `pause` apart, then reads the response to its end.
fn send_in_parts(port: u16, parts: &[&[u8]], pause: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            sleep(pause);
        }
        s.write_all(p).expect("write");
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

fn request(path: &[u8], headers: &[u8]) -> Vec<u8> {
    [
        b"GET ".as_slice(),
        path,
        b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
        headers,
        b"\r\n",
    ]
    .concat()
}

fn server_requests(m: &Metrics, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![WORKLOAD];
    labels.extend_from_slice(extra);
    m.sum(COUNT, &labels)
}

fn seen(m: &Metrics, name: &str) -> f64 {
    m.sum(name, &[WORKLOAD, ("side", "server")])
}

#[test]
fn slow_split_and_half_open_requests_are_counted_or_accounted_for() {
    if !privileged("slow_split_and_half_open_requests_are_counted_or_accounted_for") {
        return;
    }
    let agent = Agent::start(&[]);
    let (mut server, port) = python_http_server(SERVER);
    let port: u16 = port.trim().parse().expect("port");

    // A byte at a time (a slowloris-style client): 3 requests.
    let slow = request(b"/slow", b"X-Tenant-ID: slowpoke\r\n");
    let bytes: Vec<&[u8]> = slow.chunks(1).collect();
    for _ in 0..3 {
        let r = send_in_parts(port, &bytes, Duration::from_millis(2));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // The method written on its own, the rest 50 ms later: 2 requests.
    let split = request(b"/split", b"X-Tenant-ID: split\r\n");
    for _ in 0..2 {
        let r = send_in_parts(port, &[&split[..4], &split[4..]], Duration::from_millis(50));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // Half-open: a head never finished; the server gives up after 2 s and closes.
    let r = send_in_parts(
        port,
        &[b"GET /half HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
        Duration::ZERO,
    );
    assert!(r.is_empty(), "no response to a half-open request: {r}");
    // A connection that never sends anything is no HTTP connection.
    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));

    // The in-flight gauge follows at the next read after the server's close.
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        server_requests(m, &[]) >= 5.0
            && seen(m, "tenantscope_agent_http_requests_seen_total") >= 6.0
            && m.sum("http_server_active_requests", &[WORKLOAD]) == 0.0
    });
    let _ = server.kill();
    let _ = server.wait();
    let log = agent.log_text();
    assert_eq!(
        server_requests(&m, &[("tenant", "slowpoke"), ("http_route", "/slow")]),
        3.0,
        "a byte at a time\n{log}"
    );
    assert_eq!(
        server_requests(&m, &[("tenant", "split"), ("http_route", "/split")]),
        2.0,
        "method written alone\n{log}"
    );
    assert_eq!(server_requests(&m, &[]), 5.0, "{log}");
    // The kernel saw 6 requests on 6 connections: the half-open one is the difference.
    assert_eq!(
        seen(&m, "tenantscope_agent_http_requests_seen_total"),
        6.0,
        "{log}"
    );
    assert_eq!(
        seen(&m, "tenantscope_agent_http_connections_seen_total"),
        6.0,
        "{log}"
    );
    assert_eq!(
        m.sum("http_server_active_requests", &[WORKLOAD]),
        0.0,
        "nothing in flight after the half-open request's close"
    );
    assert_eq!(
        m.sum("tenantscope_agent_http_unpaired_requests_total", &[]),
        0.0
    );
    assert_eq!(
        m.sum("tenantscope_agent_ringbuf_dropped_events_total", &[]),
        0.0
    );
}

#[test]
fn oversized_many_and_invalid_utf8_headers_are_counted_or_accounted_for() {
    if !privileged("oversized_many_and_invalid_utf8_headers_are_counted_or_accounted_for") {
        return;
    }
    let agent = Agent::start(&[]);
    let (mut server, port) = python_http_server(SERVER);
    let port: u16 = port.trim().parse().expect("port");
    let send = |req: &[u8]| {
        let r = send_in_parts(port, &[req], Duration::ZERO);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    };
    let junk = format!("X-Junk: {}\r\n", "a".repeat(16 * 1024));
    // A 16 KiB header after the tenant: counted under the tenant.
    send(&request(
        b"/big",
        &[b"X-Tenant-ID: big\r\n".as_slice(), junk.as_bytes()].concat(),
    ));
    // The tenant after 16 KiB: beyond the capture window, so no tenant, but counted.
    send(&request(
        b"/late",
        &[junk.as_bytes(), b"X-Tenant-ID: late\r\n"].concat(),
    ));
    // 93 headers (Python's limit is 100), more than the parser keeps: counted from the first.
    let many: String = (0..90).map(|i| format!("X-{i}: v\r\n")).collect();
    send(&request(
        b"/many",
        &[b"X-Tenant-ID: many\r\n".as_slice(), many.as_bytes()].concat(),
    ));
    // Invalid UTF-8 in the path and in the tenant header.
    send(&request(b"/caf\xff\xfe/x", b"X-Tenant-ID: \xff\xfebad\r\n"));
    // A request line longer than the capture window: unreadable, counted as such.
    let long = format!("/long/{}", "x".repeat(3000));
    send(&request(long.as_bytes(), b""));

    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        server_requests(m, &[]) >= 4.0
            && m.sum("tenantscope_agent_http_unpaired_requests_total", &[]) >= 2.0
            && m.sum("tenantscope_agent_tenant_invalid_total", &[]) >= 2.0
    });
    let _ = server.kill();
    let _ = server.wait();
    let log = agent.log_text();
    let by_route = |route: &str| server_requests(&m, &[("http_route", route)]);
    assert_eq!(
        server_requests(&m, &[("tenant", "big"), ("http_route", "/big")]),
        1.0,
        "{log}"
    );
    assert_eq!(
        server_requests(&m, &[("tenant", "unknown"), ("http_route", "/late")]),
        1.0,
        "{log}"
    );
    assert_eq!(
        server_requests(&m, &[("tenant", "many"), ("http_route", "/many")]),
        1.0,
        "{log}"
    );
    assert_eq!(server_requests(&m, &[]), 4.0, "{log}\n{}", m.raw);
    assert_eq!(
        by_route("/big") + by_route("/late") + by_route("/many"),
        3.0,
        "the invalid UTF-8 path has its own valid label\n{}",
        m.raw
    );
    assert_eq!(
        server_requests(&m, &[("tenant", "invalid")]),
        1.0,
        "an invalid tenant value\n{}",
        m.raw
    );
    // The client (this test process) is traced too: the long request line is unreadable on
    // both sides.
    assert_eq!(
        m.get(
            "tenantscope_agent_http_unpaired_requests_total",
            &[("reason", "bad_request")]
        ),
        Some(2.0),
        "the long request line"
    );
    assert_eq!(
        m.sum("tenantscope_agent_http_unpaired_requests_total", &[]),
        2.0
    );
    assert_eq!(
        m.sum(
            "tenantscope_agent_tenant_invalid_total",
            &[("source", "header")]
        ),
        2.0,
        "the unreadable tenant value, on both sides\n{}",
        m.raw
    );
    assert_eq!(
        seen(&m, "tenantscope_agent_http_requests_seen_total"),
        5.0,
        "{log}"
    );
    // The exposition stays valid whatever the input was.
    tenantscope_tests::assert_promtool_clean(&m.raw);
    assert!(!m.raw.contains("aaaaaaaa"), "header bytes were exported");
}

/// Requests per wave, each with its own tenant and route.
const DISTINCT: u64 = 100_000;

/// Sends requests `from..from + DISTINCT`, request `k` from tenant `t<k>` on route
/// `/r<k>/items`, over 4 keep-alive connections in parallel.
fn distinct_requests(port: u16, from: u64) {
    const CONNECTIONS: u64 = 4;
    std::thread::scope(|s| {
        for c in 0..CONNECTIONS {
            s.spawn(move || {
                let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                conn.set_nodelay(true).expect("nodelay");
                // One fd for both directions, as HTTP clients do.
                let mut reader = std::io::BufReader::new(&conn);
                let mut line = String::new();
                for k in (from + c..from + DISTINCT).step_by(CONNECTIONS as usize) {
                    let request = format!(
                        "GET /r{k:07}/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-ID: t{k:07}\r\n\r\n"
                    );
                    (&conn).write_all(request.as_bytes()).expect("write");
                    // nginx answers `return 200 "ok"` with a Content-Length of 2.
                    let mut length = None;
                    loop {
                        line.clear();
                        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse::<usize>().ok();
                        }
                    }
                    let mut body = vec![0; length.expect("Content-Length")];
                    reader.read_exact(&mut body).expect("body");
                }
            });
        }
    });
}

/// Two waves of 100,000 requests, every one from a distinct tenant on a distinct route (nginx,
/// spans and SLIs exported to a real collector): the agent's label bounds hold exactly,
/// every request is counted in a series or in an overflow or loss counter, and its memory
/// stays under the bound whatever the second wave adds.
#[test]
fn hundred_thousand_tenants_and_routes_stay_within_the_bounds() {
    if !privileged("hundred_thousand_tenants_and_routes_stay_within_the_bounds") {
        return;
    }
    // The agent's memory bound with the default label bounds: the DaemonSet's memory request.
    const RSS_BOUND_MIB: f64 = 128.0;
    const MAX_TENANTS: f64 = 1000.0;
    const MAX_SERIES: f64 = 20_000.0;
    let dir = std::env::temp_dir().join(format!("ts-100k-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).expect("dir");
    let collector = tenantscope_tests::Collector::start(&dir, "");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[otlp]\nendpoint = \"http://127.0.0.1:{}\"\nmetrics_interval = \"2s\"\n",
            collector.grpc
        ),
    )
    .expect("agent config");
    let agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    let (mut nginx, port) = tenantscope_tests::nginx(&dir, "  location / { return 200 \"ok\"; }");

    let seen_total = |m: &Metrics| m.sum("tenantscope_agent_http_requests_seen_total", &[]);
    let counted = |m: &Metrics| {
        m.sum("http_server_request_duration_seconds_count", &[])
            + m.sum("http_client_request_duration_seconds_count", &[])
    };
    let lost = |m: &Metrics| {
        m.sum("tenantscope_agent_http_unpaired_requests_total", &[])
            + m.sum(
                "tenantscope_agent_ringbuf_dropped_events_total",
                &[("probe", "http")],
            )
    };
    let overflow = |m: &Metrics| m.sum("tenantscope_agent_http_series_overflow_total", &[]);
    let accounted = |m: &Metrics| counted(m) + overflow(m) + lost(m);
    let mut rss = Vec::new();
    for wave in 0..2u64 {
        let started = std::time::Instant::now();
        distinct_requests(port, wave * DISTINCT);
        eprintln!("wave {wave}: sent in {:?}", started.elapsed());
        // Both ends are on this node: a server and a client request each.
        let want = 2.0 * ((wave + 1) * DISTINCT) as f64;
        // Settled: every request seen, and each in a series or a counter (client exchanges wait
        // up to `otlp.client_parent_wait` for a parent span before they are recorded).
        let m = agent.wait_metrics(Duration::from_secs(60), |n| {
            (accounted(n) - seen_total(n)).abs() <= 2.0 && seen_total(n) >= want
        });
        let r = tenantscope_tests::vm_rss_mib(agent.pid());
        rss.push(r);
        let tenants = m.get("tenantscope_agent_tenants", &[]).unwrap_or(-1.0);
        let series = m
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_request_duration_seconds_count"))
            .count() as f64;
        let (overflow, lost, seen) = (overflow(&m), lost(&m), seen_total(&m));
        eprintln!(
            "wave {wave}: {} seen, {} counted, {overflow} series overflow, {lost} lost, \
             {tenants} tenants, {series} series, tenant overflow {}, route overflow {}, \
             RSS {r:.1} MiB",
            seen,
            counted(&m),
            m.sum("tenantscope_agent_tenant_overflow_total", &[]),
            m.sum("tenantscope_agent_http_route_overflow_total", &[]),
        );
        assert!(
            seen >= want,
            "the kernel saw every request: {seen} < {want}"
        );
        assert_eq!(tenants, MAX_TENANTS, "tenant labels stop at max_tenants");
        assert!(series <= MAX_SERIES, "{series} series over max_series");
        // Off by at most 2: this test's own scrapes of the agent are traced too (the one being
        // answered is seen but has no response yet), and the kernel's counts are read once a
        // cycle while records are folded as they come.
        let unaccounted = seen - accounted(&m);
        assert!(
            (-2.0..=2.0).contains(&unaccounted),
            "{unaccounted} requests neither counted nor in an overflow or loss counter"
        );
        assert!(
            r <= RSS_BOUND_MIB,
            "wave {wave}: agent RSS {r:.1} MiB over the {RSS_BOUND_MIB} MiB bound"
        );
    }
    assert!(
        rss[1] <= rss[0] * 1.1 + 4.0,
        "memory grows with distinct tenants: {rss:?} MiB"
    );
    let _ = nginx.kill();
    let _ = nginx.wait();
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
