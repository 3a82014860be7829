//! OTLP/HTTP load generator for `cargo xtask bench collector`: POSTs protobuf exports to
//! `/v1/traces` or `/v1/metrics` at a fixed offered rate, open loop (request `i` is due at
//! `start + i * interval`, whatever happened to the requests before it), over a few keep-alive
//! HTTP/1.1 connections, one thread each. Every request is built on the fly and differs from
//! every other (the collector acknowledges an export it has seen before as a duplicate without
//! storing it): unique trace and span ids, and data points whose time and counts depend on the
//! request's index. Prints one JSON line with what was sent, acknowledged and rejected, and
//! whether it kept up with the schedule; for metrics also how many HTTP requests the data points
//! of sent and of acknowledged exports describe (what a store must hold after a crash).
//!
//! ```text
//! ts-otlp-load --endpoint 127.0.0.1:4318 --signal traces|metrics --rate <items/s>
//!     [--batch <items per request>] [--seconds 10] [--connections 4] [--tenants 1000]
//!     [--routes 20] [--cpu <n>] [--token <bearer>]
//! ```
//!
//! Traces: `--batch` spans per request over 4 resources (services), shaped like the agent's (method,
//! status, route, path, scheme, server address, protocol version, tenant); two in three are
//! server spans, 1% answer 503 (status Error, `error.type`) and 1% take 900 ms, so the collector
//! keeps evidence of both. Metrics: one resource per connection, `--batch`
//! `http.server.request.duration` delta points, statuses 200 and 503 for each (tenant, route),
//! walking through `--tenants` x `--routes`; the collector stores one row per two points.

use std::{
    fmt::Write as _,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
        trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, metric::Data,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message;

/// The OpenTelemetry HTTP semantic conventions' duration buckets (seconds), as the agent sends.
const BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Resources (services) per trace export.
const TRACE_RESOURCES: usize = 4;
/// A request waiting longer than this past its due time means the schedule was not kept.
const MAX_LAG: Duration = Duration::from_millis(50);
/// Response timeout; a request without an answer by then is failed (and its connection dropped).
const TIMEOUT: Duration = Duration::from_secs(10);

fn fail(msg: &str) -> ! {
    eprintln!("ts-otlp-load: {msg}");
    std::process::exit(2);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }
}

struct Opts {
    endpoint: String,
    signal: Signal,
    rate: f64,
    batch: usize,
    seconds: f64,
    connections: usize,
    tenants: usize,
    routes: usize,
    cpu: Option<usize>,
    token: Option<String>,
}

fn parse(args: &[String]) -> Opts {
    let value = |name: &str| -> Option<&str> {
        let i = args.iter().position(|a| a == name)?;
        Some(
            args.get(i + 1)
                .unwrap_or_else(|| fail(&format!("{name} needs a value"))),
        )
    };
    fn num<T: std::str::FromStr>(name: &str, v: Option<&str>, default: T) -> T {
        v.map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{name}: not a number: {v:?}")))
        })
    }
    let signal = match value("--signal") {
        Some("traces") => Signal::Traces,
        Some("metrics") => Signal::Metrics,
        other => fail(&format!("--signal traces|metrics, not {other:?}")),
    };
    let o = Opts {
        endpoint: value("--endpoint")
            .unwrap_or_else(|| fail("--endpoint host:port is required"))
            .to_owned(),
        signal,
        rate: num("--rate", value("--rate"), 0.0),
        batch: num(
            "--batch",
            value("--batch"),
            match signal {
                Signal::Traces => 512,
                Signal::Metrics => 500,
            },
        ),
        seconds: num("--seconds", value("--seconds"), 10.0),
        connections: num("--connections", value("--connections"), 4),
        tenants: num("--tenants", value("--tenants"), 1000),
        routes: num("--routes", value("--routes"), 20),
        cpu: value("--cpu").map(|v| num("--cpu", Some(v), 0)),
        token: value("--token").map(str::to_owned),
    };
    if !(o.rate > 0.0 && o.seconds > 0.0)
        || o.batch == 0
        || o.connections == 0
        || o.tenants == 0
        || o.routes == 0
    {
        fail("--rate, --seconds, --batch, --connections, --tenants and --routes must be positive");
    }
    o
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            fail(&format!("pin to CPU {cpu}: {}", io::Error::last_os_error()));
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn str_kv(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// Overwrites a string attribute's value in place (no allocation once it has the capacity).
fn set_str(kv: &mut KeyValue, f: impl FnOnce(&mut String)) {
    if let Some(AnyValue {
        value: Some(Value::StringValue(s)),
    }) = &mut kv.value
    {
        s.clear();
        f(s);
    }
}

fn set_int(kv: &mut KeyValue, v: i64) {
    kv.value = Some(AnyValue {
        value: Some(Value::IntValue(v)),
    });
}

/// splitmix64's finaliser: consecutive indexes to well-spread values.
fn mix(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn tenant(s: &mut String, t: usize) {
    let _ = write!(s, "tenant-{t:04}");
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "ts-otlp-load".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    })
}

