//! `http` probe: patches syscall numbers and `pt_regs` offsets into the kernel object,
//! attaches the BTF-typed `sys_enter`/`sys_exit` programs and decodes their records.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
};
use syscalls::Sysno;
use tenantscope_agent_common::http::{
    EXCHANGE_KIND, HEADER_BYTES, HttpConfig, REQ_WINDOW, RESP_WINDOW, ROLE_CLIENT, ROLE_SERVER,
    RequestCounts, RequestKey, UPGRADED_CLOSE_KIND,
};

use super::{ProbeError, btf::Btf, take_map};
pub use crate::http::pairing::Role;
use crate::parenting::Serving;

pub const NAME: &str = "http";

/// The syscall-argument registers of this architecture in `struct pt_regs`, and the one that
/// keeps the syscall number until exit.
#[cfg(target_arch = "x86_64")]
const ARG_REGS: [&str; 3] = ["di", "si", "dx"];
#[cfg(target_arch = "x86_64")]
const NR_REG: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const ARG_REGS: [&str; 3] = ["regs", "regs", "regs"];
#[cfg(target_arch = "aarch64")]
const NR_REG: &str = "syscallno";

/// Builds the kernel configuration: this architecture's syscall numbers, the argument registers'
/// offsets from BTF, and the capture windows (clamped to the kernel's buffers).
pub fn resolve_config(req_capture: usize, resp_capture: usize) -> Result<HttpConfig, ProbeError> {
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
    let mut arg = [0u32; 3];
    for (i, name) in ARG_REGS.iter().enumerate() {
        let m = btf
            .member("pt_regs", &[name])
            .map_err(|e| ProbeError::Btf(e.to_string()))?;
        // On aarch64 the arguments are `regs[0..]`, 8 bytes apart.
        arg[i] = if ARG_REGS[0] == ARG_REGS[1] {
            m.offset + 8 * i as u32
        } else {
            m.offset
        };
    }
    let nr_reg = btf
        .member("pt_regs", &[NR_REG])
        .map_err(|e| ProbeError::Btf(e.to_string()))?
        .offset;
    let nr = |s: Sysno| s as u32;
    // Architectures without plain accept (aarch64) reuse accept4's number: harmless.
    #[cfg(target_arch = "x86_64")]
    let accept = nr(Sysno::accept);
    #[cfg(not(target_arch = "x86_64"))]
    let accept = nr(Sysno::accept4);
    Ok(HttpConfig {
        nr_read: nr(Sysno::read),
        nr_write: nr(Sysno::write),
        nr_readv: nr(Sysno::readv),
        nr_writev: nr(Sysno::writev),
        nr_recvfrom: nr(Sysno::recvfrom),
        nr_sendto: nr(Sysno::sendto),
        nr_recvmsg: nr(Sysno::recvmsg),
        nr_sendmsg: nr(Sysno::sendmsg),
        nr_accept: accept,
        nr_accept4: nr(Sysno::accept4),
        nr_connect: nr(Sysno::connect),
        nr_close: nr(Sysno::close),
        arg0: arg[0],
        arg1: arg[1],
        arg2: arg[2],
        nr_reg,
        req_capture: req_capture.min(REQ_WINDOW) as u32,
        resp_capture: resp_capture.min(RESP_WINDOW) as u32,
        valid: 1,
    })
}

/// The attached probe's per-process request counts.
pub struct HttpProbe {
    requests: HashMap<MapData, RequestKey, RequestCounts>,
}

/// The probe's programs are the shared `sys_enter`/`sys_exit` pair (see
/// `syscalls::attach_shared_hooks`); `shared` is their outcome. Returns the maps and the
/// record ring.
pub fn attach(
    ebpf: &mut Ebpf,
    shared: &Result<(), String>,
) -> Result<(HttpProbe, RingBuf<MapData>), ProbeError> {
    shared.clone().map_err(ProbeError::SharedHooks)?;
    let probe = HttpProbe {
        requests: take_map(ebpf, "HTTP_REQUESTS")?,
    };
    Ok((probe, take_map(ebpf, "HTTP_EVENTS")?))
}

impl HttpProbe {
    /// Request counts per (tgid, method index, side) into `out` (cleared first); returns how
    /// many entries failed to read.
    pub fn read_requests(&self, out: &mut Vec<(RequestKey, RequestCounts)>) -> u64 {
        super::read_all(&self.requests, "HTTP_REQUESTS", out)
    }

