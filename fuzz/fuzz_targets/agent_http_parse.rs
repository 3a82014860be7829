//! The HTTP/1 head parser (`http::parse`) and the request/response pairing state machine
//! (`http::pairing`), fed arbitrary sequences of records and closes on four connections, both
//! roles, with small bounds so that eviction and queue overflow happen.
//!
//! Input: `tenantscope_fuzz::records` ops.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenantscope_agent::http::pairing::{Output, Pairer, Role};
use tenantscope_agent::http::parse::{
    HeaderSelection, MAX_PATH_LEN, MAX_VALUE_LEN, RequestHead, parse_requests, parse_response,
};
use tenantscope_fuzz::records::{self, CONN_MASK, Op};

/// Connections with waiting requests (and open WebSockets) the pairer keeps: fewer than the
/// connections the ops address, so eviction is reached.
const MAX_CONNS: usize = 3;
const MAX_QUEUED: usize = 4;

fn selection() -> HeaderSelection {
    HeaderSelection {
        tenant_header: "x-tenant-id".to_owned(),
        // Credentials are selected on purpose: the parser must drop them anyway.
        extra: ["user-agent", "x-request-id", "cookie", "authorization"]
            .map(String::from)
            .to_vec(),
    }
}

fn printable(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn check_head(h: &RequestHead, sel: &HeaderSelection) {
    assert!(
        h.path.len() <= MAX_PATH_LEN,
        "path of {} bytes",
        h.path.len()
    );
    // Query strings and fragments never leave the parser.
    assert!(!h.path.contains(['?', '#']), "{:?}", h.path);
    assert!(h.http_minor <= 1);
    if let Some(host) = &h.host {
        assert!(!host.is_empty() && !host.contains('@'), "{host:?}");
        assert_eq!(*host, host.to_ascii_lowercase());
    }
    for v in [&h.tenant_header, &h.traceparent].into_iter().flatten() {
        assert!(printable(v) && v.len() <= MAX_VALUE_LEN, "{v:?}");
    }
    for v in [&h.tracestate, &h.baggage].into_iter().flatten() {
        assert!(printable(v), "{v:?}");
    }
    for (name, value) in &h.extra {
        assert!(
            sel.extra.contains(name) && name != "cookie" && name != "authorization",
            "kept header {name:?}"
        );
        assert!(printable(value) && value.len() <= MAX_VALUE_LEN);
    }
}

fuzz_target!(|data: &[u8]| {
    let sel = selection();
    let mut pairer = Pairer::new(MAX_CONNS, sel.clone()).with_max_queued(MAX_QUEUED);
    let mut out = Vec::new();
    let mut now = 1_000_000_000u64;
    let (mut heads_in, mut records_in) = (0u64, 0u64);
    let (mut exchanges, mut ws_opened) = (0u64, 0u64);

    let ops = records::read(data);
    for op in &ops {
        out.clear();
        match *op {
            Op::Record {
                conn,
                client,
                dt_ms,
                request,
                response,
            } => {
                // The parser on its own: what the pairer will see.
                if !request.is_empty()
                    && let Ok(heads) = parse_requests(request, &sel)
                {
                    assert!(!heads.is_empty());
                    // Every head but the last is complete and takes bytes of its own.
                    assert!(heads.len() <= request.len() / 4 + 1);
                    for h in &heads {
                        check_head(h, &sel);
                    }
                    heads_in += heads.len() as u64;
                }
                if let Ok(r) = parse_response(response) {
                    assert!((100..=999).contains(&r.status), "status {}", r.status);
                    assert!(r.http_minor <= 1);
                }

                let req_ts = now;
                now += u64::from(dt_ms) * 1_000_000;
                let role = if client { Role::Client } else { Role::Server };
                let tgid = 100 + conn as u32;
                records_in += 1;
                pairer.on_record(
                    conn, role, tgid, tgid, request, response, req_ts, now, &mut out,
                );
            }
            Op::Close { conn } => pairer.on_close(conn, now, &mut out),
        }
        for o in &out {
            match o {
                Output::Exchange(x) => {
                    exchanges += 1;
                    assert!(x.start_ns <= x.end_ns && x.end_ns == now);
                    check_head(&x.request, &sel);
                }
                Output::WebSocketOpened { request, .. } => {
                    ws_opened += 1;
                    check_head(request, &sel);
                }
                Output::WebSocketClosed { duration_ns, .. } => assert!(*duration_ns <= now),
                Output::Unpaired { .. } => {}
            }
        }
        assert!(pairer.pending_connections() <= MAX_CONNS);
        assert!(pairer.open_websockets() <= MAX_CONNS);
    }

    // Closing every connection leaves no state, and every request was accounted for: paired,
    // upgraded, or counted as unpaired. Nothing is lost silently.
    for conn in 0..=u64::from(CONN_MASK) {
        pairer.on_close(conn, now, &mut out);
    }
    assert_eq!(pairer.pending_connections(), 0);
    assert_eq!(pairer.open_websockets(), 0);
    let stats = pairer.stats();
    assert_eq!(stats.records, records_in);
    assert_eq!(stats.exchanges, exchanges);
    assert_eq!(
        heads_in,
        stats.exchanges + ws_opened + stats.unpaired_requests,
        "{stats:?}"
    );
});
