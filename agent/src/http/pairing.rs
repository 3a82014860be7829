//! Per-connection pairing of captured requests and responses into exchanges.
//!
//! The kernel sends one record per response it saw: the request bytes stashed since the request
//! began (possibly several pipelined heads, or nothing for the second response of a pipelined
//! pair) and a prefix of the response. The first head of a record pairs with its response; the
//! further heads wait, in order, for later records with no request bytes. Only connections with
//! requests waiting (or an open WebSocket) keep state, and both tables are bounded.

use std::collections::{BTreeMap, VecDeque};

use crate::aggregate::FastMap;

use super::parse::{
    HeaderSelection, ParseError, RequestHead, is_interim, parse_requests, parse_response,
};

/// The kernel's per-connection id (unique per tracked connection).
pub type ConnId = u64;

/// Requests waiting per connection unless configured (`Pairer::with_max_queued`).
pub const DEFAULT_MAX_QUEUED: usize = 16;

/// Which side of the connection the observed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It accepted the connection and serves the requests.
    Server,
    /// It connected and makes the requests.
    Client,
}

/// A request and its final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub conn: ConnId,
    pub role: Role,
    pub tgid: u32,
    /// The thread that wrote the response (server) or read it (client).
    pub tid: u32,
    pub request: RequestHead,
    pub status: u16,
    /// When the request's first bytes were read (server) or written (client).
    pub start_ns: u64,
    /// When the response began.
    pub end_ns: u64,
    /// Its request came in one record with others (pipelining): they were in flight together.
    pub pipelined: bool,
}

/// What pairing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Exchange(Exchange),
    /// A `101 Switching Protocols` answered a WebSocket upgrade request.
    WebSocketOpened {
        conn: ConnId,
        role: Role,
        tgid: u32,
        request: RequestHead,
        at_ns: u64,
    },
    /// The upgraded connection closed (or was evicted: then the duration runs to the eviction).
    WebSocketClosed {
        conn: ConnId,
        role: Role,
        tgid: u32,
        request: RequestHead,
        duration_ns: u64,
    },
    /// A request or response that will never be paired (one output per request lost).
    Unpaired {
        conn: ConnId,
        reason: UnpairedReason,
    },
}

/// Why something was not paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnpairedReason {
    /// A response with no request: the request bytes were empty or not HTTP and none waited.
    NoRequest,
    /// A request began but could not be read (request line cut by the capture window, too
    /// many headers, malformed header section); its response is dropped.
    BadRequest,
    /// The response bytes did not parse; its request, if any, is dropped.
    BadResponse,
    /// A waiting request was passed by a newer request (its response came in an earlier write)
    /// or by a protocol switch.
    Superseded,
    /// The connection closed while the request waited.
    Closed,
    /// The connection was evicted (too many connections) while the request waited.
    Evicted,
    /// More pipelined requests than the per-connection queue holds.
    QueueOverflow,
}

