//! `http` probe: HTTP/1.x heads from socket syscalls, called from the shared BTF-typed
//! `sys_enter`/`sys_exit` programs in `syscalls.rs`.
//!
//! Only fds learnt at `accept`/`connect` (IPv4/IPv6) are looked at, never the agent's. Reads
//! and writes on them are matched against HTTP/1.x prefixes; the request bytes are stashed per
//! connection until the response begins, then one record (request prefix, response prefix,
//! both timestamps) goes to userspace.

use aya_ebpf::{
    bindings::BPF_RB_AVAIL_DATA,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tenantscope_agent_common::{
    counters,
    http::{
        EXCHANGE_KIND, FdKey, HEADER_BYTES, HttpConfig, HttpEvent, OP_ACCEPT, OP_CONNECT, OP_IN,
        OP_OUT, PARENT_NONE, PARENT_ONE, PendingIo, REQ_WINDOW, RESP_WINDOW, ROLE_CLIENT,
        ROLE_SERVER, RequestCounts, RequestKey, STATE_IDLE, STATE_REQUEST, STATE_RESPONSE,
        STATE_UPGRADED, Serving, SockState, Stash, UPGRADED_CLOSE_KIND, client_parent,
    },
};

use crate::{agent_tgid, atomic_add, count};

#[unsafe(no_mangle)]
static HTTP_CONFIG: HttpConfig = HttpConfig {
    nr_read: 0,
    nr_write: 0,
    nr_readv: 0,
    nr_writev: 0,
    nr_recvfrom: 0,
    nr_sendto: 0,
    nr_recvmsg: 0,
    nr_sendmsg: 0,
    nr_accept: 0,
    nr_accept4: 0,
    nr_connect: 0,
    nr_close: 0,
    arg0: 0,
    arg1: 0,
    arg2: 0,
    nr_reg: 0,
    req_capture: 0,
    resp_capture: 0,
    valid: 0,
};

/// Sockets that may carry HTTP, by (tgid, fd). LRU: fds closed by exit (no `close` call) age out.
#[map]
static HTTP_SOCKS: LruHashMap<FdKey, SockState> = LruHashMap::with_max_entries(65536, 0);

/// Request bytes of requests in flight. Only connections inside a request hold one.
#[map]
static HTTP_STASH: LruHashMap<FdKey, Stash> = LruHashMap::with_max_entries(4096, 0);

/// Requests in flight and requests and connections seen, per (tgid, method, side): counted here
/// so that what never reaches userspace (ring full, stash evicted) still shows in the coverage
/// figure. Not preallocated.
#[map]
static HTTP_REQUESTS: HashMap<RequestKey, RequestCounts> = HashMap::with_max_entries(16384, 1);

/// Server requests in flight per thread that read them (see `Serving`): what a client request
/// started on that thread may descend from. A plain hash, not LRU: an entry evicted while its
/// thread serves would make a second request look like the only one. Deleted at thread exit.
#[map]
static HTTP_SERVING: HashMap<u32, Serving> = HashMap::with_max_entries(32768, 0);

/// Processes seen with two server requests in flight on one thread (event loops), or whose
/// count the kernel lost: none of their client requests gets a parent. Deleted at exit.
#[map]
static HTTP_MULTIPLEXED: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Syscall arguments from entry to exit, by thread id.
#[map]
static HTTP_PENDING: LruHashMap<u32, PendingIo> = LruHashMap::with_max_entries(16384, 0);

/// Zeroed stash template (a map value, because 2 KiB does not fit on the BPF stack).
#[map]
static HTTP_SCRATCH: PerCpuArray<Stash> = PerCpuArray::with_max_entries(1, 0);

/// Where a record is assembled before its used prefix is copied into the ring (records are
/// mostly far smaller than the windows: a whole-window reservation would waste the ring).
#[map]
static HTTP_RECORD: PerCpuArray<HttpEvent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static HTTP_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

const WAKEUP_BYTES: u64 = 32 * core::mem::size_of::<HttpEvent>() as u64;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn config() -> HttpConfig {
    // SAFETY: a frozen read-only global patched by the loader; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&HTTP_CONFIG) }
}

/// Loads a syscall argument from the BTF-typed `struct pt_regs` (offset known to the verifier).
#[inline(always)]
fn reg(regs: u64, off: u32) -> u64 {
    // SAFETY: verified against BTF; a faulting load reads 0.
    unsafe { core::ptr::read((regs + u64::from(off)) as *const u64) }
}

/// At syscall entry: remembers the arguments of socket I/O on tracked fds, accepts and connects.
/// `regs` is the BTF-typed `struct pt_regs *`.
#[inline(always)]
pub fn on_enter(regs: u64, nr: i64) {
    let c = config();
    if c.valid == 0 {
        return;
    }
    let nr = nr as u32;
    let op = if nr == c.nr_read || nr == c.nr_recvfrom || nr == c.nr_readv || nr == c.nr_recvmsg {
        OP_IN
    } else if nr == c.nr_write || nr == c.nr_sendto || nr == c.nr_writev || nr == c.nr_sendmsg {
        OP_OUT
    } else if nr == c.nr_accept || nr == c.nr_accept4 {
        OP_ACCEPT
    } else if nr == c.nr_connect {
        OP_CONNECT
    } else if nr == c.nr_close {
        on_close(reg(regs, c.arg0) as u32);
        return;
    } else {
        return;
    };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == agent_tgid() {
        return;
    }
    let fd = reg(regs, c.arg0) as u32;
    let (mut buf, mut len) = (reg(regs, c.arg1), reg(regs, c.arg2));
    match op {
        OP_IN | OP_OUT => {
            if HTTP_SOCKS.get_ptr(FdKey { tgid, fd }).is_none() {
                return;
            }
            if nr == c.nr_readv || nr == c.nr_writev {
                (buf, len) = first_iovec(buf);
            } else if nr == c.nr_recvmsg || nr == c.nr_sendmsg {
                // struct user_msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov; ...}
                let iov = read_user::<u64>(buf + 16).unwrap_or(0);
                (buf, len) = first_iovec(iov);
            }
        }
        OP_CONNECT => {
            // Only IPv4/IPv6 connects: the family is the first field of the sockaddr.
            let family = read_user::<u16>(buf).unwrap_or(0);
            if family != AF_INET && family != AF_INET6 {
                return;
            }
        }
        _ => {}
    }
    let p = PendingIo { buf, len, fd, op };
    // Overwrite in place when the thread has an entry: a lookup is cheaper than an insert.
    match HTTP_PENDING.get_ptr_mut(id as u32) {
        // SAFETY: live map value of this thread.
        Some(slot) => unsafe { *slot = p },
        None => {
            let _ = HTTP_PENDING.insert(id as u32, p, 0);
        }
    }
}

/// At syscall exit: tracks accepted/connected sockets, looks at the bytes moved on them.
#[inline(always)]
pub fn on_exit(regs: u64, ret: i64) {
    let c = config();
    if c.valid == 0 {
        return;
    }
    let nr = reg(regs, c.nr_reg) as u32;
    let wanted = nr == c.nr_read
        || nr == c.nr_write
        || nr == c.nr_recvfrom
        || nr == c.nr_sendto
        || nr == c.nr_readv
        || nr == c.nr_writev
        || nr == c.nr_recvmsg
        || nr == c.nr_sendmsg
        || nr == c.nr_accept
        || nr == c.nr_accept4
        || nr == c.nr_connect;
    if !wanted {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    let Some(slot) = HTTP_PENDING.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: live map value of this thread; consumed by clearing `op` (no delete: the next
    // syscall of the thread overwrites it).
    let p = unsafe {
        let p = *slot;
        (*slot).op = 0;
        p
    };
    let tgid = (id >> 32) as u32;
    match p.op {
        OP_ACCEPT if ret >= 0 => track(tgid, ret as u32, ROLE_SERVER),
        OP_CONNECT if ret == 0 || ret == -EINPROGRESS => track(tgid, p.fd, ROLE_CLIENT),
        OP_IN | OP_OUT if ret > 0 => {
            // Only the first iovec was resolved: never read past it.
            let n = if (ret as u64) < p.len {
                ret as u64
            } else {
                p.len
            };
            on_data(tgid, tid, p.fd, p.op == OP_IN, p.buf, n);
        }
        _ => {}
    }
}

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: the helper validates the user address.
    let r = unsafe { bpf_probe_read_user(addr as *const T) };
    if r.is_err() {
        count(counters::HTTP_READ_FAILED);
    }
    r.ok()
}

/// `(iov_base, iov_len)` of the first `struct iovec` at `iov`.
#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    match read_user::<[u64; 2]>(iov) {
        Some([base, len]) => (base, len),
        None => (0, 0),
    }
}

