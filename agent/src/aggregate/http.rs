//! From captured HTTP records to RED metrics: pairing, then tenant and route, then the
//! OpenTelemetry-named duration histograms with one exemplar per bucket carrying the trace id,
//! and WebSocket connections per tenant. Synchronous; the metric families are shared with the
//! exposition (prometheus-client builds exemplars only through its own histogram type).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        histogram::Histogram,
    },
};

use crate::http::{
    pairing::{Exchange, Output, Pairer, Role, UnpairedReason},
    parse::HeaderSelection,
    route::RouteTable,
    tenant::{RequestView, TenantResolver},
    trace,
};

/// OpenTelemetry's default bucket boundaries for HTTP durations (seconds).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// WebSocket connection lifetimes (seconds): a minute-long chat to a day-long dashboard.
pub const WEBSOCKET_BUCKETS: [f64; 9] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0,
];

/// Labels of `http_{server,client}_request_duration_seconds` (semconv names, `.` -> `_`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedLabels {
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    pub http_route: String,
    pub tenant: String,
    pub url_scheme: &'static str,
    pub workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WsLabels {
    pub side: &'static str,
    pub tenant: String,
    pub workload: String,
}

type DurationHist = HistogramWithExemplars<TraceLabel>;
type Ctor = fn() -> DurationHist;

fn duration_hist() -> DurationHist {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

fn ws_hist() -> Histogram {
    Histogram::new(WEBSOCKET_BUCKETS)
}

/// The families the pipeline writes and `/metrics` reads.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub server: Family<RedLabels, DurationHist, Ctor>,
    pub client: Family<RedLabels, DurationHist, Ctor>,
    pub ws_active: Family<WsLabels, Gauge>,
    pub ws_duration: Family<WsLabels, Histogram, fn() -> Histogram>,
    /// Requests not counted because `max_series` label sets exist already.
    pub series_overflow: Counter,
    /// Requests that could not be paired, by reason.
    pub unpaired: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            server: Family::new_with_constructor(duration_hist as Ctor),
            client: Family::new_with_constructor(duration_hist as Ctor),
            ws_active: Family::default(),
            ws_duration: Family::new_with_constructor(ws_hist as fn() -> Histogram),
            series_overflow: Counter::default(),
            unpaired: Family::default(),
        }
    }
}

pub struct HttpPipeline {
    pairer: Pairer,
    routes: RouteTable,
    tenants: TenantResolver,
    metrics: HttpMetrics,
    series: HashSet<(&'static str, RedLabels)>,
    max_series: usize,
    ids: RandomIdGenerator,
    out: Vec<Output>,
}

impl HttpPipeline {
    pub fn new(
        max_conns: usize,
        routes: RouteTable,
        tenants: TenantResolver,
        max_series: usize,
        metrics: HttpMetrics,
    ) -> Self {
        let sel = HeaderSelection {
            tenant_header: tenants.header_name().unwrap_or("x-tenant-id").to_owned(),
            extra: Vec::new(),
        };
        Self {
            pairer: Pairer::new(max_conns, sel),
            routes,
            tenants,
            metrics,
            series: HashSet::new(),
            max_series,
            ids: RandomIdGenerator::default(),
            out: Vec::new(),
        }
    }

    /// One kernel record. `label_of(tgid)` names the workload; `now` maps kernel times (ns,
    /// CLOCK_MONOTONIC) to wall time for exemplar timestamps.
    #[allow(clippy::too_many_arguments)]
    pub fn on_record(
        &mut self,
        conn: u64,
        role: Role,
        tgid: u32,
        tid: u32,
        request: &[u8],
        response: &[u8],
        req_ts: u64,
        resp_ts: u64,
        label_of: impl FnMut(u32) -> Arc<str>,
    ) {
        let mut out = std::mem::take(&mut self.out);
        self.pairer.on_record(
            conn, role, tgid, tid, request, response, req_ts, resp_ts, &mut out,
        );
        self.apply(&mut out, label_of);
        self.out = out;
    }

    pub fn on_close(&mut self, conn: u64, at: u64, label_of: impl FnMut(u32) -> Arc<str>) {
        let mut out = std::mem::take(&mut self.out);
        self.pairer.on_close(conn, at, &mut out);
        self.apply(&mut out, label_of);
        self.out = out;
    }

    fn apply(&mut self, out: &mut Vec<Output>, mut label_of: impl FnMut(u32) -> Arc<str>) {
        for o in out.drain(..) {
            match o {
                Output::Exchange(x) => {
                    let workload = label_of(x.tgid);
                    self.exchange(&x, &workload);
                }
                Output::WebSocketOpened {
                    role,
                    tgid,
                    request,
                    ..
                } => {
                    let labels = self.ws_labels(role, tgid, &request, &mut label_of);
                    self.metrics.ws_active.get_or_create(&labels).inc();
                }
                Output::WebSocketClosed {
                    role,
                    tgid,
                    request,
                    duration_ns,
                    ..
                } => {
                    let labels = self.ws_labels(role, tgid, &request, &mut label_of);
                    self.metrics.ws_active.get_or_create(&labels).dec();
                    self.metrics
                        .ws_duration
                        .get_or_create(&labels)
                        .observe(duration_ns as f64 / 1e9);
                }
                Output::Unpaired { reason, .. } => {
                    self.metrics
                        .unpaired
                        .get_or_create(&ReasonLabels {
                            reason: reason_label(reason),
                        })
                        .inc();
                }
            }
        }
    }

