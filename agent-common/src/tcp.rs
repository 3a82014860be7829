//! `tcp` probe: connection lifecycle from `inet_sock_set_state`, retransmits and resets from the
//! `tcp` tracepoints. Per-connection state stays in the kernel; one event per connection (at
//! close) and one per listening socket reach userspace.

use crate::EventHeader;

/// A tracked connection reached `TCP_CLOSE`; carries its totals.
pub const CLOSE_KIND: u32 = 16;
/// A socket started listening (`CLOSE -> LISTEN`).
pub const LISTEN_KIND: u32 = 17;
/// A listening socket was closed.
pub const UNLISTEN_KIND: u32 = 18;

/// `TcpStatsKey::direction`: the process called `connect`.
pub const DIR_ACTIVE: u32 = 0;
/// `TcpStatsKey::direction`: the connection was accepted from a listener.
pub const DIR_PASSIVE: u32 = 1;
/// `TcpStatsKey::direction`: a retransmit or reset on a socket the probe does not track (opened
/// before the agent started, its socket storage not created, or a reset sent without any socket).
pub const DIR_UNTRACKED: u32 = 2;

/// `ConnState::flags` / `TcpEvent::flags`: opened by `connect` (else accepted).
pub const FLAG_ACTIVE: u32 = 1;
/// The three-way handshake completed.
pub const FLAG_ESTABLISHED: u32 = 2;
/// A reset was received on the connection.
pub const FLAG_RESET_RX: u32 = 4;
/// A reset was sent on the connection.
pub const FLAG_RESET_TX: u32 = 8;
/// The peer's FIN was received (`SOCK_DONE`): `bytes_received` counts it as one byte.
pub const FLAG_FIN_RX: u32 = 16;

/// Bit of `SOCK_DONE` in `sock.sk_flags` (`enum sock_flags`, stable since 2.6).
pub const SOCK_DONE_BIT: u64 = 1;

/// TCP states from `include/net/tcp_states.h`.
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LISTEN: i32 = 10;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Byte offsets of the kernel fields the programs read, resolved from the kernel's BTF by the
/// agent at load time (Rust eBPF has no CO-RE relocations) and patched into a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOffsets {
    /// `sock.__sk_common.skc_family` (u16)
    pub family: u32,
    /// `sock.__sk_common.skc_num`: local port, host order (u16)
    pub num: u32,
    /// `sock.__sk_common.skc_dport`: remote port, network order (u16)
    pub dport: u32,
    /// `sock.__sk_common.skc_daddr` (4 bytes)
    pub daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (4 bytes)
    pub rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes)
    pub v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes)
    pub v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net` (pointer to `struct net`)
    pub net: u32,
    /// `net.ns.inum` (u32): the network namespace inode, as in `/proc/<pid>/ns/net`.
    pub ns_inum: u32,
    /// `sock.sk_err` (int)
    pub sk_err: u32,
    /// `sock.sk_protocol` (u16)
    pub protocol: u32,
    /// `sock.__sk_common.skc_flags` (`sk_flags`, unsigned long)
    pub sk_flags: u32,
    /// `tcp_sock.bytes_sent`: payload bytes sent, retransmissions included (u64)
    pub bytes_sent: u32,
    /// `tcp_sock.bytes_retrans`: payload bytes retransmitted (u64)
    pub bytes_retrans: u32,
    /// `tcp_sock.bytes_received` (u64)
    pub bytes_received: u32,
    /// `tcp_sock.srtt_us`: smoothed RTT in µs << 3 (u32)
    pub srtt_us: u32,
    /// `tcp_sock.total_retrans` (u32)
    pub total_retrans: u32,
    /// Set to 1 by the agent once the offsets are filled in; the programs do nothing before.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<TcpOffsets>() == 72);

/// Value of `TCP_CONNS`, the socket local storage of each tracked connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// `SYN_SENT` (active) or `SYN_RECV` (passive) time.
    pub start_ns: u64,
    /// Time the handshake completed, 0 before.
    pub established_ns: u64,
    /// Owning process: the caller of `connect`, or the owner of the listener (0 if unknown).
    pub tgid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `tcp_sock.total_retrans` already added to `TcpStats::retransmits`.
    pub retrans_seen: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ConnState>() == 32);

/// Value of `TCP_CLOSED`: who owned a socket that just closed, for the reset the kernel sends
/// right after closing it (`SO_LINGER` 0, close with unread data).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedOwner {
    pub tgid: u32,
    pub direction: u32,
}
const _: () = assert!(core::mem::size_of::<ClosedOwner>() == 8);

/// Key of `TCP_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpStatsKey {
    pub tgid: u32,
    /// One of `DIR_*`.
    pub direction: u32,
}
const _: () = assert!(core::mem::size_of::<TcpStatsKey>() == 8);

