//! From captured HTTP records to RED metrics and spans: pairing, then tenant and route, then one
//! trace decision per exchange ([`crate::spans::decide`]) that both the span and the exemplar
//! use, then the OpenTelemetry-named duration histograms with one exemplar per bucket carrying
//! the trace id of a sampled span, the span itself (to a [`SpanSink`]), and WebSocket
//! connections per tenant; with [`HttpPipeline::with_sli`], the same counted server requests per
//! series for the OTLP SLI export ([`crate::sli_export`]). A client exchange whose thread served
//! exactly one request waits (bounded) for that server exchange to confirm it as its parent, so
//! its series and span appear up to `otlp.client_parent_wait` later; the others are roots at once
//! (see [`crate::parenting`] for the rule and its limits).
//! Synchronous; the metric families are shared with the exposition (prometheus-client builds
//! exemplars only through its own histogram type).

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope,
    trace::{SpanKind, TraceId},
};
use opentelemetry_sdk::trace::{RandomIdGenerator, Sampler};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        histogram::Histogram,
    },
};

use crate::{
    aggregate::FastMap,
    http::{
        pairing::{Exchange, Output, Pairer, Role, UnpairedReason},
        parse::HeaderSelection,
        route::RouteTable,
        tenant::{RequestView, TenantResolver},
        trace,
    },
    otlp::{Outcome, SpanMetrics, SpanSink, Unparented},
    parenting::{ParentKind, PendingClients, ServerExchange, Serving, confirm},
    probes::http::ExchangeRecord,
    sli_export::{SliAccumulator, SliInterval},
    spans::{self, AgentSpan, HttpCall, MonoToUnix, Parent, SpanOptions, TraceDecision},
    workload::{Origin, PodMeta},
};
use tenantscope_agent_common::http::{RequestCounts, RequestKey};

/// OpenTelemetry's default bucket boundaries for HTTP durations (seconds).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// WebSocket connection lifetimes (seconds): a minute-long chat to a day-long dashboard.
pub const WEBSOCKET_BUCKETS: [f64; 9] = [
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0,
];

/// A label value shared with the pipeline's interned strings: building a series key per
/// request clones an `Arc` instead of allocating a `String` for each label.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for Label {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// Labels of `http_client_request_duration_seconds`: semconv requires `server.address` (from
/// the `Host` header; the port is not known from a captured head); `url_template` is the
/// opt-in route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    pub server_address: Label,
    pub tenant: Label,
    pub url_template: Label,
    pub workload: Label,
}

/// Labels of `http_server_request_duration_seconds` (semconv names, `.` -> `_`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedLabels {
    pub http_request_method: &'static str,
    pub http_response_status_code: u16,
    pub http_route: Label,
    pub tenant: Label,
    pub url_scheme: &'static str,
    pub workload: Label,
}

/// Labels of the kernel's requests and connections seen, per workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeenLabels {
    pub side: &'static str,
    pub workload: String,
}

/// Labels of `http_server_active_requests` (semconv `http.server.active_requests`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActiveLabels {
    pub http_request_method: &'static str,
    pub url_scheme: &'static str,
    pub workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: TraceIdValue,
}

/// A trace id as a label value: written as hex when scraped, not on every request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TraceIdValue(pub TraceId);

impl EncodeLabelValue for TraceIdValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        // `TraceId`'s Display is the 32 lowercase hex digits of W3C Trace Context.
        write!(encoder, "{}", self.0)
    }
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
    pub client: Family<ClientLabels, DurationHist, Ctor>,
    pub ws_active: Family<WsLabels, Gauge>,
    /// Requests being served now, from the kernel's per-process counts.
    pub active: Family<ActiveLabels, Gauge>,
    /// Requests and connections the kernel saw, whether or not their records arrived.
    pub requests_seen: Family<SeenLabels, Counter>,
    pub connections_seen: Family<SeenLabels, Counter>,
    pub ws_duration: Family<WsLabels, Histogram, fn() -> Histogram>,
    /// Requests not counted because `max_series` label sets exist already.
    pub series_overflow: Counter,
    /// Captured requests that were an agent's own span export (skipped).
    pub own_exports: Counter,
    /// Requests that could not be paired, by reason.
    pub unpaired: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        // Every reason exported from the start, at 0: a loss counter that appears only once
        // something is lost cannot be alerted on with rate() or increase().
        let unpaired = Family::<ReasonLabels, Counter>::default();
        for reason in UnpairedReason::ALL {
            let _ = unpaired.get_or_create(&ReasonLabels {
                reason: reason_label(reason),
            });
        }
        Self {
            server: Family::new_with_constructor(duration_hist as Ctor),
            client: Family::new_with_constructor(duration_hist as Ctor),
            ws_active: Family::default(),
            active: Family::default(),
            requests_seen: Family::default(),
            connections_seen: Family::default(),
            ws_duration: Family::new_with_constructor(ws_hist as fn() -> Histogram),
            series_overflow: Counter::default(),
            own_exports: Counter::default(),
            unpaired,
        }
    }
}

/// What the pipeline asks about the process a record came from. A closure naming the
/// workload is one (for a process of no M:N runtime).
pub trait ProcessView {
    /// Its workload label and pod.
    fn origin(&mut self, tgid: u32) -> Origin;
    /// Whether it runs many tasks on each OS thread (an M:N runtime such as Go's): then the
    /// thread a call is made on says nothing about the request it serves.
    fn multitasks(&mut self, _tgid: u32) -> bool {
        false
    }
}

