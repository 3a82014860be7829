//! `cargo xtask bench pipeline`: what the agent's userspace costs per kernel record, without a
//! kernel in the loop. First a recording: nginx (CPU 1) under wrk with a request mix
//! (`xtask/bench/pipeline-mix.lua`: 40 tenants, templated routes, 404s and 503s, traceparents)
//! while the agent (all probes) writes its raw `http` ring-buffer records to a file
//! (`--record-http`). Then the agent's `pipeline` example replays them through the real code
//! (decode -> pair -> parse -> tenant -> route -> RED and SLI series; with `--spans` also span
//! building and OTLP protobuf encoding), on one core:
//! - records/s and spans/s per core: records (spans) over the replaying thread's CPU time,
//!   `--rounds` rounds of `--seconds` each, the two paths interleaved, median;
//! - instructions per record under callgrind: (Ir of 3 passes - Ir of 1 pass) / (2 x records),
//!   so start-up and the file read cancel out. Repeatable whatever else the machine does.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{Running, flag, median, otlp_sink, record, release_bins},
    bench_overhead::Nginx,
    util,
};

/// Answers of the recorded server: JSON for `/api/`, 503 for `/api/fail/`, 404 elsewhere.
const LOCATIONS: &str = "  location /api/fail/ { return 503 \"unavailable\\n\"; }\n  \
    location /api/ { default_type application/json; return 200 '{\"ok\":true,\"items\":[1,2,3]}'; }";

/// Targets of issue 7 (goal, must pass): records/s per core on the metrics path, spans/s per
/// core including OTLP encoding.
const METRICS_TARGET: (f64, f64) = (1_000_000.0, 500_000.0);
const SPANS_TARGET: (f64, f64) = (200_000.0, 100_000.0);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Metrics,
    Spans,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Metrics => "metrics path",
            Mode::Spans => "spans incl. OTLP encoding",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Metrics => &[],
            Mode::Spans => &["--spans"],
        }
    }
}

/// One replay's output line.
#[derive(Clone, Copy, Default)]
struct Replayed {
    records: f64,
    decode_errors: f64,
    spans: f64,
    otlp_bytes: f64,
    cpu_seconds: f64,
}

pub fn pipeline(args: &[String]) -> anyhow::Result<()> {
    let rounds = flag(args, "--rounds", 3)?.max(1);
    let seconds = flag(args, "--seconds", 3)?.max(1);
    let limit = flag(args, "--records", 100_000)?.max(1000);
    let cg_records = flag(args, "--callgrind-records", 10_000)?.max(100);
    for tool in ["nginx", "wrk", "valgrind", "taskset"] {
        if util::output(util::command("which", &[tool])).is_err() {
            bail!("{tool} not found on PATH (`cargo xtask setup` installs it)");
        }
    }
    let bins = release_bins()?;
    let replay = bins.join("examples").join("pipeline");
    let dir = util::target_dir()?.join("bench").join("pipeline");
    std::fs::create_dir_all(&dir)?;
    let rec = dir.join("http.rec");
    let requests = record_traffic(&bins, &dir, &rec, limit)?;
    let all = run(&replay, &rec, &["--passes", "1"])?;
    if all.records < 1000.0 || all.decode_errors > 0.0 {
        bail!(
            "the recording holds {} records ({} undecodable): expected at least 1000, all valid",
            all.records,
            all.decode_errors
        );
    }
    eprintln!(
        "recorded the first {} records of {requests} wrk requests",
        all.records
    );

    let modes = [Mode::Metrics, Mode::Spans];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut raw = String::new();
    let secs = seconds.to_string();
    for round in 0..rounds as usize {
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            let mode = modes[i];
            let mut a = vec!["--seconds", &secs];
            a.extend(mode.args());
            let r = run(&replay, &rec, &a)?;
            let rate = match mode {
                Mode::Metrics => r.records / r.cpu_seconds,
                Mode::Spans => r.spans / r.cpu_seconds,
            };
            raw.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.3} | {:.0} |\n",
                round + 1,
                mode.name(),
                r.records,
                r.spans,
                r.cpu_seconds,
                rate
            ));
            eprintln!("round {} {}: {rate:.0}/s per core", round + 1, mode.name());
            rates[i].push(rate);
        }
    }

    let mut instr = Vec::new();
    let n = cg_records.to_string();
    for mode in modes {
        let ir = |passes: &str| -> anyhow::Result<f64> {
            let mut a = vec!["--limit", &n, "--passes", passes];
            a.extend(mode.args());
            callgrind(&replay, &rec, &a, &dir)
        };
        let (one, three) = (ir("1")?, ir("3")?);
        let records = cg_records.min(all.records as u64) as f64;
        instr.push((three - one) / (2.0 * records));
    }

    let spans = run(&replay, &rec, &["--passes", "1", "--spans"])?;
    let verdict = |v: f64, (goal, must): (f64, f64)| {
        if v >= goal {
            "**goal met**"
        } else if v >= must {
            "must-pass met, goal missed"
        } else {
            "**missed**"
        }
    };
    let targets = [METRICS_TARGET, SPANS_TARGET];
    let mut report = format!(
        "Recording: the first {} `http` ring-buffer records (`--record-http`) of a 6 s wrk run \
         ({requests} requests; the nginx and the wrk side of each exchange captured); replayed {rounds} rounds x {seconds} s per path, paths interleaved; \
         callgrind over the first {cg_records} records. {:.2} spans and {:.0} OTLP bytes per \
         record in the spans path.\n\n\
         | path | per core (median) | µs per record | instructions per record | target (goal / must) | verdict |\n\
         |---|---|---|---|---|---|\n",
        all.records,
        spans.spans / spans.records,
        spans.otlp_bytes / spans.records,
    );
    for (i, mode) in modes.iter().enumerate() {
        let rate = median(&rates[i]);
        let per_record = match mode {
            Mode::Metrics => 1e6 / rate,
            Mode::Spans => 1e6 / rate * spans.spans / spans.records,
        };
        let unit = match mode {
            Mode::Metrics => "records/s",
            Mode::Spans => "spans/s",
        };
        report.push_str(&format!(
            "| {} | {rate:.0} {unit} | {per_record:.2} | {:.0} | {:.0}k / {:.0}k | {} |\n",
            mode.name(),
            instr[i],
            targets[i].0 / 1000.0,
            targets[i].1 / 1000.0,
            verdict(rate, targets[i])
        ));
    }
    report.push_str(&format!(
        "\nRaw rounds:\n\n| round | path | records | spans | CPU s | per core |\n|---|---|---|---|---|---|\n{raw}"
    ));
    println!("{report}");
    let command = format!(
        "cargo xtask bench pipeline --rounds {rounds} --seconds {seconds} --records {limit} \
         --callgrind-records {cg_records}"
    );
    record("Pipeline (recorded records replayed)", &command, &report)
}