    /// Deletes the entry of an exited process.
    pub fn remove(&mut self, key: &RequestKey) -> Result<(), ProbeError> {
        super::remove_key(&mut self.requests, "HTTP_REQUESTS", key)
    }
}

/// A response began: the request bytes stashed since `req_ts` and the first response bytes;
/// `request` and `response` borrow from the ring-buffer item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord<'a> {
    pub conn: u64,
    pub role: Role,
    pub tgid: u32,
    /// The thread that wrote the response (server) or read it (client).
    pub tid: u32,
    pub req_ts: u64,
    pub resp_ts: u64,
    /// Client records: what the calling thread served when the request began.
    pub serving: Serving,
    pub request: &'a [u8],
    pub response: &'a [u8],
}

#[cfg(test)]
impl<'a> ExchangeRecord<'a> {
    /// A record whose calling thread served nothing (see [`Self::serving`]).
    #[allow(clippy::too_many_arguments)]
    pub fn test(
        conn: u64,
        role: Role,
        tgid: u32,
        tid: u32,
        request: &'a [u8],
        response: &'a [u8],
        req_ts: u64,
        resp_ts: u64,
    ) -> Self {
        Self {
            conn,
            role,
            tgid,
            tid,
            req_ts,
            resp_ts,
            serving: Serving::Nothing,
            request,
            response,
        }
    }

