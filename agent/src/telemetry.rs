//! Every metric the agent exports is named here, in one place.
//!
//! Live counters (events, errors) are prometheus-client metrics updated by the main loop; state
//! derived from kernel maps is published once per read cycle as a [`Published`] snapshot and
//! encoded by [`SnapshotCollector`] at scrape time.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
        info::Info,
    },
    registry::{Registry, Unit},
};
use tenantscope_agent_common::counters;

use crate::aggregate::{
    SyscallSeries,
    tcp::{DURATION_BUCKETS, Hist, RTT_BUCKETS, TcpSnapshot},
};

/// Content type of `/metrics` for clients that accept OpenMetrics (Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text format, served to every other client.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub const SYSCALL_DURATION: &str = "tenantscope_syscall_duration";
pub const SYSCALL_ERRORS: &str = "tenantscope_syscall_errors";
pub const PROBE_STATUS: &str = "tenantscope_agent_probe_status";
pub const RINGBUF_DROPS: &str = "tenantscope_agent_ringbuf_dropped_events";
pub const KERNEL_ERRORS: &str = "tenantscope_agent_kernel_errors";
pub const TCP_OPENED: &str = "tenantscope_tcp_connections_opened";
pub const TCP_CLOSED: &str = "tenantscope_tcp_connections_closed";
pub const TCP_OPEN: &str = "tenantscope_tcp_connections_open";
pub const TCP_CONNECT_FAILURES: &str = "tenantscope_tcp_connect_failures";
pub const TCP_DURATION: &str = "tenantscope_tcp_connection_duration";
pub const TCP_BYTES: &str = "tenantscope_tcp";
pub const TCP_RETRANSMITS: &str = "tenantscope_tcp_retransmitted_segments";
pub const TCP_RESETS: &str = "tenantscope_tcp_resets";
pub const TCP_RTT: &str = "tenantscope_tcp_rtt";
pub const TCP_LISTEN: &str = "tenantscope_tcp_listen";
pub const WORKLOAD_INFO: &str = "tenantscope_workload";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeKindLabels {
    pub probe: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

/// Live self-metrics, cheap to clone (all handles are `Arc`s).
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub events: Family<ProbeKindLabels, Counter>,
    pub decode_errors: Family<ProbeLabels, Counter>,
    pub map_read_errors: Family<MapLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub workloads: Gauge,
    pub processes: Gauge,
    pub workload_overflow: Counter,
    pub workloads_expired: Counter,
    pub read_duration: Histogram,
    pub proc_reads: Counter,
    pub http: crate::aggregate::http::HttpMetrics,
    pub kube: KubeMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeEventLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeReasonLabels {
    pub reason: &'static str,
}

/// A row of `tenantscope_workload_info`: what a workload label stands for in Kubernetes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadInfo {
    pub workload: String,
    pub namespace: String,
    pub kind: &'static str,
}

/// The pod watch (see `workload::k8s`). Exported whether or not it runs, every label value
/// included, so dashboards and rules find the names on every agent.
#[derive(Clone, Debug)]
pub struct KubeMetrics {
    pub events: Family<KubeEventLabels, Counter>,
    pub watch_errors: Counter,
    pub skipped: Family<KubeReasonLabels, Counter>,
    pub relists: Counter,
    pub pods: Gauge,
    pub synced: Gauge,
}

impl Default for KubeMetrics {
    fn default() -> Self {
        let m = Self {
            events: Family::default(),
            watch_errors: Counter::default(),
            skipped: Family::default(),
            relists: Counter::default(),
            pods: Gauge::default(),
            synced: Gauge::default(),
        };
        for r#type in ["init_apply", "apply", "delete"] {
            let _ = m.events.get_or_create(&KubeEventLabels { r#type });
        }
        for reason in crate::workload::pods::SKIP_REASONS {
            let _ = m.skipped.get_or_create(&KubeReasonLabels { reason });
        }
        m
    }
}

impl KubeMetrics {
    pub fn event(&self, r#type: &'static str) {
        self.events.get_or_create(&KubeEventLabels { r#type }).inc();
    }

    pub fn skipped(&self, reason: &'static str) {
        self.skipped
            .get_or_create(&KubeReasonLabels { reason })
            .inc();
    }
}

/// What the main loop publishes after each read of the kernel maps.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub syscalls: Vec<SyscallSeries>,
    pub tcp: TcpSnapshot,
    /// Cumulative kernel failure counters, indexed like `counters::ALL`.
    pub kernel_counters: [u64; counters::COUNT as usize],
    /// `(probe, status)`: status is one of [`PROBE_STATES`].
    pub probes: Vec<(&'static str, &'static str)>,
    /// Workloads running in pods on this node (sorted, distinct).
    pub workloads: Vec<WorkloadInfo>,
    /// Tenant and route folding (all zero without the HTTP probe).
    pub labels: crate::aggregate::http::LabelStats,
}

/// The values of the `status` label of `tenantscope_agent_probe_status`.
pub const PROBE_STATES: [&str; 3] = ["attached", "failed", "disabled"];

/// Encodes a [`Published`] snapshot at scrape time.
#[derive(Debug, Default)]
pub struct SnapshotCollector {
    pub published: Mutex<Arc<Published>>,
}

impl SnapshotCollector {
    pub fn publish(&self, p: Published) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    fn current(&self) -> Arc<Published> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = self.current();

