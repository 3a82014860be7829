//! The real collector binary: OTLP ingest over HTTP (protobuf, JSON, gzip) and gRPC behind
//! bearer tokens, size limits, retries deduplicated, and the SLA API's tenant scoping.

mod common;

use std::io::Write as _;

use common::{Collector, export, point, post_export, self_signed, unix_now};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceResponse, metrics_service_client::MetricsServiceClient,
};
use prost::Message as _;
use tenantscope_collector::auth::{hex, sha256};

const AGENT: &str = "agent-secret-1";
const ADMIN: &str = "admin-secret-2";
const ACME: &str = "acme-secret-3";

fn config() -> String {
    let token = |name: &str, role: &str, tenant: Option<&str>, secret: &str| {
        format!(
            "[[auth.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\n{}sha256 = \"{}\"\n\n",
            tenant.map_or(String::new(), |t| format!("tenant = \"{t}\"\n")),
            hex(&sha256(secret))
        )
    };
    [
        token("agents", "agent", None, AGENT),
        token("ops", "admin", None, ADMIN),
        token("acme", "tenant", Some("acme"), ACME),
    ]
    .concat()
}

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut r = reqwest::blocking::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().expect("API reachable");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn ingest_and_api_enforce_tokens_limits_and_tenant_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A small body limit, so an oversized body fits in the socket buffers and the client reads
    // the 413 instead of a reset.
    let collector = Collector::start_with(dir.path(), "max_request_bytes = 65536", &config());
    let client = reqwest::blocking::Client::new();
    let url = collector.otlp_url("/v1/metrics");
    let end = unix_now() / 60 * 60 - 60;
    let acme = export(
        "api",
        vec![
            point("acme", "/posts/{id}", 200, 90, 5, end),
            point("acme", "/posts/{id}", 503, 5, 0, end),
        ],
    );
    let globex = export("web", vec![point("globex", "/", 200, 10, 0, end)]);

    // OTLP/HTTP: no token, a wrong one, a tenant token: refused, nothing stored.
    assert_eq!(post_export(&client, &url, None, &acme), Some(401));
    assert_eq!(post_export(&client, &url, Some("nope"), &acme), Some(401));
    assert_eq!(post_export(&client, &url, Some(ACME), &acme), Some(403));
    // The agent token: accepted; the same export again is acknowledged but not counted.
    let resp = client
        .post(&url)
        .bearer_auth(AGENT)
        .header("content-type", "application/x-protobuf")
        .body(acme.encode_to_vec())
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let body = ExportMetricsServiceResponse::decode(resp.bytes().expect("body")).expect("OTLP");
    assert_eq!(body.partial_success, None);
    assert_eq!(post_export(&client, &url, Some(AGENT), &acme), Some(200));
    // JSON, gzip-compressed.
    let json = serde_json::to_vec(&globex).expect("JSON");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).expect("gzip");
    let resp = client
        .post(&url)
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text());
    // Garbage and oversized bodies: clear refusals.
    let resp = client
        .post(&url)
        .bearer_auth(AGENT)
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff; 64])
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap_or_default().contains("protobuf body"));
    let resp = client
        .post(&url)
        .bearer_auth(AGENT)
        .header("content-type", "application/x-protobuf")
        .body(vec![0u8; 128 << 10])
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    // A gzip bomb: small on the wire, over the limit once inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 1 << 20]).expect("gzip");
    let resp = client
        .post(&url)
        .bearer_auth(AGENT)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    let resp = client
        .post(&url)
        .bearer_auth(AGENT)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 415);

    // OTLP/gRPC: the same rules.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut grpc =
            MetricsServiceClient::connect(format!("http://127.0.0.1:{}", collector.grpc))
                .await
                .expect("gRPC connect");
        let err = grpc.export(globex.clone()).await.expect_err("no token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut req =
            tonic::Request::new(export("web", vec![point("globex", "/", 500, 2, 0, end)]));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {AGENT}").parse().expect("ascii"),
        );
        grpc.export(req)
            .await
            .expect("gRPC export with the agent token");
    });

    // The API: reports need a token that may read the tenant.
    let sla = |tenant: &str| collector.url(&format!("/api/v1/tenants/{tenant}/sla?period=current"));
    assert_eq!(get(&sla("acme"), None).0, 401);
    assert_eq!(get(&sla("acme"), Some("nope")).0, 401);
    assert_eq!(get(&sla("acme"), Some(AGENT)).0, 403);
    assert_eq!(
        get(&sla("globex"), Some(ACME)).0,
        403,
        "a tenant token reads only its tenant"
    );
    let (code, body) = get(&sla("acme"), Some(ACME));
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["tenant"], "acme");
    assert_eq!(report["totals"]["requests"], 100, "{body}");
    assert_eq!(report["totals"]["errors"], 5, "{body}");
    let (code, body) = get(&sla("globex"), Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["totals"]["requests"], 12, "{body}");
    assert_eq!(report["totals"]["errors"], 2, "{body}");
    let (code, body) = get(&collector.url("/api/v1/tenants"), Some(ACME));
    assert_eq!((code, body.as_str()), (200, "[\"acme\"]"));
    let (code, body) = get(&collector.url("/api/v1/tenants"), Some(ADMIN));
    assert_eq!((code, body.as_str()), (200, "[\"acme\",\"globex\"]"));
    let (code, body) = get(&format!("{}&format=csv", sla("acme")), Some(ADMIN));
    assert_eq!(code, 200);
    assert!(body.contains("acme"), "{body}");
    let (code, body) = get(
        &collector.url("/api/v1/tenants/acme/sla?period=13-2026"),
        Some(ADMIN),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("period"), "{body}");

    // Everything above is counted by outcome.
    let m = collector.metrics_text();
    let req = |signal: &str, transport: &str, outcome: &str| {
        counter(
            &m,
            "tenantscope_collector_otlp_requests_total",
            &[
                &format!("signal=\"{signal}\""),
                &format!("transport=\"{transport}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    assert_eq!(req("metrics", "http", "ok"), 2.0, "{m}");
    assert_eq!(req("metrics", "http", "duplicate"), 1.0, "{m}");
    assert_eq!(req("metrics", "http", "unauthenticated"), 2.0, "{m}");
    assert_eq!(req("metrics", "http", "forbidden"), 1.0, "{m}");
    assert_eq!(req("metrics", "http", "bad_request"), 1.0, "{m}");
    assert_eq!(req("metrics", "http", "too_large"), 2.0, "{m}");
    assert_eq!(req("metrics", "http", "unsupported_media_type"), 1.0, "{m}");
    assert_eq!(req("metrics", "grpc", "unauthenticated"), 1.0, "{m}");
    assert_eq!(req("metrics", "grpc", "ok"), 1.0, "{m}");
    assert_eq!(
        counter(
            &m,
            "tenantscope_collector_otlp_data_points_total",
            &["outcome=\"accepted\""]
        ),
        4.0,
        "{m}"
    );
}

#[test]
fn without_tokens_only_loopback_is_allowed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantscope-collector"))
        .args([
            "serve",
            "--otlp-grpc",
            "0.0.0.0:0",
            "--store",
            "/nonexistent/x.db",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address and no auth.tokens"),
        "{err}"
    );
}

#[test]
fn tls_serves_otlp_and_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    self_signed(dir.path());
    let server = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let collector = Collector::start_with(dir.path(), &server, "");
    let client = collector.client();
    let end = unix_now() / 60 * 60 - 60;
    let req = export("api", vec![point("acme", "/", 200, 3, 0, end)]);
    let url = collector.otlp_url("/v1/metrics");
    assert!(url.starts_with("https://"));
    assert_eq!(post_export(&client, &url, None, &req), Some(200));
    // Plain HTTP on a TLS listener gets no OTLP answer.
    let plain = url.replacen("https://", "http://", 1);
    assert_eq!(
        post_export(&reqwest::blocking::Client::new(), &plain, None, &req),
        None
    );
    // gRPC over TLS, trusting the same certificate.
    let pem = std::fs::read(dir.path().join("cert.pem")).expect("cert");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name("localhost");
        let channel =
            tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{}", collector.grpc))
                .expect("uri")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("gRPC over TLS");
        MetricsServiceClient::new(channel)
            .export(export("api", vec![point("acme", "/", 503, 2, 0, end)]))
            .await
            .expect("export over gRPC/TLS");
    });
    let body = client
        .get(collector.url("/api/v1/tenants/acme/sla"))
        .send()
        .and_then(|r| r.text())
        .expect("API over TLS");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["totals"]["requests"], 5, "{body}");
    assert_eq!(report["totals"]["errors"], 2, "{body}");
}