impl UnpairedReason {
    pub const ALL: [UnpairedReason; 7] = [
        UnpairedReason::NoRequest,
        UnpairedReason::BadRequest,
        UnpairedReason::BadResponse,
        UnpairedReason::Superseded,
        UnpairedReason::Closed,
        UnpairedReason::Evicted,
        UnpairedReason::QueueOverflow,
    ];
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairingStats {
    /// Records received.
    pub records: u64,
    /// Exchanges emitted.
    pub exchanges: u64,
    /// Response bytes that did not parse, plus request bytes that did not parse and could not
    /// be the body of a waiting request.
    pub parse_errors: u64,
    /// Requests dropped without a response (every reason but `NoRequest`/`BadRequest`).
    pub unpaired_requests: u64,
    /// Responses without a usable request (`NoRequest`, `BadRequest`, `BadResponse`).
    pub unpaired_responses: u64,
    /// Connections (or open WebSockets) evicted to stay within the bound.
    pub evicted_connections: u64,
    /// Pipelined requests dropped because the connection's queue was full.
    pub queue_overflow: u64,
    /// 1xx responses other than 101 (the request keeps waiting for its final response).
    pub interim_responses: u64,
}

/// A request waiting for its response.
struct Pending {
    request: RequestHead,
    start_ns: u64,
    pipelined: bool,
}

/// Per connection with requests waiting.
struct ConnState {
    role: Role,
    tgid: u32,
    /// Key in `Pairer::lru`.
    tick: u64,
    pending: VecDeque<Pending>,
}

/// An open WebSocket.
struct Upgraded {
    role: Role,
    tgid: u32,
    tick: u64,
    request: RequestHead,
    at_ns: u64,
}

/// How the request bytes of a record were read.
enum RequestInput {
    Empty,
    Heads(Vec<RequestHead>),
    /// Not a request: the body of a waiting request (after `100 Continue`) or noise.
    NotHttp,
    /// A request that could not be read.
    Unreadable,
}

/// The pairing state machine. Pure: time comes only from the records.
pub struct Pairer {
    max_conns: usize,
    max_queued: usize,
    sel: HeaderSelection,
    conns: FastMap<ConnId, ConnState>,
    /// Least recently used first.
    lru: BTreeMap<u64, ConnId>,
    websockets: FastMap<ConnId, Upgraded>,
    /// Oldest first.
    ws_order: BTreeMap<u64, ConnId>,
    tick: u64,
    stats: PairingStats,
}

impl Pairer {
    /// At most `max_conns` connections with waiting requests and as many open WebSockets (at
    /// least one each); `DEFAULT_MAX_QUEUED` requests per connection.
    pub fn new(max_conns: usize, sel: HeaderSelection) -> Self {
        Self {
            max_conns: max_conns.max(1),
            max_queued: DEFAULT_MAX_QUEUED,
            sel,
            conns: FastMap::default(),
            lru: BTreeMap::new(),
            websockets: FastMap::default(),
            ws_order: BTreeMap::new(),
            tick: 0,
            stats: PairingStats::default(),
        }
    }

    /// Requests that may wait per connection (at least one).
    pub fn with_max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = max_queued.max(1);
        self
    }

    pub fn selection(&self) -> &HeaderSelection {
        &self.sel
    }

    pub fn stats(&self) -> PairingStats {
        self.stats
    }

    /// Connections with requests waiting.
    pub fn pending_connections(&self) -> usize {
        self.conns.len()
    }

    /// Upgraded connections not closed yet.
    pub fn open_websockets(&self) -> usize {
        self.websockets.len()
    }

