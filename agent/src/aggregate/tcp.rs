//! Folds the `tcp` probe's kernel counters and close events into per-workload series.
//!
//! Pure and synchronous. Kernel counters per (process, direction) are folded by delta like the
//! syscall counters; close events add to per (workload, direction, peer) totals. Process
//! labels are cached per tgid so that connections closing after their process exited (FIN_WAIT,
//! LAST_ACK) still count for the right workload.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tenantscope_agent_common::tcp::{TcpStats, TcpStatsKey};

use crate::{
    config::{PeerRule, match_peer},
    probes::tcp::{Close, Direction, Event, Failure, Family, ListenerEvent},
    workload::UNKNOWN,
};

/// Connection duration buckets (seconds): from sub-ms RPCs to hour-long pools and WebSockets.
pub const DURATION_BUCKETS: [f64; 9] = [0.005, 0.05, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0];
/// Smoothed RTT buckets (seconds): loopback and same-rack (~50 µs) to intercontinental (~1 s).
pub const RTT_BUCKETS: [f64; 9] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// `peer` value for a same-node peer the probe could not name (e.g. a loopback connection to
/// a process the agent never saw connect).
pub const PEER_LOCAL: &str = "local";
/// `peer` value for everything else.
pub const PEER_EXTERNAL: &str = "external";

/// How long a process label is remembered after its last use.
const OWNER_TTL: Duration = Duration::from_secs(600);

/// A histogram with fixed bounds; `counts` has one slot per bound plus `+Inf`, not cumulative.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Peer naming settings (from `[tcp]`).
#[derive(Debug, Clone, Default)]
pub struct PeerNaming {
    pub rules: Vec<PeerRule>,
    pub resolve_local: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct PeerTotals {
    duration: Hist,
    rtt: Hist,
    bytes_tx: u64,
    bytes_rx: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListenerId {
    netns: u32,
    family: Family,
    addr: IpAddr,
    port: u16,
}

#[derive(Debug, Clone)]
struct ListenEntry {
    workload: Arc<str>,
    tgid: u32,
    refs: u32,
}

/// Counters per (workload, direction), from the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnSeries {
    pub workload: Arc<str>,
    pub direction: &'static str,
    pub opened: u64,
    pub closed: u64,
    /// `opened - closed`: established connections not yet closed.
    pub open: u64,
    pub retransmits: u64,
    pub resets_tx: u64,
    pub resets_rx: u64,
}

/// Totals of closed connections per (workload, direction, peer).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSeries {
    pub workload: Arc<str>,
    pub direction: &'static str,
    pub peer: Arc<str>,
    pub duration: Hist,
    pub rtt: Hist,
    pub bytes_tx: u64,
    pub bytes_rx: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureSeries {
    pub workload: Arc<str>,
    pub peer: Arc<str>,
    pub reason: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenSeries {
    pub workload: Arc<str>,
    pub family: &'static str,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TcpSnapshot {
    pub connections: Vec<ConnSeries>,
    pub peers: Vec<PeerSeries>,
    pub failures: Vec<FailureSeries>,
    pub listeners: Vec<ListenSeries>,
}

#[derive(Debug)]
pub struct TcpAggregator {
    naming: PeerNaming,
    last: HashMap<TcpStatsKey, TcpStats>,
    totals: HashMap<(Arc<str>, Direction), TcpStats>,
    peers: HashMap<(Arc<str>, Direction, Arc<str>), PeerTotals>,
    failures: HashMap<(Arc<str>, Arc<str>, Failure), u64>,
    listeners: HashMap<ListenerId, ListenEntry>,
    owners: HashMap<u32, (Arc<str>, Instant)>,
    /// Interned constant labels (peer rule names, `local`, `external`, `_unknown`).
    names: HashMap<String, Arc<str>>,
}

impl TcpAggregator {
    pub fn new(naming: PeerNaming) -> Self {
        Self {
            naming,
            last: HashMap::new(),
            totals: HashMap::new(),
            peers: HashMap::new(),
            failures: HashMap::new(),
            listeners: HashMap::new(),
            owners: HashMap::new(),
            names: HashMap::new(),
        }
    }

    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.to_owned(), a.clone());
        a
    }

