//! The agent's I/O shell: one task owns all state and reacts to timers and ring-buffer
//! readiness. The logic it drives (`workload`, `aggregate`, decoding) is pure.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use tenantscope_agent_common::{
    counters,
    syscalls::{SyscallKey, SyscallStats},
    tcp::{TcpStats, TcpStatsKey},
};
use tokio::{io::unix::AsyncFd, time::MissedTickBehavior};

use crate::{
    aggregate::{
        SyscallAggregator,
        tcp::{PeerNaming, TcpAggregator},
    },
    config::{Config, SyscallHook},
    probes::{self, Loaded, ProbeError, ProbeState, http, process, syscalls, tcp},
    telemetry::{
        KubeReasonLabels, MapLabels, ProbeKindLabels, ProbeLabels, Published, SnapshotCollector,
        Telemetry, WorkloadInfo,
    },
    workload::{
        Origin, PodEvent, PodIndex, ProcessTable, TableStats, Workload, listeners,
        pods::PodIndexStats, procfs,
    },
};

/// Liveness and readiness, shared with the HTTP server.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last loop iteration.
    last_loop_ms: AtomicU64,
    /// Set once probes were attached (or failed) and the first read cycle completed.
    ready: AtomicBool,
    /// A loop iteration older than this means the agent is stuck.
    stall_after: Duration,
}

