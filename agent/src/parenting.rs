//! Which server span an outgoing (client) request descends from when the application did not
//! say so itself: exact, or nothing. A wrong parent sends whoever opens the trace to a request
//! that never made the call, so the agent parents a client span only when it can be sure, and
//! otherwise makes it the root of its own trace and says why (`tenantscope.parent`, and the
//! `parent` label of `tenantscope_agent_client_spans_total`).
//!
//! # The rule
//!
//! - A client request with its own valid `traceparent` joins that trace (`traceparent`).
//! - Otherwise the kernel looks, when the client request begins, at the calling thread's server
//!   requests in flight: read on that thread, their responses not begun. It keeps their count
//!   per thread (`HTTP_SERVING`, decremented by whichever thread answers) and the identity of
//!   the one read last. The client request gets a candidate parent only when
//!   - the thread has exactly one server request in flight, and
//!   - no thread of the process was ever seen with two in flight at once (`HTTP_MULTIPLEXED`:
//!     event loops such as nginx, Node or asyncio serve many requests, and their background
//!     tasks, on one thread; a process seen doing it is never trusted again).
//!
//!   With one in flight, no other server request can have been read on the thread since that
//!   one, and it was read before the call started.
//! - In userspace the candidate must then be confirmed by its server exchange: same process,
//!   the call started before that response began (the kernel stamps the response before the
//!   request leaves the count), and the request was alone in its record (a pipelined pair is
//!   two requests in flight). Then the parent is `exact`; a call that started after the
//!   response began had nothing in flight (`none`); a pipelined request is `ambiguous`.
//! - Processes of M:N runtimes never get a thread-based parent: an OS thread runs many tasks
//!   in turn there (Go goroutines; recognised by the Go build info in their executable). Their
//!   client spans are `ambiguous`.
//! - A candidate whose server exchange does not arrive within `otlp.client_parent_wait`
//!   (record lost, a response slower than the wait, the wait buffer full, shutdown) is
//!   `unconfirmed`.
//!
//! What gets exact parents: thread-per-request servers (a thread reads a request, makes its
//! calls, writes the response), including those whose requests are read by one thread per
//! connection. Everything handed to another thread gets roots: thread pools whose workers did
//! not read the request (`none`), event loops and Go (`ambiguous`).
//!
//! What this cannot see: a thread-per-request process whose thread makes a call for another
//! request while serving its own (work handed *to* a serving thread) would be parented under
//! the thread's own request. The agent cannot tell such hand-offs apart from the thread's own
//! calls; applications that do this should propagate `traceparent` themselves.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tenantscope_agent_common::http::{PARENT_MANY, PARENT_NONE, PARENT_ONE};

use crate::aggregate::FastMap;

/// What the calling thread was serving when a client request began, as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Serving {
    /// No server request in flight on the thread.
    #[default]
    Nothing,
    /// Exactly one, in a process never seen multiplexing: the server connection and the time
    /// its request began (the server exchange's `conn` and `start_ns`).
    One { conn: u64, req_ts: u64 },
    /// Several, or the process multiplexes, or the kernel lost count.
    Many,
}

impl Serving {
    /// From a record's `parent`, `parent_conn` and `parent_ts`; an unknown kind is an error.
    pub fn from_kernel(kind: u8, conn: u64, req_ts: u64) -> Result<Self, u8> {
        match kind {
            PARENT_NONE => Ok(Serving::Nothing),
            PARENT_ONE => Ok(Serving::One { conn, req_ts }),
            PARENT_MANY => Ok(Serving::Many),
            k => Err(k),
        }
    }
}

/// How a client span's parent was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParentKind {
    /// The request carried a valid `traceparent`.
    Traceparent,
    /// The server span of the one request its thread was serving.
    Exact,
    /// Root: several requests could be the parent (event loop, pipelining, an M:N runtime).
    Ambiguous,
    /// Root: its thread served no request when it began.
    None,
    /// Root: there was one candidate, but its server exchange did not arrive in time.
    Unconfirmed,
}

