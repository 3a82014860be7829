//! Writes the seed corpora under `fuzz/corpus/<target>/` (committed; rerun after changing an
//! input format in `src/lib.rs`): `cargo run --example make_seeds` from `fuzz/`.
//!
//! Seeds are realistic inputs: requests and responses as curl, browsers, Go and Python clients,
//! nginx and common frameworks send them; ring-buffer records laid out as the kernel writes
//! them (`HttpEvent`, `TcpEvent`, `ProcessEvent`) and recordings written by the agent's own
//! `replay::Recorder`; OTLP exports encoded by the agent's own SLI exporter and by hand like
//! OpenTelemetry SDKs send them; the config files shipped in the repository and the TOML
//! snippets of its docs.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use flate2::{Compression as Level, write::GzEncoder};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prost::Message as _;
use tenantscope_agent::aggregate::http::{Label, RedLabels};
use tenantscope_agent::replay::Recorder;
use tenantscope_agent::sli_export::{SliAccumulator, encode_request};
use tenantscope_agent::spans::ResourceBase;
use tenantscope_agent_common::EventHeader;
use tenantscope_agent_common::http::{
    EXCHANGE_KIND, HEADER_BYTES, HttpEvent, PARENT_ONE, ROLE_CLIENT, ROLE_SERVER,
    UPGRADED_CLOSE_KIND,
};
use tenantscope_agent_common::process::{EXEC_KIND, EXIT_KIND, FORK_KIND, ProcessEvent};
use tenantscope_agent_common::tcp::{
    AF_INET, AF_INET6, CLOSE_KIND, FLAG_ACTIVE, FLAG_ESTABLISHED, FLAG_FIN_RX, FLAG_RESET_RX,
    LISTEN_KIND, TcpEvent,
};
use tenantscope_fuzz::otlp_request::{self, Auth, BodyEncoding, Compression, Signal};
use tenantscope_fuzz::records::{self, Op};
use tenantscope_fuzz::request_fields::{self, Fields};

// ---- requests and responses, as clients and servers send them ----

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const CURL_GET: &[u8] = b"GET /api/v1/items/42?expand=reviews HTTP/1.1\r\nHost: shop.platform.example\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nX-Tenant-ID: acme\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n\r\n";
const CHROME_GET: &[u8] = b"GET /dashboard/0c6b3c6e-6a4f-4bb4-9c1a-7f2d3e4c5b6a HTTP/1.1\r\nHost: acme.platform.example:8080\r\nConnection: keep-alive\r\nsec-ch-ua: \"Chromium\";v=\"156\", \"Not)A;Brand\";v=\"8\"\r\nsec-ch-ua-mobile: ?0\r\nsec-ch-ua-platform: \"Linux\"\r\nUpgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: navigate\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-GB,en;q=0.9\r\nCookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\nIf-None-Match: \"5f3c-1a2b\"\r\n\r\n";
const GO_POST: &[u8] = b"POST /api/v1/orders HTTP/1.1\r\nHost: orders.svc.cluster.local\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 27\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJl\r\nBaggage: tenant.id=acme,user.tier=gold;ttl=60\r\nContent-Type: application/json\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Request-Id: 7d3c2a9e-54b1-4c1b-9f3e-2b8b7c1d0e6f\r\nAccept-Encoding: gzip\r\n\r\n{\"item\":42,\"quantity\":3}\r\n";
const PYTHON_PUT: &[u8] = b"PUT /api/v2/tenants/Globex/settings HTTP/1.1\r\nHost: api.platform.example\r\nUser-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nContent-Length: 15\r\nContent-Type: application/json\r\n\r\n{\"plan\":\"gold\"}";
const EXPECT_POST: &[u8] = b"POST /upload/blobs HTTP/1.1\r\nHost: storage.platform.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Tenant-ID: initech\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n";
const CHUNKED_POST: &[u8] = b"POST /ingest HTTP/1.1\r\nHost: 10.0.3.7:8080\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
const WS_UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: ws.platform.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://acme.platform.example\r\nX-Tenant-ID: acme\r\n\r\n";
const PROXY_GET: &[u8] = b"GET http://user:secret@Backend.Example:8080/v1/things:batchGet?key=abc HTTP/1.1\r\nHost: backend.example:8080\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n";
const CONNECT: &[u8] = b"CONNECT registry.example:443 HTTP/1.1\r\nHost: registry.example:443\r\nUser-Agent: Go-http-client/1.1\r\n\r\n";
const HTTP10: &[u8] =
    b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\nHost: [2001:db8::1]:8080\r\n\r\n";
const OPTIONS_STAR: &[u8] = b"OPTIONS * HTTP/1.1\r\nHost: shop.platform.example\r\n\r\n";
const BAD_PATH: &[u8] = b"GET /wiki/caf\xe9/\xff\xfe?q=1 HTTP/1.1\r\nHost: wiki.example\r\nX-Tenant-ID: ac\x00me\r\nX-Note: a\rb\r\n\r\n";
const LOWER_METHOD: &[u8] = b"get / HTTP/1.1\r\nHost: x\r\n\r\n";
const DUP_HEADERS: &[u8] = b"GET /t/acme/posts/7 HTTP/1.1\r\nHost: a.platform.example\r\nHost: b.platform.example\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: a=1\r\ntracestate: b=2\r\nbaggage: k1=v1\r\nbaggage: tenant.id=globex\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";

