//! Recorded `http` ring-buffer records (`--record-http`) and their replay through the
//! userspace pipeline without a kernel: decode -> pair -> parse -> tenant -> route -> RED
//! (-> spans -> OTLP encoding). `cargo xtask bench pipeline` times it and counts its
//! instructions; the replay runs the agent's own code, built as the agent builds it.
//!
//! File format: the magic `TSHTTP01`, then per record its length (u32, little endian) and its
//! bytes exactly as the ring buffer held them.

use std::{
    fs::File,
    io::{self, BufWriter, Write as _},
    path::Path,
    time::{Instant, SystemTime},
};

use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{common::tonic::ResourceAttributesWithSchema, trace::tonic},
};
use prost::Message as _;

use crate::{
    aggregate::http::{HttpMetrics, HttpPipeline, SpanSetup},
    config::Config,
    otlp::{self, SpanExporterTask, SpanMetrics},
    parenting::Serving,
    probes::http::{self as probe, Record},
    spans::{AgentSpan, MonoToUnix, ResourceBase, SpanOptions, group_by_origin},
    workload::{ProcessTable, Workload},
};

const MAGIC: &[u8; 8] = b"TSHTTP01";

/// Appends raw records to a file, up to a limit. Write errors stop the recording (logged once);
/// they never affect the agent.
pub struct Recorder {
    out: Option<BufWriter<File>>,
    left: u64,
}

impl Recorder {
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(Self {
            out: Some(out),
            left: limit,
        })
    }

    pub fn record(&mut self, bytes: &[u8]) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let written = out
            .write_all(&len.to_le_bytes())
            .and_then(|()| out.write_all(bytes));
        self.left = self.left.saturating_sub(1);
        let result = match written {
            Ok(()) if self.left > 0 => return,
            Ok(()) => out.flush(),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording http records failed; recording stopped");
        }
        self.out = None;
    }
}

/// Splits a recording into its records.
pub fn parse_recording(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = data
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a recording (no TSHTTP01 magic)")?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("record {} is cut in its length", records.len()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(format!(
                "record {} is cut: {len} bytes announced, {} left",
                records.len(),
                tail.len()
            ));
        }
        let (record, tail) = tail.split_at(len);
        records.push(record);
        rest = tail;
    }
    Ok(records)
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub decode_errors: u64,
    pub spans: u64,
    /// Bytes of the encoded OTLP export requests (one per workload and batch).
    pub otlp_bytes: u64,
}

/// The agent's HTTP pipeline as `Agent::start` builds it from the default configuration, fed
/// with recorded records. With `spans`, sampled spans are drained from the export queue every
/// `otlp.batch_size` records and encoded as the OTLP/HTTP exporter encodes them.
pub struct Replay {
    pipeline: HttpPipeline,
    table: ProcessTable,
    spans: Option<(SpanExporterTask, ResourceBase, Vec<AgentSpan>)>,
    batch: u64,
    /// Added to every kernel time: each pass over a recording starts after the previous one.
    shift_ns: u64,
    last_ns: u64,
}

impl Replay {
    pub fn new(spans: bool) -> Result<Self, String> {
        let mut cfg = Config::default();
        // Nothing is sent: the queue only has to hold one batch between drains.
        cfg.otlp.queue_size = cfg.otlp.batch_size * 2;
        let pipeline = HttpPipeline::from_config(&cfg.http, HttpMetrics::default())?
            .with_sli(SystemTime::now());
        let (pipeline, spans) = if spans {
            let resource = ResourceBase::new(Some("bench-node"), None);
            let metrics = SpanMetrics::default();
            let (sink, task) = otlp::start(&cfg.otlp, resource.clone(), metrics.clone());
            let setup = SpanSetup {
                options: SpanOptions::from_config(&cfg.otlp),
                metrics,
                sink: Some(sink),
                clock: MonoToUnix::from_readings(0, SystemTime::now()),
            };
            (
                pipeline.with_spans(setup),
                Some((task, resource, Vec::new())),
            )
        } else {
            (pipeline, None)
        };
        Ok(Self {
            pipeline,
            table: ProcessTable::new(cfg.workloads.max, cfg.workloads.idle_ttl),
            spans,
            batch: cfg.otlp.batch_size.max(1) as u64,
            shift_ns: 0,
            last_ns: 0,
        })
    }