impl<F: FnMut(u32) -> Origin> ProcessView for F {
    fn origin(&mut self, tgid: u32) -> Origin {
        self(tgid)
    }
}

/// How [`HttpPipeline::with_spans`] makes spans.
pub struct SpanSetup {
    /// Sampler and parenting bounds (`SpanOptions::from_config(&cfg.otlp)`).
    pub options: SpanOptions,
    /// Shared with the export task; registered by the caller.
    pub metrics: SpanMetrics,
    /// Where sampled spans go; `None` (otlp disabled): no spans, but trace decisions and
    /// parenting still give the exemplars their trace ids.
    pub sink: Option<SpanSink>,
    /// Kernel monotonic time to wall-clock time, for span times and exemplar timestamps.
    pub clock: MonoToUnix,
}

pub struct HttpPipeline {
    pairer: Pairer,
    routes: RouteTable,
    tenants: TenantResolver,
    metrics: HttpMetrics,
    /// Admitted series and their histograms (handles shared with the families): one hash
    /// lookup per exchange instead of an admission check plus the family's own lookup.
    server_series: FastMap<RedLabels, DurationHist>,
    client_series: FastMap<ClientLabels, DurationHist>,
    max_series: usize,
    ids: RandomIdGenerator,
    sampler: Sampler,
    span_metrics: SpanMetrics,
    sink: Option<SpanSink>,
    /// `None` until `with_spans`: exemplars are then stamped with the time they are recorded.
    clock: Option<MonoToUnix>,
    scope: InstrumentationScope,
    /// Client exchanges waiting for the server exchange they name (see [`crate::parenting`]).
    pending: PendingClients<HttpCall>,
    claimed: Vec<(u64, HttpCall)>,
    /// Latest kernel time seen (response starts) or given to `tick`.
    now_ns: u64,
    out: Vec<Output>,
    calls: Vec<HttpCall>,
    /// Server requests per RED series for the OTLP SLI export (`with_sli`).
    sli: Option<SliAccumulator>,
}

impl HttpPipeline {
    pub fn new(
        max_conns: usize,
        routes: RouteTable,
        tenants: TenantResolver,
        max_series: usize,
        metrics: HttpMetrics,
        span_headers: &[String],
    ) -> Self {
        let sel = HeaderSelection {
            tenant_header: tenants.header_name().unwrap_or("x-tenant-id").to_owned(),
            extra: std::iter::once(crate::otlp::OWN_EXPORT_HEADER.to_owned())
                .chain(span_headers.iter().map(|h| h.to_ascii_lowercase()))
                .collect(),
        };
        let options = SpanOptions::default();
        Self {
            pairer: Pairer::new(max_conns, sel),
            routes,
            tenants,
            metrics,
            server_series: FastMap::default(),
            client_series: FastMap::default(),
            max_series,
            ids: RandomIdGenerator::default(),
            // No waiting until `with_spans`: client series are recorded at once, as roots.
            pending: PendingClients::new(Duration::ZERO, 0),
            sampler: options.sampler,
            span_metrics: SpanMetrics::default(),
            sink: None,
            clock: None,
            scope: spans::scope(),
            now_ns: 0,
            out: Vec::new(),
            calls: Vec::new(),
            claimed: Vec::new(),
            sli: None,
        }
    }

    /// The pipeline of an `[http]` configuration (routes and tenant rules validated).
    pub fn from_config(
        cfg: &crate::config::HttpConfig,
        metrics: HttpMetrics,
    ) -> Result<Self, String> {
        Ok(Self::new(
            cfg.max_connections,
            RouteTable::new(&cfg.routes)?,
            TenantResolver::new(&cfg.tenant)?,
            cfg.max_series,
            metrics,
            &cfg.span_headers,
        ))
    }

    /// Also accumulates every counted server request for the OTLP SLI export
    /// ([`crate::sli_export`]), from `start` (wall clock) on.
    pub fn with_sli(mut self, start: SystemTime) -> Self {
        self.sli = Some(SliAccumulator::new(start));
        self
    }

    /// Ends the current SLI interval at `end` (wall clock) and returns its requests; `None`
    /// without `with_sli`.
    pub fn take_sli(&mut self, end: SystemTime) -> Option<SliInterval> {
        self.sli.as_mut().map(|s| s.take(end))
    }

    /// Sampling, parenting and span output. Without it: the default sampler, no spans, and no
    /// parenting of client exchanges (no waiting, so no need for `tick`). Call before the first
    /// record.
    pub fn with_spans(mut self, setup: SpanSetup) -> Self {
        self.sampler = setup.options.sampler;
        self.pending = PendingClients::new(
            setup.options.client_parent_wait,
            setup.options.max_pending_client_spans,
        );
        self.span_metrics = setup.metrics;
        self.sink = setup.sink;
        self.clock = Some(setup.clock);
        self
    }

    /// A new reading of the clocks (see [`crate::otlp::mono_to_unix_now`]).
    pub fn set_clock(&mut self, clock: MonoToUnix) {
        self.clock = Some(clock);
    }