    /// One kernel record: the request bytes stashed since `req_ts` (empty when the kernel had
    /// none, e.g. the second response of a pipelined pair) and the first response bytes,
    /// written or read at `resp_ts`.
    #[allow(clippy::too_many_arguments)] // The record's fields, as the kernel sends them.
    pub fn on_record(
        &mut self,
        conn: ConnId,
        role: Role,
        tgid: u32,
        tid: u32,
        request: &[u8],
        response: &[u8],
        req_ts: u64,
        resp_ts: u64,
        out: &mut Vec<Output>,
    ) {
        self.stats.records += 1;
        let input = if request.is_empty() {
            RequestInput::Empty
        } else {
            match parse_requests(request, &self.sel) {
                Ok(heads) => RequestInput::Heads(heads),
                Err(ParseError::Empty | ParseError::NotHttp) => RequestInput::NotHttp,
                Err(_) => RequestInput::Unreadable,
            }
        };
        let response = parse_response(response);

        let mut state = self.take(conn).unwrap_or(ConnState {
            role,
            tgid,
            tick: 0,
            pending: VecDeque::new(),
        });
        state.role = role;
        state.tgid = tgid;

        let not_http = matches!(input, RequestInput::NotHttp);
        let current = match input {
            RequestInput::Heads(heads) => {
                // A new request: whatever still waits had its response in an earlier write.
                self.drain(conn, &mut state, UnpairedReason::Superseded, out);
                let pipelined = heads.len() > 1;
                let mut heads = heads.into_iter();
                let first = heads.next();
                for request in heads {
                    if state.pending.len() >= self.max_queued {
                        self.stats.queue_overflow += 1;
                        self.unpaired_request(conn, UnpairedReason::QueueOverflow, out);
                    } else {
                        state.pending.push_back(Pending {
                            request,
                            start_ns: req_ts,
                            pipelined,
                        });
                    }
                }
                first.map(|request| Pending {
                    request,
                    start_ns: req_ts,
                    pipelined,
                })
            }
            RequestInput::Unreadable => {
                self.drain(conn, &mut state, UnpairedReason::Superseded, out);
                self.stats.parse_errors += 1;
                self.unpaired_response(conn, UnpairedReason::BadRequest, out);
                self.put(conn, state, out);
                return;
            }
            RequestInput::Empty | RequestInput::NotHttp => state.pending.pop_front(),
        };

        let Ok(response) = response else {
            self.stats.parse_errors += 1;
            if current.is_some() {
                self.stats.unpaired_requests += 1;
            }
            self.unpaired_response(conn, UnpairedReason::BadResponse, out);
            self.put(conn, state, out);
            return;
        };
        let Some(current) = current else {
            if not_http {
                self.stats.parse_errors += 1;
            }
            self.unpaired_response(conn, UnpairedReason::NoRequest, out);
            self.put(conn, state, out);
            return;
        };

        if is_interim(response.status) {
            self.stats.interim_responses += 1;
            state.pending.push_front(current);
        } else if response.status == 101
            && (current.request.upgrade_websocket || response.upgrade_websocket)
        {
            // Nothing after the switch is HTTP.
            self.drain(conn, &mut state, UnpairedReason::Superseded, out);
            self.open_websocket(conn, role, tgid, current.request, resp_ts, out);
        } else {
            self.stats.exchanges += 1;
            out.push(Output::Exchange(Exchange {
                conn,
                role,
                tgid,
                tid,
                request: current.request,
                status: response.status,
                start_ns: current.start_ns,
                end_ns: resp_ts,
                pipelined: current.pipelined,
            }));
        }
        self.put(conn, state, out);
    }