/// Records up to `limit` http records of nginx under the request mix; returns wrk's requests.
fn record_traffic(bins: &Path, dir: &Path, rec: &Path, limit: u64) -> anyhow::Result<u64> {
    let _ = std::fs::remove_file(rec);
    let nginx = Nginx::with_locations(&dir.join("nginx"), LOCATIONS)?;
    let sink = otlp_sink()?;
    let endpoint = format!("http://127.0.0.1:{sink}");
    let rec_arg = rec.display().to_string();
    let limit_arg = limit.to_string();
    let agent = Running::start(
        &bins.join("tenantscope-agent"),
        &[
            "--record-http",
            &rec_arg,
            "--record-limit",
            &limit_arg,
            "--otlp-endpoint",
            &endpoint,
        ],
    )?;
    let script = util::workspace_root().join("xtask/bench/pipeline-mix.lua");
    let url = format!("http://127.0.0.1:{}/", nginx.port);
    let out = util::output(util::command(
        "taskset",
        &[
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c20",
            "-d6s",
            "-s",
            &script.display().to_string(),
            &url,
        ],
    ))?;
    // The agent drains its ring on a timer: let it catch up before the flush at stop.
    std::thread::sleep(Duration::from_secs(2));
    agent.stop()?;
    nginx.stop()?;
    out.lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))
}

/// Runs the replay and parses its `key=value` line.
fn run(replay: &Path, rec: &Path, args: &[&str]) -> anyhow::Result<Replayed> {
    let out = util::output(pinned(replay, rec, args))?;
    parse(&out).with_context(|| format!("unexpected replay output: {out}"))
}

fn pinned(replay: &Path, rec: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]).arg(replay).arg(rec).args(args);
    cmd
}

fn parse(out: &str) -> Option<Replayed> {
    let mut r = Replayed::default();
    for pair in out.split_whitespace() {
        let (k, v) = pair.split_once('=')?;
        let v: f64 = v.parse().ok()?;
        match k {
            "records" => r.records = v,
            "decode_errors" => r.decode_errors = v,
            "spans" => r.spans = v,
            "otlp_bytes" => r.otlp_bytes = v,
            "cpu_seconds" => r.cpu_seconds = v,
            _ => {}
        }
    }
    (r.records > 0.0 && r.cpu_seconds > 0.0).then_some(r)
}

/// Total instructions of one replay under callgrind.
fn callgrind(replay: &Path, rec: &Path, args: &[&str], dir: &Path) -> anyhow::Result<f64> {
    let out: PathBuf = dir.join("callgrind.out");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(replay)
        .arg(rec)
        .args(args);
    util::output(cmd)?;
    let text = std::fs::read_to_string(&out).with_context(|| out.display().to_string())?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no totals in {}", out.display()))
}