/// One sender beyond `server.agent_rate_limit`: a burst passes, the rest is refused (HTTP 429
/// with Retry-After, gRPC RESOURCE_EXHAUSTED, both counted as rate_limited, nothing stored);
/// the bucket refills at the configured rate.
#[test]
fn ingest_is_rate_limited_per_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector =
        Collector::start_with(dir.path(), "agent_rate_limit = 2\nagent_rate_burst = 3", "");
    let client = reqwest::blocking::Client::new();
    let url = collector.otlp_url("/v1/metrics");
    let end = unix_now() / 60 * 60 - 60;
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..10 {
        let req = export(
            "web",
            vec![point("acme", &format!("/r{i}"), 200, 1, 0, end)],
        );
        let resp = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec())
            .send()
            .expect("post");
        let status = resp.status().as_u16();
        if status == 429 {
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                Some("1")
            );
            assert!(resp.text().unwrap_or_default().contains("agent_rate_limit"));
        }
        statuses.push(status);
    }
    // 3 at once, plus 2 per second since.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).floor() as usize;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(ok, 3 + refilled.min(7), "{statuses:?}");
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );

    // The same sender over gRPC shares the budget.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        let mut grpc =
            MetricsServiceClient::connect(format!("http://127.0.0.1:{}", collector.grpc))
                .await
                .expect("gRPC connect");
        let req = export("web", vec![point("acme", "/grpc", 200, 1, 0, end)]);
        grpc.export(req).await.map(|_| ()).map_err(|e| e.code())
    });
    assert_eq!(code, Err(tonic::Code::ResourceExhausted));

    // Refilled: one more passes after half a second.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let req = export("web", vec![point("acme", "/later", 200, 1, 0, end)]);
    assert_eq!(post_export(&client, &url, None, &req), Some(200));

    let m = collector.metrics_text();
    let limited = |transport: &str| {
        counter(
            &m,
            "tenantscope_collector_otlp_requests_total",
            &[
                &format!("transport=\"{transport}\""),
                "outcome=\"rate_limited\"",
            ],
        )
    };
    assert_eq!(limited("http"), (10 - ok) as f64, "{m}");
    assert_eq!(limited("grpc"), 1.0, "{m}");
    assert_eq!(
        counter(
            &m,
            "tenantscope_collector_otlp_data_points_total",
            &["outcome=\"accepted\""]
        ),
        (ok + 1) as f64,
        "refused exports are not stored: {m}"
    );
}
