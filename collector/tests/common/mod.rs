//! Starts the real `tenantscope-collector` binary on free loopback ports with a store in a
//! temporary directory, and sends it OTLP.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, metric::Data,
    },
    resource::v1::Resource,
};
use prost::Message as _;
use tenantscope_collector::sli::LATENCY_BOUNDS;

/// A self-signed certificate for 127.0.0.1 and localhost: `dir/cert.pem`, `dir/key.pem`.
pub fn self_signed(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // An end-entity certificate (rustls refuses a CA certificate as a server's own).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl (installed by cargo xtask setup)");
    assert!(status.success(), "openssl req failed");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

pub struct Collector {
    child: Option<Child>,
    pub grpc: u16,
    pub http: u16,
    pub api: u16,
    pub store: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    /// The CA of the listeners' certificate, when they serve TLS.
    pub tls_ca: Option<PathBuf>,
}

impl Collector {
    /// Starts the collector with `config` (TOML, without the [server] listen addresses and the
    /// store path, which this sets) and waits until it is ready.
    pub fn start(dir: &Path, config: &str) -> Collector {
        Self::start_with(dir, "", config)
    }

    /// [`Collector::start`] with more `[server]` options.
    pub fn start_with(dir: &Path, server: &str, config: &str) -> Collector {
        let (grpc, http, api) = (free_port(), free_port(), free_port());
        let store = dir.join("collector.db");
        let path = dir.join("collector.toml");
        let mut f = std::fs::File::create(&path).expect("config file");
        write!(
            f,
            "[server]\notlp_grpc = \"127.0.0.1:{grpc}\"\notlp_http = \"127.0.0.1:{http}\"\n\
             api = \"127.0.0.1:{api}\"\n{server}\n[storage]\npath = \"{}\"\n\n{config}\n",
            store.display()
        )
        .expect("write config");
        let mut c = Collector {
            child: None,
            grpc,
            http,
            api,
            store,
            config: path,
            log: dir.join("collector.log"),
            tls_ca: None,
        };
        if server.contains("tls_cert") {
            c.tls_ca = Some(dir.join("cert.pem"));
        }
        c.restart();
        c
    }

    /// Starts the process again (same ports, same store) and waits until it is ready.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tenantscope-collector"))
            .arg("--config")
            .arg(&self.config)
            .env("TENANTSCOPE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tenantscope-collector");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.client().get(self.url("/readyz")).send()
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the collector exited ({status}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the collector did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme(), self.api)
    }

    pub fn otlp_url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme(), self.http)
    }

    /// A client that trusts the listeners' certificate, if any.
    pub fn client(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).expect("CA file");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"));
        }
        b.build().expect("client")
    }

    pub fn metrics_text(&self) -> String {
        self.client()
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("scrape /metrics")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// One request's worth of a delta histogram point: `fast` requests at 10 ms, `slow` at 1 s,
/// with `status`, ending at `end_s`.
pub fn point(
    tenant: &str,
    route: &str,
    status: i64,
    fast: u64,
    slow: u64,
    end_s: i64,
) -> HistogramDataPoint {
    let mut buckets = vec![0u64; LATENCY_BOUNDS.len() + 1];
    buckets[1] = fast; // (5ms, 10ms]
    buckets[9] = slow; // (750ms, 1s]
    HistogramDataPoint {
        attributes: vec![
            kv("http.request.method", Value::StringValue("GET".into())),
            kv("http.response.status_code", Value::IntValue(status)),
            kv("http.route", Value::StringValue(route.into())),
            kv("tenant.id", Value::StringValue(tenant.into())),
        ],
        start_time_unix_nano: ((end_s - 10) * 1_000_000_000) as u64,
        time_unix_nano: (end_s * 1_000_000_000) as u64,
        count: fast + slow,
        sum: Some(fast as f64 * 0.01 + slow as f64),
        bucket_counts: buckets,
        explicit_bounds: LATENCY_BOUNDS.to_vec(),
        ..Default::default()
    }
}

pub fn export(service: &str, points: Vec<HistogramDataPoint>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue(service.into()))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "http.server.request.duration".into(),
                    unit: "s".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: points,
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

/// POSTs an export as OTLP/HTTP protobuf; the status code, or None when the collector could
/// not be reached or did not answer.
pub fn post_export(
    client: &reqwest::blocking::Client,
    url: &str,
    token: Option<&str>,
    req: &ExportMetricsServiceRequest,
) -> Option<u16> {
    let mut r = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().ok().map(|resp| resp.status().as_u16())
}