impl Health {
    pub fn new(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_loop_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stall_after,
        }
    }

    fn beat(&self) {
        self.last_loop_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        let last = Duration::from_millis(self.last_loop_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < self.stall_after
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

pub struct Agent {
    cfg: Config,
    loaded: Loaded,
    syscalls: Option<syscalls::SyscallsProbe>,
    /// The process probe's ring buffer, registered with the runtime's epoll.
    process_events: Option<AsyncFd<RingBuf<MapData>>>,
    tcp: Option<tcp::TcpProbe>,
    tcp_events: Option<AsyncFd<RingBuf<MapData>>>,
    tcp_agg: TcpAggregator,
    tcp_buf: Vec<(TcpStatsKey, TcpStats)>,
    http_events: Option<AsyncFd<RingBuf<MapData>>>,
    http_probe: Option<http::HttpProbe>,
    http_requests: Vec<(
        tenantscope_agent_common::http::RequestKey,
        tenantscope_agent_common::http::RequestCounts,
    )>,
    kernel_requests: crate::aggregate::http::KernelRequests,
    http: Option<crate::aggregate::http::HttpPipeline>,
    /// Where finished SLI intervals go (`None`: no SLI export, or no HTTP pipeline).
    sli: Option<crate::sli_export::SliSender>,
    probes: Vec<(&'static str, ProbeState)>,
    table: ProcessTable,
    agg: SyscallAggregator,
    telemetry: Telemetry,
    collector: Arc<SnapshotCollector>,
    health: Arc<Health>,
    proc_root: PathBuf,
    /// cgroup v2 mount, to resolve the cgroup ids carried by exec events.
    cgroup2: Option<PathBuf>,
    own_tgid: u32,
    buf: Vec<(SyscallKey, SyscallStats)>,
    kernel_counters: [u64; counters::COUNT as usize],
    /// Ring-buffer drops seen at the last `/proc` rescan: new drops mean missed exec events,
    /// so the next rescan also re-reads known processes.
    drops_at_rescan: u64,
    last_table_stats: TableStats,
    /// Converted events of the Kubernetes pod watch (`None`: not in Kubernetes, or it ended).
    pod_events: Option<tokio::sync::mpsc::Receiver<PodEvent>>,
    last_pod_stats: PodIndexStats,
    /// `--record-http`: raw http records for `cargo xtask bench pipeline`.
    recorder: Option<crate::replay::Recorder>,
}

impl Agent {
    /// Loads the kernel object and attaches every enabled probe. Only failures that leave the
    /// agent with nothing to do (privileges, object load) are errors; a probe that fails to
    /// attach is logged and reported in metrics.
    pub fn start(
        cfg: Config,
        telemetry: Telemetry,
        collector: Arc<SnapshotCollector>,
        health: Arc<Health>,
        spans: Option<crate::aggregate::http::SpanSetup>,
        sli: Option<crate::sli_export::SliSender>,
        pod_events: Option<tokio::sync::mpsc::Receiver<PodEvent>>,
    ) -> Result<Self, ProbeError> {
        let own_tgid = std::process::id();
        // Offsets must be known before load: they are patched into the object.
        let tcp_offsets = cfg.tcp.enabled.then(tcp::resolve_offsets);
        let http_config = cfg.http.enabled.then(|| {
            http::resolve_config(
                cfg.http.request_capture_bytes,
                cfg.http.response_capture_bytes,
            )
        });
        let raw_syscalls = cfg.syscalls.enabled && cfg.syscalls.hook == SyscallHook::RawTracepoint;
        let http_ok = matches!(http_config, Some(Ok(_)));
        let hooks = u32::from(raw_syscalls) | (u32::from(http_ok) << 1);
        let mut loaded = probes::load(&probes::LoadOptions {
            agent_tgid: own_tgid,
            syscall_stats_entries: cfg.syscalls.max_map_entries,
            process_ringbuf_bytes: cfg.process.ringbuf_bytes,
            tcp_offsets: tcp_offsets.as_ref().and_then(|r| r.as_ref().ok()).copied(),
            tcp_connections: cfg.tcp.max_connections,
            tcp_stats_entries: cfg.tcp.max_map_entries,
            tcp_ringbuf_bytes: cfg.tcp.ringbuf_bytes,
            http_config: http_config.as_ref().and_then(|r| r.as_ref().ok()).copied(),
            http_ringbuf_bytes: cfg.http.ringbuf_bytes,
            syscall_hooks: hooks,
        })?;
        let mut probes = Vec::new();
        // One pair of sys_enter/sys_exit programs serves both syscall-hooking probes.
        let shared = if hooks != 0 {
            syscalls::attach_shared_hooks(&mut loaded.ebpf).map_err(|e| e.to_string())
        } else {
            Ok(())
        };

        // Process events first: workload identity should be current before syscalls count.
        let process_events = if cfg.process.enabled {
            let attached = process::attach(&mut loaded.ebpf).and_then(|p| {
                // SAFETY: the RingBuf owns its fd, which stays open as long as the AsyncFd.
                unsafe { AsyncFd::register(p.events) }
                    .map_err(|e| ProbeError::Poll(e.into_parts().1))
            });
            report(&mut probes, process::NAME, attached)
        } else {
            probes.push((process::NAME, ProbeState::Disabled));
            None
        };
        let syscalls = if cfg.syscalls.enabled {
            report(
                &mut probes,
                syscalls::NAME,
                syscalls::attach(&mut loaded.ebpf, cfg.syscalls.hook, &shared),
            )
        } else {
            probes.push((syscalls::NAME, ProbeState::Disabled));
            None
        };

        let (tcp, tcp_events) = match tcp_offsets {
            None => {
                probes.push((tcp::NAME, ProbeState::Disabled));
                (None, None)
            }
            Some(offsets) => {
                let attached = offsets
                    .and_then(|_| tcp::attach(&mut loaded.ebpf))
                    .and_then(|(p, ring)| {
                        // SAFETY: the RingBuf owns its fd, open as long as the AsyncFd.
                        let fd = unsafe { AsyncFd::register(ring) }
                            .map_err(|e| ProbeError::Poll(e.into_parts().1))?;
                        Ok((p, fd))
                    });
                match report(&mut probes, tcp::NAME, attached) {
                    Some((p, fd)) => (Some(p), Some(fd)),
                    None => (None, None),
                }
            }
        };

        let (http_probe, http_events) = match http_config {
            None => {
                probes.push((http::NAME, ProbeState::Disabled));
                (None, None)
            }
            Some(c) => {
                let attached = c
                    .and_then(|_| http::attach(&mut loaded.ebpf, &shared))
                    .and_then(|(p, ring)| {
                        // SAFETY: the RingBuf owns its fd, open as long as the AsyncFd.
                        let fd = unsafe { AsyncFd::register(ring) }
                            .map_err(|e| ProbeError::Poll(e.into_parts().1))?;
                        Ok((p, fd))
                    });
                match report(&mut probes, http::NAME, attached) {
                    Some((p, fd)) => (Some(p), Some(fd)),
                    None => (None, None),
                }
            }
        };

        let http = match &http_events {
            Some(_) => {
                let p = crate::aggregate::http::HttpPipeline::from_config(
                    &cfg.http,
                    telemetry.http.clone(),
                )
                .map_err(ProbeError::Config)?;
                let p = match spans {
                    Some(setup) => p.with_spans(setup),
                    None => p,
                };
                Some(match &sli {
                    Some(_) => p.with_sli(SystemTime::now()),
                    None => p,
                })
            }
            None => None,
        };
        // Without a pipeline there is nothing to export: dropping the sender ends the task.
        let sli = sli.filter(|_| http.is_some());

        // Parsing the kernel's BTF (two copies of ~5 MB) left freed memory in the heap that
        // glibc keeps mapped: hand it back so the agent's RSS reflects its steady state.
        #[cfg(target_env = "gnu")]
        // SAFETY: plain libc call, no pointers.
        unsafe {
            libc::malloc_trim(0);
        }

        Ok(Self {
            tcp,
            tcp_events,
            tcp_agg: TcpAggregator::new(PeerNaming {
                rules: cfg.tcp.peers.clone(),
                resolve_local: cfg.tcp.resolve_local_peers,
            }),
            tcp_buf: Vec::new(),
            http_events,
            http_probe,
            http_requests: Vec::new(),
            kernel_requests: Default::default(),
            http,
            sli,
            table: ProcessTable::new(cfg.workloads.max, cfg.workloads.idle_ttl).with_pods(
                PodIndex::new(cfg.kubernetes.max_pods, cfg.http.tenant.pod_label_keys()),
                cfg.kubernetes.workload_label,
            ),
            pod_events,
            last_pod_stats: PodIndexStats::default(),
            recorder: None,
            cfg,
            loaded,
            syscalls,
            process_events,
            probes,
            agg: SyscallAggregator::default(),
            telemetry,
            collector,
            health,
            proc_root: PathBuf::from("/proc"),
            cgroup2: std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| procfs::cgroup2_mount(&m)),
            own_tgid,
            buf: Vec::new(),
            kernel_counters: [0; counters::COUNT as usize],
            drops_at_rescan: 0,
            last_table_stats: TableStats::default(),
        })
    }

    pub fn probe_states(&self) -> &[(&'static str, ProbeState)] {
        &self.probes
    }

    /// Runs until `shutdown` resolves, then returns; dropping `self` detaches everything.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.rescan(true);
        self.seed_listeners();
        self.read_cycle();
        // In Kubernetes, ready once this node's pods are known (labels are right from then on).
        self.health
            .ready
            .store(self.pod_events.is_none(), Ordering::Relaxed);

        let mut read_tick = ticker(self.cfg.syscalls.read_interval);
        let mut poll_tick = ticker(self.cfg.process.poll_interval);
        let mut rescan_tick = ticker(self.cfg.process.rescan_interval);
        // The first SLI interval ends one period after the start, not at once.
        let mut sli_tick = self.sli.as_ref().map(|s| {
            let mut i =
                tokio::time::interval_at(tokio::time::Instant::now() + s.interval(), s.interval());
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        tokio::pin!(shutdown);
        enum Wake {
            Stop,
            Events,
            Read,
            Rescan,
            Sli,
            Pod(Option<Box<PodEvent>>),
        }
        loop {
            self.health.beat();
            let wake = tokio::select! {
                () = &mut shutdown => Wake::Stop,
                () = readable(self.process_events.as_ref()) => Wake::Events,
                () = readable(self.tcp_events.as_ref()) => Wake::Events,
                () = readable(self.http_events.as_ref()) => Wake::Events,
                _ = poll_tick.tick() => Wake::Events,
                _ = read_tick.tick() => Wake::Read,
                _ = rescan_tick.tick() => Wake::Rescan,
                () = tick(sli_tick.as_mut()) => Wake::Sli,
                ev = recv(self.pod_events.as_mut()) => Wake::Pod(ev.map(Box::new)),
            };
            match wake {
                Wake::Stop => break,
                Wake::Events => {
                    self.drain_events();
                    // Releases client exchanges whose wait for a parent server span is over.
                    if let Some(p) = self.http.as_mut() {
                        p.tick(crate::otlp::monotonic_now_ns());
                    }
                }
                Wake::Read => self.read_cycle(),
                Wake::Rescan => self.rescan(false),
                Wake::Sli => self.cut_sli_interval(),
                Wake::Pod(ev) => self.apply_pod_events(ev.map(|e| *e)),
            }
        }
        self.drain_events();
        if let Some(p) = self.http.as_mut() {
            p.flush_pending();
            // The last, partial SLI interval; the export task sends it and ends.
            if let Some(sli) = self.sli.take()
                && let Some(last) = p.take_sli(SystemTime::now())
            {
                sli.finish(last);
            }
        }
        tracing::info!("detaching probes");
    }

    /// Ends the current SLI interval and hands it to the export task (which also retries failed
    /// requests then); if the task has not taken the previous one yet, the interval goes on.
    fn cut_sli_interval(&mut self) {
        // Exchanges whose response started before now belong to this interval.
        self.drain_events();
        let (Some(p), Some(sli)) = (self.http.as_mut(), self.sli.as_ref()) else {
            return;
        };
        let now = SystemTime::now();
        let cut = || {
            p.take_sli(now)
                .unwrap_or_else(|| crate::sli_export::SliInterval::empty(now))
        };
        if !sli.offer(cut) {
            tracing::debug!("the SLI export is still busy; the current interval goes on");
        }
    }

    /// Applies a pod event and every one queued behind it, then re-resolves processes once.
    fn apply_pod_events(&mut self, first: Option<PodEvent>) {
        let Some(first) = first else {
            tracing::warn!("the pod watch ended; pod identity is frozen");
            self.pod_events = None;
            return;
        };
        self.table.apply_pod_event(first);
        if let Some(rx) = self.pod_events.as_mut() {
            while let Ok(ev) = rx.try_recv() {
                self.table.apply_pod_event(ev);
            }
        }
        self.table.refresh_pods(Instant::now());
        if self.table.pods().synced() && !self.health.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(pods = self.table.pods().len(), "this node's pods are known");
        }
        self.publish_pods();
    }

    fn publish_pods(&mut self) {
        let k = &self.telemetry.kube;
        let pods = self.table.pods();
        let stats = pods.stats();
        k.relists
            .inc_by(stats.relists - self.last_pod_stats.relists);
        let full = stats.dropped_full - self.last_pod_stats.dropped_full;
        if full > 0 {
            k.skipped
                .get_or_create(&KubeReasonLabels {
                    reason: "index_full",
                })
                .inc_by(full);
        }
        self.last_pod_stats = stats;
        k.pods.set(pods.len() as i64);
        k.synced.set(i64::from(pods.synced()));
    }

    /// Applies every queued event: process events first, so that the processes named by TCP
    /// events are known.
    /// `--record-http`: appends the next `limit` raw http records to `path`.
    pub fn record_http(&mut self, path: &std::path::Path, limit: u64) -> std::io::Result<()> {
        self.recorder = Some(crate::replay::Recorder::create(path, limit)?);
        Ok(())
    }

    fn drain_events(&mut self) {
        self.drain_process_events();
        self.drain_tcp_events();
        self.drain_http_events();
    }

    fn drain_http_events(&mut self) {
        let (Some(ring), Some(pipeline)) = (self.http_events.as_mut(), self.http.as_mut()) else {
            return;
        };
        let ring = ring.get_mut();
        let now = Instant::now();
        let (table, proc_root, t) = (&mut self.table, &self.proc_root, &self.telemetry);
        // Counted per batch: a labelled counter lookup per record is measurable at 100k/s.
        let (mut exchanges, mut closes, mut bad) = (0u64, 0u64, 0u64);
        while let Some(item) = ring.next() {
            if let Some(r) = self.recorder.as_mut() {
                r.record(&item);
            }
            let procs = Procs {
                table: &mut *table,
                proc_root,
                t,
                now,
            };
            match http::decode(&item) {
                Ok(http::Record::Exchange(r)) => {
                    pipeline.on_record(&r, procs);
                    exchanges += 1;
                }
                Ok(http::Record::UpgradedClose { conn, at }) => {
                    pipeline.on_close(conn, at, procs);
                    closes += 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "skipping undecodable http record");
                    bad += 1;
                }
            }
        }
        for (kind, n) in [("exchange", exchanges), ("upgraded_close", closes)] {
            if n > 0 {
                t.events
                    .get_or_create(&ProbeKindLabels {
                        probe: http::NAME,
                        kind,
                    })
                    .inc_by(n);
            }
        }
        if bad > 0 {
            t.decode_errors
                .get_or_create(&ProbeLabels { probe: http::NAME })
                .inc_by(bad);
        }
    }

    fn drain_tcp_events(&mut self) {
        let Some(ring) = self.tcp_events.as_mut() else {
            return;
        };
        let ring = ring.get_mut();
        let now = Instant::now();
        let (table, proc_root, t) = (&mut self.table, &self.proc_root, &self.telemetry);
        while let Some(item) = ring.next() {
            match tcp::decode(&item) {
                Ok(ev) => {
                    t.events
                        .get_or_create(&ProbeKindLabels {
                            probe: tcp::NAME,
                            kind: ev.kind(),
                        })
                        .inc();
                    self.tcp_agg
                        .on_event(&ev, now, |tgid| resolve(table, proc_root, t, tgid, now));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "skipping undecodable tcp event");
                    t.decode_errors
                        .get_or_create(&ProbeLabels { probe: tcp::NAME })
                        .inc();
                }
            }
        }
    }

    /// Attributes listeners older than the agent: the kernel learns who owns each port so
    /// accepted connections are attributed, and the listen info metric starts complete.
    fn seed_listeners(&mut self) {
        let Some(probe) = self.tcp.as_mut() else {
            return;
        };
        let t0 = Instant::now();
        let (found, stats) = match listeners::scan(&self.proc_root, 0) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan /proc for listening sockets");
                return;
            }
        };
        let failed = probe.seed_listeners(&found);
        if failed > 0 {
            self.telemetry
                .map_read_errors
                .get_or_create(&MapLabels {
                    map: "TCP_LISTENERS",
                })
                .inc_by(failed);
        }
        for l in found.iter().filter(|l| l.tgid != self.own_tgid) {
            let addr = l.addr.to_canonical();
            let ev = tcp::ListenerEvent {
                tgid: l.tgid,
                netns: l.netns,
                family: if l.addr.is_ipv4() {
                    tcp::Family::V4
                } else {
                    tcp::Family::V6
                },
                addr,
                port: l.port,
            };
            let label = resolve(
                &mut self.table,
                &self.proc_root,
                &self.telemetry,
                l.tgid,
                t0,
            );
            self.tcp_agg.seed_listener(&ev, label);
        }
        tracing::info!(
            listeners = found.len(),
            namespaces = stats.namespaces,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "listening sockets found in /proc"
        );
    }

    fn drain_process_events(&mut self) {
        let Some(ring) = self.process_events.as_mut() else {
            return;
        };
        let ring = ring.get_mut();
        let now = Instant::now();
        while let Some(item) = ring.next() {
            match process::decode(&item) {
                Ok(ev) => {
                    self.telemetry
                        .events
                        .get_or_create(&ProbeKindLabels {
                            probe: process::NAME,
                            kind: ev.kind(),
                        })
                        .inc();
                    let cgroup2 = self.cgroup2.as_deref();
                    // A new program or process under this tgid: its TCP label is stale.
                    match &ev {
                        process::Event::Fork { child: tgid, .. }
                        | process::Event::Exec { tgid, .. } => self.tcp_agg.forget_owner(*tgid),
                        process::Event::Exit { .. } => {}
                    }
                    apply(
                        &mut self.table,
                        &self.proc_root,
                        cgroup2,
                        &self.telemetry,
                        ev,
                        now,
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, "skipping undecodable process event");
                    self.telemetry
                        .decode_errors
                        .get_or_create(&ProbeLabels {
                            probe: process::NAME,
                        })
                        .inc();
                }
            }
        }
    }

    /// Reads the kernel aggregates, folds them into workloads, deletes the entries of exited
    /// processes and publishes a new snapshot.
    fn read_cycle(&mut self) {
        self.drain_events();
        let t0 = Instant::now();
        self.fold_syscalls(t0);
        self.fold_tcp(t0);
        self.read_http_requests(t0);
        // Entries of exited processes were folded one last time above: delete them.
        let exited: HashSet<u32> = self.table.exited().into_iter().collect();
        if let Some(probe) = self.syscalls.as_mut() {
            for (key, _) in self.buf.iter().filter(|(k, _)| exited.contains(&k.tgid)) {
                if let Err(e) = probe.remove(key) {
                    map_error(&self.telemetry, "SYSCALL_STATS", &e);
                }
                self.agg.forget(key);
            }
        }
        if let Some(probe) = self.tcp.as_mut() {
            // Connections outlive their process (FIN_WAIT, LAST_ACK): a key deleted here may be
            // recreated by a late close; the aggregator still knows its label then.
            let table = &self.table;
            let gone = |t: u32| t != 0 && (exited.contains(&t) || !table.contains(t));
            for (key, _) in self.tcp_buf.iter().filter(|(k, _)| gone(k.tgid)) {
                if let Err(e) = probe.remove(key) {
                    map_error(&self.telemetry, "TCP_STATS", &e);
                }
                self.tcp_agg.forget_key(key);
            }
            self.tcp_agg.drop_listeners_of(|t| exited.contains(&t));
        }
        if let Some(probe) = self.http_probe.as_mut() {
            for (key, _) in self
                .http_requests
                .iter()
                .filter(|(k, _)| exited.contains(&k.tgid))
            {
                if let Err(e) = probe.remove(key) {
                    map_error(&self.telemetry, "HTTP_REQUESTS", &e);
                }
                self.kernel_requests.forget(key);
            }
        }
        for tgid in exited {
            self.table.remove(tgid, t0);
        }
        let expired = self.table.expire(t0);
        self.agg.drop_workloads(&expired);
        self.tcp_agg.drop_workloads(&expired);
        if let Some(http) = self.http.as_mut() {
            http.drop_workloads(&expired);
        }
        self.tcp_agg.prune_owners(t0);

        if let Err(e) = self.loaded.read_counters(&mut self.kernel_counters) {
            tracing::debug!(error = %e, "reading KERNEL_COUNTERS");
            self.telemetry
                .map_read_errors
                .get_or_create(&MapLabels {
                    map: "KERNEL_COUNTERS",
                })
                .inc();
        }
        self.publish();
        self.telemetry
            .read_duration
            .observe(t0.elapsed().as_secs_f64());
    }

    fn fold_syscalls(&mut self, now: Instant) {
        let Some(probe) = self.syscalls.as_mut() else {
            return;
        };
        let errors = probe.read(&mut self.buf);
        if errors > 0 {
            self.telemetry
                .map_read_errors
                .get_or_create(&MapLabels {
                    map: "SYSCALL_STATS",
                })
                .inc_by(errors);
        }
        let (table, proc_root, t) = (&mut self.table, &self.proc_root, &self.telemetry);
        self.agg
            .fold(&self.buf, |tgid| resolve(table, proc_root, t, tgid, now));
        self.telemetry
            .map_entries
            .get_or_create(&MapLabels {
                map: "SYSCALL_STATS",
            })
            .set(self.agg.tracked_keys() as i64);
    }

    fn read_http_requests(&mut self, now: Instant) {
        let Some(probe) = self.http_probe.as_ref() else {
            return;
        };
        let errors = probe.read_requests(&mut self.http_requests);
        if errors > 0 {
            self.telemetry
                .map_read_errors
                .get_or_create(&MapLabels {
                    map: "HTTP_REQUESTS",
                })
                .inc_by(errors);
        }
        let (table, proc_root, t) = (&mut self.table, &self.proc_root, &self.telemetry);
        self.kernel_requests
            .fold(&t.http, &self.http_requests, |tgid| {
                resolve(table, proc_root, t, tgid, now)
            });
    }

    fn fold_tcp(&mut self, now: Instant) {
        let Some(probe) = self.tcp.as_mut() else {
            return;
        };
        let errors = probe.read(&mut self.tcp_buf);
        if errors > 0 {
            self.telemetry
                .map_read_errors
                .get_or_create(&MapLabels { map: "TCP_STATS" })
                .inc_by(errors);
        }
        let (table, proc_root, t) = (&mut self.table, &self.proc_root, &self.telemetry);
        self.tcp_agg.fold_stats(&self.tcp_buf, now, |tgid| {
            resolve(table, proc_root, t, tgid, now)
        });
        self.telemetry
            .map_entries
            .get_or_create(&MapLabels { map: "TCP_STATS" })
            .set(self.tcp_agg.tracked_keys() as i64);
    }

    /// Reconciles the table with `/proc`: adds processes we have no event for, marks gone ones
    /// exited. After ring-buffer drops it also re-reads known processes (a missed exec).
    fn rescan(&mut self, initial: bool) {
        let now = Instant::now();
        let listed = match procfs::list_tgids(&self.proc_root) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list /proc");
                return;
            }
        };
        let drops = self.kernel_counters[counters::PROCESS_EVENTS_DROPPED as usize];
        let refresh_known = drops != self.drops_at_rescan;
        self.drops_at_rescan = drops;
        let listed_set: HashSet<u32> = listed.iter().copied().collect();
        for tgid in self.table.live() {
            if !listed_set.contains(&tgid) {
                self.table.exit(tgid, now);
            }
        }
        for tgid in listed {
            if tgid == self.own_tgid || (self.table.contains(tgid) && !refresh_known) {
                continue;
            }
            self.telemetry.proc_reads.inc();
            if let Some(w) = procfs::read_workload(&self.proc_root, tgid) {
                self.table.upsert(tgid, w, now);
            }
        }
        if initial {
            tracing::info!(
                processes = self.table.processes(),
                "initial /proc scan done"
            );
        }
    }

    fn publish(&mut self) {
        let stats = self.table.stats();
        self.telemetry
            .workload_overflow
            .inc_by(stats.overflowed_processes - self.last_table_stats.overflowed_processes);
        self.telemetry
            .workloads_expired
            .inc_by(stats.expired_workloads - self.last_table_stats.expired_workloads);
        self.last_table_stats = stats;
        self.telemetry.workloads.set(self.table.workloads() as i64);
        self.telemetry.processes.set(self.table.processes() as i64);
        self.publish_pods();
        self.collector.publish(Published {
            syscalls: self.agg.snapshot(),
            tcp: self.tcp_agg.snapshot(),
            kernel_counters: self.kernel_counters,
            probes: self.probes.iter().map(|(n, s)| (*n, s.as_str())).collect(),
            workloads: self
                .table
                .pod_workloads()
                .map(|(workload, pod)| WorkloadInfo {
                    workload: workload.to_string(),
                    namespace: pod.namespace.clone(),
                    kind: pod.owner_kind.as_str(),
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            labels: self
                .http
                .as_ref()
                .map(|h| h.label_stats())
                .unwrap_or_default(),
        });
    }
}

fn report<T>(
    probes: &mut Vec<(&'static str, ProbeState)>,
    name: &'static str,
    r: Result<T, ProbeError>,
) -> Option<T> {
    match r {
        Ok(p) => {
            tracing::info!(probe = name, "probe attached");
            probes.push((name, ProbeState::Attached));
            Some(p)
        }
        Err(e) => {
            tracing::error!(probe = name, error = %e, "probe failed to attach; other probes keep running");
            probes.push((name, ProbeState::Failed(e.to_string())));
            None
        }
    }
}

/// The HTTP pipeline's view of the process table: workloads and pods, and runtimes read from
/// `/proc/<pid>/exe` the first time they matter (a client call with a candidate parent).
struct Procs<'a> {
    table: &'a mut ProcessTable,
    proc_root: &'a std::path::Path,
    t: &'a Telemetry,
    now: Instant,
}

impl crate::aggregate::http::ProcessView for Procs<'_> {
    fn origin(&mut self, tgid: u32) -> Origin {
        resolve_origin(self.table, self.proc_root, self.t, tgid, self.now)
    }

    /// Asked after [`Self::origin`], which made the process's entry that caches the answer.
    fn multitasks(&mut self, tgid: u32) -> bool {
        let runtime = self.table.runtime(tgid).unwrap_or_else(|| {
            let r = crate::workload::runtime::of_process(self.proc_root, tgid);
            tracing::debug!(tgid, runtime = ?r, "read a process's runtime");
            self.table.set_runtime(tgid, Some(r));
            r
        });
        runtime.multitasks()
    }
}

