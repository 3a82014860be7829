//! Replays a `--record-http` recording through the agent's userspace pipeline (see
//! `tenantscope_agent::replay`) and prints what it cost. Driven by `cargo xtask bench pipeline`:
//!
//! `pipeline <recording> [--spans] [--limit RECORDS] [--passes N | --seconds S]`
//!
//! Prints one line of `key=value`: records, spans, OTLP bytes, and the thread's CPU seconds.

use std::time::Duration;

use tenantscope_agent::replay::{Replay, Replayed, parse_recording};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain libc call writing into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or(
        "usage: pipeline <recording> [--spans] [--limit RECORDS] [--passes N | --seconds S]",
    )?;
    let value = |name: &str| -> Result<Option<f64>, String> {
        match args.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("{name} needs a number")),
        }
    };
    let passes = value("--passes")?;
    let seconds = value("--seconds")?.unwrap_or(5.0);
    let data = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut records = parse_recording(&data)?;
    if let Some(limit) = value("--limit")? {
        records.truncate(limit as usize);
    }
    if records.is_empty() {
        return Err(format!("{path} holds no records"));
    }
    let mut replay = Replay::new(args.iter().any(|a| a == "--spans"))?;
    let mut done = Replayed::default();
    let start = thread_cpu();
    let mut n = 0u64;
    loop {
        replay.pass(&records, &mut done);
        n += 1;
        let spent = (thread_cpu() - start).as_secs_f64();
        let enough = match passes {
            Some(p) => n as f64 >= p,
            None => spent >= seconds,
        };
        if enough {
            println!(
                "passes={n} records={} decode_errors={} spans={} otlp_bytes={} cpu_seconds={spent:.6}",
                done.records, done.decode_errors, done.spans, done.otlp_bytes
            );
            return Ok(());
        }
    }
}
