//! From captured HTTP exchanges to OpenTelemetry spans: the trace decision (ids, parent,
//! sampling), the span (name, kind, times, attributes, status), the parenting of outgoing
//! requests under the incoming request their thread was serving, and the resource each
//! workload's spans are exported under. Pure: no clock and no I/O (times and environment values
//! are parameters); randomness only through an [`IdGenerator`].
//!
//! # Which span is whose parent
//!
//! - A request with a valid `traceparent` joins that trace: same trace id, parent = the header's
//!   parent id (a remote parent), sampled per the configured sampler (the `parentbased_*` ones
//!   follow the header's flag).
//! - An outgoing (client) request without one becomes the child of the incoming (server)
//!   request its thread was serving only when the agent is sure of it (see
//!   [`crate::parenting`] for the rule, what it covers and what it leaves as roots); the server
//!   exchange is only known when its response begins, after its outgoing calls have finished,
//!   so such client exchanges wait in [`crate::parenting::PendingClients`] for a bounded time
//!   after their end (`otlp.client_parent_wait`) and in bounded number
//!   (`otlp.max_pending_client_spans`). Every client span says how its parent was decided
//!   (`tenantscope.parent`).
//! - Anything else is the root of a new trace, sampled by the trace id (`traceidratio`).

use std::{
    borrow::Cow,
    collections::HashMap,
    str::FromStr as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    Context, InstrumentationScope, KeyValue,
    trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
        TraceState,
    },
};
use opentelemetry_sdk::{
    Resource,
    trace::{
        IdGenerator, Sampler, SamplingDecision, ShouldSample as _, SpanData, SpanEvents, SpanLinks,
    },
};

use crate::{
    config::{OtlpConfig, TracesSampler},
    http::{
        pairing::Role,
        parse::Method,
        route::{OTHER, UNMATCHED},
        trace::Incoming,
    },
    parenting::ParentKind,
    workload::{Origin, PodMeta},
};

/// Most `tracestate` members W3C allows; a longer header is not propagated.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` header propagated (32 members of the longest key and value, roughly).
const MAX_TRACESTATE_LEN: usize = 512;

/// Maps kernel `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) to wall-clock time, from one
/// reading of both clocks. Wall-clock steps after the reading are not followed; the caller may
/// take a new reading now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonoToUnix {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i128,
}

impl MonoToUnix {
    /// From a monotonic reading and the wall-clock time taken right after it.
    pub fn from_readings(mono_ns: u64, unix: SystemTime) -> Self {
        let unix_ns = match unix.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Self {
            offset_ns: unix_ns - i128::from(mono_ns),
        }
    }