/// Builds one connection's requests: a template whose ids, times, tenants and statuses are
/// rewritten in place for each request, encoded into a reused buffer.
struct Generator {
    signal: Signal,
    batch: usize,
    tenants: usize,
    routes: usize,
    /// Distinguishes this run's trace ids from any other run's.
    seed: u64,
    traces: ExportTraceServiceRequest,
    metrics: ExportMetricsServiceRequest,
    /// The HTTP request: head, then the encoded export.
    wire: Vec<u8>,
    head: String,
}

/// Span attributes, in this order; `error.type` is appended to failed spans.
const SPAN_ATTRS: usize = 8;
const ATTR_STATUS: usize = 1;
const ATTR_TENANT: usize = 7;

impl Generator {
    fn new(o: &Opts, conn: usize, seed: u64) -> Self {
        let mut g = Generator {
            signal: o.signal,
            batch: o.batch,
            tenants: o.tenants,
            routes: o.routes,
            seed,
            traces: ExportTraceServiceRequest::default(),
            metrics: ExportMetricsServiceRequest::default(),
            wire: Vec::new(),
            head: String::new(),
        };
        match o.signal {
            Signal::Traces => g.traces = g.trace_template(conn),
            Signal::Metrics => g.metrics = g.metrics_template(conn),
        }
        let path = match o.signal {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        };
        let auth = o
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        g.head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\n\
             {auth}content-length: ",
            o.endpoint
        );
        g
    }

    fn resource(service: &str, conn: usize) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                str_kv("host.name", &format!("load-node-{conn}")),
                str_kv("k8s.node.name", &format!("load-node-{conn}")),
                str_kv("service.name", service),
            ],
            ..Default::default()
        })
    }

    fn trace_template(&self, conn: usize) -> ExportTraceServiceRequest {
        let per = self.batch.div_ceil(TRACE_RESOURCES);
        let mut left = self.batch;
        let mut resource_spans = Vec::new();
        for r in 0..TRACE_RESOURCES {
            let n = per.min(left);
            left -= n;
            if n == 0 {
                break;
            }
            let spans = (0..n)
                .map(|j| {
                    let route = format!("/api/r{}/items/{{id}}", j % self.routes);
                    let mut attributes = vec![
                        str_kv("http.request.method", "GET"),
                        kv("http.response.status_code", Value::IntValue(200)),
                        str_kv("http.route", &route),
                        str_kv("url.path", &route.replace("{id}", "12345")),
                        str_kv("url.scheme", "http"),
                        str_kv("server.address", &format!("svc-{r}.load.svc")),
                        str_kv("network.protocol.version", "1.1"),
                        str_kv("tenant.id", "tenant-0000-reserve"),
                    ];
                    attributes.reserve(1);
                    Span {
                        trace_id: vec![0; 16],
                        span_id: vec![0; 8],
                        name: format!("GET {route}"),
                        flags: 0x101,
                        attributes,
                        status: Some(Status::default()),
                        ..Default::default()
                    }
                })
                .collect();
            resource_spans.push(ResourceSpans {
                resource: Self::resource(&format!("load-svc-{r}"), conn),
                scope_spans: vec![ScopeSpans {
                    scope: scope(),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        ExportTraceServiceRequest { resource_spans }
    }

    fn metrics_template(&self, conn: usize) -> ExportMetricsServiceRequest {
        let data_points = (0..self.batch)
            .map(|_| HistogramDataPoint {
                attributes: vec![
                    str_kv("http.request.method", "GET"),
                    kv("http.response.status_code", Value::IntValue(200)),
                    str_kv("http.route", "/api/r0000/items/{id}"),
                    str_kv("tenant.id", "tenant-0000-reserve"),
                    str_kv("url.scheme", "http"),
                ],
                bucket_counts: vec![0; BOUNDS.len() + 1],
                explicit_bounds: BOUNDS.to_vec(),
                ..Default::default()
            })
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Self::resource(&format!("load-svc-{conn}"), conn),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope(),
                    metrics: vec![Metric {
                        name: "http.server.request.duration".into(),
                        unit: "s".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Request `i` as HTTP bytes.
    /// Request `i` on the wire, and how many HTTP requests its data points describe (0 for
    /// traces).
    fn build(&mut self, i: u64) -> (&[u8], u64) {
        let described = match self.signal {
            Signal::Traces => {
                self.fill_traces(i);
                0
            }
            Signal::Metrics => self.fill_metrics(i),
        };
        let len = match self.signal {
            Signal::Traces => self.traces.encoded_len(),
            Signal::Metrics => self.metrics.encoded_len(),
        };
        self.wire.clear();
        self.wire.extend_from_slice(self.head.as_bytes());
        let _ = write!(&mut self.wire, "{len}\r\n\r\n");
        let encoded = match self.signal {
            Signal::Traces => self.traces.encode(&mut self.wire),
            Signal::Metrics => self.metrics.encode(&mut self.wire),
        };
        encoded.expect("a Vec grows as needed");
        (&self.wire, described)
    }

    fn fill_traces(&mut self, i: u64) {
        let now = unix_ns();
        let mut k = i * self.batch as u64;
        let (seed, tenants) = (self.seed, self.tenants as u64);
        for rs in &mut self.traces.resource_spans {
            for s in &mut rs.scope_spans[0].spans {
                s.trace_id[..8].copy_from_slice(&seed.to_be_bytes());
                s.trace_id[8..].copy_from_slice(&k.to_be_bytes());
                s.span_id.copy_from_slice(&(k + 1).to_be_bytes());
                let server = k % 3 != 2;
                s.kind = if server {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                } as i32;
                let (status, ms) = match k % 100 {
                    7 => (503, 3),
                    42 => (200, 900),
                    n => (200, 1 + n % 40),
                };
                s.start_time_unix_nano = now - ms * 1_000_000;
                s.end_time_unix_nano = now;
                set_int(&mut s.attributes[ATTR_STATUS], status);
                // Every tenant gets its share of each kind of span (and so of evidence).
                set_str(&mut s.attributes[ATTR_TENANT], |t| {
                    tenant(t, (mix(k) % tenants) as usize)
                });
                s.attributes.truncate(SPAN_ATTRS);
                let st = s.status.get_or_insert_default();
                if status >= 500 {
                    st.code = StatusCode::Error as i32;
                    s.attributes.push(str_kv("error.type", "503"));
                } else {
                    st.code = StatusCode::Unset as i32;
                }
                k += 1;
            }
        }
    }

    fn fill_metrics(&mut self, i: u64) -> u64 {
        // Distinct per request: the low digits of the end time are the request's index (so two
        // requests never carry the same time), and the counts depend on it too.
        let end = unix_ns() / 1_000_000 * 1_000_000 + i % 1_000_000;
        let k0 = i * self.batch as u64;
        let (tenants, routes) = (self.tenants as u64, self.routes as u64);
        let rm = &mut self.metrics.resource_metrics[0];
        let Some(Data::Histogram(h)) = &mut rm.scope_metrics[0].metrics[0].data else {
            unreachable!("the template is a histogram");
        };
        for (j, p) in h.data_points.iter_mut().enumerate() {
            let k = k0 + j as u64;
            let error = k % 2 == 1;
            let series = k / 2;
            let (t, r) = (series % tenants, (series / tenants) % routes);
            set_int(&mut p.attributes[1], if error { 503 } else { 200 });
            set_str(&mut p.attributes[2], |s| {
                let _ = write!(s, "/api/r{r}/items/{{id}}");
            });
            set_str(&mut p.attributes[3], |s| tenant(s, t as usize));
            p.bucket_counts.iter_mut().for_each(|b| *b = 0);
            let n = if error { 1 + k % 3 } else { 5 + (k + i) % 50 };
            let fast = n - n / 10;
            p.bucket_counts[1 + (k % 4) as usize] = fast;
            p.bucket_counts[8] = n - fast;
            p.count = n;
            p.sum = Some(fast as f64 * 0.03 + (n - fast) as f64 * 0.6);
            p.min = Some(0.006);
            p.max = Some(if n > fast { 0.7 } else { 0.07 });
            p.start_time_unix_nano = end - 10_000_000_000;
            p.time_unix_nano = end;
        }
        h.data_points.iter().map(|p| p.count).sum()
    }
}

/// One keep-alive connection to the collector.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    fn open(endpoint: &str) -> io::Result<Conn> {
        let s = TcpStream::connect(endpoint)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            w: s.try_clone()?,
            r: BufReader::with_capacity(64 * 1024, s),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends one request; the response's status, body (in `self.body`) and whether the server
    /// keeps the connection open.
    fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        self.w.write_all(request)?;
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            ));
        }
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {:?}", self.line)))?;
        let (mut length, mut chunked, mut keep) = (0usize, false, true);
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the response head",
                ));
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().map_err(io::Error::other)?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    keep = !v.eq_ignore_ascii_case("close");
                }
            }
        }
        self.body.clear();
        if chunked {
            loop {
                self.line.clear();
                self.r.read_line(&mut self.line)?;
                let size = self.line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size, 16).map_err(io::Error::other)?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        self.line.clear();
                        if self.r.read_line(&mut self.line)? == 0 || self.line.trim_end().is_empty()
                        {
                            break;
                        }
                    }
                    break;
                }
                let at = self.body.len();
                self.body.resize(at + size, 0);
                self.r.read_exact(&mut self.body[at..])?;
                let mut crlf = [0; 2];
                self.r.read_exact(&mut crlf)?;
            }
        } else {
            self.body.resize(length, 0);
            self.r.read_exact(&mut self.body)?;
        }
        Ok((status, keep))
    }
}