impl ParentKind {
    pub const ALL: [ParentKind; 5] = [
        ParentKind::Traceparent,
        ParentKind::Exact,
        ParentKind::Ambiguous,
        ParentKind::None,
        ParentKind::Unconfirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParentKind::Traceparent => "traceparent",
            ParentKind::Exact => "exact",
            ParentKind::Ambiguous => "ambiguous",
            ParentKind::None => "none",
            ParentKind::Unconfirmed => "unconfirmed",
        }
    }
}

/// The server exchange a candidate names, as it finally arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerExchange {
    /// Request read (kernel monotonic ns).
    pub start_ns: u64,
    /// Response began.
    pub end_ns: u64,
    /// Its record held more than one request (pipelining).
    pub pipelined: bool,
}

/// The verdict on a client request that started at `client_start_ns` and named `server` as
/// its candidate.
pub fn confirm(server: ServerExchange, client_start_ns: u64) -> ParentKind {
    if client_start_ns < server.start_ns || client_start_ns >= server.end_ns {
        // Its response had begun (it left the thread's count just after the call looked).
        ParentKind::None
    } else if server.pipelined {
        ParentKind::Ambiguous
    } else {
        ParentKind::Exact
    }
}

/// A candidate parent: (process, server connection, server request start).
pub type Candidate = (u32, u64, u64);

struct Pending<T> {
    seq: u64,
    expires_at: u64,
    start_ns: u64,
    item: T,
}

/// Client exchanges waiting for the server exchange they name. Bounded in time (`wait` after
/// their end) and in number; time is the caller's (kernel monotonic ns).
pub struct PendingClients<T> {
    /// Usually one or two calls per candidate.
    by_candidate: FastMap<Candidate, VecDeque<Pending<T>>>,
    /// (expiry, sequence) -> candidate, to expire in time order.
    by_expiry: BTreeMap<(u64, u64), Candidate>,
    seq: u64,
    wait_ns: u64,
    max: usize,
}

impl<T> PendingClients<T> {
    pub fn new(wait: Duration, max: usize) -> Self {
        Self {
            by_candidate: FastMap::default(),
            by_expiry: BTreeMap::new(),
            seq: 0,
            wait_ns: u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
            max,
        }
    }

    /// False when the wait or the bound is zero: nothing is ever held.
    pub fn enabled(&self) -> bool {
        self.wait_ns > 0 && self.max > 0
    }

    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    /// Holds `item` (a call that started at `start_ns` and ended at `end_ns`) until its
    /// candidate arrives or the wait ends; gives it back when full (or disabled).
    pub fn push(&mut self, key: Candidate, start_ns: u64, end_ns: u64, item: T) -> Result<(), T> {
        if !self.enabled() || self.len() >= self.max {
            return Err(item);
        }
        self.seq += 1;
        let expires_at = end_ns.saturating_add(self.wait_ns);
        self.by_expiry.insert((expires_at, self.seq), key);
        self.by_candidate
            .entry(key)
            .or_default()
            .push_back(Pending {
                seq: self.seq,
                expires_at,
                start_ns,
                item,
            });
        Ok(())
    }

    /// Moves to `out`, in arrival order and with their start times, the calls that named `key`.
    pub fn claim(&mut self, key: Candidate, out: &mut Vec<(u64, T)>) {
        if let Some(list) = self.by_candidate.remove(&key) {
            for p in list {
                self.by_expiry.remove(&(p.expires_at, p.seq));
                out.push((p.start_ns, p.item));
            }
        }
    }