    /// The workload of `tgid`, remembered so late closes of an exited process still resolve.
    fn owner(
        &mut self,
        tgid: u32,
        now: Instant,
        label_of: &mut impl FnMut(u32) -> Arc<str>,
    ) -> Arc<str> {
        if tgid == 0 {
            return self.name(UNKNOWN);
        }
        if let Some((label, used)) = self.owners.get_mut(&tgid) {
            *used = now;
            return label.clone();
        }
        let label = label_of(tgid);
        self.owners.insert(tgid, (label.clone(), now));
        label
    }

    /// Whether `tgid` has a remembered label (its kernel keys may still be folded).
    pub fn knows_owner(&self, tgid: u32) -> bool {
        self.owners.contains_key(&tgid)
    }

    /// A tgid was reused or re-executed: its next use resolves the label again.
    pub fn forget_owner(&mut self, tgid: u32) {
        self.owners.remove(&tgid);
    }

    /// Forgets labels unused for a while; returns the tgids forgotten.
    pub fn prune_owners(&mut self, now: Instant) -> Vec<u32> {
        let old: Vec<u32> = self
            .owners
            .iter()
            .filter(|(_, (_, used))| now.duration_since(*used) >= OWNER_TTL)
            .map(|(t, _)| *t)
            .collect();
        for t in &old {
            self.owners.remove(t);
        }
        old
    }

