//! `http` probe: HTTP/1.x heads captured from socket syscalls.
//!
//! Sockets are learnt at `accept`/`connect`; their reads and writes are matched against
//! HTTP/1.x prefixes in the kernel. The request bytes are kept per connection in the kernel
//! until the response begins, so one record per request (request prefix + response prefix +
//! both timestamps) reaches userspace.

use crate::EventHeader;

/// A response began: the record carries the request prefix stashed since the request began
/// (empty if none: a second pipelined response) and the response prefix.
pub const EXCHANGE_KIND: u32 = 32;
/// A connection that switched protocols (`101`) was closed: `req_ts_ns` is the upgrade time.
pub const UPGRADED_CLOSE_KIND: u32 = 33;

/// Bytes of the request stream kept per request (heads, then body bytes up to this).
pub const REQ_WINDOW: usize = 1024;
/// Bytes of the first response write kept (status line and headers).
pub const RESP_WINDOW: usize = 256;

/// `HttpEvent::role`: the process accepted the connection (it serves the requests).
pub const ROLE_SERVER: u8 = 1;
/// `HttpEvent::role`: the process connected (it makes the requests).
pub const ROLE_CLIENT: u8 = 2;

/// `SockState::state` values.
pub const STATE_IDLE: u8 = 0;
/// Request bytes are being stashed.
pub const STATE_REQUEST: u8 = 1;
/// The response began; further bytes in both directions are body until the next request.
pub const STATE_RESPONSE: u8 = 2;
/// The connection switched protocols (WebSocket): nothing more is parsed.
pub const STATE_UPGRADED: u8 = 3;

/// Settings patched into the kernel object by the agent: syscall numbers of this architecture
/// (from the `syscalls` crate), register offsets in `struct pt_regs` (from BTF) and the
/// capture windows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    pub nr_read: u32,
    pub nr_write: u32,
    pub nr_readv: u32,
    pub nr_writev: u32,
    pub nr_recvfrom: u32,
    pub nr_sendto: u32,
    pub nr_recvmsg: u32,
    pub nr_sendmsg: u32,
    pub nr_accept: u32,
    pub nr_accept4: u32,
    pub nr_connect: u32,
    pub nr_close: u32,
    /// Offsets in `struct pt_regs` of the first three syscall arguments.
    pub arg0: u32,
    pub arg1: u32,
    pub arg2: u32,
    /// Offset in `struct pt_regs` of the syscall number at exit (`orig_ax` on x86_64), so that
    /// exits of syscalls the probe ignores cost no map lookup.
    pub nr_reg: u32,
    /// Request bytes copied per request, at most `REQ_WINDOW`.
    pub req_capture: u32,
    /// Response bytes copied, at most `RESP_WINDOW`.
    pub resp_capture: u32,
    /// 1 once filled in; the programs do nothing before.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<HttpConfig>() == 76);

/// Key of the per-socket maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<FdKey>() == 8);

/// Per tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// Unique per connection (the time it was tracked), for pairing in userspace.
    pub conn_id: u64,
    /// When the current request's first bytes were seen.
    pub req_ts_ns: u64,
    /// Client side: the server request the calling thread was serving when the current request
    /// began (`conn_id`, `req_ts_ns` of that server connection), valid when `parent` is
    /// `PARENT_ONE`.
    pub parent_conn: u64,
    pub parent_ts: u64,
    /// Server side: the thread that read the current request, whose `HTTP_SERVING` entry counts
    /// it in flight; 0 when it is not counted.
    pub req_tid: u32,
    /// Client side: `PARENT_*`, what the calling thread was serving when the request began.
    pub parent: u8,
    pub _pad0: [u8; 3],
    pub role: u8,
    pub state: u8,
    /// Bytes stashed for the current request.
    pub req_len: u16,
    /// `METHODS` index of the current request, 0 if none or not known yet (a request whose
    /// first read was shorter than a method).
    pub method: u8,
    /// 1 once a request was seen on the connection (it is counted once in `RequestCounts`).
    pub seen: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SockState>() == 48);

/// `parent` of a client request: the calling thread had no server request in flight.
pub const PARENT_NONE: u8 = 0;
/// Exactly one, read on this thread and not yet answered, and the process was never seen
/// serving two at once on one thread: the candidate parent.
pub const PARENT_ONE: u8 = 1;
/// Several (the thread, or once any thread of the process, had two in flight: an event loop),
/// or the kernel could not keep count: no parent can be sure.
pub const PARENT_MANY: u8 = 2;