    /// Moves to `out` the items whose wait ended at or before `now_ns`, oldest first.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<T>) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now_ns {
                break;
            }
            let ((_, seq), key) = entry.remove_entry();
            if let Some(list) = self.by_candidate.get_mut(&key) {
                if let Some(p) = list
                    .iter()
                    .position(|p| p.seq == seq)
                    .and_then(|i| list.remove(i))
                {
                    out.push(p.item);
                }
                if list.is_empty() {
                    self.by_candidate.remove(&key);
                }
            }
        }
    }

    /// Moves everything to `out` (shutdown), oldest expiry first.
    pub fn drain(&mut self, out: &mut Vec<T>) {
        self.expire(u64::MAX, out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use tenantscope_agent_common::http::client_parent;

    use super::*;

    #[test]
    fn kernel_kinds_decode() {
        assert_eq!(
            Serving::from_kernel(PARENT_NONE, 9, 9),
            Ok(Serving::Nothing)
        );
        assert_eq!(
            Serving::from_kernel(PARENT_ONE, 7, 8),
            Ok(Serving::One { conn: 7, req_ts: 8 })
        );
        assert_eq!(Serving::from_kernel(PARENT_MANY, 1, 1), Ok(Serving::Many));
        assert_eq!(Serving::from_kernel(42, 0, 0), Err(42));
    }

    /// The kernel half of the rule, driven by the same decision the kernel makes
    /// (`client_parent`) over the same state (`HTTP_SERVING`, `HTTP_MULTIPLEXED`, the
    /// server sockets' `req_tid`), then the userspace half (`confirm`). Threads are
    /// `(tgid, tid)`; time advances one tick per event.
    #[derive(Default)]
    struct Sim {
        now: u64,
        /// tid -> (in flight, identity of the last request read).
        serving: HashMap<u32, (u64, (u64, u64))>,
        multiplexed: HashSet<u32>,
        /// Server connection -> (reading thread, request start, heads) while in flight.
        requests: HashMap<u64, (u32, u64, usize)>,
        /// Server connection -> every exchange it answered: (start, end, pipelined).
        answered: HashMap<(u64, u64), ServerExchange>,
        /// Calls: (tgid, start, what the kernel saw).
        calls: Vec<(u32, u64, Serving)>,
    }

    impl Sim {
        fn tick(&mut self) -> u64 {
            self.now += 10;
            self.now
        }

        /// Thread `tid` of `tgid` reads a request (`heads` pipelined ones) on `conn`.
        fn read(&mut self, tgid: u32, tid: u32, conn: u64, heads: usize) {
            let now = self.tick();
            let e = self.serving.entry(tid).or_insert((0, (0, 0)));
            if e.0 == 0 {
                e.1 = (conn, now);
            } else {
                self.multiplexed.insert(tgid);
            }
            e.0 += 1;
            self.requests.insert(conn, (tid, now, heads));
        }

        /// Any thread answers the request on `conn`.
        fn respond(&mut self, conn: u64) {
            let now = self.tick();
            let (tid, start, heads) = self.requests.remove(&conn).expect("a request in flight");
            if let Some(e) = self.serving.get_mut(&tid) {
                e.0 -= 1;
            }
            self.answered.insert(
                (conn, start),
                ServerExchange {
                    start_ns: start,
                    end_ns: now,
                    pipelined: heads > 1,
                },
            );
        }

        /// Thread `tid` of `tgid` begins a call; returns its index.
        fn call(&mut self, tgid: u32, tid: u32) -> usize {
            let now = self.tick();
            let seen = match self.serving.get(&tid) {
                None => Serving::Nothing,
                Some(&(n, (conn, req_ts))) => {
                    match client_parent(n, self.multiplexed.contains(&tgid)) {
                        PARENT_ONE => Serving::One { conn, req_ts },
                        k => Serving::from_kernel(k, 0, 0).expect("a kernel kind"),
                    }
                }
            };
            self.calls.push((tgid, now, seen));
            self.calls.len() - 1
        }

        /// What userspace makes of call `i` once every server exchange arrived: the kind, and
        /// the parent (connection) when exact.
        fn verdict(&self, i: usize) -> (ParentKind, Option<u64>) {
            match self.calls[i].2 {
                Serving::Nothing => (ParentKind::None, None),
                Serving::Many => (ParentKind::Ambiguous, None),
                Serving::One { conn, req_ts } => match self.answered.get(&(conn, req_ts)) {
                    None => (ParentKind::Unconfirmed, None),
                    Some(&s) => match confirm(s, self.calls[i].1) {
                        ParentKind::Exact => (ParentKind::Exact, Some(conn)),
                        k => (k, None),
                    },
                },
            }
        }
    }

    #[test]
    fn thread_per_request_calls_are_exact() {
        let mut s = Sim::default();
        s.read(1, 11, 100, 1);
        let a = s.call(1, 11);
        let a2 = s.call(1, 11);
        s.respond(100);
        // The next request on the same thread (keep-alive or a new connection).
        s.read(1, 11, 101, 1);
        let b = s.call(1, 11);
        s.respond(101);
        assert_eq!(s.verdict(a), (ParentKind::Exact, Some(100)));
        assert_eq!(s.verdict(a2), (ParentKind::Exact, Some(100)));
        assert_eq!(s.verdict(b), (ParentKind::Exact, Some(101)));
    }

    #[test]
    fn two_threads_of_one_process_each_parent_their_own() {
        let mut s = Sim::default();
        s.read(1, 11, 100, 1);
        s.read(1, 12, 200, 1);
        let on_12 = s.call(1, 12);
        let on_11 = s.call(1, 11);
        s.respond(200);
        s.respond(100);
        assert_eq!(s.verdict(on_11), (ParentKind::Exact, Some(100)));
        assert_eq!(s.verdict(on_12), (ParentKind::Exact, Some(200)));
    }

    #[test]
    fn interleaved_requests_on_one_thread_make_the_process_ambiguous_for_good() {
        let mut s = Sim::default();
        // Before anything multiplexed, an event loop with one request is parented.
        s.read(1, 11, 100, 1);
        let first = s.call(1, 11);
        s.respond(100);
        // Two requests in flight on one thread: an event loop.
        s.read(1, 11, 101, 1);
        s.read(1, 11, 102, 1);
        let during = s.call(1, 11);
        s.respond(101);
        // Back to one in flight, and a call prepared for 101 written once its connect
        // completed: "the request read last" (102) would be wrong, so nothing is parented.
        let late = s.call(1, 11);
        s.respond(102);
        // Even a later lone request on another thread of the process: never trusted again.
        s.read(1, 12, 103, 1);
        let other_thread = s.call(1, 12);
        s.respond(103);
        assert_eq!(s.verdict(first), (ParentKind::Exact, Some(100)));
        for c in [during, late, other_thread] {
            assert_eq!(s.verdict(c), (ParentKind::Ambiguous, None), "call {c}");
        }
        // Another process is not affected.
        s.read(2, 21, 200, 1);
        let elsewhere = s.call(2, 21);
        s.respond(200);
        assert_eq!(s.verdict(elsewhere), (ParentKind::Exact, Some(200)));
    }

    #[test]
    fn pipelined_requests_are_ambiguous() {
        let mut s = Sim::default();
        // Two requests in one read: one request start in the kernel, two heads in the record.
        s.read(1, 11, 100, 2);
        let c = s.call(1, 11);
        s.respond(100);
        // The second response comes with no request bytes: nothing is in flight any more.
        let after = s.call(1, 11);
        assert_eq!(s.verdict(c), (ParentKind::Ambiguous, None));
        assert_eq!(s.verdict(after), (ParentKind::None, None));
    }

    #[test]
    fn a_call_after_the_response_began_or_before_any_request_has_no_parent() {
        let mut s = Sim::default();
        let before = s.call(1, 11);
        s.read(1, 11, 100, 1);
        s.respond(100);
        let after = s.call(1, 11);
        assert_eq!(s.verdict(before), (ParentKind::None, None));
        assert_eq!(s.verdict(after), (ParentKind::None, None));
        // The race the kernel leaves to userspace: the call saw the request in flight, but its
        // response began first (stamped before it left the count).
        let server = ServerExchange {
            start_ns: 100,
            end_ns: 200,
            pipelined: false,
        };
        assert_eq!(confirm(server, 200), ParentKind::None);
        assert_eq!(confirm(server, 250), ParentKind::None);
        assert_eq!(confirm(server, 50), ParentKind::None);
        assert_eq!(confirm(server, 150), ParentKind::Exact);
    }

    #[test]
    fn a_pool_that_reads_on_one_thread_and_calls_on_another_gets_roots() {
        let mut s = Sim::default();
        // The acceptor/reader thread 11 reads every request; workers 12 and 13 call and answer.
        s.read(1, 11, 100, 1);
        let w1 = s.call(1, 12);
        s.read(1, 11, 101, 1);
        let w2 = s.call(1, 13);
        s.respond(100);
        s.respond(101);
        assert_eq!(s.verdict(w1), (ParentKind::None, None));
        assert_eq!(s.verdict(w2), (ParentKind::None, None));
        // The reader had two in flight: the process multiplexes, so even a call the reader
        // makes itself later is ambiguous.
        s.read(1, 11, 102, 1);
        let reader = s.call(1, 11);
        assert_eq!(s.verdict(reader), (ParentKind::Ambiguous, None));
    }

    #[test]
    fn a_lost_server_record_leaves_the_call_unconfirmed() {
        let mut s = Sim::default();
        s.read(1, 11, 100, 1);
        let c = s.call(1, 11);
        s.respond(100);
        s.answered.clear();
        assert_eq!(s.verdict(c), (ParentKind::Unconfirmed, None));
    }

    #[test]
    fn pending_clients_are_claimed_by_their_candidate() {
        let mut p = PendingClients::new(Duration::from_secs(2), 10);
        p.push((1, 100, 5), 10, 20, "a").unwrap();
        p.push((1, 100, 5), 30, 40, "b").unwrap();
        p.push((1, 100, 6), 10, 20, "next request").unwrap();
        p.push((2, 100, 5), 10, 20, "other process").unwrap();
        let mut out = Vec::new();
        p.claim((1, 100, 5), &mut out);
        assert_eq!(out, [(10, "a"), (30, "b")]);
        assert_eq!(p.len(), 2);
        out.clear();
        p.claim((1, 100, 5), &mut out);
        assert!(out.is_empty(), "claimed once");
    }

    #[test]
    fn pending_clients_expire_after_the_wait_and_are_bounded() {
        let wait = Duration::from_secs(2);
        let mut p = PendingClients::new(wait, 3);
        p.push((1, 1, 1), 0, 1_000, 1).unwrap();
        p.push((1, 2, 1), 0, 500, 2).unwrap();
        p.push((1, 1, 1), 0, 3_000, 3).unwrap();
        assert_eq!(p.push((1, 3, 1), 0, 10, 4), Err(4), "full");
        let mut out = Vec::new();
        p.expire(2_000_000_499, &mut out);
        assert!(out.is_empty());
        p.expire(2_000_001_000, &mut out);
        assert_eq!(out, [2, 1], "oldest expiry first");
        assert_eq!(p.len(), 1);
        p.push((1, 3, 1), 0, 10, 4).expect("room again");
        let mut claimed = Vec::new();
        p.claim((1, 3, 1), &mut claimed);
        assert_eq!(claimed, [(0, 4)]);
        out.clear();
        p.drain(&mut out);
        assert_eq!(out, [3]);
        assert!(p.is_empty());
        assert!(p.by_candidate.is_empty(), "no empty lists left");

        for (wait, max) in [(Duration::ZERO, 10), (wait, 0)] {
            let mut off = PendingClients::new(wait, max);
            assert!(!off.enabled());
            assert_eq!(off.push((1, 1, 1), 0, 1, 9), Err(9));
        }
    }

    #[test]
    fn pending_clients_stay_bounded_under_churn() {
        let mut p = PendingClients::new(Duration::from_nanos(100), 64);
        let mut out = Vec::new();
        let mut claimed = Vec::new();
        let mut rejected = 0;
        for i in 0..100_000u64 {
            let key = ((i % 7) as u32, i % 13, 0);
            if p.push(key, i, i, i).is_err() {
                rejected += 1;
            }
            if i % 3 == 0 {
                p.claim(key, &mut claimed);
            }
            p.expire(i.saturating_sub(50), &mut out);
            assert!(p.len() <= 64);
            assert_eq!(
                p.len(),
                p.by_candidate.values().map(VecDeque::len).sum::<usize>()
            );
        }
        p.drain(&mut out);
        assert_eq!(
            out.len() + claimed.len() + rejected,
            100_000,
            "every item comes out once"
        );
    }
}