/// Cumulative counters per (process, direction), updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Handshakes completed.
    pub opened: u64,
    /// Established connections that reached `TCP_CLOSE`.
    pub closed: u64,
    /// Segments retransmitted: `tcp_sock.total_retrans` deltas, taken at each
    /// `tcp:tcp_retransmit_skb` and at close.
    pub retransmits: u64,
    /// Resets sent.
    pub resets_tx: u64,
    /// Resets received.
    pub resets_rx: u64,
}
const _: () = assert!(core::mem::size_of::<TcpStats>() == 40);

impl TcpStats {
    pub const ZERO: Self = Self {
        opened: 0,
        closed: 0,
        retransmits: 0,
        resets_tx: 0,
        resets_rx: 0,
    };
}

/// Key of `TCP_LISTENERS`: who listens on a port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    /// Host order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);

/// Key of `TCP_ENDPOINTS`: a local connection endpoint, to recognise peers on this node.
/// Addresses are IPv6 (IPv4 as `::ffff:a.b.c.d`); `netns` is set only for loopback addresses,
/// which mean different things in different namespaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub netns: u32,
    /// Host order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 24);

impl Endpoint {
    /// Whether `addr` is 127.0.0.0/8 (mapped) or `::1`.
    pub fn is_loopback(addr: &[u8; 16]) -> bool {
        let v4_mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
        (v4_mapped && addr[12] == 127) || (addr[..15] == [0; 15] && addr[15] == 1)
    }
}

/// Ring-buffer record for every kind. Addresses are IPv6 (IPv4 mapped), ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    pub header: EventHeader,
    pub tgid: u32,
    /// The process on this node at the other end, when the probe saw it (0 otherwise).
    pub peer_tgid: u32,
    /// `FLAG_*` bits (close events).
    pub flags: u32,
    /// `sk_err` at close: why a connect failed (ECONNREFUSED, ETIMEDOUT, ...), 0 if none.
    pub sk_err: u32,
    pub netns: u32,
    /// `AF_INET` or `AF_INET6` (the socket's family; addresses are always 16 bytes).
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    /// Smoothed RTT at close, µs << 3 (as the kernel keeps it); 0 if never measured.
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub _pad2: u32,
    pub start_ns: u64,
    /// 0 if the handshake never completed.
    pub established_ns: u64,
    /// `tcp_sock.bytes_sent`: payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// `tcp_sock.bytes_retrans`: payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// `tcp_sock.bytes_received`: received sequence space (payload, plus 1 if the FIN was).
    pub bytes_received: u64,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TcpEvent>() == 128);

impl TcpEvent {
    pub const ZERO: Self = Self {
        header: EventHeader {
            kind: 0,
            _pad: 0,
            ts_ns: 0,
        },
        tgid: 0,
        peer_tgid: 0,
        flags: 0,
        sk_err: 0,
        netns: 0,
        family: 0,
        lport: 0,
        rport: 0,
        _pad: 0,
        srtt_us: 0,
        total_retrans: 0,
        _pad2: 0,
        start_ns: 0,
        established_ns: 0,
        bytes_sent: 0,
        bytes_retrans: 0,
        bytes_received: 0,
        laddr: [0; 16],
        raddr: [0; 16],
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding bytes (sizes asserted above).
    unsafe impl aya::Pod for super::TcpOffsets {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::ClosedOwner {}
    unsafe impl aya::Pod for super::TcpStatsKey {}
    unsafe impl aya::Pod for super::TcpStats {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::TcpEvent {}
}