    /// Releases, as root spans, the client exchanges whose wait for their parent ended by
    /// `now_mono_ns` (kernel monotonic ns, [`crate::otlp::monotonic_now_ns`]). Records do this
    /// too; call it on a timer (e.g. every poll) so they also leave when traffic stops.
    pub fn tick(&mut self, now_mono_ns: u64) {
        self.now_ns = self.now_ns.max(now_mono_ns);
        self.expire();
    }

    /// Releases every waiting client exchange as a root span (at shutdown, before the export
    /// task's last flush).
    pub fn flush_pending(&mut self) {
        let mut calls = std::mem::take(&mut self.calls);
        self.pending.drain(&mut calls);
        for call in calls.drain(..) {
            self.span_metrics.unparented(Unparented::Shutdown);
            self.finish_root(call, ParentKind::Unconfirmed);
        }
        self.calls = calls;
    }

    /// Forgets what is kept per workload label for labels that expired.
    pub fn drop_workloads(&mut self, expired: &[Arc<str>]) {
        self.span_metrics.forget_workloads(expired);
    }

    /// Client exchanges waiting for a parent.
    pub fn pending_client_spans(&self) -> usize {
        self.pending.len()
    }

    /// One kernel record; `procs` names its process's workload (and says whether it runs an
    /// M:N runtime).
    pub fn on_record(&mut self, r: &ExchangeRecord<'_>, mut procs: impl ProcessView) {
        let mut out = std::mem::take(&mut self.out);
        self.pairer.on_record(
            r.conn, r.role, r.tgid, r.tid, r.request, r.response, r.req_ts, r.resp_ts, &mut out,
        );
        self.apply(&mut out, &mut procs, r.serving);
        self.out = out;
    }

    pub fn on_close(&mut self, conn: u64, at: u64, mut procs: impl ProcessView) {
        let mut out = std::mem::take(&mut self.out);
        self.pairer.on_close(conn, at, &mut out);
        self.apply(&mut out, &mut procs, Serving::Nothing);
        self.out = out;
    }