    /// The wall-clock time of a monotonic timestamp (never before 1970).
    pub fn to_system_time(self, mono_ns: u64) -> SystemTime {
        let unix_ns = (i128::from(mono_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX));
        UNIX_EPOCH + Duration::from_nanos(unix_ns as u64)
    }
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (`ratio` is its `_ARG`), as the SDK implements it.
pub fn sampler(kind: TracesSampler, ratio: f64) -> Sampler {
    match kind {
        TracesSampler::AlwaysOn => Sampler::AlwaysOn,
        TracesSampler::AlwaysOff => Sampler::AlwaysOff,
        TracesSampler::Traceidratio => Sampler::TraceIdRatioBased(ratio),
        TracesSampler::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        TracesSampler::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        TracesSampler::ParentbasedTraceidratio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// How the HTTP pipeline decides traces and parents outgoing requests (the `[otlp]` keys that
/// do not concern the exporter).
#[derive(Debug, Clone)]
pub struct SpanOptions {
    pub sampler: Sampler,
    /// `otlp.client_parent_wait`.
    pub client_parent_wait: Duration,
    /// `otlp.max_pending_client_spans`.
    pub max_pending_client_spans: usize,
}

impl SpanOptions {
    pub fn from_config(cfg: &OtlpConfig) -> Self {
        Self {
            sampler: sampler(cfg.sampler, cfg.sampler_arg),
            client_parent_wait: cfg.client_parent_wait,
            max_pending_client_spans: cfg.max_pending_client_spans,
        }
    }
}

impl Default for SpanOptions {
    /// The `[otlp]` defaults.
    fn default() -> Self {
        Self::from_config(&OtlpConfig::default())
    }
}

/// One exchange's place in a trace: decided once, used by both its span and its exemplar.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceDecision {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `SpanId::INVALID` for a root span.
    pub parent_span_id: SpanId,
    /// The parent is in another process (a `traceparent` header).
    pub parent_is_remote: bool,
    pub sampled: bool,
    /// Propagated from the caller's `tracestate`.
    pub trace_state: TraceState,
}

/// What an exchange's span descends from.
#[derive(Debug, Clone)]
pub enum Parent<'a> {
    /// Nothing: a new trace.
    Root,
    /// A valid `traceparent` on the request.
    Remote {
        incoming: Incoming,
        trace_state: TraceState,
    },
    /// The server span of the request the thread was serving (client spans only).
    Local(&'a TraceDecision),
}

/// Decides trace id, span id, parent and sampling; the sampler sees the parent as the SDK would
/// (remote or local, sampled or not) and, for a new trace, the new trace id.
pub fn decide(
    sampler: &Sampler,
    ids: &dyn IdGenerator,
    parent: Parent<'_>,
    kind: SpanKind,
) -> TraceDecision {
    let parent_cx = match &parent {
        Parent::Root => None,
        Parent::Remote {
            incoming,
            trace_state,
        } => Some(SpanContext::new(
            TraceId::from_bytes(incoming.trace_id),
            SpanId::from_bytes(incoming.parent_span_id),
            flags(incoming.sampled),
            true,
            trace_state.clone(),
        )),
        Parent::Local(d) => Some(SpanContext::new(
            d.trace_id,
            d.span_id,
            flags(d.sampled),
            false,
            d.trace_state.clone(),
        )),
    };
    let trace_id = parent_cx
        .as_ref()
        .map_or_else(|| ids.new_trace_id(), |p| p.trace_id());
    let cx = parent_cx
        .as_ref()
        .map(|p| Context::new().with_remote_span_context(p.clone()));
    let result = sampler.should_sample(cx.as_ref(), trace_id, "", &kind, &[], &[]);
    TraceDecision {
        trace_id,
        span_id: ids.new_span_id(),
        parent_span_id: parent_cx.as_ref().map_or(SpanId::INVALID, |p| p.span_id()),
        parent_is_remote: parent_cx.as_ref().is_some_and(SpanContext::is_remote),
        sampled: result.decision == SamplingDecision::RecordAndSample,
        trace_state: result.trace_state,
    }
}

fn flags(sampled: bool) -> TraceFlags {
    if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    }
}

/// The caller's `tracestate`, to propagate with a valid `traceparent`; empty when absent,
/// invalid or longer than W3C allows (32 members).
pub fn trace_state(header: Option<&str>) -> TraceState {
    let Some(header) = header.filter(|h| h.len() <= MAX_TRACESTATE_LEN) else {
        return TraceState::default();
    };
    let members = header.split(',').filter(|m| !m.trim().is_empty()).count();
    if members > MAX_TRACESTATE_MEMBERS {
        return TraceState::default();
    }
    TraceState::from_str(header).unwrap_or_default()
}

/// One paired request, reduced to what its span and its RED series need; what waits in
/// [`crate::parenting::PendingClients`] (about 1 KiB at most: the path is capped).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub role: Role,
    pub tgid: u32,
    /// Client exchanges: how their parent was decided, once it is (`tenantscope.parent`).
    pub parent: Option<ParentKind>,
    pub method: Method,
    /// Without query string (see `RequestHead::path`).
    pub path: String,
    pub host: Option<String>,
    pub http_minor: u8,
    pub status: u16,
    /// Kernel monotonic ns: request start and response start.
    pub start_ns: u64,
    pub end_ns: u64,
    pub tenant: Arc<str>,
    /// The route template, or `_other` / `_unmatched`.
    pub route: Arc<str>,
    /// The workload label, which is also the span's `service.name`.
    pub workload: Arc<str>,
    /// The serving (or calling) pod, in Kubernetes: its `k8s.*` attributes go on the resource.
    pub pod: Option<Arc<PodMeta>>,
    /// Request headers the operator allowlisted (`http.span_headers`), lowercase names.
    pub headers: Vec<(String, String)>,
}

