//! `tcp` probe: connection lifecycle, retransmits and resets, without kprobes.
//!
//! BTF-typed tracepoints give the `struct sock *`; its fields are read at offsets the agent
//! resolved from the kernel's BTF (`TCP_OFFSETS`). Per-connection state lives in `TCP_CONNS`
//! (socket local storage: freed with the socket, never evicted);
//! counters are aggregated per (process, direction) in `TCP_STATS`; one event per connection
//! (at close) and one per listener reach userspace.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_skc_to_tcp_sock,
        generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    },
    macros::{btf_map, btf_tracepoint, map},
    maps::{HashMap, LruHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use tenantscope_agent_common::{
    counters,
    tcp::{
        AF_INET6, CLOSE_KIND, ClosedOwner, ConnState, DIR_ACTIVE, DIR_PASSIVE, DIR_UNTRACKED,
        Endpoint, FLAG_ACTIVE, FLAG_ESTABLISHED, FLAG_FIN_RX, FLAG_RESET_RX, FLAG_RESET_TX,
        IPPROTO_TCP, LISTEN_KIND, ListenKey, SOCK_DONE_BIT, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN,
        TCP_SYN_RECV, TCP_SYN_SENT, TcpEvent, TcpOffsets, TcpStats, TcpStatsKey, UNLISTEN_KIND,
    },
};

use crate::{agent_tgid, atomic_add, count};

const BPF_F_NO_PREALLOC: u32 = 1;

/// Field offsets, patched by the agent from BTF before load (`valid` = 1 once set).
#[unsafe(no_mangle)]
static TCP_OFFSETS: TcpOffsets = TcpOffsets {
    family: 0,
    num: 0,
    dport: 0,
    daddr: 0,
    rcv_saddr: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    net: 0,
    ns_inum: 0,
    sk_err: 0,
    protocol: 0,
    sk_flags: 0,
    bytes_sent: 0,
    bytes_retrans: 0,
    bytes_received: 0,
    srtt_us: 0,
    total_retrans: 0,
    valid: 0,
};

/// Connections in progress or open: socket local storage, which the kernel frees with the
/// socket, so nothing leaks and nothing is evicted early (an LRU hash could evict before it was
/// full). A close without storage is a connection older than the agent, counted as untracked.
#[btf_map]
static TCP_CONNS: SkStorage<ConnState> = SkStorage::new();

/// Counters per (tgid, direction); not preallocated, bounded by max_entries.
#[map]
static TCP_STATS: HashMap<TcpStatsKey, TcpStats> =
    HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Owner of each listening port per network namespace: accepted connections are attributed
/// to it. Filled by `CLOSE -> LISTEN` and, for listeners older than the agent, by a /proc scan.
#[map]
static TCP_LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(16384, 0);

/// Owners of recently closed sockets: the kernel sends some resets just after the close
/// (`SO_LINGER` 0, unread data), when the socket has left `TCP_CONNS`.
#[map]
static TCP_CLOSED: LruHashMap<u64, ClosedOwner> = LruHashMap::with_max_entries(4096, 0);

/// Local endpoints of established connections -> owning tgid, to name peers on this node.
#[map]
static TCP_ENDPOINTS: LruHashMap<Endpoint, u32> = LruHashMap::with_max_entries(65536, 0);

#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Wake the consumer once this many bytes are queued; otherwise it polls on a short timer.
const WAKEUP_BYTES: u64 = 64 * core::mem::size_of::<TcpEvent>() as u64;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk = ctx.arg::<*const u8>(0) as u64;
    let (old, new) = (ctx.arg::<i32>(1), ctx.arg::<i32>(2));
    on_state(sk, old, new);
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err): failed attempts
    // (err != 0) put nothing on the wire.
    if ctx.arg::<i32>(2) == 0 {
        on_retransmit(ctx.arg::<*const u8>(0) as u64);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_reset_tx(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason);
    // sk is NULL for resets answering segments that match no socket.
    bump(ctx.arg::<*const u8>(0) as u64, Counter::ResetsTx);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_reset_rx(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    bump(ctx.arg::<*const u8>(0) as u64, Counter::ResetsRx);
    0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Counter {
    Opened,
    Closed,
    Retransmits,
    ResetsTx,
    ResetsRx,
}

#[inline(always)]
fn offsets() -> TcpOffsets {
    // SAFETY: a read-only global patched by the loader; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&TCP_OFFSETS) }
}

/// Loads a field of a BTF-typed kernel object (`struct sock`, `tcp_sock`, `net`). The offset
/// comes from a frozen read-only global, so the verifier knows it as a constant, checks it
/// against the kernel's BTF and turns the access into a plain load guarded by the exception
/// table (a faulting address reads as 0): far cheaper than a `bpf_probe_read_kernel` call.
#[inline(always)]
fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: see above; the verifier rejects the program if the access does not match BTF.
    unsafe { core::ptr::read((base + u64::from(off)) as *const T) }
}

/// The `tcp_sock` behind a socket (NULL-checked cast from the kernel), or 0.
#[inline(always)]
fn tcp_sock(sk: u64) -> u64 {
    // SAFETY: a BPF helper that checks the socket's type and returns NULL if it is not TCP.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) } as u64;
    if tp == 0 {
        count(counters::TCP_READ_FAILED);
    }
    tp
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: always callable from tracing programs.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn on_state(sk: u64, old: i32, new: i32) {
    // Cheapest filter first: most transitions (FIN_WAIT*, CLOSE_WAIT, ...) need nothing.
    let wanted = matches!(
        (old, new),
        (TCP_CLOSE, TCP_LISTEN)
            | (TCP_CLOSE, TCP_SYN_SENT)
            | (TCP_LISTEN, TCP_SYN_RECV)
            | (_, TCP_ESTABLISHED)
            | (_, TCP_CLOSE)
    );
    let o = offsets();
    if !wanted || o.valid == 0 || load::<u16>(sk, o.protocol) != IPPROTO_TCP {
        return;
    }
    match (old, new) {
        (TCP_CLOSE, TCP_LISTEN) => on_listen(sk, &o),
        (TCP_LISTEN, TCP_CLOSE) => on_unlisten(sk, &o),
        (TCP_CLOSE, TCP_SYN_SENT) => {
            // In connect(), in the caller's context; the local port is not bound yet.
            let tgid = current_tgid();
            if tgid != agent_tgid() {
                track(sk, tgid, FLAG_ACTIVE);
            }
        }
        (TCP_LISTEN, TCP_SYN_RECV) => {
            // A child socket cloned from a listener, in softirq: the owner is the listener's.
            let key = listen_key(sk, &o);
            let tgid = TCP_LISTENERS.get_ptr(key).map_or(0, |p| {
                // SAFETY: live map value.
                unsafe { *p }
            });
            if tgid != agent_tgid() {
                track(sk, tgid, 0);
            }
        }
        (_, TCP_ESTABLISHED) => on_established(sk, &o),
        (_, TCP_CLOSE) => on_close(sk, &o),
        _ => {}
    }
}

/// The connection state of `sk` (created zeroed with `create`), or `None`.
#[inline(always)]
fn conn(sk: u64, create: bool) -> Option<*mut ConnState> {
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    // SAFETY: `sk` is the tracepoint's `struct sock *` (the verifier checks its BTF type and
    // that it may be NULL); the map is this object's socket storage.
    let p = unsafe {
        bpf_sk_storage_get(
            (&raw const TCP_CONNS).cast_mut().cast(),
            sk as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            flags,
        )
    }
    .cast::<ConnState>();
    (!p.is_null()).then_some(p)
}

#[inline(always)]
fn track(sk: u64, tgid: u32, flags: u32) {
    let Some(c) = conn(sk, true) else {
        count(counters::TCP_STORAGE_FAILED);
        return;
    };
    let state = ConnState {
        start_ns: now(),
        established_ns: 0,
        tgid,
        flags,
        retrans_seen: 0,
        _pad: 0,
    };
    // SAFETY: this socket's storage; its transitions are serialised by the socket lock.
    unsafe { *c = state };
}

#[inline(always)]
fn direction(flags: u32) -> u32 {
    if flags & FLAG_ACTIVE != 0 {
        DIR_ACTIVE
    } else {
        DIR_PASSIVE
    }
}

#[inline(always)]
fn netns(sk: u64, o: &TcpOffsets) -> u32 {
    load::<u32>(load::<u64>(sk, o.net), o.ns_inum)
}

#[inline(always)]
fn listen_key(sk: u64, o: &TcpOffsets) -> ListenKey {
    ListenKey {
        netns: netns(sk, o),
        port: load::<u16>(sk, o.num),
        _pad: 0,
    }
}

/// Local and remote addresses as IPv6 (IPv4 mapped into `::ffff:0:0/96`).
#[inline(always)]
fn addresses(sk: u64, o: &TcpOffsets, family: u16) -> ([u8; 16], [u8; 16]) {
    if family == AF_INET6 {
        (load(sk, o.v6_rcv_saddr), load(sk, o.v6_daddr))
    } else {
        (mapped(load(sk, o.rcv_saddr)), mapped(load(sk, o.daddr)))
    }
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[inline(always)]
fn endpoint(addr: [u8; 16], port: u16, netns: u32) -> Endpoint {
    Endpoint {
        addr,
        netns: if Endpoint::is_loopback(&addr) {
            netns
        } else {
            0
        },
        port,
        _pad: 0,
    }
}

fn on_listen(sk: u64, o: &TcpOffsets) {
    let tgid = current_tgid();
    let key = listen_key(sk, o);
    // The agent's own listeners are recorded too, so that connections to it are recognised as
    // its own and skipped; they produce no event.
    if TCP_LISTENERS.insert(key, tgid, 0).is_err() {
        count(counters::TCP_LISTENERS_FULL);
    }
    if tgid != agent_tgid() {
        emit_listener(sk, o, LISTEN_KIND, tgid, key);
    }
}

fn on_unlisten(sk: u64, o: &TcpOffsets) {
    let tgid = current_tgid();
    let key = listen_key(sk, o);
    // With SO_REUSEPORT several processes may share the key; only the recorded owner clears it.
    if let Some(owner) = TCP_LISTENERS.get_ptr(key)
        // SAFETY: live map value.
        && unsafe { *owner } == tgid
    {
        let _ = TCP_LISTENERS.remove(key);
    }
    if tgid != agent_tgid() {
        emit_listener(sk, o, UNLISTEN_KIND, tgid, key);
    }
}

#[inline(always)]
fn emit_listener(sk: u64, o: &TcpOffsets, kind: u32, tgid: u32, key: ListenKey) {
    let family = load::<u16>(sk, o.family);
    let (laddr, _) = addresses(sk, o, family);
    let mut ev = TcpEvent::ZERO;
    ev.header.kind = kind;
    ev.header.ts_ns = now();
    ev.tgid = tgid;
    ev.netns = key.netns;
    ev.family = family;
    ev.lport = key.port;
    ev.laddr = laddr;
    emit(&ev);
}

fn on_established(sk: u64, o: &TcpOffsets) {
    let Some(c) = conn(sk, false) else {
        return;
    };
    // SAFETY: live map value; only this socket's transitions (serialised by the socket lock)
    // write it.
    let (tgid, flags) = unsafe {
        (*c).established_ns = now();
        (*c).flags |= FLAG_ESTABLISHED;
        ((*c).tgid, (*c).flags)
    };
    add(tgid, direction(flags), Counter::Opened, 1);
    let family = load::<u16>(sk, o.family);
    let (laddr, _) = addresses(sk, o, family);
    let lport = load::<u16>(sk, o.num);
    let _ = TCP_ENDPOINTS.insert(endpoint(laddr, lport, netns(sk, o)), tgid, 0);
}

fn on_close(sk: u64, o: &TcpOffsets) {
    let Some(c) = conn(sk, false) else {
        count(counters::TCP_CLOSE_UNTRACKED);
        return;
    };
    // SAFETY: this socket's storage.
    let c = unsafe { *c };
    // A socket may be reused after CLOSE (connect again): it starts from fresh state.
    // SAFETY: as in `conn`.
    let _ = unsafe {
        bpf_sk_storage_delete(
            (&raw const TCP_CONNS).cast_mut().cast(),
            sk as *mut core::ffi::c_void,
        )
    };
    let dir = direction(c.flags);
    let owner = ClosedOwner {
        tgid: c.tgid,
        direction: dir,
    };
    let _ = TCP_CLOSED.insert(sk, owner, 0);
    let tp = tcp_sock(sk);
    let total_retrans = if tp != 0 {
        load::<u32>(tp, o.total_retrans)
    } else {
        0
    };
    add_retransmits(c.tgid, dir, total_retrans, c.retrans_seen);
    let established = c.flags & FLAG_ESTABLISHED != 0;
    if c.flags & FLAG_ACTIVE == 0 && !established {
        // An accepted handshake that never completed: nothing to report.
        return;
    }
    if established {
        add(c.tgid, dir, Counter::Closed, 1);
    }
    let family = load::<u16>(sk, o.family);
    let (laddr, raddr) = addresses(sk, o, family);
    let ns = netns(sk, o);
    let rport = u16::from_be(load::<u16>(sk, o.dport));
    let peer = endpoint(raddr, rport, ns);
    let mut ev = TcpEvent::ZERO;
    ev.header.kind = CLOSE_KIND;
    ev.header.ts_ns = now();
    ev.tgid = c.tgid;
    ev.peer_tgid = TCP_ENDPOINTS.get_ptr(peer).map_or(0, |p| {
        // SAFETY: live map value.
        unsafe { *p }
    });
    let fin_rx = (load::<u64>(sk, o.sk_flags) >> SOCK_DONE_BIT) & 1 != 0;
    ev.flags = c.flags | if fin_rx { FLAG_FIN_RX } else { 0 };
    ev.sk_err = load::<i32>(sk, o.sk_err) as u32;
    ev.netns = ns;
    ev.family = family;
    ev.lport = load::<u16>(sk, o.num);
    ev.rport = rport;
    if established && tp != 0 {
        ev.srtt_us = load::<u32>(tp, o.srtt_us);
        ev.bytes_sent = load::<u64>(tp, o.bytes_sent);
        ev.bytes_retrans = load::<u64>(tp, o.bytes_retrans);
        ev.bytes_received = load::<u64>(tp, o.bytes_received);
    }
    ev.total_retrans = total_retrans;
    ev.start_ns = c.start_ns;
    ev.established_ns = c.established_ns;
    ev.laddr = laddr;
    ev.raddr = raddr;
    emit(&ev);
}

/// Adds the connection's new retransmitted segments (the kernel's own per-socket count, so a
/// retransmitted packet of several segments counts as several, as in `/proc/net/snmp`).
fn on_retransmit(sk: u64) {
    let Some(c) = conn(sk, false) else {
        // Not tracked (older than the agent, or evicted): one retransmission, segments unknown.
        add(0, DIR_UNTRACKED, Counter::Retransmits, 1);
        return;
    };
    let tp = tcp_sock(sk);
    if tp == 0 {
        return;
    }
    let total = load::<u32>(tp, offsets().total_retrans);
    // SAFETY: live map value; retransmits of one socket are serialised by its lock.
    let (tgid, flags, seen) = unsafe {
        let seen = (*c).retrans_seen;
        if total > seen {
            (*c).retrans_seen = total;
        }
        ((*c).tgid, (*c).flags, seen)
    };
    add_retransmits(tgid, direction(flags), total, seen);
}

#[inline(always)]
fn add_retransmits(tgid: u32, dir: u32, total: u32, seen: u32) {
    if total > seen {
        add(tgid, dir, Counter::Retransmits, u64::from(total - seen));
    }
}

/// Counts a reset against the connection's owner (also just after its close), or as untracked.
#[inline(always)]
fn bump(sk: u64, counter: Counter) {
    let (tgid, dir) = match (sk != 0).then(|| conn(sk, false)).flatten() {
        Some(c) => {
            // SAFETY: live map value; a flag bit set twice is harmless.
            unsafe {
                (*c).flags |= if counter == Counter::ResetsRx {
                    FLAG_RESET_RX
                } else {
                    FLAG_RESET_TX
                };
                ((*c).tgid, direction((*c).flags))
            }
        }
        None => match (sk != 0).then(|| TCP_CLOSED.get_ptr(sk)).flatten() {
            // SAFETY: live map value.
            Some(o) => unsafe { ((*o).tgid, (*o).direction) },
            None => (0, DIR_UNTRACKED),
        },
    };
    add(tgid, dir, counter, 1);
}

#[inline(always)]
fn add(tgid: u32, direction: u32, counter: Counter, n: u64) {
    let key = TcpStatsKey { tgid, direction };
    let stats = match TCP_STATS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            // NOEXIST: another CPU may have inserted the key meanwhile; the lookup finds it.
            let _ = TCP_STATS.insert(key, TcpStats::ZERO, u64::from(BPF_NOEXIST));
            match TCP_STATS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    count(counters::TCP_STATS_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: live, aligned map value; several CPUs may update it at once, hence atomics.
    unsafe {
        let field = match counter {
            Counter::Opened => &raw mut (*stats).opened,
            Counter::Closed => &raw mut (*stats).closed,
            Counter::Retransmits => &raw mut (*stats).retransmits,
            Counter::ResetsTx => &raw mut (*stats).resets_tx,
            Counter::ResetsRx => &raw mut (*stats).resets_rx,
        };
        atomic_add(field, n);
    }
}

#[inline(always)]
fn emit(ev: &TcpEvent) {
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count(counters::TCP_EVENTS_DROPPED);
        return;
    };
    entry.write(*ev);
    // Nothing here is urgent: wake the consumer only when a batch has built up.
    let queued = TCP_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    entry.submit(crate::wakeup_flags(
        queued,
        core::mem::size_of::<TcpEvent>() as u64,
        WAKEUP_BYTES,
    ));
}