    /// Folds one read of `TCP_STATS`.
    pub fn fold_stats<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a (TcpStatsKey, TcpStats)>,
        now: Instant,
        mut label_of: impl FnMut(u32) -> Arc<str>,
    ) {
        for (key, value) in entries {
            let Some(direction) = Direction::from_kernel(key.direction) else {
                continue;
            };
            let prev = self.last.insert(*key, *value).unwrap_or(TcpStats::ZERO);
            let d = delta(&prev, value);
            if d == TcpStats::ZERO {
                continue;
            }
            let workload = self.owner(key.tgid, now, &mut label_of);
            let t = self.totals.entry((workload, direction)).or_default();
            t.opened += d.opened;
            t.closed += d.closed;
            t.retransmits += d.retransmits;
            t.resets_tx += d.resets_tx;
            t.resets_rx += d.resets_rx;
        }
    }

    /// Forgets a kernel key that was deleted (its counts were already folded).
    pub fn forget_key(&mut self, key: &TcpStatsKey) {
        self.last.remove(key);
    }

    pub fn tracked_keys(&self) -> usize {
        self.last.len()
    }

    /// Applies one decoded event.
    pub fn on_event(
        &mut self,
        ev: &Event,
        now: Instant,
        mut label_of: impl FnMut(u32) -> Arc<str>,
    ) {
        match ev {
            Event::Close(c) => self.on_close(c, now, &mut label_of),
            Event::Listen(l) => {
                let workload = self.owner(l.tgid, now, &mut label_of);
                self.add_listener(l, workload);
            }
            Event::Unlisten(l) => {
                let id = listener_id(l);
                if let Some(e) = self.listeners.get_mut(&id) {
                    e.refs = e.refs.saturating_sub(1);
                    if e.refs == 0 {
                        self.listeners.remove(&id);
                    }
                }
            }
        }
    }

    /// Records a listener found by the startup `/proc` scan.
    pub fn seed_listener(&mut self, l: &ListenerEvent, workload: Arc<str>) {
        self.add_listener(l, workload);
    }

    fn add_listener(&mut self, l: &ListenerEvent, workload: Arc<str>) {
        let e = self
            .listeners
            .entry(listener_id(l))
            .or_insert_with(|| ListenEntry {
                workload: workload.clone(),
                tgid: l.tgid,
                refs: 0,
            });
        e.refs += 1;
        e.workload = workload;
        e.tgid = l.tgid;
    }

    /// Drops the listeners of processes that are gone (their unlisten event may have been lost).
    pub fn drop_listeners_of(&mut self, gone: impl Fn(u32) -> bool) {
        self.listeners.retain(|_, e| !gone(e.tgid));
    }

    fn on_close(&mut self, c: &Close, now: Instant, label_of: &mut impl FnMut(u32) -> Arc<str>) {
        let workload = self.owner(c.tgid, now, label_of);
        let peer = self.peer_of(c, now, label_of);
        if let Some(f) = c.failure {
            *self.failures.entry((workload, peer, f)).or_default() += 1;
            return;
        }
        let t = self
            .peers
            .entry((workload, c.direction, peer))
            .or_insert_with(|| PeerTotals {
                duration: Hist::new(&DURATION_BUCKETS),
                rtt: Hist::new(&RTT_BUCKETS),
                bytes_tx: 0,
                bytes_rx: 0,
            });
        t.duration
            .observe(&DURATION_BUCKETS, c.duration.as_secs_f64());
        if let Some(rtt) = c.srtt {
            t.rtt.observe(&RTT_BUCKETS, rtt.as_secs_f64());
        }
        // Saturating: a counter that wrapped would read as a reset; the kernel's per-connection
        // counts are whatever its record holds.
        t.bytes_tx = t.bytes_tx.saturating_add(c.bytes_sent);
        t.bytes_rx = t.bytes_rx.saturating_add(c.bytes_received);
    }

    /// Names the other end: a workload on this node, a configured rule (by remote port for
    /// connections this node opened, by address for both), `local` for an unnamed loopback
    /// peer, else `external`.
    fn peer_of(
        &mut self,
        c: &Close,
        now: Instant,
        label_of: &mut impl FnMut(u32) -> Arc<str>,
    ) -> Arc<str> {
        if self.naming.resolve_local && c.peer_tgid != 0 {
            return self.owner(c.peer_tgid, now, label_of);
        }
        // For accepted connections the remote port is the client's ephemeral port: it says
        // nothing about the peer, so only address rules apply (port 0 never matches a port).
        let port = match c.direction {
            Direction::Active => c.remote.port(),
            _ => 0,
        };
        let ip = c.remote.ip();
        let name = match match_peer(&self.naming.rules, ip, port) {
            Some(n) => n.to_owned(),
            None if ip.to_canonical().is_loopback() => PEER_LOCAL.to_owned(),
            None => PEER_EXTERNAL.to_owned(),
        };
        self.name(&name)
    }

    /// Drops every series of workloads that expired.
    pub fn drop_workloads(&mut self, labels: &[Arc<str>]) {
        if labels.is_empty() {
            return;
        }
        let gone = |l: &Arc<str>| labels.contains(l);
        self.totals.retain(|(w, _), _| !gone(w));
        self.peers.retain(|(w, _, p), _| !gone(w) && !gone(p));
        self.failures.retain(|(w, p, _), _| !gone(w) && !gone(p));
        self.listeners.retain(|_, e| !gone(&e.workload));
        self.owners.retain(|_, (w, _)| !gone(w));
    }

    pub fn snapshot(&self) -> TcpSnapshot {
        let mut connections: Vec<ConnSeries> = self
            .totals
            .iter()
            .map(|((w, d), t)| ConnSeries {
                workload: w.clone(),
                direction: d.as_str(),
                opened: t.opened,
                closed: t.closed,
                open: t.opened.saturating_sub(t.closed),
                retransmits: t.retransmits,
                resets_tx: t.resets_tx,
                resets_rx: t.resets_rx,
            })
            .collect();
        connections.sort_by(|a, b| (&a.workload, a.direction).cmp(&(&b.workload, b.direction)));
        let mut peers: Vec<PeerSeries> = self
            .peers
            .iter()
            .map(|((w, d, p), t)| PeerSeries {
                workload: w.clone(),
                direction: d.as_str(),
                peer: p.clone(),
                duration: t.duration.clone(),
                rtt: t.rtt.clone(),
                bytes_tx: t.bytes_tx,
                bytes_rx: t.bytes_rx,
            })
            .collect();
        peers.sort_by(|a, b| {
            (&a.workload, a.direction, &a.peer).cmp(&(&b.workload, b.direction, &b.peer))
        });
        let mut failures: Vec<FailureSeries> = self
            .failures
            .iter()
            .map(|((w, p, f), n)| FailureSeries {
                workload: w.clone(),
                peer: p.clone(),
                reason: f.as_str(),
                count: *n,
            })
            .collect();
        failures.sort_by(|a, b| {
            (&a.workload, &a.peer, a.reason).cmp(&(&b.workload, &b.peer, b.reason))
        });
        let listeners: BTreeSet<ListenSeries> = self
            .listeners
            .iter()
            .map(|(id, e)| ListenSeries {
                workload: e.workload.clone(),
                family: id.family.as_str(),
                port: id.port,
            })
            .collect();
        TcpSnapshot {
            connections,
            peers,
            failures,
            listeners: listeners.into_iter().collect(),
        }
    }
}