        let mut e = encoder.encode_descriptor(
            SYSCALL_DURATION,
            "Syscall latency from entry to exit, per workload, aggregated in the kernel.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut per_bucket = Vec::new();
        for s in &p.syscalls {
            // The encoder takes per-bucket counts (it accumulates) and an explicit +Inf bucket.
            per_bucket.clear();
            let mut prev = 0;
            for &(le, cumulative) in &s.buckets {
                per_bucket.push((le, cumulative - prev));
                prev = cumulative;
            }
            per_bucket.push((f64::INFINITY, s.count - prev));
            let labels = [("syscall", s.syscall), ("workload", &*s.workload)];
            e.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                s.sum_seconds,
                s.count,
                &per_bucket,
                None,
            )?;
        }

        let mut e = encoder.encode_descriptor(
            SYSCALL_ERRORS,
            "Syscalls that returned an error (-4095..-1), per workload.",
            None,
            MetricType::Counter,
        )?;
        for s in &p.syscalls {
            let labels = [("syscall", s.syscall), ("workload", &*s.workload)];
            e.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&s.errors, None)?;
        }

        encode_tcp(&p.tcp, &mut encoder)?;

        encode_label_stats(&p.labels, &mut encoder)?;

        let mut e = encoder.encode_descriptor(
            WORKLOAD_INFO,
            "Kubernetes identity of a workload label: its namespace and owner kind (value 1; one per workload, namespace and kind with a live process in a pod on this node).",
            None,
            MetricType::Info,
        )?;
        for w in &p.workloads {
            let labels = [
                ("kind", w.kind),
                ("namespace", w.namespace.as_str()),
                ("workload", w.workload.as_str()),
            ];
            e.encode_info(&labels)?;
        }

        let mut e = encoder.encode_descriptor(
            PROBE_STATUS,
            "1 for the current status of each probe (attached, failed or disabled), 0 otherwise.",
            None,
            MetricType::Gauge,
        )?;
        for (probe, status) in &p.probes {
            for state in PROBE_STATES {
                let labels = [("probe", *probe), ("status", state)];
                e.encode_family(&labels)?
                    .encode_gauge(&i64::from(state == *status))?;
            }
        }

