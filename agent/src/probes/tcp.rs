//! `tcp` probe: resolves socket field offsets from BTF, attaches the BTF tracepoints, decodes
//! ring-buffer events and reads `TCP_STATS`.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
};
use tenantscope_agent_common::tcp::{
    AF_INET, AF_INET6, CLOSE_KIND, FLAG_ACTIVE, FLAG_ESTABLISHED, FLAG_FIN_RX, FLAG_RESET_RX,
    FLAG_RESET_TX, LISTEN_KIND, ListenKey, TcpEvent, TcpOffsets, TcpStats, TcpStatsKey,
    UNLISTEN_KIND,
};

use super::{ProbeError, btf::Btf, take_map};
use crate::workload::listeners::Listener;

pub const NAME: &str = "tcp";

/// `(program, tracepoint)`; the state hook is attached last so that connections are only
/// tracked once every counter hook is in place.
const PROGRAMS: [(&str, &str); 4] = [
    ("tcp_retransmit", "tcp_retransmit_skb"),
    ("tcp_reset_tx", "tcp_send_reset"),
    ("tcp_reset_rx", "tcp_receive_reset"),
    ("tcp_state", "inet_sock_set_state"),
];

/// Resolves every field the kernel programs read, checking each field's size, from the
/// running kernel's BTF.
pub fn resolve_offsets() -> Result<TcpOffsets, ProbeError> {
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    offsets_from(&btf)
}

fn offsets_from(btf: &Btf) -> Result<TcpOffsets, ProbeError> {
    let field = |strukt: &str, path: &[&str], size: u32| -> Result<u32, ProbeError> {
        let m = btf
            .member(strukt, path)
            .map_err(|e| ProbeError::Btf(e.to_string()))?;
        if m.size != size {
            return Err(ProbeError::Btf(format!(
                "{strukt}.{} is {} bytes, the program expects {size}",
                path.join("."),
                m.size
            )));
        }
        Ok(m.offset)
    };
    let common = |name: &str, size: u32| field("sock", &["__sk_common", name], size);
    Ok(TcpOffsets {
        family: common("skc_family", 2)?,
        num: common("skc_num", 2)?,
        dport: common("skc_dport", 2)?,
        daddr: common("skc_daddr", 4)?,
        rcv_saddr: common("skc_rcv_saddr", 4)?,
        v6_daddr: common("skc_v6_daddr", 16)?,
        v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        net: common("skc_net", 8)?,
        ns_inum: field("net", &["ns", "inum"], 4)?,
        sk_err: field("sock", &["sk_err"], 4)?,
        protocol: field("sock", &["sk_protocol"], 2)?,
        sk_flags: common("skc_flags", 8)?,
        bytes_sent: field("tcp_sock", &["bytes_sent"], 8)?,
        bytes_retrans: field("tcp_sock", &["bytes_retrans"], 8)?,
        bytes_received: field("tcp_sock", &["bytes_received"], 8)?,
        srtt_us: field("tcp_sock", &["srtt_us"], 4)?,
        total_retrans: field("tcp_sock", &["total_retrans"], 4)?,
        valid: 1,
    })
}

/// The attached probe's counter and listener maps.
pub struct TcpProbe {
    stats: HashMap<MapData, TcpStatsKey, TcpStats>,
    listeners: HashMap<MapData, ListenKey, u32>,
}

/// Attaches every program; returns the maps and the event ring.
pub fn attach(ebpf: &mut Ebpf) -> Result<(TcpProbe, RingBuf<MapData>), ProbeError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    let mut attached = Vec::new();
    for (program, tp) in PROGRAMS {
        if let Err(e) = super::attach_btf_tracepoint(ebpf, &btf, program, tp) {
            for p in attached {
                if let Some(aya::programs::Program::BtfTracePoint(p)) = ebpf.program_mut(p) {
                    let _ = p.unload();
                }
            }
            return Err(e);
        }
        attached.push(program);
    }
    let probe = TcpProbe {
        stats: take_map(ebpf, "TCP_STATS")?,
        listeners: take_map(ebpf, "TCP_LISTENERS")?,
    };
    Ok((probe, take_map(ebpf, "TCP_EVENTS")?))
}

impl TcpProbe {
    /// Records listeners that predate the agent so their accepted connections are attributed.
    /// Entries the kernel already wrote are newer and kept. Returns how many failed.
    pub fn seed_listeners(&mut self, listeners: &[Listener]) -> u64 {
        const BPF_NOEXIST: u64 = 1;
        let mut failed = 0;
        for l in listeners {
            let key = ListenKey {
                netns: l.netns,
                port: l.port,
                _pad: 0,
            };
            match self.listeners.insert(key, l.tgid, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "seeding TCP_LISTENERS");
                }
            }
        }
        failed
    }

    /// Reads every counter entry into `out` (cleared first); returns how many reads failed.
    pub fn read(&self, out: &mut Vec<(TcpStatsKey, TcpStats)>) -> u64 {
        super::read_all(&self.stats, "TCP_STATS", out)
    }

    /// Deletes the counters of an exited process after their final values were folded.
    pub fn remove(&mut self, key: &TcpStatsKey) -> Result<(), ProbeError> {
        super::remove_key(&mut self.stats, "TCP_STATS", key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Opened by `connect`.
    Active,
    /// Accepted from a listener.
    Passive,
    /// A retransmit or reset on a connection the probe does not track.
    Untracked,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
            Self::Untracked => "unknown",
        }
    }

    pub fn from_kernel(d: u32) -> Option<Self> {
        use tenantscope_agent_common::tcp::{DIR_ACTIVE, DIR_PASSIVE, DIR_UNTRACKED};
        match d {
            DIR_ACTIVE => Some(Self::Active),
            DIR_PASSIVE => Some(Self::Passive),
            DIR_UNTRACKED => Some(Self::Untracked),
            _ => None,
        }
    }
}