fn track(tgid: u32, fd: u32, role: u8) {
    // SAFETY: always callable from tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = SockState {
        conn_id: now,
        req_ts_ns: 0,
        parent_conn: 0,
        parent_ts: 0,
        req_tid: 0,
        parent: PARENT_NONE,
        _pad0: [0; 3],
        role,
        state: STATE_IDLE,
        req_len: 0,
        method: 0,
        seen: 0,
        _pad: [0; 2],
    };
    let _ = HTTP_SOCKS.insert(FdKey { tgid, fd }, state, 0);
}

fn on_close(fd: u32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FdKey { tgid, fd };
    let Some(s) = HTTP_SOCKS.get_ptr(key) else {
        return;
    };
    // SAFETY: live map value.
    let s = unsafe { *s };
    let _ = HTTP_SOCKS.remove(key);
    let _ = HTTP_STASH.remove(key);
    if s.state == STATE_REQUEST && s.role == ROLE_SERVER {
        if s.method != 0 {
            request_done(tgid, s.method);
        }
        serving_done(s.req_tid);
    }
    if s.state == STATE_UPGRADED {
        let Some(ev) = HTTP_RECORD.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch record, used only within this program run.
        unsafe {
            (*ev).header.kind = UPGRADED_CLOSE_KIND;
            (*ev).header._pad = 0;
            (*ev).header.ts_ns = bpf_ktime_get_ns();
            (*ev).conn_id = s.conn_id;
            (*ev).req_ts_ns = s.req_ts_ns;
            (*ev).tgid = tgid;
            (*ev).tid = bpf_get_current_pid_tgid() as u32;
            (*ev).fd = fd;
            (*ev).role = s.role;
            (*ev).parent = PARENT_NONE;
            (*ev).req_len = 0;
            (*ev).resp_len = 0;
            (*ev).parent_conn = 0;
            (*ev).parent_ts = 0;
        }
        send(ev, HEADER_BYTES);
    }
}