/// What one connection's thread did.
#[derive(Default)]
struct Stats {
    sent: u64,
    ok: u64,
    failed: u64,
    /// Requests never sent: due so late that the run was over.
    unsent: u64,
    items_sent: u64,
    items_ok: u64,
    items_failed: u64,
    items_rejected: u64,
    /// HTTP requests described by the data points sent, and by those of acknowledged exports.
    described_sent: u64,
    described_ok: u64,
    /// Failures by HTTP status, or 0 for I/O errors.
    failures: Vec<(u16, u64)>,
    first_error: Option<String>,
    /// How late each request went out, and how long its answer took (seconds).
    lag: Vec<f64>,
    latency: Vec<f64>,
    last_answer: Option<Instant>,
}

impl Stats {
    fn failure(&mut self, status: u16, items: u64, msg: impl FnOnce() -> String) {
        self.failed += 1;
        self.items_failed += items;
        match self.failures.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.failures.push((status, 1)),
        }
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
    }

    fn merge(&mut self, o: Stats) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.failed += o.failed;
        self.unsent += o.unsent;
        self.items_sent += o.items_sent;
        self.items_ok += o.items_ok;
        self.items_failed += o.items_failed;
        self.items_rejected += o.items_rejected;
        self.described_sent += o.described_sent;
        self.described_ok += o.described_ok;
        for (s, n) in o.failures {
            match self.failures.iter_mut().find(|(t, _)| *t == s) {
                Some((_, m)) => *m += n,
                None => self.failures.push((s, n)),
            }
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.lag.extend(o.lag);
        self.latency.extend(o.latency);
        self.last_answer = self.last_answer.max(o.last_answer);
    }
}