const OK_JSON: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 01 Nov 2026 00:30:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 48\r\nConnection: keep-alive\r\n\r\n{\"id\":42,\"name\":\"widget\",\"reviews\":[]}";
const NOT_MODIFIED: &[u8] = b"HTTP/1.1 304 Not Modified\r\nServer: nginx/1.22.1\r\nDate: Sun, 01 Nov 2026 00:30:00 GMT\r\nLast-Modified: Sat, 31 Oct 2026 12:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"5f3c-1a2b\"\r\n\r\n";
const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nLocation: /api/v1/orders/9001\r\nContent-Length: 12\r\n\r\n{\"id\":9001}\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\nContent-Length: 153\r\n\r\n<html>";
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\nContent-Length: 157\r\nConnection: close\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
const CONTINUE_THEN_OK: &[u8] =
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
const HTTP10_OK: &[u8] =
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
const CUT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Ty";
const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\n\r\n";
const TLS_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x1e\x44\x00\x9b";

fn many_headers_response() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..70 {
        r.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// A request cut by the kernel's 1024-byte capture window.
fn cut_request() -> Vec<u8> {
    let mut r = b"GET /search?q=".to_vec();
    r.extend(std::iter::repeat_n(b'a', 300));
    r.extend_from_slice(b" HTTP/1.1\r\nHost: search.platform.example\r\nX-Tenant-ID: umbrella\r\n");
    while r.len() < 1024 {
        r.extend_from_slice(b"X-Padding: 0123456789abcdef0123456789abcdef\r\n");
    }
    r.truncate(1024);
    r
}

// ---- kernel records ----

fn struct_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: the event types are plain repr(C) data without padding (asserted in agent-common).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[allow(clippy::too_many_arguments)]
fn http_record(
    kind: u32,
    role: u8,
    conn: u64,
    tgid: u32,
    tid: u32,
    ts: u64,
    req: &[u8],
    resp: &[u8],
) -> Vec<u8> {
    // SAFETY: all-zero is a valid HttpEvent (plain integers and arrays).
    let mut ev: HttpEvent = unsafe { std::mem::zeroed() };
    ev.header.kind = kind;
    ev.header.ts_ns = ts + 750_000;
    ev.conn_id = conn;
    ev.req_ts_ns = ts;
    ev.tgid = tgid;
    ev.tid = tid;
    ev.fd = 7;
    ev.role = role;
    ev.req_len = req.len() as u16;
    ev.resp_len = resp.len() as u16;
    if role == ROLE_CLIENT {
        // Made while serving the request of the connection before, read a millisecond earlier.
        ev.parent = PARENT_ONE;
        ev.parent_conn = conn.saturating_sub(1);
        ev.parent_ts = ts.saturating_sub(1_000_000);
    }
    let header = struct_bytes(&ev);
    [&header[..HEADER_BYTES], req, resp].concat()
}

fn server(conn: u64, ts: u64, req: &[u8], resp: &[u8]) -> Vec<u8> {
    http_record(EXCHANGE_KIND, ROLE_SERVER, conn, 4242, 4242, ts, req, resp)
}

fn mapped(v4: Ipv4Addr) -> [u8; 16] {
    v4.to_ipv6_mapped().octets()
}

fn tcp_close(v6: bool) -> Vec<u8> {
    let mut ev = TcpEvent::ZERO;
    ev.header = EventHeader {
        kind: CLOSE_KIND,
        _pad: 0,
        ts_ns: 5_000_000_000,
    };
    ev.tgid = 4242;
    ev.peer_tgid = 0;
    ev.flags = FLAG_ACTIVE | FLAG_ESTABLISHED | FLAG_FIN_RX | FLAG_RESET_RX;
    ev.netns = 4026531840;
    ev.family = if v6 { AF_INET6 } else { AF_INET };
    ev.lport = 40512;
    ev.rport = 5432;
    ev.srtt_us = 8 * 180;
    ev.total_retrans = 2;
    ev.start_ns = 1_000_000_000;
    ev.established_ns = 1_000_450_000;
    ev.bytes_sent = 18_230;
    ev.bytes_retrans = 1_448;
    ev.bytes_received = 96_001;
    if v6 {
        ev.laddr = "fd00::a".parse::<std::net::Ipv6Addr>().unwrap().octets();
        ev.raddr = "fd00::2:5".parse::<std::net::Ipv6Addr>().unwrap().octets();
    } else {
        ev.laddr = mapped(Ipv4Addr::new(10, 0, 0, 10));
        ev.raddr = mapped(Ipv4Addr::new(10, 0, 2, 5));
    }
    struct_bytes(&ev)
}

fn tcp_listen() -> Vec<u8> {
    let mut ev = TcpEvent::ZERO;
    ev.header.kind = LISTEN_KIND;
    ev.header.ts_ns = 3_000_000_000;
    ev.tgid = 812;
    ev.netns = 4026531840;
    ev.family = AF_INET;
    ev.lport = 8080;
    ev.laddr = mapped(Ipv4Addr::UNSPECIFIED);
    struct_bytes(&ev)
}

fn tcp_failed_connect() -> Vec<u8> {
    let mut ev = TcpEvent::ZERO;
    ev.header.kind = CLOSE_KIND;
    ev.header.ts_ns = 2_000_000_000;
    ev.tgid = 4242;
    ev.flags = FLAG_ACTIVE;
    ev.sk_err = 111; // ECONNREFUSED
    ev.family = AF_INET;
    ev.lport = 51000;
    ev.rport = 6379;
    ev.start_ns = 1_999_000_000;
    ev.laddr = mapped(Ipv4Addr::LOCALHOST);
    ev.raddr = mapped(Ipv4Addr::LOCALHOST);
    struct_bytes(&ev)
}

fn process(kind: u32, tgid: u32, ppid: u32, comm: &[u8]) -> Vec<u8> {
    let mut c = [0u8; 16];
    c[..comm.len()].copy_from_slice(comm);
    struct_bytes(&ProcessEvent {
        header: EventHeader {
            kind,
            _pad: 0,
            ts_ns: 1_500_000_000,
        },
        tgid,
        ppid,
        cgroup_id: 8_123,
        comm: c,
    })
}

// ---- OTLP ----

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// 2026-11-01T00:00:00Z; the fuzz target's fixed clock is an hour later.
const T0: u64 = 1_793_491_200;
const BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// What the agent itself exports: an SLI interval of a few tenants and routes, encoded by its
/// own `sli_export::encode_request`.
fn agent_sli_export() -> ExportMetricsServiceRequest {
    let start = UNIX_EPOCH + Duration::from_secs(T0 + 1800);
    let mut acc = SliAccumulator::new(start);
    let label = |v: &str| Label(Arc::from(v));
    for (i, (method, status, route, tenant, workload)) in [
        (
            "GET",
            200,
            "/api/v1/items/{id}",
            "acme",
            "containerd/3f2a9c1b7d4e",
        ),
        (
            "GET",
            200,
            "/api/v1/items/{id}",
            "globex",
            "containerd/3f2a9c1b7d4e",
        ),
        (
            "POST",
            201,
            "/api/v1/orders",
            "acme",
            "containerd/3f2a9c1b7d4e",
        ),
        (
            "GET",
            503,
            "/api/v1/items/{id}",
            "acme",
            "containerd/3f2a9c1b7d4e",
        ),
        ("GET", 200, "/", "unknown", "nginx"),
        ("DELETE", 404, "_other", "invalid", "nginx"),
    ]
    .into_iter()
    .enumerate()
    {
        let labels = RedLabels {
            http_request_method: method,
            http_response_status_code: status,
            http_route: label(route),
            tenant: label(tenant),
            url_scheme: "http",
            workload: label(workload),
        };
        for k in 0..=i {
            acc.record(&labels, 0.002 * (k as f64 + 1.0) * (i as f64 + 1.0));
        }
    }
    let interval = acc.take(start + Duration::from_secs(10));
    encode_request(
        &interval,
        &ResourceBase::new(Some("node-1"), Some("node-1")),
    )
    .expect("requests were recorded")
    .0
}

fn hist_point(
    tenant: &str,
    route: &str,
    status: i64,
    counts: [u64; 15],
    end_s: u64,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("http.response.status_code", Value::IntValue(status)),
            kv("http.route", s(route)),
            kv("tenant.id", s(tenant)),
        ],
        start_time_unix_nano: (end_s - 60) * 1_000_000_000,
        time_unix_nano: end_s * 1_000_000_000,
        count: counts.iter().sum(),
        sum: Some(1.25),
        bucket_counts: counts.to_vec(),
        explicit_bounds: BOUNDS.to_vec(),
        ..Default::default()
    }
}

fn metrics_request(
    service: &str,
    unit: &str,
    temporality: AggregationTemporality,
    points: Vec<HistogramDataPoint>,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
                    kv("telemetry.sdk.name", s("opentelemetry")),
                    kv("telemetry.sdk.language", s("go")),
                    kv("tenant.id", s("acme")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "http.server.request.duration".into(),
                        unit: unit.into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: points,
                            aggregation_temporality: temporality as i32,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "http.server.active_requests".into(),
                        unit: "{request}".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: (T0 + 1800) * 1_000_000_000,
                                value: Some(number_data_point::Value::AsInt(3)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span(tenant: &str, status: i64, ms: u64, kind: SpanKind, trace: u8, error: bool) -> Span {
    let end = (T0 + 1800) * 1_000_000_000;
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace.wrapping_add(1); 8],
        name: "GET /api/v1/items/{id}".into(),
        kind: kind as i32,
        start_time_unix_nano: end - ms * 1_000_000,
        end_time_unix_nano: end,
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("http.response.status_code", Value::IntValue(status)),
            kv("http.route", s("/api/v1/items/{id}")),
            kv("tenant.id", s(tenant)),
        ],
        status: error.then(|| Status {
            code: StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn traces_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("shop")),
                    kv("k8s.namespace.name", s("acme")),
                    kv("tenant.id", s("acme")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Level::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

// ---- output ----

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        assert!(bytes.len() < 50 * 1024, "{name}: seeds stay under 50 KiB");
        std::fs::write(self.dir.join(name), bytes).unwrap();
    }
}

fn recording(path: &Path, records: &[Vec<u8>]) -> Vec<u8> {
    let mut rec = Recorder::create(path, records.len() as u64 + 1).unwrap();
    for r in records {
        rec.record(r);
    }
    drop(rec);
    std::fs::read(path).unwrap()
}

fn event_decode(root: &Path) {
    let c = Corpus::new(root, "agent_event_decode");
    let tmp = std::env::temp_dir().join(format!("ts-seed-{}.rec", std::process::id()));
    let ms = 1_000_000u64;
    let put_rec = |name: &str, records: &[Vec<u8>]| c.put(name, &recording(&tmp, records));
    put_rec(
        "recording-get-200",
        &[server(1, 10 * ms, CURL_GET, OK_JSON)],
    );
    put_rec(
        "recording-keep-alive",
        &[
            server(1, 10 * ms, CHROME_GET, NOT_MODIFIED),
            server(1, 20 * ms, CURL_GET, NOT_FOUND),
            server(1, 30 * ms, GO_POST, CREATED),
            server(1, 40 * ms, PYTHON_PUT, BAD_GATEWAY),
        ],
    );
    let pipelined = [CURL_GET, OPTIONS_STAR, HTTP10].concat();
    put_rec(
        "recording-pipelined",
        &[
            server(2, 10 * ms, &pipelined, OK_JSON),
            server(2, 11 * ms, b"", NO_CONTENT),
            server(2, 12 * ms, b"", HTTP10_OK),
        ],
    );
    put_rec(
        "recording-100-continue",
        &[
            server(3, 10 * ms, EXPECT_POST, CONTINUE),
            server(3, 20 * ms, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", CREATED),
        ],
    );
    put_rec(
        "recording-websocket",
        &[
            server(4, 10 * ms, WS_UPGRADE, SWITCHING),
            http_record(
                UPGRADED_CLOSE_KIND,
                ROLE_SERVER,
                4,
                4242,
                4242,
                9_000 * ms,
                b"",
                b"",
            ),
        ],
    );
    put_rec(
        "recording-server-then-client",
        &[
            server(5, 10 * ms, CURL_GET, OK_JSON),
            http_record(
                EXCHANGE_KIND,
                ROLE_CLIENT,
                6,
                4242,
                4242,
                11 * ms,
                GO_POST,
                CREATED,
            ),
            http_record(
                EXCHANGE_KIND,
                ROLE_CLIENT,
                7,
                4242,
                4243,
                12 * ms,
                PROXY_GET,
                NOT_FOUND,
            ),
        ],
    );
    put_rec(
        "recording-every-probe",
        &[
            process(FORK_KIND, 4242, 1, b""),
            process(EXEC_KIND, 4242, 0, b"nginx"),
            tcp_listen(),
            server(8, 10 * ms, CHROME_GET, NOT_MODIFIED),
            tcp_close(false),
            tcp_close(true),
            tcp_failed_connect(),
            process(EXIT_KIND, 4242, 0, b""),
            b"\x20\x00\x00\x00short".to_vec(),
        ],
    );
    put_rec(
        "recording-hostile-http",
        &[
            server(9, 10 * ms, BAD_PATH, CUT_RESPONSE),
            server(9, 20 * ms, &cut_request(), &many_headers_response()),
            server(9, 30 * ms, DUP_HEADERS, CONTINUE_THEN_OK),
            server(9, 40 * ms, TLS_HELLO, TLS_HELLO),
            server(9, 50 * ms, CHUNKED_POST, OK_JSON),
            server(9, 60 * ms, LOWER_METHOD, NO_CONTENT),
            server(
                10,
                70 * ms,
                CONNECT,
                b"HTTP/1.1 200 Connection established\r\n\r\n",
            ),
        ],
    );
    let _ = std::fs::remove_file(&tmp);

    c.put("raw-http-exchange", &server(1, 10 * ms, CURL_GET, OK_JSON));
    c.put(
        "raw-http-client-exchange",
        &http_record(
            EXCHANGE_KIND,
            ROLE_CLIENT,
            6,
            17,
            18,
            11 * ms,
            GO_POST,
            CREATED,
        ),
    );
    c.put(
        "raw-http-upgraded-close",
        &http_record(
            UPGRADED_CLOSE_KIND,
            ROLE_SERVER,
            4,
            4242,
            4242,
            9_000 * ms,
            b"",
            b"",
        ),
    );
    c.put("raw-tcp-close-v4", &tcp_close(false));
    c.put("raw-tcp-close-v6", &tcp_close(true));
    c.put("raw-tcp-listen", &tcp_listen());
    c.put("raw-tcp-failed-connect", &tcp_failed_connect());
    c.put("raw-process-fork", &process(FORK_KIND, 4243, 4242, b""));
    c.put(
        "raw-process-exec",
        &process(EXEC_KIND, 4243, 0, b"python3.11"),
    );
    c.put(
        "raw-process-exec-control-chars",
        &process(EXEC_KIND, 4243, 0, b"a\x1b[31mb\xff"),
    );
    c.put("raw-process-exit", &process(EXIT_KIND, 4243, 0, b""));
    // The kernel's full windows: 1024 request bytes, 256 response bytes.
    let full_resp = &many_headers_response()[..256];
    c.put(
        "raw-http-full-windows",
        &server(1, 10 * ms, &cut_request(), full_resp),
    );
    c.put(
        "raw-http-second-pipelined-response",
        &server(2, 11 * ms, b"", NO_CONTENT),
    );
    c.put(
        "raw-http-unknown-role",
        &http_record(EXCHANGE_KIND, 9, 1, 1, 1, ms, CURL_GET, OK_JSON),
    );
    let mut unlisten = tcp_listen();
    unlisten[..4].copy_from_slice(&tenantscope_agent_common::tcp::UNLISTEN_KIND.to_ne_bytes());
    c.put("raw-tcp-unlisten", &unlisten);
    c.put("recording-empty", &recording(&tmp, &[]));
    let interleaved: Vec<Vec<u8>> = (0..12u64)
        .map(|i| match i % 4 {
            0 => server(i % 3, i * ms, CURL_GET, OK_JSON),
            1 => server(i % 3, i * ms, GO_POST, CREATED),
            2 => http_record(
                EXCHANGE_KIND,
                ROLE_CLIENT,
                10 + i,
                4242,
                4242,
                i * ms,
                PYTHON_PUT,
                NOT_FOUND,
            ),
            _ => server(i % 3, i * ms, b"", BAD_GATEWAY),
        })
        .collect();
    c.put(
        "recording-interleaved-connections",
        &recording(&tmp, &interleaved),
    );
    let _ = std::fs::remove_file(&tmp);

    let mut truncated = server(1, 10 * ms, CURL_GET, OK_JSON);
    truncated.truncate(truncated.len() - 3);
    c.put("raw-http-truncated", &truncated);
}

fn http_parse(root: &Path) {
    let c = Corpus::new(root, "agent_http_parse");
    let put = |name: &str, ops: &[Op<'_>]| {
        let mut out = Vec::new();
        for op in ops {
            records::write(&mut out, op);
        }
        c.put(name, &out);
    };
    let rec = |conn, client, dt_ms, request, response| Op::Record {
        conn,
        client,
        dt_ms,
        request,
        response,
    };
    put("curl-get", &[rec(0, false, 3, CURL_GET, OK_JSON)]);
    put(
        "browser-keep-alive",
        &[
            rec(1, false, 12, CHROME_GET, NOT_MODIFIED),
            rec(1, false, 40, CHROME_GET, OK_JSON),
            Op::Close { conn: 1 },
        ],
    );
    put("go-client-post", &[rec(2, true, 25, GO_POST, CREATED)]);
    put(
        "python-put-bad-gateway",
        &[rec(0, false, 200, PYTHON_PUT, BAD_GATEWAY)],
    );
    let pipelined = [CURL_GET, OPTIONS_STAR, PYTHON_PUT, HTTP10].concat();
    put(
        "pipelined",
        &[
            rec(0, false, 1, &pipelined, OK_JSON),
            rec(0, false, 1, b"", NO_CONTENT),
            rec(0, false, 1, b"", CREATED),
            rec(0, false, 1, b"", HTTP10_OK),
        ],
    );
    put(
        "100-continue",
        &[
            rec(3, false, 1, EXPECT_POST, CONTINUE),
            rec(
                3,
                false,
                90,
                b"--boundary\r\nContent-Disposition: form-data",
                CREATED,
            ),
        ],
    );
    put(
        "continue-and-final-in-one-write",
        &[rec(3, false, 9, EXPECT_POST, CONTINUE_THEN_OK)],
    );
    put(
        "websocket",
        &[
            rec(2, false, 2, WS_UPGRADE, SWITCHING),
            rec(
                2,
                false,
                2,
                b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                b"\x81\x05hello",
            ),
            Op::Close { conn: 2 },
        ],
    );
    put(
        "websocket-evicted",
        &[
            rec(0, false, 1, WS_UPGRADE, SWITCHING),
            rec(1, false, 1, WS_UPGRADE, SWITCHING),
            rec(2, false, 1, WS_UPGRADE, SWITCHING),
            rec(3, true, 1, WS_UPGRADE, SWITCHING),
            rec(0, false, 1, WS_UPGRADE, SWITCHING),
        ],
    );
    let two = [CURL_GET, OPTIONS_STAR].concat();
    put(
        "evicted-connections",
        &[
            rec(0, false, 1, &two, OK_JSON),
            rec(1, false, 1, &two, OK_JSON),
            rec(2, true, 1, &two, OK_JSON),
            rec(3, false, 1, &two, OK_JSON),
            rec(0, false, 1, b"", NO_CONTENT),
        ],
    );
    let queue = [
        CURL_GET, CURL_GET, CURL_GET, CURL_GET, CURL_GET, CURL_GET, CURL_GET,
    ]
    .concat();
    put("queue-overflow", &[rec(1, false, 1, &queue, OK_JSON)]);
    let (cut, many) = (cut_request(), many_headers_response());
    put("cut-request", &[rec(0, false, 5, &cut, OK_JSON)]);
    put(
        "too-many-response-headers",
        &[rec(0, false, 5, CURL_GET, &many)],
    );
    put("cut-response", &[rec(0, false, 5, CURL_GET, CUT_RESPONSE)]);
    put(
        "proxy-absolute-form",
        &[rec(1, true, 5, PROXY_GET, NOT_FOUND)],
    );
    put(
        "connect-tunnel",
        &[rec(
            1,
            true,
            5,
            CONNECT,
            b"HTTP/1.1 200 Connection established\r\n\r\n",
        )],
    );
    put("http10-keep-alive", &[rec(0, false, 1, HTTP10, HTTP10_OK)]);
    put("chunked", &[rec(0, false, 1, CHUNKED_POST, NO_CONTENT)]);
    put("hostile-bytes", &[rec(0, false, 1, BAD_PATH, OK_JSON)]);
    put(
        "duplicate-headers",
        &[rec(0, false, 1, DUP_HEADERS, OK_JSON)],
    );
    put(
        "lowercase-method",
        &[rec(0, false, 1, LOWER_METHOD, OK_JSON)],
    );
    put(
        "not-http",
        &[
            rec(0, false, 1, TLS_HELLO, TLS_HELLO),
            rec(0, false, 1, b"", OK_JSON),
        ],
    );
    put(
        "response-without-request",
        &[rec(2, false, 1, b"", OK_JSON), Op::Close { conn: 2 }],
    );
}

fn trace_tenant(root: &Path) {
    let c = Corpus::new(root, "agent_trace_tenant");
    // The first byte picks tenant chain `b % 5` and route table `(b / 5) % 3`: a printable one.
    let config = |tenant: u8, routes: u8| {
        (b'0'..=b'~')
            .find(|b| b % 5 == tenant && (b / 5) % 3 == routes)
            .unwrap()
    };
    let put = |name: &str, f: Fields<'_>| c.put(name, request_fields::write(&f).as_bytes());
    let base = Fields {
        config: config(0, 0),
        traceparent: Some(TRACEPARENT),
        tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        baggage: Some("tenant.id=acme,user.tier=gold;ttl=60"),
        tenant_header: Some("acme"),
        host: Some("shop.platform.example"),
        path: "/api/v1/items/42",
        service: "shop",
    };
    put("defaults-header", base);
    put(
        "defaults-baggage-only",
        Fields {
            tenant_header: None,
            baggage: Some("user.id=7,tenant.id=Gl%6Fbex;prop=1"),
            ..base
        },
    );
    put(
        "defaults-invalid-header",
        Fields {
            tenant_header: Some("../etc/passwd"),
            baggage: None,
            ..base
        },
    );
    put(
        "host-subdomain",
        Fields {
            config: config(1, 1),
            tenant_header: None,
            host: Some("Acme.EU.platform.example.:8443"),
            path: "/static/js/app.3f9a8b7c.js",
            ..base
        },
    );
    put(
        "host-ignored-label-then-path",
        Fields {
            config: config(1, 1),
            tenant_header: None,
            host: Some("www.platform.example"),
            path: "/t/initech/reports/2026-10",
            ..base
        },
    );
    put(
        "path-allowlisted",
        Fields {
            config: config(2, 2),
            path: "/api/v2/tenants/Globex/users/8c1d0e6f",
            baggage: Some("org=umbrella"),
            ..base
        },
    );
    put(
        "path-not-allowlisted",
        Fields {
            config: config(2, 0),
            path: "/api/v2/tenants/umbrella",
            tenant_header: Some("initech"),
            ..base
        },
    );
    put(
        "tight-bounds",
        Fields {
            config: config(3, 0),
            tenant_header: Some("a"),
            host: Some("b"),
            baggage: Some("tenant.id=c"),
            ..base
        },
    );
    put(
        "pod-label-and-namespace",
        Fields {
            config: config(4, 1),
            tenant_header: Some("hooli"),
            host: Some("team-hooli"),
            ..base
        },
    );
    for (i, tp) in [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-field",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
    ]
    .into_iter()
    .enumerate()
    {
        put(
            &format!("traceparent-{i}"),
            Fields {
                traceparent: Some(tp),
                ..base
            },
        );
    }
    let members: Vec<String> = (0..33).map(|i| format!("vendor{i}=v{i}")).collect();
    let long_state = members.join(",");
    put(
        "tracestate-33-members",
        Fields {
            tracestate: Some(&long_state),
            ..base
        },
    );
    put(
        "tracestate-multi-tenant-keys",
        Fields {
            tracestate: Some("fw529a3039@dt=FW4;0;0;0;0;0;0;1;0,t61rcwkgmze@rojo=00f067aa0ba902b7"),
            ..base
        },
    );
    put(
        "baggage-properties-and-escapes",
        Fields {
            tenant_header: None,
            baggage: Some(
                "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue,tenant.id=%61%63%6d%65",
            ),
            ..base
        },
    );
    for (i, path) in [
        "/api/v1/items/0c6b3c6e-6a4f-4bb4-9c1a-7f2d3e4c5b6a/reviews",
        "/commits/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
        "/s/aB3dE5fG7hJ9kL1m",
        "/users/jane.doe@example.com",
        "/search/caf%C3%A9?q=1#frag",
        "/a/b/c/d/e/f/g/h/i/1",
        "/api/./v1/../v1//items/me/",
        "http://backend.example:8080/v1/things:batchGet?key=abc",
        "*",
        "",
        "/../../..",
    ]
    .into_iter()
    .enumerate()
    {
        put(
            &format!("route-{i}"),
            Fields {
                config: config(0, (i % 3) as u8),
                path,
                ..base
            },
        );
    }
}

fn otlp_ingest(root: &Path) {
    let c = Corpus::new(root, "collector_otlp_ingest");
    let put = |name: &str, signal, encoding, compression, auth, body: &[u8]| {
        c.put(
            name,
            &otlp_request::write(&otlp_request::Request {
                signal,
                encoding,
                compression,
                auth,
                body,
            }),
        )
    };
    use AggregationTemporality::{Cumulative, Delta, Unspecified};
    use Auth::Agent;
    use BodyEncoding::{Json, Protobuf};
    use Compression::{Gzip, Identity, RawGzip, Unsupported};
    use Signal::{Metrics, Traces};

    let agent = agent_sli_export();
    put(
        "agent-sli-export",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &agent.encode_to_vec(),
    );
    put(
        "agent-sli-export-gzip",
        Metrics,
        Protobuf,
        Gzip,
        Agent,
        &agent.encode_to_vec(),
    );
    put(
        "agent-sli-export-json",
        Metrics,
        Json,
        Identity,
        Agent,
        &serde_json::to_vec(&agent).unwrap(),
    );
    put(
        "agent-sli-export-precompressed",
        Metrics,
        Protobuf,
        RawGzip,
        Agent,
        &gzip(&agent.encode_to_vec()),
    );

    let end = T0 + 1800;
    let mut counts = [0u64; 15];
    counts[3] = 40;
    counts[6] = 7;
    counts[14] = 1;
    let sdk = metrics_request(
        "checkout",
        "s",
        Delta,
        vec![
            hist_point("acme", "/cart/{id}", 200, counts, end),
            hist_point("ACME", "/cart/{id}", 500, counts, end + 60),
            hist_point("not a tenant!", "/cart", 404, counts, end + 120),
        ],
    );
    put(
        "sdk-delta",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &sdk.encode_to_vec(),
    );
    put(
        "sdk-delta-json",
        Metrics,
        Json,
        Gzip,
        Agent,
        &serde_json::to_vec(&sdk).unwrap(),
    );
    let mut first = hist_point("globex", "/orders", 200, counts, end);
    let mut second = first.clone();
    first.start_time_unix_nano = (T0 - 600) * 1_000_000_000;
    second.start_time_unix_nano = first.start_time_unix_nano;
    second.time_unix_nano += 60 * 1_000_000_000;
    second.bucket_counts[3] += 5;
    let cumulative = metrics_request("orders", "s", Cumulative, vec![first.clone(), second]);
    put(
        "sdk-cumulative",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &cumulative.encode_to_vec(),
    );
    let mut ms_point = hist_point("initech", "/", 200, [1; 15], end);
    ms_point.explicit_bounds = vec![
        5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
        10000.0,
    ];
    let ms = metrics_request("legacy", "ms", Delta, vec![ms_point.clone()]);
    put(
        "sdk-milliseconds",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &ms.encode_to_vec(),
    );
    let mut odd = ms_point.clone();
    odd.explicit_bounds = vec![0.2, 0.4, 0.8];
    odd.bucket_counts = vec![1, 2, 3, 4];
    let mut malformed = ms_point.clone();
    malformed.bucket_counts.pop();
    let mut zero_time = ms_point.clone();
    zero_time.time_unix_nano = 0;
    let mut future = ms_point;
    future.time_unix_nano = (T0 + 86_400) * 1_000_000_000;
    let rejects = metrics_request("odd", "s", Delta, vec![odd, malformed, zero_time, future]);
    put(
        "sdk-rejected-points",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &rejects.encode_to_vec(),
    );
    let unspecified = metrics_request("x", "s", Unspecified, vec![first]);
    put(
        "sdk-unspecified",
        Metrics,
        Json,
        Identity,
        Agent,
        &serde_json::to_vec(&unspecified).unwrap(),
    );

    let traces = traces_request(vec![
        span("acme", 200, 12, SpanKind::Server, 0x11, false),
        span("acme", 503, 80, SpanKind::Server, 0x22, true),
        span("globex", 200, 4_000, SpanKind::Server, 0x33, false),
        span("acme", 200, 9_000, SpanKind::Client, 0x44, false),
        span("INITECH", 0, 30, SpanKind::Server, 0x55, true),
    ]);
    put(
        "traces",
        Traces,
        Protobuf,
        Identity,
        Agent,
        &traces.encode_to_vec(),
    );
    put(
        "traces-json",
        Traces,
        Json,
        Identity,
        Agent,
        &serde_json::to_vec(&traces).unwrap(),
    );
    put(
        "traces-gzip",
        Traces,
        Protobuf,
        Gzip,
        Agent,
        &traces.encode_to_vec(),
    );
    let mut short_id = traces.clone();
    short_id.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1, 2, 3];
    put(
        "traces-short-trace-id",
        Traces,
        Protobuf,
        Identity,
        Agent,
        &short_id.encode_to_vec(),
    );

    put(
        "traces-json-gzip",
        Traces,
        Json,
        Gzip,
        Agent,
        &serde_json::to_vec(&traces).unwrap(),
    );
    let mut two = sdk.clone();
    let mut other = cumulative.resource_metrics[0].clone();
    other.resource = Some(Resource {
        attributes: vec![
            kv("service.name", s("billing")),
            kv("tenant.id", s("initech")),
        ],
        ..Default::default()
    });
    two.resource_metrics.push(other);
    put(
        "sdk-two-resources",
        Metrics,
        Protobuf,
        Identity,
        Agent,
        &two.encode_to_vec(),
    );
    put(
        "sdk-two-resources-json",
        Metrics,
        Json,
        Identity,
        Agent,
        &serde_json::to_vec(&two).unwrap(),
    );
    put(
        "no-token",
        Metrics,
        Protobuf,
        Identity,
        Auth::None,
        &agent.encode_to_vec(),
    );
    put(
        "tenant-token",
        Traces,
        Protobuf,
        Identity,
        Auth::Tenant,
        &traces.encode_to_vec(),
    );
    put("wrong-token", Metrics, Json, Identity, Auth::Wrong, b"{}");
    put(
        "unsupported-encoding",
        Traces,
        Protobuf,
        Unsupported,
        Agent,
        &traces.encode_to_vec(),
    );
    put(
        "not-gzip",
        Metrics,
        Protobuf,
        RawGzip,
        Agent,
        b"\x1f\x8b\x08\x00garbage",
    );
    put("empty-metrics", Metrics, Protobuf, Identity, Agent, b"");
    put("empty-json", Traces, Json, Identity, Agent, b"{}");
    put(
        "json-wrong-types",
        Metrics,
        Json,
        Identity,
        Agent,
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"http.server.request.duration","histogram":{"aggregationTemporality":1,"dataPoints":[{"timeUnixNano":"1793493000000000000","bucketCounts":["1","18446744073709551615"],"explicitBounds":[0.1]}]}}]}]}]}"#,
    );
}