/// Copies the first `len` bytes of the assembled record into the ring.
#[inline(always)]
fn send(ev: *mut HttpEvent, len: usize) {
    // A power-of-two mask the verifier can follow (the record is 1336 bytes).
    let len = len & (2048 - 1);
    if len < HEADER_BYTES || len > size_of::<HttpEvent>() {
        return;
    }
    let queued = HTTP_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) + len as u64;
    // SAFETY: `len` is within the record, a live per-CPU map value.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const u8, len) };
    let flags = crate::wakeup_flags(queued, len as u64, WAKEUP_BYTES);
    if HTTP_EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count(counters::HTTP_EVENTS_DROPPED);
    }
}

/// `METHODS` index of the method that starts a request line (followed by a space), else 0.
#[inline(always)]
fn method_of(p: &[u8; 8]) -> u8 {
    match p {
        [b'G', b'E', b'T', b' ', ..] => 1,
        [b'P', b'O', b'S', b'T', b' ', ..] => 2,
        [b'P', b'U', b'T', b' ', ..] => 3,
        [b'H', b'E', b'A', b'D', b' ', ..] => 4,
        [b'D', b'E', b'L', b'E', b'T', b'E', b' ', ..] => 5,
        [b'P', b'A', b'T', b'C', b'H', b' ', ..] => 6,
        [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' '] => 7,
        [b'C', b'O', b'N', b'N', b'E', b'C', b'T', b' '] => 8,
        [b'T', b'R', b'A', b'C', b'E', b' ', ..] => 9,
        _ => 0,
    }
}

/// This process's counts for `(method, role)`, created on first use.
#[inline(always)]
fn request_counts(tgid: u32, method: u8, role: u8) -> Option<*mut RequestCounts> {
    let key = RequestKey {
        tgid,
        method,
        role,
        _pad: [0; 2],
    };
    if let Some(p) = HTTP_REQUESTS.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = RequestCounts::default();
    let _ = HTTP_REQUESTS.insert(key, zero, u64::from(aya_ebpf::bindings::BPF_NOEXIST));
    let p = HTTP_REQUESTS.get_ptr_mut(key);
    if p.is_none() {
        count(counters::HTTP_REQUESTS_FULL);
    }
    p
}