/// Why a `connect` did not complete, from the socket error at close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// ECONNREFUSED: a reset answered the SYN (nothing listening).
    Refused,
    /// ETIMEDOUT: SYNs unanswered until the retries ran out.
    Timeout,
    /// EHOSTUNREACH / ENETUNREACH: ICMP or no route.
    Unreachable,
    /// No error: the application closed the socket before the handshake completed (its own
    /// connect timeout, a cancelled request, a non-blocking connect abandoned).
    Aborted,
    Other,
}

impl Failure {
    pub fn from_errno(e: u32) -> Self {
        match e as i32 {
            libc::ECONNREFUSED => Self::Refused,
            libc::ETIMEDOUT => Self::Timeout,
            libc::EHOSTUNREACH | libc::ENETUNREACH => Self::Unreachable,
            0 => Self::Aborted,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Aborted => "aborted",
            Self::Other => "other",
        }
    }
}

/// A closed connection, as the kernel summarised it.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub tgid: u32,
    /// The process at the other end when it is on this node and the probe saw it, else 0.
    pub peer_tgid: u32,
    pub direction: Direction,
    /// `None` for a connection that was established; why it failed otherwise.
    pub failure: Option<Failure>,
    pub family: Family,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
    /// From the handshake to the close (from `connect` to the close for failed connects).
    pub duration: Duration,
    /// Smoothed RTT at close, when the kernel measured one.
    pub srtt: Option<Duration>,
    /// Payload bytes sent, each byte once however often it was retransmitted.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    pub total_retrans: u32,
    pub reset_rx: bool,
    pub reset_tx: bool,
}

/// A socket that started or stopped listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEvent {
    pub tgid: u32,
    pub netns: u32,
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Close(Close),
    Listen(ListenerEvent),
    Unlisten(ListenerEvent),
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Close(_) => "close",
            Self::Listen(_) => "listen",
            Self::Unlisten(_) => "unlisten",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown address family {0}")]
    Family(u16),
}