    /// The kernel saw the connection close: an open WebSocket ends, waiting requests are lost.
    pub fn on_close(&mut self, conn: ConnId, at_ns: u64, out: &mut Vec<Output>) {
        if let Some(ws) = self.websockets.remove(&conn) {
            self.ws_order.remove(&ws.tick);
            out.push(Output::WebSocketClosed {
                conn,
                role: ws.role,
                tgid: ws.tgid,
                request: ws.request,
                duration_ns: at_ns.saturating_sub(ws.at_ns),
            });
        }
        if let Some(mut state) = self.take(conn) {
            self.drain(conn, &mut state, UnpairedReason::Closed, out);
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn take(&mut self, conn: ConnId) -> Option<ConnState> {
        let state = self.conns.remove(&conn)?;
        self.lru.remove(&state.tick);
        Some(state)
    }

    /// Keeps the state if requests wait, evicting the least recently used connection if full.
    fn put(&mut self, conn: ConnId, mut state: ConnState, out: &mut Vec<Output>) {
        if state.pending.is_empty() {
            return;
        }
        while self.conns.len() >= self.max_conns {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(mut evicted) = self.conns.remove(&victim) {
                self.stats.evicted_connections += 1;
                self.drain(victim, &mut evicted, UnpairedReason::Evicted, out);
            }
        }
        state.tick = self.next_tick();
        self.lru.insert(state.tick, conn);
        self.conns.insert(conn, state);
    }

    fn open_websocket(
        &mut self,
        conn: ConnId,
        role: Role,
        tgid: u32,
        request: RequestHead,
        at_ns: u64,
        out: &mut Vec<Output>,
    ) {
        // A second upgrade on the same id (a lost close): the first one ends now.
        self.on_close(conn, at_ns, out);
        while self.websockets.len() >= self.max_conns {
            let Some((_, victim)) = self.ws_order.pop_first() else {
                break;
            };
            if let Some(ws) = self.websockets.remove(&victim) {
                self.stats.evicted_connections += 1;
                out.push(Output::WebSocketClosed {
                    conn: victim,
                    role: ws.role,
                    tgid: ws.tgid,
                    request: ws.request,
                    duration_ns: at_ns.saturating_sub(ws.at_ns),
                });
            }
        }
        out.push(Output::WebSocketOpened {
            conn,
            role,
            tgid,
            request: request.clone(),
            at_ns,
        });
        let tick = self.next_tick();
        self.ws_order.insert(tick, conn);
        self.websockets.insert(
            conn,
            Upgraded {
                role,
                tgid,
                tick,
                request,
                at_ns,
            },
        );
    }

    /// Every waiting request of `state` is lost for `reason`.
    fn drain(
        &mut self,
        conn: ConnId,
        state: &mut ConnState,
        reason: UnpairedReason,
        out: &mut Vec<Output>,
    ) {
        for _ in state.pending.drain(..) {
            self.unpaired_request(conn, reason, out);
        }
    }

    fn unpaired_request(&mut self, conn: ConnId, reason: UnpairedReason, out: &mut Vec<Output>) {
        self.stats.unpaired_requests += 1;
        out.push(Output::Unpaired { conn, reason });
    }

    fn unpaired_response(&mut self, conn: ConnId, reason: UnpairedReason, out: &mut Vec<Output>) {
        self.stats.unpaired_responses += 1;
        out.push(Output::Unpaired { conn, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::Method;

    const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Tenant-ID: t1\r\n\r\n";
    const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    const POST_C: &[u8] = b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Le";
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const SWITCHING: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    fn pairer() -> Pairer {
        Pairer::new(8, HeaderSelection::default())
    }

    /// Feeds one record as the server side of connection `conn`.
    fn record(
        p: &mut Pairer,
        conn: ConnId,
        req: &[u8],
        resp: &[u8],
        req_ts: u64,
        resp_ts: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        p.on_record(
            conn,
            Role::Server,
            100,
            101,
            req,
            resp,
            req_ts,
            resp_ts,
            &mut out,
        );
        out
    }

    /// (path, status, start, end) of each exchange; panics on any other output.
    fn exchanges(out: &[Output]) -> Vec<(String, u16, u64, u64)> {
        out.iter()
            .map(|o| match o {
                Output::Exchange(e) => (e.request.path.clone(), e.status, e.start_ns, e.end_ns),
                other => panic!("not an exchange: {other:?}"),
            })
            .collect()
    }

    fn reasons(out: &[Output]) -> Vec<UnpairedReason> {
        out.iter()
            .filter_map(|o| match o {
                Output::Unpaired { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_exchange() {
        let mut p = pairer();
        let mut out = Vec::new();
        p.on_record(7, Role::Client, 10, 11, GET_A, OK, 1_000, 5_000, &mut out);
        let [Output::Exchange(e)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!((e.conn, e.role, e.tgid, e.tid), (7, Role::Client, 10, 11));
        assert_eq!(
            (e.request.method, e.request.path.as_str()),
            (Method::Get, "/a")
        );
        assert_eq!(e.request.tenant_header.as_deref(), Some("t1"));
        assert_eq!((e.status, e.start_ns, e.end_ns), (200, 1_000, 5_000));
        assert_eq!(p.pending_connections(), 0, "nothing waits: no state kept");
        let s = p.stats();
        assert_eq!((s.records, s.exchanges, s.parse_errors), (1, 1, 0));
    }

    #[test]
    fn keep_alive_sequence() {
        let mut p = pairer();
        let mut all = Vec::new();
        for (i, (req, resp)) in [(GET_A, OK), (GET_B, NOT_FOUND), (POST_C, CREATED)]
            .into_iter()
            .enumerate()
        {
            let t = i as u64 * 100;
            all.extend(record(&mut p, 1, req, resp, t, t + 10));
        }
        assert_eq!(
            exchanges(&all),
            [
                ("/a".into(), 200, 0, 10),
                ("/b".into(), 404, 100, 110),
                ("/c".into(), 201, 200, 210)
            ]
        );
        // Interleaved connections do not disturb each other.
        let mut out = record(&mut p, 2, &[GET_A, GET_B].concat(), OK, 300, 310);
        out.extend(record(&mut p, 3, GET_B, OK, 305, 315));
        out.extend(record(&mut p, 2, b"", CREATED, 0, 320));
        assert_eq!(
            exchanges(&out),
            [
                ("/a".into(), 200, 300, 310),
                ("/b".into(), 200, 305, 315),
                ("/b".into(), 201, 300, 320)
            ]
        );
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let mut p = pairer();
        let three = [POST_C, GET_A, GET_B].concat();
        let mut out = record(&mut p, 1, &three, CREATED, 1_000, 2_000);
        assert_eq!(p.pending_connections(), 1);
        out.extend(record(&mut p, 1, b"", OK, 0, 3_000));
        out.extend(record(&mut p, 1, b"", NOT_FOUND, 0, 4_000));
        assert_eq!(
            exchanges(&out),
            [
                ("/c".into(), 201, 1_000, 2_000),
                ("/a".into(), 200, 1_000, 3_000),
                ("/b".into(), 404, 1_000, 4_000)
            ]
        );
        assert_eq!(p.pending_connections(), 0);
        // A fourth response has nothing to pair with.
        let out = record(&mut p, 1, b"", OK, 0, 5_000);
        assert_eq!(reasons(&out), [UnpairedReason::NoRequest]);
        let s = p.stats();
        assert_eq!(
            (s.exchanges, s.unpaired_responses, s.parse_errors),
            (3, 1, 0)
        );
    }

    #[test]
    fn requests_answered_in_one_write_are_superseded() {
        let mut p = pairer();
        // Three pipelined responses in one write: the kernel saw one response.
        let out = record(&mut p, 1, &[GET_A, GET_B, GET_B].concat(), OK, 0, 10);
        assert_eq!(exchanges(&out).len(), 1);
        let out = record(&mut p, 1, POST_C, CREATED, 20, 30);
        assert_eq!(
            reasons(&out),
            [UnpairedReason::Superseded, UnpairedReason::Superseded]
        );
        assert_eq!(exchanges(&out[2..]), [("/c".into(), 201, 20, 30)]);
        assert_eq!(p.stats().unpaired_requests, 2);
    }

    #[test]
    fn continue_then_final_response() {
        let mut p = pairer();
        let head = b"POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n";
        let out = record(&mut p, 1, head, CONTINUE, 1_000, 1_500);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(p.stats().interim_responses, 1);
        // The body the client sent after `100 Continue` is stashed as if it were a request.
        let out = record(&mut p, 1, b"payload", CREATED, 2_000, 3_000);
        assert_eq!(exchanges(&out), [("/upload".into(), 201, 1_000, 3_000)]);
        // Or the kernel had nothing stashed.
        record(&mut p, 1, head, CONTINUE, 4_000, 4_500);
        let out = record(&mut p, 1, b"", OK, 0, 5_000);
        assert_eq!(exchanges(&out), [("/upload".into(), 200, 4_000, 5_000)]);
        let s = p.stats();
        assert_eq!(
            (s.interim_responses, s.exchanges, s.parse_errors),
            (2, 2, 0)
        );
    }

    #[test]
    fn websocket_lifecycle() {
        let mut p = pairer();
        let mut out = Vec::new();
        p.on_record(
            9,
            Role::Server,
            100,
            101,
            UPGRADE,
            SWITCHING,
            1_000,
            2_000,
            &mut out,
        );
        let [
            Output::WebSocketOpened {
                conn: 9,
                role: Role::Server,
                tgid: 100,
                request,
                at_ns: 2_000,
            },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(request.path, "/chat");
        assert_eq!(p.open_websockets(), 1);
        assert_eq!(p.stats().exchanges, 0);

        let mut out = Vec::new();
        p.on_close(9, 62_000, &mut out);
        let [
            Output::WebSocketClosed {
                conn: 9,
                role: Role::Server,
                tgid: 100,
                request,
                duration_ns: 60_000,
            },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(request.host.as_deref(), Some("ws.example"));
        assert_eq!(p.open_websockets(), 0);
        // A second close (or a close of an unknown connection) emits nothing.
        out.clear();
        p.on_close(9, 70_000, &mut out);
        p.on_close(12345, 70_000, &mut out);
        assert!(out.is_empty());

        // 101 to another protocol (h2c) is an ordinary exchange.
        let h2c = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n";
        let out = record(
            &mut p,
            10,
            h2c,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            0,
            1,
        );
        assert_eq!(exchanges(&out), [("/".into(), 101, 0, 1)]);
        assert_eq!(p.open_websockets(), 0);
    }

    #[test]
    fn close_drops_waiting_requests() {
        let mut p = pairer();
        record(&mut p, 1, &[GET_A, GET_B, GET_B].concat(), OK, 0, 10);
        let mut out = Vec::new();
        p.on_close(1, 20, &mut out);
        assert_eq!(
            reasons(&out),
            [UnpairedReason::Closed, UnpairedReason::Closed]
        );
        assert_eq!(p.pending_connections(), 0);
        // State is gone: a response on the same id has no request.
        let out = record(&mut p, 1, b"", OK, 0, 30);
        assert_eq!(reasons(&out), [UnpairedReason::NoRequest]);
    }

    #[test]
    fn bad_input() {
        let mut p = pairer();
        let out = record(&mut p, 1, GET_A, b"\x17\x03\x03 not http", 0, 1);
        assert_eq!(reasons(&out), [UnpairedReason::BadResponse]);
        let out = record(&mut p, 1, b"\x16\x03\x01garbage", OK, 0, 1);
        assert_eq!(reasons(&out), [UnpairedReason::NoRequest]);
        let out = record(&mut p, 1, b"", OK, 0, 1);
        assert_eq!(reasons(&out), [UnpairedReason::NoRequest]);
        // A request line longer than the capture window.
        let long = [b"GET /".as_slice(), &[b'x'; 1100]].concat();
        let out = record(&mut p, 1, &long[..1024], OK, 0, 1);
        assert_eq!(reasons(&out), [UnpairedReason::BadRequest]);
        let s = p.stats();
        assert_eq!((s.records, s.exchanges, s.parse_errors), (4, 0, 3));
        assert_eq!((s.unpaired_responses, s.unpaired_requests), (4, 1));
    }

    #[test]
    fn unreadable_request_supersedes_waiting_ones() {
        let mut p = pairer();
        record(&mut p, 1, &[GET_A, GET_B].concat(), OK, 0, 10);
        // A request line longer than the capture window.
        let long = [b"GET /".as_slice(), &[b'x'; 1100]].concat();
        let out = record(&mut p, 1, &long[..1024], OK, 20, 30);
        assert_eq!(
            reasons(&out),
            [UnpairedReason::Superseded, UnpairedReason::BadRequest]
        );
    }

    #[test]
    fn queue_overflow() {
        let mut p = pairer().with_max_queued(2);
        let five = [GET_A, GET_B, GET_B, GET_B, GET_B].concat();
        let out = record(&mut p, 1, &five, OK, 0, 10);
        assert!(matches!(out.last(), Some(Output::Exchange(_))), "{out:?}");
        assert_eq!(
            reasons(&out),
            [UnpairedReason::QueueOverflow, UnpairedReason::QueueOverflow]
        );
        let s = p.stats();
        assert_eq!((s.queue_overflow, s.unpaired_requests), (2, 2));
    }

    #[test]
    fn connections_are_bounded() {
        let mut p = Pairer::new(2, HeaderSelection::default());
        let two = [GET_A, GET_B].concat();
        for conn in 1..=3 {
            let out = record(&mut p, conn, &two, OK, conn, conn + 1);
            let expected: &[UnpairedReason] = if conn == 3 {
                &[UnpairedReason::Evicted]
            } else {
                &[]
            };
            assert_eq!(reasons(&out), expected, "conn {conn}");
        }
        assert_eq!(p.pending_connections(), 2);
        assert_eq!(p.stats().evicted_connections, 1);
        // Connection 1 was the least recently used; 2 and 3 still pair.
        assert_eq!(
            reasons(&record(&mut p, 1, b"", OK, 0, 9)),
            [UnpairedReason::NoRequest]
        );
        assert_eq!(exchanges(&record(&mut p, 2, b"", OK, 0, 9)).len(), 1);
        assert_eq!(exchanges(&record(&mut p, 3, b"", OK, 0, 9)).len(), 1);

        // WebSockets have their own bound; the oldest ends at the eviction.
        let mut p = Pairer::new(1, HeaderSelection::default());
        record(&mut p, 1, UPGRADE, SWITCHING, 0, 100);
        let out = record(&mut p, 2, UPGRADE, SWITCHING, 0, 500);
        assert!(
            matches!(
                out[0],
                Output::WebSocketClosed {
                    conn: 1,
                    duration_ns: 400,
                    ..
                }
            ),
            "{out:?}"
        );
        assert!(
            matches!(out[1], Output::WebSocketOpened { conn: 2, .. }),
            "{out:?}"
        );
        assert_eq!((p.open_websockets(), p.stats().evicted_connections), (1, 1));
    }

    /// xorshift64*: deterministic inputs without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn generated_sequences_account_for_every_request() {
        let requests: [&[u8]; 8] = [
            b"",
            GET_A,
            GET_B,
            POST_C,
            UPGRADE,
            b"payload",
            b"GET /cut",
            b"\x00\xff",
        ];
        let responses: [&[u8]; 7] = [OK, CREATED, NOT_FOUND, CONTINUE, SWITCHING, b"", b"junk"];
        let mut rng = Rng(7);
        let mut p = Pairer::new(4, HeaderSelection::default()).with_max_queued(3);
        let mut out = Vec::new();
        let mut heads_in = 0u64;
        let mut records = 0u64;
        let mut ts = 0u64;
        for _ in 0..20_000 {
            let conn = rng.below(8) as ConnId;
            ts += 1 + rng.below(1000) as u64;
            if rng.below(10) == 0 {
                p.on_close(conn, ts, &mut out);
                continue;
            }
            let mut req = Vec::new();
            for _ in 0..rng.below(4) {
                req.extend_from_slice(requests[rng.below(requests.len())]);
            }
            let resp = responses[rng.below(responses.len())];
            heads_in += parse_requests(&req, p.selection()).map_or(0, |h| h.len() as u64);
            p.on_record(conn, Role::Server, 1, 1, &req, resp, ts, ts + 5, &mut out);
            records += 1;
            assert!(p.pending_connections() <= 4 && p.open_websockets() <= 4);
        }
        for conn in 0..8 {
            p.on_close(conn, u64::MAX, &mut out);
        }
        let count = |f: fn(&Output) -> bool| out.iter().filter(|o| f(o)).count() as u64;
        let s = p.stats();
        assert_eq!(s.records, records);
        assert_eq!(s.exchanges, count(|o| matches!(o, Output::Exchange(_))));
        let opened = count(|o| matches!(o, Output::WebSocketOpened { .. }));
        assert_eq!(
            opened,
            count(|o| matches!(o, Output::WebSocketClosed { .. }))
        );
        let response_side = |r: UnpairedReason| {
            use UnpairedReason::*;
            matches!(r, NoRequest | BadRequest | BadResponse)
        };
        let unpaired: Vec<_> = reasons(&out);
        let bad_responses = unpaired
            .iter()
            .filter(|r| **r == UnpairedReason::BadResponse)
            .count() as u64;
        let request_side = unpaired.iter().filter(|r| !response_side(**r)).count() as u64;
        assert_eq!(s.unpaired_responses, unpaired.len() as u64 - request_side);
        // A bad response also loses its request, if it had one (one output for both).
        assert!(
            request_side <= s.unpaired_requests
                && s.unpaired_requests <= request_side + bad_responses
        );
        // Every parsed request head ended exactly once; nothing waits after the closes.
        assert_eq!(p.pending_connections(), 0);
        assert_eq!(heads_in, s.exchanges + opened + s.unpaired_requests);
        assert!(
            s.exchanges > 100 && opened > 10 && s.interim_responses > 10,
            "{s:?}"
        );
        for o in &out {
            if let Output::Exchange(e) = o {
                assert!(e.start_ns <= e.end_ns);
            }
        }
    }
}