/// A request began: counted, and in flight if served here with a known method.
#[inline(always)]
fn request_started(tgid: u32, method: u8, role: u8, first_on_connection: bool) {
    let Some(p) = request_counts(tgid, method, role) else {
        return;
    };
    // SAFETY: live, aligned map value; several threads of a process serve at once.
    unsafe {
        if role == ROLE_SERVER && method != 0 {
            atomic_add(&raw mut (*p).active, 1);
        }
        atomic_add(&raw mut (*p).requests, 1);
        if first_on_connection {
            atomic_add(&raw mut (*p).connections, 1);
        }
    }
}

/// A served request's response began (or its connection closed first).
#[inline(always)]
fn request_done(tgid: u32, method: u8) {
    if let Some(p) = request_counts(tgid, method, ROLE_SERVER) {
        // SAFETY: as above; two's complement -1.
        unsafe { atomic_add(&raw mut (*p).active, u64::MAX) };
    }
}

/// Whether the first byte at `buf` is the first letter of a `METHODS` entry.
#[inline(always)]
fn starts_method(buf: u64) -> bool {
    matches!(
        read_user::<u8>(buf),
        Some(b'G' | b'P' | b'H' | b'D' | b'O' | b'C' | b'T')
    )
}

#[inline(always)]
fn is_response(p: &[u8; 8]) -> bool {
    p == b"HTTP/1.1" || p == b"HTTP/1.0"
}

fn on_data(tgid: u32, tid: u32, fd: u32, inbound: bool, buf: u64, n: u64) {
    let key = FdKey { tgid, fd };
    let Some(s) = HTTP_SOCKS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: live map value, updated by this connection's syscalls.
    let (role, state) = unsafe { ((*s).role, (*s).state) };
    if state == STATE_UPGRADED {
        return;
    }
    // Requests flow in to a server and out of a client; responses the other way.
    let request_side = inbound == (role == ROLE_SERVER);
    let mut prefix = [0u8; 8];
    if n >= 8 {
        prefix = read_user::<[u8; 8]>(buf).unwrap_or([0; 8]);
    }
    if request_side {
        if state != STATE_REQUEST {
            let method = if n < 8 { 0 } else { method_of(&prefix) };
            // A request line may arrive a few bytes at a time (a slow or hostile client, a
            // client writing the method on its own): a short read that begins like a method
            // starts a request too, its method named by userspace from the stash.
            if method == 0 && !(n < 8 && n > 0 && starts_method(buf)) {
                return; // body bytes of a request whose head we already have
            }
            // SAFETY: as above.
            let (first, conn_id) = unsafe { ((*s).seen == 0, (*s).conn_id) };
            request_started(tgid, method, role, first);
            // SAFETY: always callable from tracing programs.
            let now = unsafe { bpf_ktime_get_ns() };
            if role == ROLE_SERVER {
                let req_tid = serving_started(tgid, tid, conn_id, now);
                // SAFETY: as above.
                unsafe { (*s).req_tid = req_tid };
            } else {
                let (parent, parent_conn, parent_ts) = serving_now(tgid, tid);
                // SAFETY: as above.
                unsafe {
                    (*s).parent = parent;
                    (*s).parent_conn = parent_conn;
                    (*s).parent_ts = parent_ts;
                }
            }
            // SAFETY: as above.
            unsafe {
                (*s).method = method;
                (*s).seen = 1;
                (*s).state = STATE_REQUEST;
                (*s).req_ts_ns = now;
                (*s).req_len = 0;
            }
            // A keep-alive connection reuses its stash (`req_len` says what is valid): an
            // insert copies 2 KiB and takes the LRU lock, per request otherwise.
            if HTTP_STASH.get_ptr(key).is_none() {
                let Some(zero) = HTTP_SCRATCH.get_ptr(0) else {
                    return;
                };
                // SAFETY: a valid map value pointer of the right type. Passed by reference on
                // purpose: a copy would put 2 KiB on the 512-byte BPF stack.
                #[allow(clippy::needless_borrows_for_generic_args)]
                let inserted = HTTP_STASH.insert(key, unsafe { &*zero }, 0);
                if inserted.is_err() {
                    return;
                }
            }
        }
        // SAFETY: as above.
        let have = unsafe { (*s).req_len } as u64;
        let copied = stash(key, have, buf, n);
        // SAFETY: as above.
        unsafe { (*s).req_len = (have + copied) as u16 };
        return;
    }
    // Response side: only the first bytes of a response matter.
    if n < 8 || !is_response(&prefix) {
        return;
    }
    let status = read_user::<[u8; 4]>(buf + 8).unwrap_or([0; 4]);
    // "HTTP/1.1 1xx": interim (100 Continue, 103 Early Hints) unless 101 Switching Protocols.
    let interim = status[1] == b'1';
    let upgrade = interim && status[2] == b'0' && status[3] == b'1';
    if interim && !upgrade {
        return;
    }
    // Taken before the request leaves its thread's count: a client request that saw it in
    // flight started before this time, which userspace checks.
    // SAFETY: always callable from tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    let (conn_id, req_ts, req_len, method, req_tid) = unsafe {
        (
            (*s).conn_id,
            (*s).req_ts_ns,
            (*s).req_len,
            (*s).method,
            (*s).req_tid,
        )
    };
    if state == STATE_REQUEST && role == ROLE_SERVER {
        if method != 0 {
            request_done(tgid, method);
        }
        serving_done(req_tid);
    }
    // SAFETY: as above.
    let parent = unsafe { ((*s).parent, (*s).parent_conn, (*s).parent_ts) };
    // A response without a stashed request (pipelining) still goes up, with no request bytes.
    let req_len = if state == STATE_REQUEST { req_len } else { 0 };
    // SAFETY: as above.
    unsafe {
        (*s).state = if upgrade {
            STATE_UPGRADED
        } else {
            STATE_RESPONSE
        };
    }
    let ids = Ids {
        conn_id,
        req_ts,
        resp_ts: now,
        tid,
        parent,
    };
    emit(key, &ids, req_len, role, buf, n);
}