    /// The same record with what its thread served.
    pub fn serving(mut self, serving: Serving) -> Self {
        self.serving = serving;
        self
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Exchange(ExchangeRecord<'a>),
    UpgradedClose { conn: u64, at: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("record of {got} bytes does not hold its {req} request and {resp} response bytes")]
    Truncated { got: usize, req: u16, resp: u16 },
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("unknown role {0}")]
    Role(u8),
    #[error("captured length {0} exceeds its window")]
    Length(u16),
    #[error("unknown parent kind {0}")]
    Parent(u8),
}

/// Decodes one record (its used length: header, request bytes, response bytes). Pure; never
/// panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected: HEADER_BYTES,
        });
    }
    let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    // Offsets of HttpEvent's fields (layout asserted in agent-common).
    let (kind, ts) = (u32_at(0), u64_at(8));
    let (conn, req_ts, tgid, tid) = (u64_at(16), u64_at(24), u32_at(32), u32_at(36));
    let (role, parent, req_len, resp_len) = (bytes[44], bytes[45], u16_at(46), u16_at(48));
    let (parent_conn, parent_ts) = (u64_at(56), u64_at(64));
    match kind {
        UPGRADED_CLOSE_KIND => Ok(Record::UpgradedClose { conn, at: ts }),
        EXCHANGE_KIND => {
            let role = match role {
                ROLE_SERVER => Role::Server,
                ROLE_CLIENT => Role::Client,
                r => return Err(DecodeError::Role(r)),
            };
            if usize::from(req_len) > REQ_WINDOW {
                return Err(DecodeError::Length(req_len));
            }
            if usize::from(resp_len) > RESP_WINDOW {
                return Err(DecodeError::Length(resp_len));
            }
            let resp_at = HEADER_BYTES + usize::from(req_len);
            let end = resp_at + usize::from(resp_len);
            if bytes.len() != end {
                return Err(DecodeError::Truncated {
                    got: bytes.len(),
                    req: req_len,
                    resp: resp_len,
                });
            }
            let serving = Serving::from_kernel(parent, parent_conn, parent_ts)
                .map_err(DecodeError::Parent)?;
            Ok(Record::Exchange(ExchangeRecord {
                conn,
                role,
                tgid,
                tid,
                req_ts,
                resp_ts: ts,
                serving,
                request: &bytes[HEADER_BYTES..resp_at],
                response: &bytes[resp_at..end],
            }))
        }
        k => Err(DecodeError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use tenantscope_agent_common::http::HttpEvent;

    use super::*;

    /// A record as the kernel sends it: header, request bytes, response bytes right after.
    fn record(kind: u32, role: u8, req: &[u8], resp: &[u8]) -> Vec<u8> {
        record_with(kind, role, req, resp, |_| {})
    }

    fn record_with(
        kind: u32,
        role: u8,
        req: &[u8],
        resp: &[u8],
        edit: impl FnOnce(&mut HttpEvent),
    ) -> Vec<u8> {
        // SAFETY: all-zero is a valid HttpEvent (plain integers and arrays).
        let mut ev: HttpEvent = unsafe { core::mem::zeroed() };
        ev.header.kind = kind;
        ev.header.ts_ns = 900;
        ev.conn_id = 77;
        ev.req_ts_ns = 100;
        ev.tgid = 5;
        ev.tid = 6;
        ev.fd = 9;
        ev.role = role;
        ev.req_len = req.len() as u16;
        ev.resp_len = resp.len() as u16;
        edit(&mut ev);
        // SAFETY: plain data viewed as bytes.
        let header =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), HEADER_BYTES) };
        [header, req, resp].concat()
    }

    #[test]
    fn decodes_an_exchange_and_an_upgraded_close() {
        let raw = record(
            EXCHANGE_KIND,
            ROLE_SERVER,
            b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 200",
        );
        assert_eq!(
            decode(&raw),
            Ok(Record::Exchange(ExchangeRecord {
                conn: 77,
                role: Role::Server,
                tgid: 5,
                tid: 6,
                req_ts: 100,
                resp_ts: 900,
                serving: Serving::Nothing,
                request: b"GET / HTTP/1.1\r\n",
                response: b"HTTP/1.1 200",
            }))
        );
        let raw = record_with(EXCHANGE_KIND, ROLE_CLIENT, b"GET", b"HTTP/1.1 204", |ev| {
            ev.parent = tenantscope_agent_common::http::PARENT_ONE;
            ev.parent_conn = 41;
            ev.parent_ts = 42;
        });
        let Ok(Record::Exchange(r)) = decode(&raw) else {
            panic!("a client exchange");
        };
        assert_eq!(r.role, Role::Client);
        assert_eq!(
            r.serving,
            Serving::One {
                conn: 41,
                req_ts: 42
            }
        );
        assert_eq!((r.request, r.response), (&b"GET"[..], &b"HTTP/1.1 204"[..]));
        let raw = record(UPGRADED_CLOSE_KIND, ROLE_CLIENT, b"", b"");
        assert_eq!(
            decode(&raw),
            Ok(Record::UpgradedClose { conn: 77, at: 900 })
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert!(matches!(decode(&[0; 3]), Err(DecodeError::Size { .. })));
        let mut cut = record(
            EXCHANGE_KIND,
            ROLE_SERVER,
            b"GET / HTTP/1.1",
            b"HTTP/1.1 200",
        );
        cut.pop();
        assert!(matches!(decode(&cut), Err(DecodeError::Truncated { .. })));
        // Arbitrary bytes decode or fail, never panic.
        for len in [56, 72, 73, 100, 1352, 2000] {
            for seed in 0u8..32 {
                let junk: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(29) ^ seed)
                    .collect();
                let _ = decode(&junk);
            }
        }
        let mut raw = record(EXCHANGE_KIND, ROLE_SERVER, b"x", b"y");
        raw[46..48].copy_from_slice(&5000u16.to_ne_bytes());
        assert_eq!(decode(&raw), Err(DecodeError::Length(5000)));
        assert_eq!(
            decode(&record(EXCHANGE_KIND, 9, b"", b"")),
            Err(DecodeError::Role(9))
        );
        assert_eq!(
            decode(&record(99, ROLE_SERVER, b"", b"")),
            Err(DecodeError::Kind(99))
        );
        assert_eq!(
            decode(&record_with(EXCHANGE_KIND, ROLE_CLIENT, b"", b"", |ev| {
                ev.parent = 7;
            })),
            Err(DecodeError::Parent(7))
        );
    }

    #[test]
    fn config_resolves_on_this_kernel() {
        match resolve_config(4096, 100) {
            Ok(c) => {
                assert_eq!(c.valid, 1);
                assert_eq!(c.req_capture as usize, REQ_WINDOW, "clamped to the window");
                assert_eq!(c.resp_capture, 100);
                assert_ne!(c.arg0, c.arg1);
                assert_eq!(c.nr_close, Sysno::close as u32);
            }
            Err(e) => eprintln!("SKIP config_resolves_on_this_kernel: no kernel BTF ({e})"),
        }
    }
}