struct Schedule {
    start: Instant,
    interval: f64,
    total: u64,
    /// No request goes out after this: the run has fallen too far behind.
    cutoff: Instant,
    next: AtomicU64,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 * self.interval)
    }
}

/// One connection: takes the next request index, builds it, waits for its due time, sends it.
fn worker(o: &Opts, sched: &Schedule, conn_id: usize, seed: u64) -> Stats {
    let mut g = Generator::new(o, conn_id, seed);
    let mut conn: Option<Conn> = None;
    let mut st = Stats::default();
    let items = o.batch as u64;
    loop {
        let i = sched.next.fetch_add(1, Ordering::Relaxed);
        if i >= sched.total {
            break;
        }
        // Built before its due time, so building costs no lag.
        let (request, described) = g.build(i);
        let due = sched.due(i);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let sent_at = Instant::now();
        if sent_at > sched.cutoff {
            st.unsent += 1;
            continue;
        }
        st.lag
            .push(sent_at.saturating_duration_since(due).as_secs_f64());
        st.sent += 1;
        st.items_sent += items;
        st.described_sent += described;
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::open(&o.endpoint) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    st.failure(0, items, || format!("connect {}: {e}", o.endpoint));
                    continue;
                }
            },
        };
        let result = c.exchange(request);
        let answered = Instant::now();
        st.latency.push((answered - sent_at).as_secs_f64());
        let keep = match result {
            Ok((status, keep)) => {
                st.last_answer = Some(answered);
                let body = &c.body[..];
                if status != 200 {
                    let text = String::from_utf8_lossy(body).into_owned();
                    st.failure(status, items, || format!("HTTP {status}: {text}"));
                } else {
                    let rejected = match o.signal {
                        Signal::Traces => ExportTraceServiceResponse::decode(body)
                            .map(|r| r.partial_success.map_or(0, |p| p.rejected_spans)),
                        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
                            .map(|r| r.partial_success.map_or(0, |p| p.rejected_data_points)),
                    };
                    match rejected {
                        Ok(n) => {
                            st.ok += 1;
                            st.items_ok += items;
                            st.described_ok += described;
                            st.items_rejected += n.max(0) as u64;
                        }
                        Err(e) => st.failure(status, items, || format!("response body: {e}")),
                    }
                }
                keep
            }
            Err(e) => {
                st.failure(0, items, || format!("exchange: {e}"));
                false
            }
        };
        if !keep {
            conn = None;
        }
    }
    st
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = parse(&args);
    if let Some(cpu) = o.cpu {
        // Before the connection threads start, so they inherit it.
        pin(cpu);
    }
    let seed = unix_ns() ^ (u64::from(std::process::id()) << 40);
    let requests_per_s = o.rate / o.batch as f64;
    let total = (o.seconds * requests_per_s).ceil().max(1.0) as u64;
    // Leave the connections a moment to build their templates.
    let start = Instant::now() + Duration::from_millis(100);
    let grace = Duration::from_secs_f64((o.seconds * 0.2).max(2.0));
    let sched = Schedule {
        start,
        interval: 1.0 / requests_per_s,
        total,
        cutoff: start + Duration::from_secs_f64(o.seconds) + grace,
        next: AtomicU64::new(0),
    };
    let mut all = Stats::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..o.connections)
            .map(|c| {
                let (o, sched) = (&o, &sched);
                s.spawn(move || worker(o, sched, c, seed))
            })
            .collect();
        for h in handles {
            all.merge(h.join().expect("a connection thread panicked"));
        }
    });
    let elapsed = all
        .last_answer
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let accepted = all.items_ok - all.items_rejected.min(all.items_ok);
    let lag_p99 = percentile(&mut all.lag, 0.99);
    let lag_max = percentile(&mut all.lag, 1.0);
    let kept_up = all.unsent == 0 && lag_p99 <= MAX_LAG.as_secs_f64();
    let failures = all
        .failures
        .iter()
        .map(|(s, n)| {
            format!(
                "\"{}\":{n}",
                if *s == 0 { "io".into() } else { s.to_string() }
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let first_error = all
        .first_error
        .as_deref()
        .unwrap_or("")
        .chars()
        .take(300)
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect::<String>();
    println!(
        "{{\"signal\":\"{}\",\"offered_rate\":{:.0},\"batch\":{},\"connections\":{},\
         \"seconds\":{},\"requests_scheduled\":{total},\"requests_sent\":{},\"requests_ok\":{},\
         \"requests_failed\":{},\"requests_unsent\":{},\"items_sent\":{},\"items_ok\":{},\
         \"items_failed\":{},\"items_rejected\":{},\"items_accepted\":{accepted},\
         \"described_requests_sent\":{},\"described_requests_ok\":{},\
         \"elapsed_s\":{elapsed:.3},\"achieved_rate\":{:.0},\"lag_p50_ms\":{:.2},\
         \"lag_p99_ms\":{:.2},\"lag_max_ms\":{:.2},\"latency_p50_ms\":{:.2},\
         \"latency_p99_ms\":{:.2},\"kept_up\":{kept_up},\"failures\":{{{failures}}},\
         \"first_error\":\"{first_error}\"}}",
        o.signal.name(),
        o.rate,
        o.batch,
        o.connections,
        o.seconds,
        all.sent,
        all.ok,
        all.failed,
        all.unsent,
        all.items_sent,
        all.items_ok,
        all.items_failed,
        all.items_rejected,
        all.described_sent,
        all.described_ok,
        if elapsed > 0.0 {
            accepted as f64 / elapsed
        } else {
            0.0
        },
        percentile(&mut all.lag, 0.5) * 1e3,
        lag_p99 * 1e3,
        lag_max * 1e3,
        percentile(&mut all.latency, 0.5) * 1e3,
        percentile(&mut all.latency, 0.99) * 1e3,
    );
}