/// What a record says about its exchange besides the bytes.
struct Ids {
    conn_id: u64,
    req_ts: u64,
    resp_ts: u64,
    tid: u32,
    /// `(PARENT_*, parent_conn, parent_ts)` of a client request.
    parent: (u8, u64, u64),
}

/// A server request was read on thread `tid`: it counts in the thread's requests in flight.
/// Returns the thread whose entry counts it (0: none could be made; the process is then marked
/// multiplexing, since its threads' counts can no longer be trusted).
#[inline(always)]
fn serving_started(tgid: u32, tid: u32, conn_id: u64, req_ts: u64) -> u32 {
    if let Some(e) = HTTP_SERVING.get_ptr_mut(tid) {
        // SAFETY: live map value. Only this thread adds to its own entry and writes its
        // identity; others only subtract (atomically). So a zero read here stays zero until the
        // add below, and a non-zero one may drop to zero before it (a response on another
        // thread): that only makes the process look multiplexing, never a wrong parent.
        unsafe {
            if core::ptr::read_volatile(&raw const (*e).in_flight) == 0 {
                (*e).conn_id = conn_id;
                (*e).req_ts_ns = req_ts;
            } else {
                mark_multiplexed(tgid);
            }
            atomic_add(&raw mut (*e).in_flight, 1);
        }
        return tid;
    }
    let fresh = Serving {
        conn_id,
        req_ts_ns: req_ts,
        in_flight: 1,
    };
    if HTTP_SERVING
        .insert(tid, fresh, u64::from(aya_ebpf::bindings::BPF_NOEXIST))
        .is_err()
    {
        count(counters::HTTP_SERVING_FULL);
        mark_multiplexed(tgid);
        return 0;
    }
    tid
}

/// The response of a request read on `req_tid` began, or its connection closed first.
#[inline(always)]
fn serving_done(req_tid: u32) {
    if req_tid == 0 {
        return;
    }
    if let Some(e) = HTTP_SERVING.get_ptr_mut(req_tid) {
        // SAFETY: live map value; two's complement -1. Never below zero: each request counted
        // in is counted out once (its socket leaves REQUEST state once).
        unsafe { atomic_add(&raw mut (*e).in_flight, u64::MAX) };
    }
}

/// What thread `tid` of `tgid` serves now, for a client request it begins: `PARENT_*` and
/// the candidate's (connection, request start).
#[inline(always)]
fn serving_now(tgid: u32, tid: u32) -> (u8, u64, u64) {
    let Some(e) = HTTP_SERVING.get_ptr(tid) else {
        return (PARENT_NONE, 0, 0);
    };
    // SAFETY: live map value; the count may drop concurrently (a response on another
    // thread), which userspace detects from the response time.
    let (n, conn, ts) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*e).in_flight),
            (*e).conn_id,
            (*e).req_ts_ns,
        )
    };
    // Only a lone request needs the process's mark looked up.
    let multiplexed = n == 1 && HTTP_MULTIPLEXED.get_ptr(tgid).is_some();
    match client_parent(n, multiplexed) {
        PARENT_ONE => (PARENT_ONE, conn, ts),
        kind => (kind, 0, 0),
    }
}