/// Decodes one ring-buffer record. Pure; never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let ev: TcpEvent = super::plain_record(bytes)
        .map_err(|(got, expected)| DecodeError::Size { got, expected })?;
    let family = match ev.family {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        f => return Err(DecodeError::Family(f)),
    };
    let addr = |a: [u8; 16]| Ipv6Addr::from(a).to_canonical();
    let listener = || ListenerEvent {
        tgid: ev.tgid,
        netns: ev.netns,
        family,
        addr: addr(ev.laddr),
        port: ev.lport,
    };
    match ev.header.kind {
        LISTEN_KIND => Ok(Event::Listen(listener())),
        UNLISTEN_KIND => Ok(Event::Unlisten(listener())),
        CLOSE_KIND => {
            let established = ev.flags & FLAG_ESTABLISHED != 0;
            let since = if established {
                ev.established_ns
            } else {
                ev.start_ns
            };
            Ok(Event::Close(Close {
                tgid: ev.tgid,
                peer_tgid: ev.peer_tgid,
                direction: if ev.flags & FLAG_ACTIVE != 0 {
                    Direction::Active
                } else {
                    Direction::Passive
                },
                failure: (!established).then(|| Failure::from_errno(ev.sk_err)),
                family,
                local: SocketAddr::new(addr(ev.laddr), ev.lport),
                remote: SocketAddr::new(addr(ev.raddr), ev.rport),
                netns: ev.netns,
                duration: Duration::from_nanos(ev.header.ts_ns.saturating_sub(since)),
                // The kernel keeps srtt in µs scaled by 8.
                srtt: (ev.srtt_us != 0).then(|| Duration::from_nanos(u64::from(ev.srtt_us) * 125)),
                bytes_sent: ev.bytes_sent.saturating_sub(ev.bytes_retrans),
                // Sequence space: a received FIN occupies one number but carries no payload.
                bytes_received: ev
                    .bytes_received
                    .saturating_sub(u64::from(ev.flags & FLAG_FIN_RX != 0)),
                total_retrans: ev.total_retrans,
                reset_rx: ev.flags & FLAG_RESET_RX != 0,
                reset_tx: ev.flags & FLAG_RESET_TX != 0,
            }))
        }
        k => Err(DecodeError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tenantscope_agent_common::tcp::TcpEvent;

    use super::*;

    fn bytes(ev: &TcpEvent) -> Vec<u8> {
        // SAFETY: plain data viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const *ev).cast::<u8>(), size_of::<TcpEvent>()) }
            .to_vec()
    }

    fn mapped(v4: [u8; 4]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&v4);
        a
    }

    fn close_event() -> TcpEvent {
        let mut ev = TcpEvent::ZERO;
        ev.header.kind = CLOSE_KIND;
        ev.header.ts_ns = 5_000_000_000;
        ev.tgid = 42;
        ev.peer_tgid = 7;
        ev.flags = FLAG_ACTIVE | FLAG_ESTABLISHED | FLAG_RESET_RX | FLAG_FIN_RX;
        ev.family = AF_INET;
        ev.lport = 40000;
        ev.rport = 5432;
        ev.srtt_us = 8 * 250;
        ev.total_retrans = 3;
        ev.start_ns = 1_000_000_000;
        ev.established_ns = 2_000_000_000;
        ev.bytes_sent = 130;
        ev.bytes_retrans = 30;
        ev.bytes_received = 251;
        ev.laddr = mapped([10, 0, 0, 1]);
        ev.raddr = mapped([10, 0, 0, 2]);
        ev
    }

    #[test]
    fn decodes_an_established_close() {
        let Ok(Event::Close(c)) = decode(&bytes(&close_event())) else {
            panic!("not a close")
        };
        assert_eq!(c.direction, Direction::Active);
        assert_eq!(c.failure, None);
        assert_eq!(c.family, Family::V4);
        assert_eq!(
            c.local,
            SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 40000)
        );
        assert_eq!(
            c.remote,
            SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 5432)
        );
        assert_eq!(
            c.duration,
            Duration::from_secs(3),
            "measured from the handshake"
        );
        assert_eq!(c.srtt, Some(Duration::from_micros(250)));
        assert_eq!(
            (c.bytes_sent, c.bytes_received, c.total_retrans),
            (100, 250, 3),
            "retransmitted bytes and the FIN are not payload"
        );
        assert!(c.reset_rx && !c.reset_tx);
        assert_eq!(c.peer_tgid, 7);
    }

    #[test]
    fn decodes_failed_connects_by_errno() {
        for (errno, want) in [
            (libc::ECONNREFUSED, Failure::Refused),
            (libc::ETIMEDOUT, Failure::Timeout),
            (libc::EHOSTUNREACH, Failure::Unreachable),
            (libc::ENETUNREACH, Failure::Unreachable),
            (0, Failure::Aborted),
            (libc::EPIPE, Failure::Other),
        ] {
            let mut ev = close_event();
            ev.flags = FLAG_ACTIVE;
            ev.sk_err = errno as u32;
            ev.srtt_us = 0;
            let Ok(Event::Close(c)) = decode(&bytes(&ev)) else {
                panic!()
            };
            assert_eq!(c.failure, Some(want), "errno {errno}");
            assert_eq!(c.duration, Duration::from_secs(4), "measured from connect");
            assert_eq!(c.srtt, None);
        }
    }

    #[test]
    fn decodes_v6_listeners() {
        let mut ev = TcpEvent::ZERO;
        ev.header.kind = LISTEN_KIND;
        ev.tgid = 9;
        ev.netns = 4026531840;
        ev.family = AF_INET6;
        ev.lport = 8080;
        ev.laddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(Event::Listen(ListenerEvent {
                tgid: 9,
                netns: 4026531840,
                family: Family::V6,
                addr: Ipv6Addr::LOCALHOST.into(),
                port: 8080
            }))
        );
        ev.header.kind = UNLISTEN_KIND;
        assert!(matches!(decode(&bytes(&ev)), Ok(Event::Unlisten(_))));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(decode(&[]), Err(DecodeError::Size { got: 0, .. })));
        assert!(matches!(decode(&[1; 127]), Err(DecodeError::Size { .. })));
        let mut ev = close_event();
        ev.header.kind = 99;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Kind(99)));
        let mut ev = close_event();
        ev.family = 1;
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Family(1)));
        // Arbitrary bytes of the right size decode or fail, never panic.
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..128u32)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn offsets_resolve_on_this_kernel() {
        match Btf::from_sys_fs() {
            Ok(btf) => {
                let o = offsets_from(&btf).expect("all fields present");
                assert_eq!(o.valid, 1);
                assert_ne!(o.bytes_sent, o.bytes_received);
            }
            Err(e) => eprintln!("SKIP offsets_resolve_on_this_kernel: no kernel BTF ({e})"),
        }
    }

    #[test]
    fn direction_and_failure_names() {
        assert_eq!(Direction::from_kernel(2), Some(Direction::Untracked));
        assert_eq!(Direction::from_kernel(3), None);
        assert_eq!(Direction::Untracked.as_str(), "unknown");
        assert_eq!(
            Failure::from_errno(libc::ETIMEDOUT as u32).as_str(),
            "timeout"
        );
    }
}