/// The workload label of `tgid`, reading `/proc` for processes never heard of (started
/// before a dropped event); a process already gone is labelled unknown.
fn resolve(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    t: &Telemetry,
    tgid: u32,
    now: Instant,
) -> std::sync::Arc<str> {
    learn(table, proc_root, t, tgid, now);
    table.label(tgid, now)
}

/// [`resolve`], with the process's pod (for the HTTP pipeline's tenant chain and spans).
fn resolve_origin(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    t: &Telemetry,
    tgid: u32,
    now: Instant,
) -> Origin {
    learn(table, proc_root, t, tgid, now);
    table.origin(tgid, now)
}

/// Reads `/proc` for a process never heard of (started before a dropped event); a process
/// already gone is recorded as unknown.
fn learn(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    t: &Telemetry,
    tgid: u32,
    now: Instant,
) {
    if !table.contains(tgid) {
        t.proc_reads.inc();
        match procfs::read_workload(proc_root, tgid) {
            Some(w) => table.upsert(tgid, w, now),
            None => {
                table.upsert(tgid, Workload::Unknown, now);
                table.exit(tgid, now);
            }
        }
    }
}

fn map_error(t: &Telemetry, map: &'static str, e: &ProbeError) {
    tracing::debug!(error = %e, map, "deleting a kernel map entry");
    t.map_read_errors.get_or_create(&MapLabels { map }).inc();
}

