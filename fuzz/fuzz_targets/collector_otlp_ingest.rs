//! The collector's OTLP/HTTP ingest: the real `/v1/metrics` and `/v1/traces` handlers (auth,
//! content type, gzip, protobuf or JSON decoding, conversion, commit) of one long-lived
//! collector, as in production, over the real store in memory (the same schema and SQL as on
//! disk; a file store would fsync every commit). Then, for a body that decodes, the conversion
//! at a fixed clock (so the committed seeds stay inside the accepted time range forever) and
//! its commit to a fresh store, with the invariants of rows and evidence checked: everything
//! the fuzzer reports there depends on the input alone.
//!
//! Input: `tenantscope_fuzz::otlp_request` (a control byte, then the body).
#![no_main]

use std::io::Write as _;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flate2::{Compression as Level, write::GzEncoder};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;
use tenantscope_collector::auth::{self, AuthConfig, Role, TokenConfig, Tokens};
use tenantscope_collector::ingest::{self, CumulativeState, TimeLimits};
use tenantscope_collector::metrics::CollectorMetrics;
use tenantscope_collector::objectives::ObjectivesConfig;
use tenantscope_collector::server::{Ingestor, http_router};
use tenantscope_collector::sli::{BUCKETS, MINUTE, SliRow};
use tenantscope_collector::store::{Applied, Store, StoreOptions};
use tenantscope_fuzz::otlp_request::{self, Auth, BodyEncoding, Compression, Signal};
use tower::ServiceExt as _;

const AGENT_TOKEN: &str = "fuzz-agent-token";
const TENANT_TOKEN: &str = "fuzz-tenant-token";
/// The request size limit (compressed, and again decompressed).
const MAX_BYTES: usize = 1 << 20;
/// The fixed "now" of the pure conversion: 2026-11-01T01:00:00Z; the seeds' points end shortly
/// before it.
const NOW: i64 = 1_793_491_200 + 3600;
const MAX_SERIES: usize = 8;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

static TOKENS: LazyLock<Tokens> = LazyLock::new(|| {
    let token = |name: &str, role, tenant: Option<&str>, secret| TokenConfig {
        name: name.into(),
        role,
        tenant: tenant.map(String::from),
        sha256: Some(auth::hex(&auth::sha256(secret))),
        token_file: None,
    };
    Tokens::load(&AuthConfig {
        tokens: vec![
            token("agent", Role::Agent, None, AGENT_TOKEN),
            token("acme-reader", Role::Tenant, Some("acme"), TENANT_TOKEN),
        ],
        allow_unauthenticated: false,
    })
    .expect("valid tokens")
});

static OBJECTIVES: LazyLock<ObjectivesConfig> = LazyLock::new(ObjectivesConfig::default);

fn threshold_ms(tenant: &str) -> f64 {
    OBJECTIVES.objective_for(tenant).latency_threshold() * 1000.0
}

fn store() -> Arc<Store> {
    Arc::new(Store::open_in_memory(StoreOptions::default()).expect("an in-memory store"))
}

/// The collector's stored tenant: a sentinel, or a valid id, lowercased.
fn check_tenant(t: &str) {
    assert!(
        !t.is_empty()
            && t.len() <= 253
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
        "stored tenant {t:?}"
    );
}

fn check_row(r: &SliRow) {
    check_tenant(&r.tenant);
    assert!(r.service.len() <= 512 && r.route.len() <= 512);
    assert_eq!(r.seconds, MINUTE);
    assert_eq!(r.start.rem_euclid(MINUTE), 0);
    let c = &r.counts;
    assert!(c.requests > 0 && c.errors <= c.requests, "{r:?}");
    // The buckets add up to the requests (unless the row saturated at u64::MAX).
    let buckets: u128 = c.buckets.iter().map(|&b| u128::from(b)).sum();
    if c.requests < u64::MAX {
        assert_eq!(buckets, u128::from(c.requests), "{r:?}");
    }
    assert_eq!(c.buckets.len(), BUCKETS);
}

/// The collector's OTLP/HTTP routes, built once: a collector lives long and sees every export.
static ROUTER: LazyLock<axum::Router> = LazyLock::new(|| {
    let ingestor = Ingestor::new(
        store(),
        Arc::new(CollectorMetrics::new()),
        TOKENS.clone(),
        Box::new(threshold_ms),
        MAX_SERIES,
        300,
    );
    http_router(Arc::new(ingestor), MAX_BYTES)
});