    /// One pass over `records`; call it again for more passes (times move on).
    pub fn pass(&mut self, records: &[&[u8]], done: &mut Replayed) {
        let now = Instant::now();
        let shift = self.shift_ns;
        for (i, bytes) in records.iter().enumerate() {
            let table = &mut self.table;
            let label_of = |tgid| {
                if !table.contains(tgid) {
                    let comm = format!("proc-{tgid}");
                    table.upsert(tgid, Workload::Host { comm }, now);
                }
                table.origin(tgid, now)
            };
            match probe::decode(bytes) {
                Ok(Record::Exchange(mut r)) => {
                    self.last_ns = self.last_ns.max(r.resp_ts.saturating_add(shift));
                    r.req_ts = r.req_ts.saturating_add(shift);
                    r.resp_ts = r.resp_ts.saturating_add(shift);
                    if let Serving::One { req_ts, .. } = &mut r.serving {
                        *req_ts = req_ts.saturating_add(shift);
                    }
                    self.pipeline.on_record(&r, label_of);
                }
                Ok(Record::UpgradedClose { conn, at }) => {
                    self.pipeline
                        .on_close(conn, at.saturating_add(shift), label_of)
                }
                Err(_) => done.decode_errors += 1,
            }
            done.records += 1;
            if (i as u64 + 1).is_multiple_of(self.batch) {
                self.export(done);
            }
        }
        // Client spans still waiting for a parent leave as roots, as they would on the timer.
        // Saturating: recorded times are whatever the file holds.
        let after = self.last_ns.saturating_add(10_000_000_000);
        self.pipeline.tick(after);
        self.export(done);
        self.shift_ns = after;
    }

    /// Drains the span queue and encodes it: one export request per workload, as the exporter.
    fn export(&mut self, done: &mut Replayed) {
        let Some((task, resource, buf)) = self.spans.as_mut() else {
            return;
        };
        task.take_queued(buf);
        done.spans += buf.len() as u64;
        for (origin, spans) in group_by_origin(std::mem::take(buf)) {
            let attrs = ResourceAttributesWithSchema::from(&resource.for_origin(&origin));
            let request = ExportTraceServiceRequest {
                resource_spans: tonic::group_spans_by_resource_and_scope(spans, &attrs),
            };
            done.otlp_bytes += request.encode_to_vec().len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use tenantscope_agent_common::http::{EXCHANGE_KIND, HEADER_BYTES, HttpEvent, ROLE_SERVER};

    use super::*;

    fn record(conn: u64, ts: u64, req: &[u8], resp: &[u8]) -> Vec<u8> {
        // SAFETY: all-zero is a valid HttpEvent (plain integers and arrays).
        let mut ev: HttpEvent = unsafe { core::mem::zeroed() };
        ev.header.kind = EXCHANGE_KIND;
        ev.header.ts_ns = ts + 500_000;
        ev.conn_id = conn;
        ev.req_ts_ns = ts;
        ev.tgid = 40;
        ev.tid = 40;
        ev.role = ROLE_SERVER;
        ev.req_len = req.len() as u16;
        ev.resp_len = resp.len() as u16;
        // SAFETY: plain data viewed as bytes.
        let header =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), HEADER_BYTES) };
        [header, req, resp].concat()
    }

    #[test]
    fn records_round_trip_and_replay_into_spans() {
        let path = std::env::temp_dir().join(format!("ts-replay-{}.rec", std::process::id()));
        let mut rec = Recorder::create(&path, 3).unwrap();
        let req = b"GET /api/items/7 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\n\r\n";
        for i in 0..5u64 {
            rec.record(&record(
                i,
                1_000_000 * (i + 1),
                req,
                b"HTTP/1.1 200 OK\r\n\r\n",
            ));
        }
        drop(rec);
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let records = parse_recording(&data).unwrap();
        assert_eq!(records.len(), 3, "the limit holds");

        let mut replay = Replay::new(true).unwrap();
        let mut done = Replayed::default();
        replay.pass(&records, &mut done);
        replay.pass(&records, &mut done);
        assert_eq!(done.records, 6);
        assert_eq!(done.decode_errors, 0);
        assert_eq!(done.spans, 6, "one server span per exchange");
        assert!(done.otlp_bytes > 6 * 100, "{done:?}");

        assert!(parse_recording(b"nope").is_err());
        let mut cut = data.clone();
        cut.pop();
        assert!(parse_recording(&cut).unwrap_err().contains("cut"));
    }

    #[test]
    fn replays_times_near_the_end_of_the_clock() {
        // Found by fuzzing (fuzz/ agent_event_decode): a recording's times are whatever the
        // file holds; the pass after the last record and the next pass's shift saturate.
        let late = record(
            1,
            u64::MAX - 600_000,
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        let mut replay = Replay::new(true).unwrap();
        let mut done = Replayed::default();
        replay.pass(&[&late], &mut done);
        replay.pass(&[&late], &mut done);
        assert_eq!((done.records, done.decode_errors), (2, 0));
    }
}