/// A span ready for export, with the workload (and pod) whose resource it belongs under.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpan {
    pub origin: Origin,
    pub data: SpanData,
}

/// The instrumentation scope of every span the agent makes.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Whether `route` is a real template (not a fold-in value), fit for `http.route`.
fn known_route(route: &str) -> bool {
    !route.is_empty() && route != OTHER && route != UNMATCHED
}

/// `{method} {route}`, or `{method}` without a known route; `HTTP` for methods outside the
/// known set (semconv).
pub fn span_name(method: Method, route: &str) -> String {
    let method = match method {
        Method::Other => "HTTP",
        m => m.as_str(),
    };
    if known_route(route) {
        format!("{method} {route}")
    } else {
        method.to_owned()
    }
}

/// Error for 5xx on server spans, 4xx and 5xx on client spans (semconv); unset otherwise.
pub fn span_status(role: Role, status: u16) -> Status {
    let error = match role {
        Role::Server => status >= 500,
        Role::Client => status >= 400,
    };
    if error {
        Status::error("")
    } else {
        Status::Unset
    }
}

/// The span of `call` with the ids of `decision`.
pub fn build_span(
    call: &HttpCall,
    decision: &TraceDecision,
    clock: MonoToUnix,
    scope: &InstrumentationScope,
) -> SpanData {
    let status = span_status(call.role, call.status);
    let mut attributes = Vec::with_capacity(10);
    attributes.push(KeyValue::new("http.request.method", call.method.as_str()));
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(call.status),
    ));
    if known_route(&call.route) {
        attributes.push(KeyValue::new("http.route", call.route.to_string()));
    }
    attributes.push(KeyValue::new("url.path", call.path.clone()));
    attributes.push(KeyValue::new("url.scheme", "http"));
    if let Some(host) = &call.host {
        attributes.push(KeyValue::new("server.address", host.clone()));
        if call.role == Role::Client {
            // Required on client spans; never with a query string (the parser drops it).
            attributes.push(KeyValue::new(
                "url.full",
                format!("http://{host}{}", call.path),
            ));
        }
    }
    attributes.push(KeyValue::new(
        "network.protocol.version",
        if call.http_minor == 0 { "1.0" } else { "1.1" },
    ));
    attributes.push(KeyValue::new("tenant.id", call.tenant.to_string()));
    // Semconv: `http.request.header.<lowercase name>`, a list of values.
    for (name, value) in &call.headers {
        attributes.push(KeyValue::new(
            format!("http.request.header.{name}"),
            opentelemetry::Value::Array(
                vec![opentelemetry::StringValue::from(value.clone())].into(),
            ),
        ));
    }
    if matches!(status, Status::Error { .. }) {
        attributes.push(KeyValue::new("error.type", call.status.to_string()));
    }
    if let Some(parent) = call.parent {
        attributes.push(KeyValue::new("tenantscope.parent", parent.as_str()));
    }
    SpanData {
        span_context: SpanContext::new(
            decision.trace_id,
            decision.span_id,
            flags(decision.sampled),
            false,
            decision.trace_state.clone(),
        ),
        parent_span_id: decision.parent_span_id,
        parent_span_is_remote: decision.parent_is_remote,
        span_kind: match call.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        },
        name: Cow::Owned(span_name(call.method, &call.route)),
        start_time: clock.to_system_time(call.start_ns),
        end_time: clock.to_system_time(call.end_ns.max(call.start_ns)),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// A batch's spans grouped by resource, that is workload and pod (first-seen order), one