/// The kernel half of the parenting rule: what a client request that begins on a thread with
/// `in_flight` server requests in flight may descend from, `multiplexed` when a thread of its
/// process was ever seen with two at once. Shared so that userspace tests drive the very
/// decision the kernel makes.
#[inline(always)]
pub const fn client_parent(in_flight: u64, multiplexed: bool) -> u8 {
    match in_flight {
        0 => PARENT_NONE,
        1 if !multiplexed => PARENT_ONE,
        _ => PARENT_MANY,
    }
}

/// Value of `HTTP_SERVING`, per thread that read a server request: the requests it read whose
/// responses have not begun (decremented by whichever thread answers or closes), and the
/// identity of the one it read last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    /// `conn_id` and `req_ts_ns` of the request read last on the thread.
    pub conn_id: u64,
    pub req_ts_ns: u64,
    pub in_flight: u64,
}
const _: () = assert!(core::mem::size_of::<Serving>() == 24);

/// The request stash; twice the window so that the verifier can prove every bounded copy fits.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stash {
    pub bytes: [u8; 2 * REQ_WINDOW],
}

/// A syscall in flight on a tracked socket, from entry to exit (keyed by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIo {
    /// User buffer (for vectored calls, the first iovec's base, resolved at entry).
    pub buf: u64,
    /// Its length (the first iovec's for vectored calls).
    pub len: u64,
    pub fd: u32,
    /// 1 = bytes flow in (read side), 2 = out (write side), 3 = accept, 4 = connect.
    pub op: u32,
}
const _: () = assert!(core::mem::size_of::<PendingIo>() == 24);

/// Request methods the kernel recognises, by index (0 = not a request).
pub const METHODS: [&str; 10] = [
    "", "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Key of `HTTP_REQUESTS`: one process's requests, by method and side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub tgid: u32,
    /// `METHODS` index; 0 when the request's first read was too short to name it.
    pub method: u8,
    /// `ROLE_SERVER` or `ROLE_CLIENT`.
    pub role: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<RequestKey>() == 8);

/// Value of `HTTP_REQUESTS`, counted in the kernel whether or not a record reaches userspace:
/// the denominator of the agent's coverage figure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests being served now (server side, method known): +1 when a request starts, -1
    /// when its response starts or its connection closes first. Two's complement, so a
    /// response to a request older than the probe reads as -1.
    pub active: u64,
    /// Requests whose first bytes were seen.
    pub requests: u64,
    /// Connections on which a request was seen (counted at their first).
    pub connections: u64,
}
const _: () = assert!(core::mem::size_of::<RequestCounts>() == 24);

pub const OP_IN: u32 = 1;
pub const OP_OUT: u32 = 2;
pub const OP_ACCEPT: u32 = 3;
pub const OP_CONNECT: u32 = 4;

/// A record as assembled in the kernel; only its used prefix goes into the ring (see
/// `HEADER_BYTES`), so `resp` is where the response bytes go only when `req_len` is the whole
/// window.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HttpEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    pub req_ts_ns: u64,
    pub tgid: u32,
    /// The thread that wrote the response (server) or read it (client).
    pub tid: u32,
    pub fd: u32,
    pub role: u8,
    /// Client records: `PARENT_*` of the request (see `SockState::parent`).
    pub parent: u8,
    pub req_len: u16,
    pub resp_len: u16,
    pub _pad2: [u8; 6],
    /// Client records with `PARENT_ONE`: the candidate server request's connection and start.
    pub parent_conn: u64,
    pub parent_ts: u64,
    pub req: [u8; REQ_WINDOW],
    pub resp: [u8; RESP_WINDOW],
}
const _: () = assert!(core::mem::size_of::<HttpEvent>() == HEADER_BYTES + REQ_WINDOW + RESP_WINDOW);

/// Bytes of `HttpEvent` before `req`. Records are sent at their used length: these header
/// bytes, then `req_len` request bytes, then `resp_len` response bytes right after them.
pub const HEADER_BYTES: usize = 72;
const _: () = assert!(core::mem::offset_of!(HttpEvent, req) == HEADER_BYTES);
// The kernel masks record lengths with 2047 so the verifier can bound them.
const _: () = assert!(core::mem::size_of::<HttpEvent>() < 2048);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding bytes (sizes asserted above).
    unsafe impl aya::Pod for super::HttpConfig {}
    unsafe impl aya::Pod for super::FdKey {}
    unsafe impl aya::Pod for super::RequestKey {}
    unsafe impl aya::Pod for super::RequestCounts {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::PendingIo {}
    unsafe impl aya::Pod for super::Serving {}
}