fn config_parse(root: &Path, repo: &Path) {
    let c = Corpus::new(root, "config_parse");
    for (name, path) in [
        ("agent-example", "agent/tenantscope-agent.example.toml"),
        (
            "collector-example",
            "collector/tenantscope-collector.example.toml",
        ),
        ("deploy-agent", "deploy/base/agent/agent.toml"),
        ("deploy-collector", "deploy/base/collector/collector.toml"),
        (
            "deploy-collector-production",
            "deploy/overlays/production/collector.toml",
        ),
    ] {
        c.put(name, &std::fs::read(repo.join(path)).unwrap());
    }
    // The TOML snippets of the docs.
    for doc in [
        "docs/collector.md",
        "docs/scale-out.md",
        "docs/sla-report.md",
    ] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        let stem = Path::new(doc).file_stem().unwrap().to_str().unwrap();
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let snippet = block.split("```").next().unwrap();
            c.put(&format!("doc-{stem}-{i}"), snippet.as_bytes());
        }
    }
    for (name, text) in [
        (
            "agent-tenant-chain",
            "[http.tenant]\nsources = [\n  { source = \"header\", name = \"X-Org\" },\n  { source = \"host_subdomain\", domains = [\"platform.example\"], ignore = [\"www\"] },\n  { source = \"path_prefix\", pattern = \"/t/{tenant}/\" },\n  { source = \"baggage\", key = \"tenant.id\" },\n  { source = \"pod_label\", name = \"platform.example/tenant\" },\n  { source = \"namespace\" },\n]\nallowlist = [\"acme\", \"globex\"]\nmax_tenants = 2\nmax_len = 32\n",
        ),
        (
            "agent-routes",
            "[http]\nspan_headers = [\"user-agent\", \"x-request-id\"]\n\n[http.routes]\nmax_routes_per_service = 50\nauto = false\n\n[[http.routes.services]]\nservice = \"shop\"\ntemplates = [\"/api/v1/items/{id}\", \"/static/*\", \"/\"]\n",
        ),
        (
            "agent-otlp",
            "[otlp]\nprotocol = \"http/protobuf\"\nendpoint = \"http://collector.tenantscope:4318\"\nsampler = \"parentbased_traceidratio\"\nsampler_arg = 0.25\nbatch_timeout = \"500ms\"\nmetrics_interval = \"15s\"\n\n[otlp.headers]\nauthorization = \"Bearer s3cr3t\"\n",
        ),
        (
            "agent-tcp-peers",
            "[tcp]\nresolve_local_peers = false\n\n[[tcp.peers]]\nname = \"postgres\"\nports = [5432]\n\n[[tcp.peers]]\nname = \"internal\"\ncidrs = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
        ),
        (
            "agent-out-of-range",
            "[syscalls]\nread_interval = \"0s\"\n\n[http]\nmax_series = 99\nringbuf_bytes = 4097\n",
        ),
        (
            "collector-tokens",
            "[server]\notlp_grpc = \"0.0.0.0:4317\"\nmax_request_bytes = 1048576\n\n[[auth.tokens]]\nname = \"agents\"\nrole = \"agent\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\n[[auth.tokens]]\nname = \"acme-reports\"\nrole = \"tenant\"\ntenant = \"acme\"\nsha256 = \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\n",
        ),
        (
            "collector-bad-values",
            "[storage]\nminute_retention = \"1h\"\n\n[ingest]\nmax_cumulative_series = 0\n\n[log]\nlevel = \"info,,=[\"\n",
        ),
        (
            "agent-kubernetes",
            "[kubernetes]\nenabled = \"auto\"\nnode_name = \"node-1\"\napi_url = \"https://10.96.0.1:443\"\nmax_pods = 512\nworkload_label = \"owner\"\n\n[workloads]\nmax = 500\nidle_ttl = \"10m\"\n",
        ),
        (
            "agent-server-log-probes",
            "[server]\nlisten = \"[::]:9464\"\n\n[log]\nlevel = \"warn,tenantscope_agent=debug\"\nformat = \"json\"\n\n[syscalls]\nenabled = true\nhook = \"tracepoint\"\nread_interval = \"2s 500ms\"\nmax_map_entries = 131072\n\n[process]\npoll_interval = \"50ms\"\nringbuf_bytes = 524288\n",
        ),
        (
            "agent-unknown-key",
            "[http]\nenabled = true\nrequest_capture = 512\n",
        ),
        (
            "collector-objectives",
            "[objectives]\ndefault_tier = \"standard\"\n\n[objectives.tiers.standard]\navailability = 99.9\nlatency_threshold = \"500ms\"\nlatency_target = 99.0\nperiod = \"calendar_month\"\n\n[objectives.tiers.premium]\navailability = 99.99\nlatency_threshold = \"250ms\"\nlatency_target = 99.5\nperiod = \"rolling_30d\"\n\n[objectives.tenants]\nacme = { tier = \"premium\" }\n\n[[objectives.maintenance]]\nstart = \"2026-11-14T02:00:00Z\"\nend = \"2026-11-14T04:00:00Z\"\ntenants = [\"acme\"]\nreason = \"database upgrade\"\n",
        ),
        (
            "collector-remote-write-forward",
            "[remote_write]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\nflush_interval = \"15s\"\ngrace = \"1m 30s\"\nmax_samples_per_request = 2000\ncollector_id = \"collector-0\"\nbearer_token = \"t\"\n\n[remote_write.headers]\nX-Scope-OrgID = \"platform\"\n\n[forward]\nendpoint = \"http://tempo:4318\"\nprotocol = \"http/protobuf\"\nqueue_size = 1024\n\n[promql]\nurl = \"http://127.0.0.1:9090\"\ntimeout = \"2m\"\n",
        ),
        (
            "collector-tls-half",
            "[server]\ntls_cert = \"/etc/tenantscope/tls.crt\"\n\n[auth]\nallow_unauthenticated = true\n",
        ),
        ("not-toml", "[[[\nkey = = \"value\"\n\u{0}\u{ff}"),
        ("empty", ""),
    ] {
        c.put(name, text.as_bytes());
    }
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().unwrap().to_path_buf();
    let root = fuzz.join("corpus");
    event_decode(&root);
    http_parse(&root);
    trace_tenant(&root);
    otlp_ingest(&root);
    config_parse(&root, &repo);
    println!("seeds written under {}", root.display());
}
