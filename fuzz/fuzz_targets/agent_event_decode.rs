//! Raw ring-buffer records into events: the `http`, `tcp` and `process` decoders, then what the
//! agent does with each decoded event (the HTTP records through the whole userspace pipeline as
//! `replay` runs it: pairing, parsing, tenant, route, RED metrics, spans and their OTLP encoding;
//! TCP events into the TCP aggregator; process events into the process table).
//!
//! Input: a `--record-http` recording (`TSHTTP01`, then length-prefixed records), or any other
//! bytes, taken as one record. Every record goes to all three decoders.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tenantscope_agent::aggregate::tcp::{PeerNaming, TcpAggregator};
use tenantscope_agent::config::default_peers;
use tenantscope_agent::probes::{http, process, tcp};
use tenantscope_agent::replay::{self, Replay, Replayed};
use tenantscope_agent::workload::{ProcessTable, Workload};
use tenantscope_agent_common::http::{HEADER_BYTES, REQ_WINDOW, RESP_WINDOW};

fuzz_target!(|data: &[u8]| {
    let records = match replay::parse_recording(data) {
        Ok(records) => records,
        Err(_) => vec![data],
    };

    let now = Instant::now();
    let mut tcp_agg = TcpAggregator::new(PeerNaming {
        rules: default_peers(),
        resolve_local: true,
    });
    let mut table = ProcessTable::new(64, Duration::from_secs(60));
    let mut http_ok = 0u64;
    for bytes in &records {
        match http::decode(bytes) {
            Ok(http::Record::Exchange(http::ExchangeRecord {
                request, response, ..
            })) => {
                http_ok += 1;
                // The slices are the record's own bytes, within the kernel's windows.
                assert!(request.len() <= REQ_WINDOW && response.len() <= RESP_WINDOW);
                assert_eq!(HEADER_BYTES + request.len() + response.len(), bytes.len());
            }
            Ok(http::Record::UpgradedClose { .. }) => http_ok += 1,
            Err(_) => {}
        }
        if let Ok(ev) = tcp::decode(bytes) {
            tcp_agg.on_event(&ev, now, |tgid| Arc::from(format!("proc-{tgid}")));
        }
        if let Ok(ev) = process::decode(bytes) {
            match ev {
                process::Event::Fork { child, parent } => {
                    if !table.fork(child, parent, now) {
                        table.upsert(child, Workload::Unknown, now);
                    }
                }
                process::Event::Exec { tgid, comm, .. } => {
                    assert!(!comm.chars().any(char::is_control), "{comm:?}");
                    table.upsert(tgid, Workload::from_proc(None, &comm), now);
                }
                process::Event::Exit { tgid } => table.exit(tgid, now),
            }
        }
    }
    let _ = tcp_agg.snapshot();
    let _ = table.stats();

    let mut replay = Replay::new(true).expect("the default configuration builds");
    let mut done = Replayed::default();
    replay.pass(&records, &mut done);
    assert_eq!(done.records, records.len() as u64);
    assert_eq!(done.records - done.decode_errors, http_ok);
    // A span comes from an exchange, and a record carries at most one.
    assert!(done.spans <= http_ok, "{done:?}");
});