/// export request each: the OTLP exporter sends one resource per request.
pub fn group_by_origin(batch: Vec<AgentSpan>) -> Vec<(Origin, Vec<SpanData>)> {
    let mut groups: Vec<(Origin, Vec<SpanData>)> = Vec::new();
    let mut index: HashMap<Origin, usize> = HashMap::new();
    for span in batch {
        let i = *index.entry(span.origin.clone()).or_insert_with(|| {
            groups.push((span.origin.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(span.data);
    }
    groups
}

/// `key=value` pairs separated by commas, values percent-encoded: the format of
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`. Blank entries are skipped; an
/// entry without `=` or with an empty key is an error.
pub fn parse_otel_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("expected key=value, got {entry:?}"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("empty key in {entry:?}"));
        }
        pairs.push((key.to_owned(), percent_decode(value.trim())));
    }
    Ok(pairs)
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource attributes every workload's spans share: the node's, then those of the
/// standard environment variables, which win over everything (including `service.name`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceBase {
    node: Vec<KeyValue>,
    env: Vec<KeyValue>,
}

impl ResourceBase {
    /// `host.name` and `k8s.node.name` when known.
    pub fn new(host_name: Option<&str>, node_name: Option<&str>) -> Self {
        let mut node = Vec::new();
        if let Some(h) = host_name.filter(|h| !h.is_empty()) {
            node.push(KeyValue::new("host.name", h.to_owned()));
        }
        if let Some(n) = node_name.filter(|n| !n.is_empty()) {
            node.push(KeyValue::new("k8s.node.name", n.to_owned()));
        }
        Self {
            node,
            env: Vec::new(),
        }
    }

    /// Adds the values of `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` (which wins over
    /// a `service.name` in the former). A malformed `OTEL_RESOURCE_ATTRIBUTES` is ignored as a
    /// whole (as the specification asks); the error says why, for the caller to log.
    pub fn with_env(
        mut self,
        service_name: Option<&str>,
        resource_attributes: Option<&str>,
    ) -> (Self, Option<String>) {
        let mut error = None;
        if let Some(text) = resource_attributes {
            match parse_otel_pairs(text) {
                Ok(pairs) => self
                    .env
                    .extend(pairs.into_iter().map(|(k, v)| KeyValue::new(k, v))),
                Err(e) => error = Some(format!("OTEL_RESOURCE_ATTRIBUTES ignored: {e}")),
            }
        }
        if let Some(name) = service_name.filter(|n| !n.is_empty()) {
            self.env
                .push(KeyValue::new("service.name", name.to_owned()));
        }
        (self, error)
    }

    /// The resource of `workload`'s spans: node attributes, `service.name` = the workload,
    /// then the environment's attributes over them.
    pub fn for_workload(&self, workload: &str) -> Resource {
        self.for_origin(&Origin::host(workload))
    }

    /// [`Self::for_workload`], plus the pod's `k8s.*` attributes in Kubernetes.
    pub fn for_origin(&self, origin: &Origin) -> Resource {
        let pod = origin.pod.iter().flat_map(|p| p.resource_attributes());
        Resource::builder_empty()
            .with_attributes(self.node.iter().cloned())
            .with_attribute(KeyValue::new("service.name", origin.workload.to_string()))
            .with_attributes(pod.map(|(k, v)| KeyValue::new(k, v)))
            .with_attributes(self.env.iter().cloned())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Value;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Ids 1, 2, 3, ... so tests can name them.
    #[derive(Debug, Default)]
    struct Counting(AtomicU64);

    impl IdGenerator for Counting {
        fn new_trace_id(&self) -> TraceId {
            TraceId::from(u128::from(self.0.fetch_add(1, Ordering::Relaxed) + 1))
        }
        fn new_span_id(&self) -> SpanId {
            SpanId::from(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }

    /// Always the same trace id, for sampling tests.
    #[derive(Debug)]
    struct Fixed(TraceId);

    impl IdGenerator for Fixed {
        fn new_trace_id(&self) -> TraceId {
            self.0
        }
        fn new_span_id(&self) -> SpanId {
            SpanId::from(7)
        }
    }

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const PARENT: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn remote(sampled: bool) -> Parent<'static> {
        Parent::Remote {
            incoming: Incoming {
                trace_id: TRACE,
                parent_span_id: PARENT,
                sampled,
            },
            trace_state: TraceState::default(),
        }
    }

    fn pb_ratio(r: f64) -> Sampler {
        sampler(TracesSampler::ParentbasedTraceidratio, r)
    }

    fn call(role: Role, status: u16) -> HttpCall {
        HttpCall {
            role,
            tgid: 10,
            parent: None,
            method: Method::Get,
            path: "/posts/42".into(),
            host: Some("acme.platform.example".into()),
            http_minor: 1,
            status,
            start_ns: 1_000,
            end_ns: 21_000_000,
            tenant: "acme".into(),
            route: "/posts/{id}".into(),
            workload: "api".into(),
            pod: None,
            headers: Vec::new(),
        }
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn incoming_traceparent_is_the_parent_and_its_flag_decides() {
        let ids = Counting::default();
        let d = decide(&pb_ratio(0.0), &ids, remote(true), SpanKind::Server);
        assert_eq!(d.trace_id, TraceId::from_bytes(TRACE));
        assert_eq!(d.parent_span_id, SpanId::from_bytes(PARENT));
        assert!(d.parent_is_remote);
        assert!(d.sampled, "a sampled parent wins over a 0 ratio");
        assert_eq!(d.span_id, SpanId::from(1), "no trace id was generated");

        let d = decide(&pb_ratio(1.0), &ids, remote(false), SpanKind::Server);
        assert!(!d.sampled, "an unsampled parent wins over a ratio of 1");
        // Not parent-based: the trace is joined but the ratio decides.
        let always = sampler(TracesSampler::AlwaysOn, 0.0);
        let d = decide(&always, &ids, remote(false), SpanKind::Server);
        assert!(d.sampled);
        assert_eq!(d.trace_id, TraceId::from_bytes(TRACE));
    }

    #[test]
    fn new_traces_are_roots_sampled_by_their_trace_id() {
        let ids = Counting::default();
        let d = decide(&pb_ratio(1.0), &ids, Parent::Root, SpanKind::Server);
        assert_eq!(d.trace_id, TraceId::from(1u128));
        assert_eq!(d.span_id, SpanId::from(2));
        assert_eq!(d.parent_span_id, SpanId::INVALID);
        assert!(!d.parent_is_remote && d.sampled);

        // TraceIdRatioBased compares the low 63 bits of the trace id with ratio * 2^63: the same
        // id always gets the same decision, and the ratio moves the threshold.
        let low = |v: u64| TraceId::from(u128::from(v));
        let quarter = 1u64 << 61; // 0.25 of 2^63, before the >> 1
        for (trace, ratio, sampled) in [
            (low((quarter - 1) << 1), 0.25, true),
            (low(quarter << 1), 0.25, false),
            (low(u64::MAX), 0.999, false),
            (low(u64::MAX), 1.0, true),
            (low(0), 0.0, false),
        ] {
            for _ in 0..3 {
                let d = decide(
                    &pb_ratio(ratio),
                    &Fixed(trace),
                    Parent::Root,
                    SpanKind::Server,
                );
                assert_eq!(d.sampled, sampled, "{trace} at {ratio}");
            }
        }
        // About the ratio over many random ids.
        let ids = opentelemetry_sdk::trace::RandomIdGenerator::default();
        let kept = (0..10_000)
            .filter(|_| decide(&pb_ratio(0.1), &ids, Parent::Root, SpanKind::Server).sampled)
            .count();
        assert!((800..1200).contains(&kept), "{kept} of 10000 at 0.1");
        let off = sampler(TracesSampler::ParentbasedAlwaysOff, 1.0);
        assert!(!decide(&off, &ids, Parent::Root, SpanKind::Server).sampled);
        assert!(decide(&off, &ids, remote(true), SpanKind::Server).sampled);
    }

    #[test]
    fn client_under_a_local_server_span_shares_its_trace_and_decision() {
        let ids = Counting::default();
        for sampled in [true, false] {
            let server = decide(&pb_ratio(1.0), &ids, remote(sampled), SpanKind::Server);
            let client = decide(
                &pb_ratio(1.0),
                &ids,
                Parent::Local(&server),
                SpanKind::Client,
            );
            assert_eq!(client.trace_id, server.trace_id);
            assert_eq!(client.parent_span_id, server.span_id);
            assert_ne!(client.span_id, server.span_id);
            assert!(!client.parent_is_remote);
            assert_eq!(client.sampled, sampled);
        }
    }

    #[test]
    fn tracestate_is_propagated_when_valid() {
        let ids = Counting::default();
        let state = trace_state(Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
        let d = decide(
            &pb_ratio(1.0),
            &ids,
            Parent::Remote {
                incoming: Incoming {
                    trace_id: TRACE,
                    parent_span_id: PARENT,
                    sampled: true,
                },
                trace_state: state.clone(),
            },
            SpanKind::Server,
        );
        assert_eq!(d.trace_state, state);
        let too_many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert_eq!(
            trace_state(Some(&too_many.join(","))),
            TraceState::default()
        );
        assert_eq!(trace_state(Some("no-equals")), TraceState::default());
        assert_eq!(trace_state(None), TraceState::default());
    }

    #[test]
    fn span_carries_semconv_attributes_kind_and_times() {
        let ids = Counting::default();
        let d = decide(&pb_ratio(1.0), &ids, remote(true), SpanKind::Server);
        // Monotonic 0 is 2024-01-01T00:00:00Z.
        let epoch = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let clock = MonoToUnix::from_readings(5_000_000_000, epoch + Duration::from_secs(5));
        let span = build_span(&call(Role::Server, 200), &d, clock, &scope());
        assert_eq!(span.name, "GET /posts/{id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.span_context.trace_id(), TraceId::from_bytes(TRACE));
        assert_eq!(span.span_context.span_id(), d.span_id);
        assert!(span.span_context.is_sampled());
        assert_eq!(span.parent_span_id, SpanId::from_bytes(PARENT));
        assert!(span.parent_span_is_remote);
        assert_eq!(span.start_time, epoch + Duration::from_nanos(1_000));
        assert_eq!(span.end_time, epoch + Duration::from_nanos(21_000_000));
        assert_eq!(span.status, Status::Unset);
        let expect: [(&str, Value); 8] = [
            ("http.request.method", "GET".into()),
            ("http.response.status_code", 200i64.into()),
            ("http.route", "/posts/{id}".into()),
            ("url.path", "/posts/42".into()),
            ("url.scheme", "http".into()),
            ("server.address", "acme.platform.example".into()),
            ("network.protocol.version", "1.1".into()),
            ("tenant.id", "acme".into()),
        ];
        for (key, value) in &expect {
            assert_eq!(attr(&span, key), Some(value), "{key}");
        }
        assert_eq!(span.attributes.len(), expect.len(), "{:?}", span.attributes);
        assert_eq!(attr(&span, "error.type"), None);
        assert_eq!(span.instrumentation_scope.name(), "tenantscope-agent");

        let mut c = call(Role::Client, 200);
        c.http_minor = 0;
        c.host = None;
        c.route = UNMATCHED.into();
        c.method = Method::Other;
        let span = build_span(&c, &d, clock, &scope());
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.name, "HTTP", "no route, unknown method");
        assert_eq!(attr(&span, "http.route"), None);
        assert_eq!(attr(&span, "server.address"), None);
        assert_eq!(attr(&span, "http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(attr(&span, "network.protocol.version"), Some(&"1.0".into()));
        let with_host = build_span(&call(Role::Client, 200), &d, clock, &scope());
        assert_eq!(
            attr(&with_host, "url.full"),
            Some(&"http://acme.platform.example/posts/42".into())
        );
    }

    #[test]
    fn status_is_error_for_5xx_servers_and_4xx_5xx_clients() {
        let d = decide(
            &pb_ratio(1.0),
            &Counting::default(),
            Parent::Root,
            SpanKind::Server,
        );
        let clock = MonoToUnix::from_readings(0, UNIX_EPOCH);
        for (role, status, error) in [
            (Role::Server, 200, false),
            (Role::Server, 404, false),
            (Role::Server, 499, false),
            (Role::Server, 500, true),
            (Role::Server, 503, true),
            (Role::Client, 302, false),
            (Role::Client, 400, true),
            (Role::Client, 404, true),
            (Role::Client, 502, true),
        ] {
            let span = build_span(&call(role, status), &d, clock, &scope());
            if error {
                assert_eq!(span.status, Status::error(""), "{role:?} {status}");
                assert_eq!(
                    attr(&span, "error.type"),
                    Some(&status.to_string().into()),
                    "{role:?} {status}"
                );
            } else {
                assert_eq!(span.status, Status::Unset, "{role:?} {status}");
                assert_eq!(attr(&span, "error.type"), None);
            }
        }
    }

    #[test]
    fn monotonic_times_map_to_wall_clock() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = MonoToUnix::from_readings(3_000_000_000, at);
        assert_eq!(clock.to_system_time(3_000_000_000), at);
        assert_eq!(
            clock.to_system_time(3_000_000_001),
            at + Duration::from_nanos(1)
        );
        assert_eq!(clock.to_system_time(0), at - Duration::from_secs(3));
        // A monotonic time before 1970 (nonsense readings) is clamped, not a panic.
        let odd = MonoToUnix::from_readings(u64::MAX, UNIX_EPOCH);
        assert_eq!(odd.to_system_time(0), UNIX_EPOCH);
        let before = MonoToUnix::from_readings(0, UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before.to_system_time(0), UNIX_EPOCH);
    }

    #[test]
    fn groups_by_workload_in_first_seen_order() {
        let ids = Counting::default();
        let d = decide(&pb_ratio(1.0), &ids, Parent::Root, SpanKind::Server);
        let clock = MonoToUnix::from_readings(0, UNIX_EPOCH);
        let span = |w: &str| AgentSpan {
            origin: Origin::host(w),
            data: build_span(&call(Role::Server, 200), &d, clock, &scope()),
        };
        let groups = group_by_origin(vec![span("b"), span("a"), span("b"), span("c")]);
        let shape: Vec<(&str, usize)> = groups
            .iter()
            .map(|(o, s)| (&*o.workload, s.len()))
            .collect();
        assert_eq!(shape, [("b", 2), ("a", 1), ("c", 1)]);
    }

    #[test]
    fn otel_pairs_are_parsed_and_percent_decoded() {
        assert_eq!(
            parse_otel_pairs(" a=1 , b = x%20y%2Cz ,, c=%zz%4 ").unwrap(),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y,z".to_owned()),
                ("c".to_owned(), "%zz%4".to_owned()),
            ]
        );
        assert_eq!(
            parse_otel_pairs("authorization=Bearer%20abc=").unwrap(),
            [("authorization".to_owned(), "Bearer abc=".to_owned())]
        );
        assert!(parse_otel_pairs("").unwrap().is_empty());
        assert!(parse_otel_pairs("a=1,novalue").is_err());
        assert!(parse_otel_pairs("=1").is_err());
    }

    #[test]
    fn pods_get_their_own_resource_with_k8s_attributes() {
        use crate::workload::pods::OwnerKind;
        let get = |r: &Resource, k: &str| r.get(&opentelemetry::Key::from(k.to_owned()));
        let pod = |uid: &str, name: &str| {
            Some(Arc::new(PodMeta {
                uid: uid.into(),
                name: name.into(),
                namespace: "shop".into(),
                node: Some("node-1".into()),
                owner_kind: OwnerKind::StatefulSet,
                owner_name: "db".into(),
                controller: None,
                labels: Default::default(),
                containers: Vec::new(),
            }))
        };
        let (a, b) = (pod("u-0", "db-0"), pod("u-1", "db-1"));
        let r = ResourceBase::new(Some("node-1"), Some("node-1")).for_origin(&Origin {
            workload: "db".into(),
            pod: a.clone(),
        });
        for (k, v) in [
            ("service.name", "db"),
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "db-0"),
            ("k8s.pod.uid", "u-0"),
            ("k8s.statefulset.name", "db"),
            ("k8s.node.name", "node-1"),
        ] {
            assert_eq!(get(&r, k), Some(v.to_owned().into()), "{k}");
        }
        // Two replicas of one workload on the node: two resources, one export request each.
        let ids = Counting::default();
        let d = decide(&pb_ratio(1.0), &ids, Parent::Root, SpanKind::Server);
        let clock = MonoToUnix::from_readings(0, UNIX_EPOCH);
        let span = |pod: &Option<Arc<PodMeta>>| AgentSpan {
            origin: Origin {
                workload: "db".into(),
                pod: pod.clone(),
            },
            data: build_span(&call(Role::Server, 200), &d, clock, &scope()),
        };
        let groups = group_by_origin(vec![span(&a), span(&b), span(&a)]);
        let shape: Vec<(&str, usize)> = groups
            .iter()
            .map(|(o, s)| (o.pod.as_ref().map_or("", |p| p.name.as_str()), s.len()))
            .collect();
        assert_eq!(shape, [("db-0", 2), ("db-1", 1)]);
    }

    #[test]
    fn resource_is_per_workload_with_env_winning() {
        let get = |r: &Resource, k: &str| r.get(&opentelemetry::Key::from(k.to_owned()));
        let base = ResourceBase::new(Some("node-1"), Some("node-1.k8s"));
        let r = base.for_workload("api");
        assert_eq!(get(&r, "service.name"), Some("api".into()));
        assert_eq!(get(&r, "host.name"), Some("node-1".into()));
        assert_eq!(get(&r, "k8s.node.name"), Some("node-1.k8s".into()));
        assert_eq!(r.len(), 3);

        let (env, err) = base.clone().with_env(
            None,
            Some("deployment.environment.name=prod,host.name=override,service.name=from-attrs"),
        );
        assert_eq!(err, None);
        let r = env.for_workload("api");
        assert_eq!(get(&r, "deployment.environment.name"), Some("prod".into()));
        assert_eq!(get(&r, "host.name"), Some("override".into()));
        assert_eq!(get(&r, "service.name"), Some("from-attrs".into()));

        let (env, _) = base
            .clone()
            .with_env(Some("svc"), Some("service.name=from-attrs"));
        assert_eq!(
            get(&env.for_workload("api"), "service.name"),
            Some("svc".into()),
            "OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES"
        );

        let (env, err) = base.clone().with_env(Some(""), Some("a=1,broken"));
        assert!(err.expect("an error").contains("OTEL_RESOURCE_ATTRIBUTES"));
        assert_eq!(env, base, "a malformed variable is ignored as a whole");
    }
}