    /// `serving`: what the thread of the record's client requests served when they began.
    fn apply(&mut self, out: &mut Vec<Output>, procs: &mut impl ProcessView, serving: Serving) {
        for o in out.drain(..) {
            match o {
                Output::Exchange(x) => {
                    let origin = procs.origin(x.tgid);
                    let serving = match serving {
                        Serving::One { .. } if procs.multitasks(x.tgid) => Serving::Many,
                        s => s,
                    };
                    self.exchange(x, origin, serving);
                }
                Output::WebSocketOpened {
                    role,
                    tgid,
                    request,
                    ..
                } => {
                    let labels = self.ws_labels(role, tgid, &request, procs);
                    self.metrics.ws_active.get_or_create(&labels).inc();
                }
                Output::WebSocketClosed {
                    role,
                    tgid,
                    request,
                    duration_ns,
                    ..
                } => {
                    let labels = self.ws_labels(role, tgid, &request, procs);
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

    fn tenant(
        &mut self,
        request: &crate::http::parse::RequestHead,
        pod: Option<&PodMeta>,
    ) -> Arc<str> {
        let view = RequestView {
            tenant_header: request.tenant_header.as_deref(),
            host: request.host.as_deref(),
            path: &request.path,
            baggage: request.baggage.as_deref(),
            pod_labels: pod.map(|p| &p.labels),
            namespace: pod.map(|p| p.namespace.as_str()),
        };
        self.tenants.resolve(&view).0
    }

    fn ws_labels(
        &mut self,
        role: Role,
        tgid: u32,
        request: &crate::http::parse::RequestHead,
        procs: &mut impl ProcessView,
    ) -> WsLabels {
        let origin = procs.origin(tgid);
        WsLabels {
            side: side(role),
            tenant: self.tenant(request, origin.pod.as_deref()).to_string(),
            workload: origin.workload.to_string(),
        }
    }

    fn exchange(&mut self, x: Exchange, origin: Origin, serving: Serving) {
        let Origin { workload, pod } = origin;
        // An agent's own span export (seen at a receiver on this node): never the agent itself.
        if x.request
            .extra
            .iter()
            .any(|(k, _)| k == crate::otlp::OWN_EXPORT_HEADER)
        {
            self.metrics.own_exports.inc();
            return;
        }
        let tenant = self.tenant(&x.request, pod.as_deref());
        let route = self.routes.route(&workload, &x.request.path);
        let incoming = trace::incoming(x.request.traceparent.as_deref(), None);
        let state = incoming.map(|_| spans::trace_state(x.request.tracestate.as_deref()));
        self.now_ns = self.now_ns.max(x.end_ns);
        let (conn, pipelined) = (x.conn, x.pipelined);
        let mut call = HttpCall {
            role: x.role,
            tgid: x.tgid,
            parent: None,
            method: x.request.method,
            path: x.request.path,
            host: x.request.host,
            http_minor: x.request.http_minor,
            status: x.status,
            start_ns: x.start_ns,
            end_ns: x.end_ns,
            tenant,
            route,
            workload,
            pod,
            headers: x
                .request
                .extra
                .into_iter()
                .filter(|(k, _)| k != crate::otlp::OWN_EXPORT_HEADER)
                .collect(),
        };
        let parent = match (incoming, state) {
            (Some(incoming), Some(trace_state)) => Some(Parent::Remote {
                incoming,
                trace_state,
            }),
            _ => None,
        };
        match (call.role, parent) {
            (Role::Server, parent) => {
                let parent = parent.unwrap_or(Parent::Root);
                let server = spans::decide(&self.sampler, &self.ids, parent, SpanKind::Server);
                let mut claimed = std::mem::take(&mut self.claimed);
                self.pending
                    .claim((call.tgid, conn, call.start_ns), &mut claimed);
                let exchange = ServerExchange {
                    start_ns: call.start_ns,
                    end_ns: call.end_ns,
                    pipelined,
                };
                self.finish(call, &server);
                for (start_ns, mut client) in claimed.drain(..) {
                    match confirm(exchange, start_ns) {
                        ParentKind::Exact => {
                            let d = spans::decide(
                                &self.sampler,
                                &self.ids,
                                Parent::Local(&server),
                                SpanKind::Client,
                            );
                            client.parent = Some(ParentKind::Exact);
                            self.finish(client, &d);
                        }
                        kind => self.finish_root(client, kind),
                    }
                }
                self.claimed = claimed;
            }
            // The application propagated context itself: that wins over the thread rule.
            (Role::Client, Some(parent)) => {
                let d = spans::decide(&self.sampler, &self.ids, parent, SpanKind::Client);
                call.parent = Some(ParentKind::Traceparent);
                self.finish(call, &d);
            }
            (Role::Client, None) => match serving {
                Serving::Nothing => self.finish_root(call, ParentKind::None),
                Serving::Many => self.finish_root(call, ParentKind::Ambiguous),
                Serving::One { .. } if !self.pending.enabled() => {
                    self.span_metrics.unparented(Unparented::NoServerSpan);
                    self.finish_root(call, ParentKind::Unconfirmed);
                }
                Serving::One { conn, req_ts } => {
                    let key = (call.tgid, conn, req_ts);
                    let (start, end) = (call.start_ns, call.end_ns);
                    if let Err(call) = self.pending.push(key, start, end, call) {
                        self.span_metrics.unparented(Unparented::BufferFull);
                        self.finish_root(call, ParentKind::Unconfirmed);
                    }
                }
            },
        }
        self.expire();
    }

    /// Client exchanges whose wait ended become roots.
    fn expire(&mut self) {
        let mut calls = std::mem::take(&mut self.calls);
        self.pending.expire(self.now_ns, &mut calls);
        for call in calls.drain(..) {
            self.span_metrics.unparented(Unparented::NoServerSpan);
            self.finish_root(call, ParentKind::Unconfirmed);
        }
        self.calls = calls;
    }

    /// A client exchange as the root of its own trace, saying why.
    fn finish_root(&mut self, mut call: HttpCall, why: ParentKind) {
        let d = spans::decide(&self.sampler, &self.ids, Parent::Root, SpanKind::Client);
        call.parent = Some(why);
        self.finish(call, &d);
    }

    /// The exchange's RED observation (with the decision's trace id as exemplar when sampled)
    /// and its span.
    fn finish(&mut self, call: HttpCall, d: &TraceDecision) {
        self.observe(&call, d);
        if let Some(kind) = call.parent {
            self.span_metrics.client_span(kind, &call.workload);
        }
        let Some(sink) = &self.sink else {
            return;
        };
        if !d.sampled {
            self.span_metrics.count(Outcome::NotSampled, 1);
            return;
        }
        // `with_spans` sets both.
        let clock = self
            .clock
            .unwrap_or_else(|| MonoToUnix::from_readings(0, SystemTime::UNIX_EPOCH));
        let data = spans::build_span(&call, d, clock, &self.scope);
        sink.offer(AgentSpan {
            origin: Origin {
                workload: call.workload,
                pod: call.pod,
            },
            data,
        });
    }

    fn observe(&mut self, call: &HttpCall, d: &TraceDecision) {
        let full = self.server_series.len() + self.client_series.len() >= self.max_series;
        let seconds = Duration::from_nanos(call.end_ns.saturating_sub(call.start_ns)).as_secs_f64();
        // Only a sampled span's trace id: an exemplar should lead to a trace that exists (a
        // bucket keeps its previous exemplar otherwise).
        let exemplar = d.sampled.then_some(TraceLabel {
            trace_id: TraceIdValue(d.trace_id),
        });
        let at = self
            .clock
            .map_or_else(SystemTime::now, |c| c.to_system_time(call.end_ns));
        let hist = match call.role {
            Role::Server => {
                let labels = RedLabels {
                    http_request_method: call.method.as_str(),
                    http_response_status_code: call.status,
                    http_route: Label(call.route.clone()),
                    tenant: Label(call.tenant.clone()),
                    url_scheme: "http",
                    workload: Label(call.workload.clone()),
                };
                let Some(hist) =
                    admit(&mut self.server_series, &self.metrics.server, &labels, full)
                else {
                    self.metrics.series_overflow.inc();
                    return;
                };
                // The same admitted series as the Prometheus histogram.
                if let Some(sli) = &mut self.sli {
                    sli.record(&labels, seconds);
                }
                hist
            }
            Role::Client => {
                let labels = ClientLabels {
                    http_request_method: call.method.as_str(),
                    http_response_status_code: call.status,
                    server_address: Label(Arc::from(call.host.as_deref().unwrap_or(""))),
                    tenant: Label(call.tenant.clone()),
                    url_template: Label(call.route.clone()),
                    workload: Label(call.workload.clone()),
                };
                let Some(hist) =
                    admit(&mut self.client_series, &self.metrics.client, &labels, full)
                else {
                    self.metrics.series_overflow.inc();
                    return;
                };
                hist
            }
        };
        hist.observe(seconds, exemplar, Some(at));
    }

    pub fn stats(&self) -> crate::http::pairing::PairingStats {
        self.pairer.stats()
    }

    /// What tenant and route attribution folded or rejected, since the start.
    pub fn label_stats(&self) -> LabelStats {
        LabelStats {
            tenants: self.tenants.stats(),
            route_overflow: self.routes.overflowed(),
        }
    }
}

/// Tenant and route label bounds at work (see [`HttpPipeline::label_stats`]).
#[derive(Debug, Default, Clone)]
pub struct LabelStats {
    pub tenants: crate::http::tenant::TenantStats,
    /// Requests whose route was folded into `_other` (`http.routes` bounds).
    pub route_overflow: u64,
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

/// Whether a label set may count: known already, or new while the cap is not reached.
/// The series' histogram if it is known or there is room for it (then it is created in
/// `family` too); `None` if the series budget is spent.
fn admit<L: Clone + Eq + std::hash::Hash + EncodeLabelSet + std::fmt::Debug>(
    known: &mut FastMap<L, DurationHist>,
    family: &Family<L, DurationHist, Ctor>,
    labels: &L,
    full: bool,
) -> Option<DurationHist> {
    if let Some(hist) = known.get(labels) {
        return Some(hist.clone());
    }
    if full {
        return None;
    }
    let hist = family.get_or_create(labels).clone();
    known.insert(labels.clone(), hist.clone());
    Some(hist)
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
    use crate::probes::http::ExchangeRecord;
    use opentelemetry::trace::SpanKind;

    fn queued(task: &mut crate::otlp::SpanExporterTask) -> Vec<crate::spans::AgentSpan> {
        let mut out = Vec::new();
        task.take_queued(&mut out);
        out
    }

    fn pipeline(max_series: usize) -> (HttpPipeline, HttpMetrics) {
        let metrics = HttpMetrics::default();
        let p = HttpPipeline::new(
            64,
            RouteTable::new(&RoutesConfig::default()).unwrap(),
            TenantResolver::new(&TenantConfig::default()).unwrap(),
            max_series,
            metrics.clone(),
            &[],
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
        let label = |_| Origin::host("api");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let req = format!(
            "GET /posts/42?secret=1 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\ntraceparent: {tp}\r\n\r\n"
        );
        p.on_record(
            &ExchangeRecord::test(
                1,
                Role::Server,
                7,
                7,
                req.as_bytes(),
                b"HTTP/1.1 200 OK\r\n\r\n",
                1_000_000,
                21_000_000,
            ),
            label,
        );
        p.on_record(
            &ExchangeRecord::test(
                2,
                Role::Server,
                7,
                7,
                b"POST /posts HTTP/1.1\r\nHost: x\r\n\r\n",
                b"HTTP/1.1 503 Busy\r\n\r\n",
                0,
                1_000,
            ),
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

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    /// A pipeline with spans to a queue the test reads, the `[otlp]` defaults but for
    /// `max_pending`, and monotonic 0 = Unix 0.
    fn with_spans(
        max_pending: usize,
    ) -> (
        HttpPipeline,
        HttpMetrics,
        SpanMetrics,
        crate::otlp::SpanExporterTask,
    ) {
        let (p, m) = pipeline(100);
        let span_metrics = SpanMetrics::default();
        let (sink, task) = crate::otlp::start(
            &crate::config::OtlpConfig::default(),
            crate::spans::ResourceBase::default(),
            span_metrics.clone(),
        );
        let p = p.with_spans(SpanSetup {
            options: SpanOptions {
                max_pending_client_spans: max_pending,
                ..SpanOptions::default()
            },
            metrics: span_metrics.clone(),
            sink: Some(sink),
            clock: MonoToUnix::from_readings(0, SystemTime::UNIX_EPOCH),
        });
        (p, m, span_metrics, task)
    }

    fn encode_all(m: &HttpMetrics) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        r.register("server", "x", m.server.clone());
        r.register("client", "x", m.client.clone());
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    /// A client exchange of thread (7, `tid`) from `start` to `end` ms, with `extra` headers,
    /// begun while its thread served the request of connection `tid` read at 1 ms.
    fn client(p: &mut HttpPipeline, tid: u32, start: u64, end: u64, extra: &str) {
        let serving = Serving::One {
            conn: u64::from(tid),
            req_ts: 1_000_000,
        };
        client_serving(p, tid, start, end, extra, serving, |_| Origin::host("api"));
    }

    fn client_serving(
        p: &mut HttpPipeline,
        tid: u32,
        start: u64,
        end: u64,
        extra: &str,
        serving: Serving,
        procs: impl ProcessView,
    ) {
        let req = format!("GET /users/9 HTTP/1.1\r\nHost: users\r\n{extra}\r\n");
        p.on_record(
            &ExchangeRecord::test(
                u64::from(tid) * 100 + start,
                Role::Client,
                7,
                tid,
                req.as_bytes(),
                b"HTTP/1.1 200 OK\r\n\r\n",
                start * 1_000_000,
                end * 1_000_000,
            )
            .serving(serving),
            procs,
        );
    }

    fn server(p: &mut HttpPipeline, tid: u32, start: u64, end: u64, flags: &str) {
        let req = format!(
            "GET /posts/1 HTTP/1.1\r\nX-Tenant-ID: acme\r\ntraceparent: 00-{TRACE_ID}-{PARENT_ID}-{flags}\r\n\r\n"
        );
        p.on_record(
            &ExchangeRecord::test(
                u64::from(tid),
                Role::Server,
                7,
                tid,
                req.as_bytes(),
                b"HTTP/1.1 200 OK\r\n\r\n",
                start * 1_000_000,
                end * 1_000_000,
            ),
            |_| Origin::host("api"),
        );
    }

    fn by_kind(spans: &[AgentSpan], kind: SpanKind) -> Vec<&opentelemetry_sdk::trace::SpanData> {
        spans
            .iter()
            .map(|s| &s.data)
            .filter(|d| d.span_kind == kind)
            .collect()
    }

    #[test]
    fn client_waits_for_its_server_and_shares_its_trace_in_span_and_exemplar() {
        let (mut p, m, sm, mut task) = with_spans(100);
        client(&mut p, 7, 2, 4, "");
        assert_eq!(p.pending_client_spans(), 1);
        assert!(queued(&mut task).is_empty(), "the client span waits");
        assert!(
            !encode_all(&m).contains("client_count"),
            "and so does its series"
        );
        server(&mut p, 7, 1, 21, "01");
        assert_eq!(p.pending_client_spans(), 0);
        let spans = queued(&mut task);
        let (servers, clients) = (
            by_kind(&spans, SpanKind::Server),
            by_kind(&spans, SpanKind::Client),
        );
        assert_eq!((servers.len(), clients.len()), (1, 1));
        let (s, c) = (servers[0], clients[0]);
        assert_eq!(trace::hex(&s.span_context.trace_id().to_bytes()), TRACE_ID);
        assert_eq!(trace::hex(&s.parent_span_id.to_bytes()), PARENT_ID);
        assert_eq!(c.span_context.trace_id(), s.span_context.trace_id());
        assert_eq!(c.parent_span_id, s.span_context.span_id());
        assert!(!c.parent_span_is_remote);
        let text = encode_all(&m);
        assert_eq!(
            text.matches(&format!("# {{trace_id=\"{TRACE_ID}\"}}"))
                .count(),
            2,
            "both exemplars carry the trace id of the spans: {text}"
        );
        assert_eq!(sm.unparented_count(Unparented::NoServerSpan), 0);
    }

    #[test]
    fn unclaimed_clients_become_counted_roots_after_the_wait() {
        let (mut p, m, sm, mut task) = with_spans(100);
        client(&mut p, 8, 2, 4, "");
        // Another thread's server does not claim it.
        server(&mut p, 7, 1, 21, "01");
        assert_eq!(p.pending_client_spans(), 1);
        let wait = SpanOptions::default().client_parent_wait.as_nanos() as u64;
        p.tick(4_000_000 + wait - 1);
        assert_eq!(p.pending_client_spans(), 1);
        p.tick(4_000_000 + wait);
        assert_eq!(p.pending_client_spans(), 0);
        assert_eq!(sm.unparented_count(Unparented::NoServerSpan), 1);
        let spans = queued(&mut task);
        let c = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(c.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        let trace_id = trace::hex(&c.span_context.trace_id().to_bytes());
        assert_ne!(trace_id, TRACE_ID);
        assert!(
            encode_all(&m).contains(&format!("# {{trace_id=\"{trace_id}\"}}")),
            "the root's exemplar is its own trace"
        );
        // Later records move time on as well.
        client(&mut p, 9, 10, 11, "");
        server(&mut p, 7, 3_000, 3_001, "01");
        assert_eq!(p.pending_client_spans(), 0);
        assert_eq!(sm.unparented_count(Unparented::NoServerSpan), 2);
    }

    #[test]
    fn a_client_traceparent_wins_over_the_thread() {
        let (mut p, _m, _sm, mut task) = with_spans(100);
        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        client(&mut p, 7, 2, 4, &format!("traceparent: {own}\r\n"));
        assert_eq!(p.pending_client_spans(), 0, "no need to wait");
        server(&mut p, 7, 1, 21, "01");
        let spans = queued(&mut task);
        let c = by_kind(&spans, SpanKind::Client)[0];
        assert_eq!(
            trace::hex(&c.span_context.trace_id().to_bytes()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(trace::hex(&c.parent_span_id.to_bytes()), "b7ad6b7169203331");
        assert!(c.parent_span_is_remote);
    }

    #[test]
    fn pending_clients_are_bounded_and_flushed_at_shutdown() {
        let (mut p, _m, sm, mut task) = with_spans(1);
        client(&mut p, 7, 2, 3, "");
        client(&mut p, 8, 2, 3, "");
        assert_eq!(p.pending_client_spans(), 1);
        assert_eq!(sm.unparented_count(Unparented::BufferFull), 1);
        assert_eq!(queued(&mut task).len(), 1, "the overflow is a root at once");
        p.flush_pending();
        assert_eq!(p.pending_client_spans(), 0);
        assert_eq!(sm.unparented_count(Unparented::Shutdown), 1);
        assert_eq!(queued(&mut task).len(), 1);
    }

    #[test]
    fn unsampled_exchanges_get_no_span_and_no_exemplar() {
        let (mut p, m, sm, mut task) = with_spans(100);
        client(&mut p, 7, 2, 4, "");
        server(&mut p, 7, 1, 21, "00");
        assert!(queued(&mut task).is_empty());
        assert_eq!(sm.spans(Outcome::NotSampled), 2);
        let text = encode_all(&m);
        assert!(text.contains("server_count"), "still counted: {text}");
        assert!(text.contains("client_count"), "still counted: {text}");
        assert!(!text.contains("trace_id"), "{text}");
    }

    /// The `tenantscope.parent` attribute of a span.
    fn parent_attr(d: &opentelemetry_sdk::trace::SpanData) -> Option<String> {
        d.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "tenantscope.parent")
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn clients_without_a_single_candidate_are_roots_at_once_and_say_why() {
        let (mut p, _m, sm, mut task) = with_spans(100);
        let api = |_| Origin::host("api");
        client_serving(&mut p, 7, 2, 4, "", Serving::Nothing, api);
        client_serving(&mut p, 8, 2, 4, "", Serving::Many, api);
        // One candidate, but the process runs goroutines: its threads prove nothing.
        struct Go;
        impl ProcessView for Go {
            fn origin(&mut self, _: u32) -> Origin {
                Origin::host("api")
            }
            fn multitasks(&mut self, _: u32) -> bool {
                true
            }
        }
        let one = Serving::One {
            conn: 9,
            req_ts: 1_000_000,
        };
        client_serving(&mut p, 9, 2, 4, "", one, Go);
        assert_eq!(p.pending_client_spans(), 0, "none of them waits");
        // Its would-be parent arrives and claims nothing.
        server(&mut p, 9, 1, 21, "01");
        let spans = queued(&mut task);
        let clients = by_kind(&spans, SpanKind::Client);
        assert_eq!(clients.len(), 3);
        for c in &clients {
            assert_eq!(c.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        }
        let attrs: Vec<_> = clients.iter().map(|c| parent_attr(c)).collect();
        assert_eq!(
            attrs,
            [
                Some("none".to_owned()),
                Some("ambiguous".to_owned()),
                Some("ambiguous".to_owned())
            ]
        );
        assert_eq!(sm.client_spans(ParentKind::None, "api"), 1);
        assert_eq!(sm.client_spans(ParentKind::Ambiguous, "api"), 2);
        assert_eq!(sm.client_spans(ParentKind::Exact, "api"), 0);
        let server_span = by_kind(&spans, SpanKind::Server)[0];
        assert_eq!(
            parent_attr(server_span),
            None,
            "server spans carry no verdict"
        );
    }

    #[test]
    fn a_claimed_candidate_is_confirmed_against_its_server_exchange() {
        let (mut p, _m, sm, mut task) = with_spans(100);
        // Exact: began within the server exchange (1..21 ms).
        client(&mut p, 7, 2, 4, "");
        server(&mut p, 7, 1, 21, "01");
        // Began after its candidate's response (the count dropped just after it looked).
        client(&mut p, 8, 25, 26, "");
        server(&mut p, 8, 1, 21, "01");
        // A pipelined pair on connection 10: two requests in flight.
        let one = Serving::One {
            conn: 10,
            req_ts: 1_000_000,
        };
        client_serving(&mut p, 10, 2, 4, "", one, |_| Origin::host("api"));
        let pair = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        p.on_record(
            &ExchangeRecord::test(
                10,
                Role::Server,
                7,
                10,
                pair,
                b"HTTP/1.1 200 OK\r\n\r\n",
                1_000_000,
                21_000_000,
            ),
            |_| Origin::host("api"),
        );
        assert_eq!(p.pending_client_spans(), 0);
        let spans = queued(&mut task);
        let clients = by_kind(&spans, SpanKind::Client);
        let servers = by_kind(&spans, SpanKind::Server);
        assert_eq!((clients.len(), servers.len()), (3, 3));
        assert_eq!(clients[0].parent_span_id, servers[0].span_context.span_id());
        assert_eq!(parent_attr(clients[0]).as_deref(), Some("exact"));
        for (c, why) in [(clients[1], "none"), (clients[2], "ambiguous")] {
            assert_eq!(c.parent_span_id, opentelemetry::trace::SpanId::INVALID);
            assert_eq!(parent_attr(c).as_deref(), Some(why));
        }
        assert_eq!(sm.client_spans(ParentKind::Exact, "api"), 1);
        // A workload whose label expired forgets its counts.
        p.drop_workloads(&["api".into()]);
        assert_eq!(sm.client_spans(ParentKind::Exact, "api"), 0);
    }

    #[test]
    fn series_cap_is_counted() {
        let (mut p, m) = pipeline(1);
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            let req = format!("GET / HTTP/1.1\r\nX-Tenant-ID: {t}\r\n\r\n");
            p.on_record(
                &ExchangeRecord::test(
                    i as u64,
                    Role::Server,
                    1,
                    1,
                    req.as_bytes(),
                    b"HTTP/1.1 200 OK\r\n\r\n",
                    0,
                    1,
                ),
                |_| Origin::host("w"),
            );
        }
        assert_eq!(m.series_overflow.get(), 2);
    }
}

/// Folds the kernel's per-process request counts (`HTTP_REQUESTS`) into the in-flight gauge
/// and the per-workload counters of requests and connections seen (the coverage figure's
/// denominator).
#[derive(Default)]
pub struct KernelRequests {
    /// Last values read, per kernel key, to turn them into increments.
    last: FastMap<RequestKey, RequestCounts>,
}

impl KernelRequests {
    /// Replaces the in-flight gauge's contents with the sums per (workload, method) (workloads
    /// with nothing in flight disappear; negative sums, responses to requests older than the
    /// agent, count as 0) and adds what each key gained since the last read to the counters.
    pub fn fold(
        &mut self,
        m: &HttpMetrics,
        entries: &[(RequestKey, RequestCounts)],
        mut label_of: impl FnMut(u32) -> Arc<str>,
    ) {
        use tenantscope_agent_common::http::{METHODS, ROLE_SERVER};
        let mut active: FastMap<ActiveLabels, i64> = FastMap::default();
        for (k, v) in entries {
            let workload = label_of(k.tgid);
            let server = k.role == ROLE_SERVER;
            if server && k.method != 0 {
                let method = METHODS.get(usize::from(k.method)).copied().unwrap_or("");
                let labels = ActiveLabels {
                    http_request_method: if method.is_empty() { "_OTHER" } else { method },
                    url_scheme: "http",
                    workload: workload.to_string(),
                };
                // Two's complement in the kernel.
                *active.entry(labels).or_default() += v.active as i64;
            }
            let prev = self.last.insert(*k, *v).unwrap_or_default();
            // Counts only grow while a key lives: a smaller one is a key deleted and recreated.
            let gained = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
            let (requests, connections) = (
                gained(v.requests, prev.requests),
                gained(v.connections, prev.connections),
            );
            if requests + connections == 0 {
                continue;
            }
            let labels = SeenLabels {
                side: if server { "server" } else { "client" },
                workload: workload.to_string(),
            };
            m.requests_seen.get_or_create(&labels).inc_by(requests);
            m.connections_seen
                .get_or_create(&labels)
                .inc_by(connections);
        }
        m.active.clear();
        for (labels, v) in active {
            m.active.get_or_create(&labels).set(v.max(0));
        }
    }

    /// Forgets a kernel key that was deleted (its counts were folded already).
    pub fn forget(&mut self, key: &RequestKey) {
        self.last.remove(key);
    }
}

#[cfg(test)]
mod kernel_requests_tests {
    use tenantscope_agent_common::http::{ROLE_CLIENT, ROLE_SERVER};

    use super::*;

    fn key(tgid: u32, method: u8, role: u8) -> RequestKey {
        RequestKey {
            tgid,
            method,
            role,
            _pad: [0; 2],
        }
    }

    fn counts(active: i64, requests: u64, connections: u64) -> RequestCounts {
        RequestCounts {
            active: active as u64,
            requests,
            connections,
        }
    }

    fn seen(m: &HttpMetrics, side: &'static str, workload: &str) -> (u64, u64) {
        let l = SeenLabels {
            side,
            workload: workload.into(),
        };
        (
            m.requests_seen.get_or_create(&l).get(),
            m.connections_seen.get_or_create(&l).get(),
        )
    }

    #[test]
    fn in_flight_sums_per_workload_and_seen_counts_grow_by_increments() {
        let m = HttpMetrics::default();
        let mut k = KernelRequests::default();
        let label = |t: u32| Arc::from(if t < 10 { "api" } else { "db" });
        k.fold(
            &m,
            &[
                (key(1, 1, ROLE_SERVER), counts(2, 10, 3)),
                (key(2, 1, ROLE_SERVER), counts(3, 5, 5)),
                // A slow request's method is not known in the kernel: seen, not in flight.
                (key(2, 0, ROLE_SERVER), counts(0, 1, 1)),
                (key(11, 2, ROLE_SERVER), counts(-1, 4, 1)),
                (key(11, 1, ROLE_CLIENT), counts(0, 7, 2)),
            ],
            label,
        );
        let active = |w: &str, method: &'static str| {
            m.active
                .get_or_create(&ActiveLabels {
                    http_request_method: method,
                    url_scheme: "http",
                    workload: w.into(),
                })
                .get()
        };
        assert_eq!(active("api", "GET"), 5);
        assert_eq!(active("db", "POST"), 0, "negative clamps to 0");
        assert_eq!(seen(&m, "server", "api"), (16, 9));
        assert_eq!(seen(&m, "server", "db"), (4, 1));
        assert_eq!(seen(&m, "client", "db"), (7, 2));

        // Increments only; a key recreated after deletion starts again from its new value.
        k.forget(&key(2, 1, ROLE_SERVER));
        k.fold(
            &m,
            &[
                (key(1, 1, ROLE_SERVER), counts(0, 12, 3)),
                (key(2, 1, ROLE_SERVER), counts(0, 2, 1)),
                (key(11, 2, ROLE_SERVER), counts(0, 1, 0)),
            ],
            label,
        );
        assert_eq!(seen(&m, "server", "api"), (20, 10));
        assert_eq!(seen(&m, "server", "db"), (5, 1), "smaller: recreated key");

        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("x", "x", m.active.clone());
        k.fold(&m, &[], label);
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("workload=\"api\""), "cleared: {text}");
    }
}