/// Applies one process event to the table, reading `/proc` only when the event alone does not
/// say what the process is.
fn apply(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    cgroup2: Option<&std::path::Path>,
    t: &Telemetry,
    ev: process::Event,
    now: Instant,
) {
    match ev {
        process::Event::Fork { child, parent } => {
            if !table.fork(child, parent, now) {
                t.proc_reads.inc();
                let w = procfs::read_workload(proc_root, child).unwrap_or(Workload::Unknown);
                table.upsert(child, w, now);
            }
        }
        process::Event::Exec {
            tgid,
            comm,
            cgroup_id,
        } => {
            // A process may have been moved into a container's cgroup just before exec (runc
            // does this), so the cgroup is read again: from /proc while the process lives,
            // else from the cgroup v2 id the kernel recorded (short-lived processes).
            t.proc_reads.inc();
            let mut cgroup =
                std::fs::read_to_string(proc_root.join(tgid.to_string()).join("cgroup")).ok();
            if cgroup.is_none()
                && let Some(mount) = cgroup2
                && let Some(path) = procfs::cgroup_v2_path(mount, cgroup_id)
            {
                cgroup = Some(format!("0::{path}\n"));
            }
            let w = match (
                Workload::from_proc(cgroup.as_deref(), &comm),
                table.workload(tgid),
            ) {
                // Nothing left to read: keep a container identity learnt earlier.
                (Workload::Host { .. }, Some(Workload::Container(c))) if cgroup.is_none() => {
                    Workload::Container(c.clone())
                }
                (w, _) => w,
            };
            table.upsert(tgid, w, now);
            // Same workload, maybe another executable (an entrypoint script exec'ing a Go
            // binary): read it again when asked.
            table.set_runtime(tgid, None);
        }
        process::Event::Exit { tgid } => table.exit(tgid, now),
    }
}

/// The next pod event; never, without a pod watch.
async fn recv(rx: Option<&mut tokio::sync::mpsc::Receiver<PodEvent>>) -> Option<PodEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

async fn tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn readable(fd: Option<&AsyncFd<RingBuf<MapData>>>) {
    match fd {
        Some(fd) => match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