/// Through the real OTLP/HTTP handlers; returns the status.
fn through_handler(r: &otlp_request::Request<'_>, body: Vec<u8>) -> StatusCode {
    let router = ROUTER.clone();
    let mut req = Request::post(match r.signal {
        Signal::Metrics => "/v1/metrics",
        Signal::Traces => "/v1/traces",
    })
    .header(
        header::CONTENT_TYPE,
        match r.encoding {
            BodyEncoding::Protobuf => "application/x-protobuf",
            BodyEncoding::Json => "application/json; charset=utf-8",
        },
    );
    match r.compression {
        Compression::Identity => {}
        Compression::Gzip | Compression::RawGzip => {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        Compression::Unsupported => req = req.header(header::CONTENT_ENCODING, "br"),
    }
    match r.auth {
        Auth::Agent => req = req.header(header::AUTHORIZATION, format!("Bearer {AGENT_TOKEN}")),
        Auth::None => {}
        Auth::Tenant => req = req.header(header::AUTHORIZATION, format!("Bearer {TENANT_TOKEN}")),
        Auth::Wrong => req = req.header(header::AUTHORIZATION, "Bearer nobody"),
    }
    let req = req.body(Body::from(body)).expect("a valid request");
    let resp = RUNTIME
        .block_on(router.oneshot(req))
        .unwrap_or_else(|e| match e {});
    let status = resp.status();
    let body = RUNTIME
        .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
        .expect("the response body");
    // A store failure (503) would make every agent retry the same export forever: hostile input
    // must be refused as bad, never fail the store.
    let allowed: &[StatusCode] = match r.auth {
        Auth::Agent => &[
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ],
        Auth::None | Auth::Wrong => &[StatusCode::UNAUTHORIZED, StatusCode::PAYLOAD_TOO_LARGE],
        Auth::Tenant => &[StatusCode::FORBIDDEN, StatusCode::PAYLOAD_TOO_LARGE],
    };
    assert!(
        allowed.contains(&status),
        "{r:?}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    if status == StatusCode::OK && r.signal == Signal::Metrics {
        let resp = match r.encoding {
            BodyEncoding::Protobuf => ExportMetricsServiceResponse::decode(&body[..]).ok(),
            BodyEncoding::Json => serde_json::from_slice(&body).ok(),
        }
        .expect("the answer decodes");
        if let Some(p) = resp.partial_success {
            assert!(
                p.rejected_data_points > 0 && !p.error_message.is_empty(),
                "{p:?}"
            );
        }
    }
    status
}

fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
    encoding: BodyEncoding,
    body: &[u8],
) -> Option<M> {
    match encoding {
        BodyEncoding::Protobuf => M::decode(body).ok(),
        BodyEncoding::Json => serde_json::from_slice(body).ok(),
    }
}

fn limits() -> TimeLimits {
    TimeLimits {
        now: NOW,
        oldest: NOW - 35 * 86_400,
        future: 300,
    }
}

fn convert_metrics(req: &ExportMetricsServiceRequest) {
    let points: u64 = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum();
    let started_ns = (NOW - 7200) as u64 * 1_000_000_000;
    let mut state = CumulativeState::new(started_ns, MAX_SERIES);
    let mut batch = ingest::metrics(req, limits(), &mut state);
    // Every data point is accounted for: used, rejected for a reason, or of another metric.
    assert_eq!(
        batch.accepted + batch.rejected_total() + batch.ignored,
        points,
        "{batch:?}"
    );
    assert!(state.len() <= MAX_SERIES);
    for r in &batch.rows {
        check_row(r);
        assert!(r.start >= limits().oldest && r.start <= NOW + 300, "{r:?}");
    }
    // An export that is not committed is undone: its retry converts to the same rows.
    let undo = std::mem::take(&mut batch.undo);
    state.rollback(undo);
    let retry = ingest::metrics(req, limits(), &mut state);
    assert_eq!(retry.rows, batch.rows);
    assert_eq!(retry.accepted, batch.accepted);

    if batch.rows.is_empty() {
        return;
    }
    let store = store();
    let b = tenantscope_collector::store::Batch {
        digest: ingest::digest("metrics", req),
        rows: batch.rows.clone(),
        evidence: vec![],
    };
    let applied = store.apply(&b, NOW).expect("a converted export commits");
    assert_eq!(
        applied,
        Applied::Stored {
            rows: batch.rows.len(),
            evidence: 0
        }
    );
    assert_eq!(store.apply(&b, NOW).expect("a retry"), Applied::Duplicate);
    let stored = store
        .rows_between(i64::MIN, i64::MAX)
        .expect("rows read back");
    assert_eq!(stored.len(), batch.rows.len());
}

fn convert_traces(req: &ExportTraceServiceRequest) {
    let spans: u64 = req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum();
    let batch = ingest::traces(req, &threshold_ms);
    assert_eq!(batch.spans, spans);
    for e in &batch.evidence {
        check_tenant(&e.tenant);
        assert!(e.service.len() <= 512 && e.route.len() <= 512);
        assert!(
            e.trace_id.len() == 32 && e.trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{e:?}"
        );
        assert!(e.duration_ms >= 0.0);
    }
    if batch.evidence.is_empty() {
        return;
    }
    let store = store();
    let b = tenantscope_collector::store::Batch {
        digest: ingest::digest("traces", req),
        rows: vec![],
        evidence: batch.evidence,
    };
    let applied = store.apply(&b, NOW).expect("evidence commits");
    assert!(matches!(applied, Applied::Stored { rows: 0, .. }));
}

fuzz_target!(|data: &[u8]| {
    let Some(r) = otlp_request::read(data) else {
        return;
    };
    let body = match r.compression {
        Compression::Gzip => {
            let mut gz = GzEncoder::new(Vec::new(), Level::fast());
            gz.write_all(r.body).expect("gzip in memory");
            gz.finish().expect("gzip in memory")
        }
        _ => r.body.to_vec(),
    };
    let status = through_handler(&r, body);

    // The conversion on its own, at a fixed clock, for what the handler could decode.
    if !matches!(r.compression, Compression::Identity | Compression::Gzip) {
        return;
    }
    match r.signal {
        Signal::Metrics => {
            if let Some(req) = decode::<ExportMetricsServiceRequest>(r.encoding, r.body) {
                if r.auth == Auth::Agent {
                    assert_eq!(status, StatusCode::OK);
                }
                convert_metrics(&req);
            }
        }
        Signal::Traces => {
            if let Some(req) = decode::<ExportTraceServiceRequest>(r.encoding, r.body) {
                if r.auth == Auth::Agent {
                    assert_eq!(status, StatusCode::OK);
                }
                convert_traces(&req);
            }
        }
    }
});