    fn tenant(&mut self, request: &crate::http::parse::RequestHead) -> Arc<str> {
        let view = RequestView {
            tenant_header: request.tenant_header.as_deref(),
            host: request.host.as_deref(),
            path: &request.path,
            baggage: request.baggage.as_deref(),
            pod_labels: None,
            namespace: None,
        };
        self.tenants.resolve(&view).0
    }

    fn ws_labels(
        &mut self,
        role: Role,
        tgid: u32,
        request: &crate::http::parse::RequestHead,
        label_of: &mut impl FnMut(u32) -> Arc<str>,
    ) -> WsLabels {
        WsLabels {
            side: side(role),
            tenant: self.tenant(request).to_string(),
            workload: label_of(tgid).to_string(),
        }
    }

    fn exchange(&mut self, x: &Exchange, workload: &Arc<str>) {
        let tenant = self.tenant(&x.request);
        let route = self.routes.route(workload, &x.request.path);
        let labels = RedLabels {
            http_request_method: x.request.method.as_str(),
            http_response_status_code: x.status,
            http_route: route.to_string(),
            tenant: tenant.to_string(),
            url_scheme: "http",
            workload: workload.to_string(),
        };
        let key = (side(x.role), labels);
        if !self.series.contains(&key) {
            if self.series.len() >= self.max_series {
                self.metrics.series_overflow.inc();
                return;
            }
            self.series.insert(key.clone());
        }
        // The span's trace: the caller's when its traceparent is valid, else a new one.
        let trace_id = trace::incoming(x.request.traceparent.as_deref(), None).map_or_else(
            || self.ids.new_trace_id(),
            |i| TraceId::from_bytes(i.trace_id),
        );
        let seconds = Duration::from_nanos(x.end_ns.saturating_sub(x.start_ns)).as_secs_f64();
        let family = match x.role {
            Role::Server => &self.metrics.server,
            Role::Client => &self.metrics.client,
        };
        family.get_or_create(&key.1).observe(
            seconds,
            Some(TraceLabel {
                trace_id: trace::hex(&trace_id.to_bytes()),
            }),
            Some(SystemTime::now()),
        );
    }

    pub fn stats(&self) -> crate::http::pairing::PairingStats {
        self.pairer.stats()
    }
}

fn reason_label(r: UnpairedReason) -> &'static str {
    match r {
        UnpairedReason::NoRequest => "no_request",
        UnpairedReason::BadRequest => "bad_request",
        UnpairedReason::BadResponse => "bad_response",
        UnpairedReason::Superseded => "superseded",
        UnpairedReason::Closed => "closed",
        UnpairedReason::Evicted => "evicted",
        UnpairedReason::QueueOverflow => "queue_overflow",
    }
}

fn side(role: Role) -> &'static str {
    match role {
        Role::Server => "server",
        Role::Client => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{route::RoutesConfig, tenant::TenantConfig};

    fn pipeline(max_series: usize) -> (HttpPipeline, HttpMetrics) {
        let metrics = HttpMetrics::default();
        let p = HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).unwrap(),
            TenantResolver::new(&TenantConfig::default()).unwrap(),
            max_series,
            metrics.clone(),
        );
        (p, metrics)
    }

    fn encode(m: &HttpMetrics) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        r.register_with_unit(
            "http_server_request_duration",
            "x",
            prometheus_client::registry::Unit::Seconds,
            m.server.clone(),
        );
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn exchanges_become_red_series_with_exemplars() {
        let (mut p, m) = pipeline(100);
        let label = |_| Arc::from("api");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = format!(
            "GET /posts/42?secret=1 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\ntraceparent: {tp}\r\n\r\n"
        );
        p.on_record(
            1,
            Role::Server,
            7,
            7,
            req.as_bytes(),
            b"HTTP/1.1 200 OK\r\n\r\n",
            1_000_000,
            21_000_000,
            label,
        );
        p.on_record(
            2,
            Role::Server,
            7,
            7,
            b"POST /posts HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\n\r\n",
            0,
            1_000,
            label,
        );
        let text = encode(&m);
        assert!(text.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/posts/{id}",tenant="acme",url_scheme="http",workload="api"} 1"#), "{text}");
        assert!(
            text.contains(r#"# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.02"#),
            "{text}"
        );
        assert!(text.contains(r#"http_request_method="POST",http_response_status_code="503",http_route="/posts",tenant="unknown""#), "{text}");
        assert!(
            !text.contains("secret"),
            "query strings never leave the node"
        );
    }

    #[test]
    fn series_cap_is_counted() {
        let (mut p, m) = pipeline(1);
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            let req = format!("GET / HTTP/1.1\r\nX-Tenant-ID: {t}\r\n\r\n");
            p.on_record(
                i as u64,
                Role::Server,
                1,
                1,
                req.as_bytes(),
                b"HTTP/1.1 200 OK\r\n\r\n",
                0,
                1,
                |_| Arc::from("w"),
            );
        }
        assert_eq!(m.series_overflow.get(), 2);
    }
}