fn listener_id(l: &ListenerEvent) -> ListenerId {
    ListenerId {
        netns: l.netns,
        family: l.family,
        addr: l.addr,
        port: l.port,
    }
}

/// `cur - prev`, or `cur` when the kernel entry was recreated since the last read.
fn delta(prev: &TcpStats, cur: &TcpStats) -> TcpStats {
    let fields = |s: &TcpStats| [s.opened, s.closed, s.retransmits, s.resets_tx, s.resets_rx];
    let (p, c) = (fields(prev), fields(cur));
    if c.iter().zip(&p).any(|(c, p)| c < p) {
        return *cur;
    }
    TcpStats {
        opened: c[0] - p[0],
        closed: c[1] - p[1],
        retransmits: c[2] - p[2],
        resets_tx: c[3] - p[3],
        resets_rx: c[4] - p[4],
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use tenantscope_agent_common::tcp::{DIR_ACTIVE, DIR_PASSIVE, DIR_UNTRACKED};

    use super::*;

    fn labels(tgid: u32) -> Arc<str> {
        Arc::from(format!("w{tgid}"))
    }

    fn naming() -> PeerNaming {
        PeerNaming {
            rules: crate::config::TcpConfig::default().peers,
            resolve_local: true,
        }
    }

    fn stats(opened: u64, closed: u64, retransmits: u64) -> TcpStats {
        TcpStats {
            opened,
            closed,
            retransmits,
            resets_tx: 0,
            resets_rx: 1,
        }
    }

    fn close(tgid: u32, peer_tgid: u32, direction: Direction, remote: SocketAddr) -> Close {
        Close {
            tgid,
            peer_tgid,
            direction,
            failure: None,
            family: Family::V4,
            local: SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 40000),
            remote,
            netns: 1,
            duration: Duration::from_millis(20),
            srtt: Some(Duration::from_micros(300)),
            bytes_sent: 100,
            bytes_received: 1000,
            total_retrans: 0,
            reset_rx: false,
            reset_tx: false,
        }
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::from(a).into(), port)
    }

    #[test]
    fn kernel_counters_fold_by_delta_per_workload() {
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        let k = |tgid, direction| TcpStatsKey { tgid, direction };
        let same = |t: u32| -> Arc<str> { Arc::from(if t < 10 { "api" } else { "db" }) };
        agg.fold_stats(
            &[
                (k(1, DIR_ACTIVE), stats(5, 2, 1)),
                (k(2, DIR_ACTIVE), stats(3, 3, 0)),
                (k(11, DIR_PASSIVE), stats(8, 1, 0)),
            ],
            now,
            same,
        );
        agg.fold_stats(&[(k(1, DIR_ACTIVE), stats(7, 6, 1))], now, same);
        // Key 2 deleted and recreated: counts restart from zero.
        agg.forget_key(&k(2, DIR_ACTIVE));
        agg.fold_stats(&[(k(2, DIR_ACTIVE), stats(1, 0, 0))], now, same);
        let s = agg.snapshot();
        let api = s
            .connections
            .iter()
            .find(|c| &*c.workload == "api")
            .unwrap();
        assert_eq!(
            (api.direction, api.opened, api.closed, api.open),
            ("active", 11, 9, 2)
        );
        assert_eq!((api.retransmits, api.resets_rx), (1, 3));
        let db = s.connections.iter().find(|c| &*c.workload == "db").unwrap();
        assert_eq!((db.direction, db.opened, db.open), ("passive", 8, 7));
        assert_eq!(agg.tracked_keys(), 3);
    }

    #[test]
    fn untracked_and_unknown_owner() {
        let mut agg = TcpAggregator::new(naming());
        let key = TcpStatsKey {
            tgid: 0,
            direction: DIR_UNTRACKED,
        };
        agg.fold_stats(&[(key, stats(0, 0, 4))], Instant::now(), |_| {
            panic!("tgid 0 is never looked up")
        });
        let c = &agg.snapshot().connections[0];
        assert_eq!(
            (&*c.workload, c.direction, c.retransmits),
            (UNKNOWN, "unknown", 4)
        );
        // An unknown direction value from a newer kernel object is skipped.
        let bad = TcpStatsKey {
            tgid: 1,
            direction: 9,
        };
        agg.fold_stats(&[(bad, stats(1, 0, 0))], Instant::now(), labels);
        assert_eq!(agg.snapshot().connections.len(), 1);
    }

    #[test]
    fn peers_are_named_by_workload_rule_loopback_or_external() {
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        let events = [
            // A local process at the other end.
            close(1, 2, Direction::Active, v4([10, 0, 0, 2], 8080)),
            // A well-known port.
            close(1, 0, Direction::Active, v4([10, 9, 9, 9], 5432)),
            // An accepted connection whose ephemeral client port happens to be 5432.
            close(1, 0, Direction::Passive, v4([10, 9, 9, 9], 5432)),
            close(1, 0, Direction::Active, v4([127, 0, 0, 1], 9999)),
            close(1, 0, Direction::Active, v4([8, 8, 8, 8], 9999)),
        ];
        for c in &events {
            agg.on_event(&Event::Close(c.clone()), now, labels);
        }
        let s = agg.snapshot();
        let names: Vec<(&str, &str)> = s.peers.iter().map(|p| (p.direction, &*p.peer)).collect();
        assert_eq!(
            names,
            [
                ("active", "external"),
                ("active", "local"),
                ("active", "postgres"),
                ("active", "w2"),
                ("passive", "external"),
            ]
        );
        let p = &s.peers[0];
        assert_eq!((p.bytes_tx, p.bytes_rx, p.duration.count), (100, 1000, 1));
        assert_eq!(p.rtt.counts[1], 1, "300 µs lands in the 500 µs bucket");
        assert_eq!(p.duration.counts[1], 1, "20 ms lands in the 50 ms bucket");

        // With local resolution off, the same local peer falls back to the rules.
        let mut agg = TcpAggregator::new(PeerNaming {
            resolve_local: false,
            ..naming()
        });
        agg.on_event(&Event::Close(events[0].clone()), now, labels);
        assert_eq!(&*agg.snapshot().peers[0].peer, "http");
    }

    #[test]
    fn byte_totals_saturate() {
        // Found by fuzzing (fuzz/ agent_event_decode): two closes whose byte counts add up past
        // u64::MAX overflowed the peer's totals.
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        let mut c = close(1, 0, Direction::Active, v4([8, 8, 8, 8], 443));
        c.bytes_sent = u64::MAX - 1;
        c.bytes_received = u64::MAX;
        agg.on_event(&Event::Close(c.clone()), now, labels);
        agg.on_event(&Event::Close(c), now, labels);
        let p = &agg.snapshot().peers[0];
        assert_eq!(
            (p.bytes_tx, p.bytes_rx, p.duration.count),
            (u64::MAX, u64::MAX, 2)
        );
    }

    #[test]
    fn failed_connects_count_by_reason_and_not_as_connections() {
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        for f in [Failure::Refused, Failure::Refused, Failure::Timeout] {
            let mut c = close(1, 0, Direction::Active, v4([10, 0, 0, 2], 6379));
            c.failure = Some(f);
            agg.on_event(&Event::Close(c), now, labels);
        }
        let s = agg.snapshot();
        assert!(s.peers.is_empty());
        let got: Vec<(&str, &str, u64)> = s
            .failures
            .iter()
            .map(|f| (&*f.peer, f.reason, f.count))
            .collect();
        assert_eq!(got, [("redis", "refused", 2), ("redis", "timeout", 1)]);
    }

    #[test]
    fn owners_outlive_their_process_until_pruned() {
        let mut agg = TcpAggregator::new(naming());
        let t0 = Instant::now();
        let calls = std::cell::Cell::new(0);
        let label_of = |t: u32| {
            calls.set(calls.get() + 1);
            labels(t)
        };
        let ev = Event::Close(close(5, 0, Direction::Active, v4([1, 1, 1, 1], 1)));
        agg.on_event(&ev, t0, label_of);
        agg.on_event(&ev, t0, label_of);
        assert_eq!(calls.get(), 1, "label cached");
        assert!(agg.knows_owner(5));
        assert!(agg.prune_owners(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(agg.prune_owners(t0 + OWNER_TTL), vec![5]);
        agg.on_event(&ev, t0, label_of);
        assert_eq!(calls.get(), 2, "resolved again after pruning");
        agg.forget_owner(5);
        assert!(!agg.knows_owner(5));
    }

    #[test]
    fn listeners_are_refcounted_and_deduplicated() {
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        let l = |tgid, netns, addr: IpAddr, port| ListenerEvent {
            tgid,
            netns,
            family: if addr.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            },
            addr,
            port,
        };
        let a = l(1, 10, Ipv4Addr::UNSPECIFIED.into(), 80);
        let b = l(2, 11, Ipv4Addr::UNSPECIFIED.into(), 80);
        let c = l(1, 10, Ipv6Addr::UNSPECIFIED.into(), 80);
        agg.seed_listener(&a, Arc::from("nginx"));
        agg.on_event(&Event::Listen(b.clone()), now, |_| Arc::from("nginx"));
        agg.on_event(&Event::Listen(c.clone()), now, |_| Arc::from("nginx"));
        let s = agg.snapshot();
        assert_eq!(
            s.listeners
                .iter()
                .map(|l| (&*l.workload, l.family, l.port))
                .collect::<Vec<_>>(),
            [("nginx", "ipv4", 80), ("nginx", "ipv6", 80)]
        );
        agg.on_event(&Event::Unlisten(a), now, labels);
        assert_eq!(agg.snapshot().listeners.len(), 2, "b still listens on ipv4");
        agg.on_event(&Event::Unlisten(b), now, labels);
        assert_eq!(agg.snapshot().listeners.len(), 1);
        agg.drop_listeners_of(|t| t == 1);
        assert!(agg.snapshot().listeners.is_empty());
    }

    #[test]
    fn expired_workloads_drop_everywhere() {
        let mut agg = TcpAggregator::new(naming());
        let now = Instant::now();
        agg.on_event(
            &Event::Close(close(1, 2, Direction::Active, v4([10, 0, 0, 2], 80))),
            now,
            labels,
        );
        agg.fold_stats(
            &[(
                TcpStatsKey {
                    tgid: 1,
                    direction: DIR_ACTIVE,
                },
                stats(1, 1, 0),
            )],
            now,
            labels,
        );
        agg.drop_workloads(&[Arc::from("w2")]);
        let s = agg.snapshot();
        assert!(s.peers.is_empty(), "series with an expired peer go too");
        assert_eq!(s.connections.len(), 1);
        agg.drop_workloads(&[Arc::from("w1")]);
        assert_eq!(agg.snapshot(), TcpSnapshot::default());
    }

    #[test]
    fn histogram_bounds_are_inclusive() {
        let mut h = Hist::new(&DURATION_BUCKETS);
        h.observe(&DURATION_BUCKETS, 0.005);
        h.observe(&DURATION_BUCKETS, 1e9);
        assert_eq!(h.counts[0], 1, "le is inclusive");
        assert_eq!(h.counts[DURATION_BUCKETS.len()], 1, "+Inf");
        assert_eq!(h.count, 2);
    }
}