        let mut e = encoder.encode_descriptor(
            RINGBUF_DROPS,
            "Events the kernel could not queue because the ring buffer was full.",
            None,
            MetricType::Counter,
        )?;
        for (i, probe, kind) in counters::ALL {
            if kind == "ringbuf_full" {
                let v = p.kernel_counters[i as usize];
                e.encode_family(&[("probe", probe)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }

        let mut e = encoder.encode_descriptor(
            KERNEL_ERRORS,
            "Failure paths taken in kernel programs, by probe and kind.",
            None,
            MetricType::Counter,
        )?;
        for (i, probe, kind) in counters::ALL {
            if kind != "ringbuf_full" {
                let v = p.kernel_counters[i as usize];
                let labels = [("probe", probe), ("kind", kind)];
                e.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}

/// Encodes a fixed-bounds histogram (per-bucket counts; the encoder accumulates them).
fn encode_hist(
    e: &mut prometheus_client::encoding::MetricEncoder<'_>,
    bounds: &[f64],
    h: &Hist,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(h.counts.iter().copied())
        .collect();
    e.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

fn encode_tcp(t: &TcpSnapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    type Field = fn(&crate::aggregate::tcp::ConnSeries) -> u64;
    let counters: [(&str, &str, Field); 3] = [
        (
            TCP_OPENED,
            "TCP connections whose handshake completed, by workload and direction (active = connect, passive = accept).",
            |c| c.opened,
        ),
        (
            TCP_CLOSED,
            "Established TCP connections that closed, by workload and direction.",
            |c| c.closed,
        ),
        (
            TCP_RETRANSMITS,
            "TCP segments retransmitted, by workload and direction (unknown: connections older than the agent).",
            |c| c.retransmits,
        ),
    ];
    for (name, help, value) in counters {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        // Untracked connections are never opened or closed, only retransmit or reset.
        let untracked_ok = name == TCP_RETRANSMITS;
        for c in t
            .connections
            .iter()
            .filter(|c| untracked_ok || c.direction != "unknown")
        {
            let labels = [("direction", c.direction), ("workload", &*c.workload)];
            e.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value(c), None)?;
        }
    }

    let mut e = encoder.encode_descriptor(
        TCP_OPEN,
        "Established TCP connections currently open, by workload and direction.",
        None,
        MetricType::Gauge,
    )?;
    for c in t.connections.iter().filter(|c| c.direction != "unknown") {
        let labels = [("direction", c.direction), ("workload", &*c.workload)];
        e.encode_family(&labels)?.encode_gauge(&(c.open as i64))?;
    }

    let mut e = encoder.encode_descriptor(
        TCP_RESETS,
        "TCP resets sent (transmit) and received (receive), by workload and direction.",
        None,
        MetricType::Counter,
    )?;
    for c in &t.connections {
        for (io, v) in [("transmit", c.resets_tx), ("receive", c.resets_rx)] {
            let labels = [
                ("direction", c.direction),
                ("network_io_direction", io),
                ("workload", &*c.workload),
            ];
            e.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }

    let mut e = encoder.encode_descriptor(
        TCP_CONNECT_FAILURES,
        "Outgoing TCP connects that failed, by workload, peer and reason (refused, timeout, unreachable, aborted, other).",
        None,
        MetricType::Counter,
    )?;
    for f in &t.failures {
        let labels = [
            ("peer", &*f.peer),
            ("reason", f.reason),
            ("workload", &*f.workload),
        ];
        e.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&f.count, None)?;
    }

    let mut e = encoder.encode_descriptor(
        TCP_DURATION,
        "Lifetime of closed TCP connections from handshake to close, by workload, direction and peer.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for p in &t.peers {
        let labels = [
            ("direction", p.direction),
            ("peer", &*p.peer),
            ("workload", &*p.workload),
        ];
        encode_hist(
            &mut e.encode_family(&labels)?,
            &DURATION_BUCKETS,
            &p.duration,
        )?;
    }

    let mut e = encoder.encode_descriptor(
        TCP_RTT,
        "Smoothed round-trip time of TCP connections at close, by workload, direction and peer.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for p in t.peers.iter().filter(|p| p.rtt.count > 0) {
        let labels = [
            ("direction", p.direction),
            ("peer", &*p.peer),
            ("workload", &*p.workload),
        ];
        encode_hist(&mut e.encode_family(&labels)?, &RTT_BUCKETS, &p.rtt)?;
    }

    let mut e = encoder.encode_descriptor(
        TCP_BYTES,
        "TCP payload bytes of closed connections (retransmissions counted once), transmit or receive, by workload, direction and peer.",
        Some(&Unit::Bytes),
        MetricType::Counter,
    )?;
    for p in &t.peers {
        for (io, v) in [("transmit", p.bytes_tx), ("receive", p.bytes_rx)] {
            let labels = [
                ("direction", p.direction),
                ("network_io_direction", io),
                ("peer", &*p.peer),
                ("workload", &*p.workload),
            ];
            e.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }

    let mut e = encoder.encode_descriptor(
        TCP_LISTEN,
        "TCP ports each workload listens on (value 1).",
        None,
        MetricType::Info,
    )?;
    for l in &t.listeners {
        let port = l.port.to_string();
        let labels = [
            ("family", l.family),
            ("port", port.as_str()),
            ("workload", &*l.workload),
        ];
        e.encode_info(&labels)?;
    }
    Ok(())
}

/// The cumulative tenant and route counters of the HTTP pipeline: always present, so an
/// operator (and the label-overflow alert) can rely on them.
fn encode_label_stats(
    l: &crate::aggregate::http::LabelStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let t = &l.tenants;
    let mut e = encoder.encode_descriptor(
        "tenantscope_agent_tenant_overflow",
        "Requests whose tenant was folded into \"_other\" because http.tenant.max_tenants tenants already have a label",
        None,
        MetricType::Counter,
    )?;
    e.encode_counter::<NoLabelSet, _, u64>(&t.overflowed, None)?;
    let mut e = encoder.encode_descriptor(
        "tenantscope_agent_tenant_invalid",
        "Tenant values that were not valid ids, per source (the chain then tried the next source)",
        None,
        MetricType::Counter,
    )?;
    for (source, n) in t.invalid.iter() {
        e.encode_family(&[("source", source)])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    let mut e = encoder.encode_descriptor(
        "tenantscope_agent_tenant_not_allowlisted",
        "Valid tenant ids rejected because they are not in http.tenant.allowlist",
        None,
        MetricType::Counter,
    )?;
    e.encode_counter::<NoLabelSet, _, u64>(&t.not_allowlisted, None)?;
    let mut e = encoder.encode_descriptor(
        "tenantscope_agent_tenants",
        "Tenants with their own label value (at most http.tenant.max_tenants)",
        None,
        MetricType::Gauge,
    )?;
    e.encode_gauge(&(t.distinct_tenants as i64))?;
    let mut e = encoder.encode_descriptor(
        "tenantscope_agent_http_route_overflow",
        "Requests whose route was folded into \"_other\" by the http.routes bounds",
        None,
        MetricType::Counter,
    )?;
    e.encode_counter::<NoLabelSet, _, u64>(&l.route_overflow, None)?;
    Ok(())
}

impl Default for Telemetry {
    fn default() -> Self {
        // Loss counters exist at 0 from the start, so that rate() and alerts see them.
        let decode_errors = Family::<ProbeLabels, Counter>::default();
        for probe in ["process", "tcp", "http"] {
            let _ = decode_errors.get_or_create(&ProbeLabels { probe });
        }
        let map_read_errors = Family::<MapLabels, Counter>::default();
        for map in [
            "SYSCALL_STATS",
            "TCP_STATS",
            "TCP_LISTENERS",
            "HTTP_REQUESTS",
            "KERNEL_COUNTERS",
        ] {
            let _ = map_read_errors.get_or_create(&MapLabels { map });
        }
        Self {
            events: Family::default(),
            decode_errors,
            map_read_errors,
            map_entries: Family::default(),
            workloads: Gauge::default(),
            processes: Gauge::default(),
            workload_overflow: Counter::default(),
            workloads_expired: Counter::default(),
            // 0.5 ms .. ~4 s: a read of a full map is tens of milliseconds.
            read_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
            ),
            proc_reads: Counter::default(),
            http: Default::default(),
            kube: KubeMetrics::default(),
        }
    }
}

impl Telemetry {
    /// Registers every agent metric; returns the registry served on `/metrics`.
    pub fn register(&self, collector: Arc<SnapshotCollector>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "tenantscope_agent_build",
            "Build information of the running agent",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("target_arch", std::env::consts::ARCH.to_owned()),
            ]),
        );
        r.register(
            "tenantscope_agent_events",
            "Events received from kernel ring buffers, by probe and kind",
            self.events.clone(),
        );
        r.register(
            "tenantscope_agent_event_decode_errors",
            "Ring-buffer events that could not be decoded and were skipped",
            self.decode_errors.clone(),
        );
        r.register(
            "tenantscope_agent_map_read_errors",
            "Failed reads or deletes of kernel maps",
            self.map_read_errors.clone(),
        );
        r.register(
            "tenantscope_agent_map_entries",
            "Entries in a kernel map at the last read (capacity planning for max_map_entries)",
            self.map_entries.clone(),
        );
        r.register(
            "tenantscope_agent_workloads",
            "Distinct workload label values currently exported (bounded by workloads.max)",
            self.workloads.clone(),
        );
        r.register(
            "tenantscope_agent_processes",
            "Processes the agent tracks",
            self.processes.clone(),
        );
        r.register(
            "tenantscope_agent_workload_overflow",
            "Processes counted under workload=\"_other\" because workloads.max was reached",
            self.workload_overflow.clone(),
        );
        r.register(
            "tenantscope_agent_workloads_expired",
            "Workload series removed after workloads.idle_ttl without a live process",
            self.workloads_expired.clone(),
        );
        let k = &self.kube;
        r.register(
            "tenantscope_agent_kubernetes_watch_events",
            "Pod watch events received from the Kubernetes API, by type (init_apply during a (re)list)",
            k.events.clone(),
        );
        r.register(
            "tenantscope_agent_kubernetes_watch_errors",
            "Pod watch failures (list, watch start, dropped stream, API error); the watch backs off and recovers",
            k.watch_errors.clone(),
        );
        r.register(
            "tenantscope_agent_kubernetes_pods_skipped",
            "Pods not indexed, by reason (index_full: kubernetes.max_pods reached; missing_*: malformed object)",
            k.skipped.clone(),
        );
        r.register(
            "tenantscope_agent_kubernetes_relists",
            "Completed full lists of this node's pods (1 at start, more after the watch expired)",
            k.relists.clone(),
        );
        r.register(
            "tenantscope_agent_kubernetes_pods",
            "Pods of this node in the agent's index",
            k.pods.clone(),
        );
        r.register(
            "tenantscope_agent_kubernetes_synced",
            "1 once the first list of this node's pods completed, 0 before (or without Kubernetes)",
            k.synced.clone(),
        );
        r.register(
            "tenantscope_agent_proc_reads",
            "Reads of /proc/<pid> to identify a process",
            self.proc_reads.clone(),
        );
        r.register_with_unit(
            "tenantscope_agent_map_read_duration",
            "Time to read and fold the kernel aggregation maps, per read cycle",
            Unit::Seconds,
            self.read_duration.clone(),
        );
        let h = &self.http;
        r.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, from the first request byte read to the first response byte written (OpenTelemetry http.server.request.duration)",
            Unit::Seconds,
            h.server.clone(),
        );
        r.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP client requests, from the first request byte written to the first response byte read (OpenTelemetry http.client.request.duration)",
            Unit::Seconds,
            h.client.clone(),
        );
        r.register(
            "http_server_active_requests",
            "HTTP server requests being served now: request received, response not yet started (OpenTelemetry http.server.active_requests)",
            h.active.clone(),
        );
        r.register(
            "tenantscope_http_websocket_connections_active",
            "WebSocket connections open now, by workload, side and tenant",
            h.ws_active.clone(),
        );
        r.register_with_unit(
            "tenantscope_http_websocket_connection_duration",
            "Lifetime of closed WebSocket connections, from the 101 response to the close",
            Unit::Seconds,
            h.ws_duration.clone(),
        );
        r.register(
            "tenantscope_agent_http_series_overflow",
            "Requests not counted in their own series because http.max_series label sets exist",
            h.series_overflow.clone(),
        );
        r.register(
            "tenantscope_agent_http_own_exports_skipped",
            "Captured HTTP requests that were a Tenantscope agent's own OTLP span export, not traced or counted",
            h.own_exports.clone(),
        );
        r.register(
            "tenantscope_agent_http_requests_seen",
            "HTTP requests whose first bytes the kernel saw, by workload and side, counted in the kernel whether or not their record reached the agent: the requests counted in http_*_request_duration_seconds divided by these are the agent's coverage",
            h.requests_seen.clone(),
        );
        r.register(
            "tenantscope_agent_http_connections_seen",
            "Connections on which the kernel saw an HTTP request, by workload and side",
            h.connections_seen.clone(),
        );
        r.register(
            "tenantscope_agent_http_unpaired_requests",
            "Captured HTTP messages that could not be paired into a request and response, by reason",
            h.unpaired.clone(),
        );
        r.register_collector(Box::new(collector));
        r
    }
}

/// Renders the registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(64 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        // Only a fmt::Write into a String; it cannot fail short of OOM. Keep the output valid.
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus lists it first when it does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text into the classic Prometheus text format (0.0.4), for clients that
/// do not negotiate OpenMetrics (curl, promtool). Same samples; the differences are only
/// syntactic: counter and info families are named with their `_total`/`_info` suffix, `# UNIT`
/// and `# EOF` are dropped, exemplars are removed.
pub fn to_prometheus_text(om: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, ty)) = rest.split_once(' ')
        {
            types.insert(name, ty);
        }
    }
    let family = |name: &str| -> (String, Option<&str>) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), Some("counter")),
            Some("info") => (format!("{name}_info"), Some("gauge")),
            Some("unknown") => (name.to_owned(), Some("untyped")),
            other => (name.to_owned(), other),
        }
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {help}", family(name).0);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (renamed, ty) = family(name);
            let _ = writeln!(out, "# TYPE {renamed} {}", ty.unwrap_or("untyped"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: no equivalent in the classic format.
        } else {
            out.push_str(strip_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// Cuts ` # {exemplar} ...` off a sample line, ignoring `#` inside quoted label values.
fn strip_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let (mut in_quotes, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b'#' if !in_quotes && i > 0 && bytes[i - 1] == b' ' => return line[..i - 1].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::SyscallSeries;

    fn sample_registry() -> Registry {
        let t = Telemetry::default();
        t.events
            .get_or_create(&ProbeKindLabels {
                probe: "process",
                kind: "exec",
            })
            .inc_by(3);
        let c = Arc::new(SnapshotCollector::default());
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        for (i, le) in [0.001, 0.004].into_iter().enumerate() {
            buckets.push((le, (i as u64 + 1) * 2));
        }
        c.publish(Published {
            syscalls: vec![SyscallSeries {
                workload: "we\"ird # \\name".into(),
                syscall: "read",
                count: 5,
                errors: 1,
                sum_seconds: 0.01,
                buckets,
            }],
            kernel_counters: [7, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tcp: TcpSnapshot::default(),
            probes: vec![("syscalls", "attached"), ("process", "failed")],
            workloads: vec![WorkloadInfo {
                workload: "api".into(),
                namespace: "shop".into(),
                kind: "Deployment",
            }],
            labels: Default::default(),
        });
        t.register(c)
    }

    #[test]
    fn openmetrics_exposition() {
        let om = encode(&sample_registry());
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE tenantscope_syscall_duration_seconds histogram"));
        assert!(
            om.contains(
                "tenantscope_workload_info{kind=\"Deployment\",namespace=\"shop\",workload=\"api\"} 1"
            ),
            "{om}"
        );
        assert!(
            om.contains("tenantscope_agent_kubernetes_pods_skipped_total{reason=\"index_full\"} 0"),
            "{om}"
        );
        for line in [
            "tenantscope_agent_tenant_overflow_total 0",
            "tenantscope_agent_tenant_invalid_total{source=\"pod_label\"} 0",
            "tenantscope_agent_http_route_overflow_total 0",
            "tenantscope_agent_tenants 0",
        ] {
            assert!(om.contains(line), "{line} in {om}");
        }
        // Per-bucket counts 2, 2 and the rest (1) in +Inf, cumulated by the encoder.
        assert!(om.contains(r##"tenantscope_syscall_duration_seconds_bucket{le="0.001",syscall="read",workload="we\"ird # \\name"} 2"##), "{om}");
        assert!(om.contains(r##"le="0.004",syscall="read",workload="we\"ird # \\name"} 4"##));
        assert!(om.contains(r##"le="+Inf",syscall="read",workload="we\"ird # \\name"} 5"##));
        assert!(om.contains(
            r##"tenantscope_syscall_errors_total{syscall="read",workload="we\"ird # \\name"} 1"##
        ));
        assert!(
            om.contains(r##"tenantscope_agent_probe_status{probe="process",status="failed"} 1"##)
        );
        assert!(
            om.contains(r##"tenantscope_agent_probe_status{probe="process",status="attached"} 0"##)
        );
        assert!(
            om.contains(r##"tenantscope_agent_ringbuf_dropped_events_total{probe="process"} 7"##)
        );
        assert!(om.contains(
            r##"tenantscope_agent_kernel_errors_total{probe="syscalls",kind="unpaired_exit"} 2"##
        ));
        assert!(om.contains("tenantscope_agent_build_info{"));
        assert!(
            om.lines()
                .filter(|l| l.starts_with("# HELP"))
                .all(|l| !l.ends_with("..")),
            "help texts end with exactly one period"
        );
    }

    #[test]
    fn classic_text_conversion() {
        let text = to_prometheus_text(&encode(&sample_registry()));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.contains("# TYPE tenantscope_agent_events_total counter"));
        assert!(text.contains("# HELP tenantscope_agent_events_total "));
        assert!(text.contains("# TYPE tenantscope_agent_build_info gauge"));
        assert!(text.contains("# TYPE tenantscope_syscall_duration_seconds histogram"));
        assert!(
            text.contains(r##"workload="we\"ird # \\name"} 5"##),
            "quoted # kept: {text}"
        );
    }

    #[test]
    fn exemplars_are_stripped_and_negotiation() {
        assert_eq!(
            strip_exemplar(r##"a_bucket{le="1"} 3 # {trace_id="ab"} 0.5 1.7e9"##),
            r##"a_bucket{le="1"} 3"##
        );
        assert_eq!(strip_exemplar(r##"a{x="# y"} 1"##), r##"a{x="# y"} 1"##);
        assert_eq!(strip_exemplar(r##"a{x="\" # "} 1"##), r##"a{x="\" # "} 1"##);
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