#[inline(always)]
fn mark_multiplexed(tgid: u32) {
    if HTTP_MULTIPLEXED.get_ptr(tgid).is_none() && HTTP_MULTIPLEXED.insert(tgid, 1, 0).is_err() {
        count(counters::HTTP_SERVING_FULL);
    }
}

/// A thread exited (`sched_process_exit`): its count goes; with the last thread (the leader),
/// its process's mark.
#[inline(always)]
pub fn thread_exited(id: u64) {
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let _ = HTTP_SERVING.remove(tid);
    if tgid == tid {
        let _ = HTTP_MULTIPLEXED.remove(tgid);
    }
}

/// Appends up to the capture window of `n` user bytes at `buf` to the stash; returns how many.
#[inline(always)]
fn stash(key: FdKey, have: u64, buf: u64, n: u64) -> u64 {
    let cap = u64::from(config().req_capture).min(REQ_WINDOW as u64);
    if have >= cap {
        return 0;
    }
    let Some(st) = HTTP_STASH.get_ptr_mut(key) else {
        count(counters::HTTP_STASH_EVICTED);
        return 0;
    };
    let room = cap - have;
    let len = if n < room { n } else { room };
    // Masks the verifier can follow: offset < REQ_WINDOW and length <= REQ_WINDOW, inside a
    // buffer of 2 * REQ_WINDOW.
    let off = (have as usize) & (REQ_WINDOW - 1);
    let len = (len as usize) & (2 * REQ_WINDOW - 1);
    if len == 0 || len > REQ_WINDOW {
        return 0;
    }
    // SAFETY: off + len <= 2 * REQ_WINDOW, the stash's size (raw: no bounds-check panic path).
    let dst = unsafe { core::slice::from_raw_parts_mut((*st).bytes.as_mut_ptr().add(off), len) };
    // SAFETY: the helper validates the user address.
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) }.is_err() {
        count(counters::HTTP_READ_FAILED);
        return 0;
    }
    len as u64
}

#[inline(always)]
fn emit(key: FdKey, ids: &Ids, req_len: u16, role: u8, buf: u64, n: u64) {
    let Some(ev) = HTTP_RECORD.get_ptr_mut(0) else {
        return;
    };
    let resp_cap = u64::from(config().resp_capture).min(RESP_WINDOW as u64);
    let resp_len = (if n < resp_cap { n } else { resp_cap } as usize) & (2 * RESP_WINDOW - 1);
    let req_len = (req_len as usize) & (2 * REQ_WINDOW - 1);
    let mut used = 0usize;
    // SAFETY: this CPU's scratch record, used only within this program run; every copy is
    // bounded inside it (request bytes <= REQ_WINDOW, then response bytes <= RESP_WINDOW).
    unsafe {
        (*ev).header.kind = EXCHANGE_KIND;
        (*ev).header._pad = 0;
        (*ev).header.ts_ns = ids.resp_ts;
        (*ev).conn_id = ids.conn_id;
        (*ev).req_ts_ns = ids.req_ts;
        (*ev).tgid = key.tgid;
        (*ev).tid = ids.tid;
        (*ev).fd = key.fd;
        (*ev).role = role;
        (*ev).parent = ids.parent.0;
        (*ev).parent_conn = ids.parent.1;
        (*ev).parent_ts = ids.parent.2;
        (*ev).req_len = 0;
        (*ev).resp_len = 0;
        let body = (*ev).req.as_mut_ptr();
        if req_len > 0
            && req_len <= REQ_WINDOW
            && let Some(st) = HTTP_STASH.get_ptr(key)
            && bpf_probe_read_kernel_buf(
                (*st).bytes.as_ptr(),
                core::slice::from_raw_parts_mut(body, req_len),
            )
            .is_ok()
        {
            (*ev).req_len = req_len as u16;
            used = req_len;
        }
        // The response bytes follow the request bytes directly.
        if used <= REQ_WINDOW
            && resp_len > 0
            && resp_len <= RESP_WINDOW
            && bpf_probe_read_user_buf(
                buf as *const u8,
                core::slice::from_raw_parts_mut(body.add(used), resp_len),
            )
            .is_ok()
        {
            (*ev).resp_len = resp_len as u16;
            used += resp_len;
        }
    }
    send(ev, HEADER_BYTES + used);
}
