//! `cargo xtask bench collector`: OTLP ingest capacity of `tenantscope-collector` per core.
//!
//! `ts-otlp-load` (CPU 0) sends OTLP/HTTP protobuf exports at a fixed offered rate, open loop,
//! to a collector started fresh for each measurement (default configuration, its own store in a
//! temporary directory, pinned to CPU 1). Traces and metrics are measured separately, the order
//! rotated every round. Per-core rate = the items the collector accepted (its own counters) /
//! its utime+stime over the load (`/proc/<pid>/stat`): the figure that does not depend on how
//! busy CPU 0 is. Drops are counted on both sides: exports that failed or were never sent (the
//! generator fell behind), items rejected in partial successes, and the collector's
//! `otlp_requests_total` outcomes other than `ok`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::bench::{cpu_ticks, flag, labeled_sum, median, record, release_bins, series_sum};
use crate::util;

/// Issue 7's targets, items per second per collector core: (goal, must pass).
const SPAN_TARGET: (f64, f64) = (160_000.0, 80_000.0);
const POINT_TARGET: (f64, f64) = (40_000.0, 20_000.0);
/// Items per export: the OpenTelemetry SDK's (and the agent's) span batch, and a node's worth
/// of SLI series in one metrics export.
const SPAN_BATCH: u64 = 512;
const POINT_BATCH: u64 = 500;
/// Unrecorded load before each measurement (store created, caches and allocator warm).
const WARMUP_S: u64 = 1;

const REQUESTS: &str = "tenantscope_collector_otlp_requests_total";
const POINTS: &str = "tenantscope_collector_otlp_data_points_total";
const SPANS: &str = "tenantscope_collector_otlp_spans_total ";
const EVIDENCE: &str = "tenantscope_collector_evidence_stored_total ";
/// `otlp_requests_total` outcomes (see collector/src/metrics.rs).
const OUTCOMES: [&str; 8] = [
    "ok",
    "duplicate",
    "unauthenticated",
    "forbidden",
    "too_large",
    "bad_request",
    "unsupported_media_type",
    "store_failed",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }

    fn target(self) -> (f64, f64) {
        match self {
            Signal::Traces => SPAN_TARGET,
            Signal::Metrics => POINT_TARGET,
        }
    }
}

/// One measurement: one signal against one fresh collector.
struct Run {
    signal: Signal,
    /// Items the collector counted as accepted (spans received, data points accepted).
    accepted: f64,
    /// Items the generator saw acknowledged (200, minus partial-success rejections).
    acknowledged: f64,
    /// Collector utime+stime over the load, seconds.
    cpu_s: f64,
    /// From the first due request to the last answer, seconds.
    elapsed_s: f64,
    kept_up: bool,
    lag_p99_ms: f64,
    latency_p99_ms: f64,
    /// Items in exports that failed (non-200, I/O) or were never sent, and items rejected.
    failed: f64,
    unsent_requests: f64,
    rejected: f64,
    /// Collector `otlp_requests_total` deltas for this signal, other than `ok`.
    not_ok: Vec<(&'static str, f64)>,
    /// Data points the collector rejected, by reason.
    rejected_by_reason: Vec<(String, f64)>,
    evidence: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    first_error: String,
}

impl Run {
    fn per_core(&self) -> f64 {
        self.accepted / self.cpu_s
    }

    fn core_share(&self) -> f64 {
        self.cpu_s / self.elapsed_s
    }

    fn drops(&self) -> f64 {
        self.failed + self.rejected
    }
}

/// What a run measures, from the command line.
struct Settings {
    rounds: usize,
    seconds: u64,
    span_rate: u64,
    point_rate: u64,
    connections: u64,
}

impl Settings {
    fn rate(&self, signal: Signal) -> u64 {
        match signal {
            Signal::Traces => self.span_rate,
            Signal::Metrics => self.point_rate,
        }
    }
}

pub(crate) fn collector(args: &[String]) -> anyhow::Result<()> {
    let set = Settings {
        rounds: flag(args, "--rounds", 5)? as usize,
        seconds: flag(args, "--seconds", 10)?,
        span_rate: flag(args, "--span-rate", SPAN_TARGET.0 as u64)?,
        point_rate: flag(args, "--point-rate", POINT_TARGET.0 as u64)?,
        connections: flag(args, "--connections", 16)?,
    };
    if set.rounds == 0
        || set.seconds == 0
        || set.span_rate == 0
        || set.point_rate == 0
        || set.connections == 0
    {
        bail!("--rounds, --seconds, --span-rate, --point-rate and --connections must be >= 1");
    }
    if util::which("taskset").is_none() {
        bail!("taskset (util-linux) not found on PATH");
    }
    let release = release_bins()?;
    let (bin, load) = (
        release.join("tenantscope-collector"),
        release.join("ts-otlp-load"),
    );
    // xtask (scrapes) stays off the collector's CPU, with the load generator; its own CPUs are
    // given back before the entry is recorded (which counts them).
    let pid = std::process::id().to_string();
    let cpus = util::output(util::command("taskset", &["-p", "-c", &pid]))?;
    let cpus = cpus
        .rsplit_once(':')
        .map(|(_, list)| list.trim().to_owned())
        .context("taskset -p -c: no CPU list")?;
    util::output(util::command("taskset", &["-a", "-p", "-c", "0", &pid]))?;
    let runs = measure_all(&bin, &load, &set);
    util::output(util::command("taskset", &["-a", "-p", "-c", &cpus, &pid]))?;
    let runs = runs?;

    let report = report(&runs, &set);
    println!("{report}");
    let out = util::target_dir()?.join("bench").join("collector.md");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    std::fs::write(&out, &report)?;
    eprintln!("bench collector: written to {}", out.display());
    let command = std::iter::once("cargo xtask bench collector".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    record("Collector ingest", &command, &report)
}

/// Every round: traces and metrics, each against a fresh collector, the order rotated.
fn measure_all(bin: &Path, load: &Path, set: &Settings) -> anyhow::Result<Vec<Run>> {
    let clk_tck: f64 = util::output(util::command("getconf", &["CLK_TCK"]))?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..set.rounds {
        let order = if round % 2 == 0 {
            [Signal::Traces, Signal::Metrics]
        } else {
            [Signal::Metrics, Signal::Traces]
        };
        let mut line = Vec::new();
        for signal in order {
            let load = Load {
                bin: load,
                signal,
                rate: set.rate(signal),
                connections: set.connections,
            };
            let run = measure(bin, &load, set.seconds, clk_tck, round)?;
            line.push(format!(
                "{} {:.0}/s per core ({:.0}% of a core, {:.0} accepted, {:.0} dropped{})",
                signal.name(),
                run.per_core(),
                run.core_share() * 100.0,
                run.accepted,
                run.drops(),
                if run.kept_up { "" } else { ", fell behind" }
            ));
            runs.push(run);
        }
        eprintln!(
            "bench collector: round {}/{}: {}",
            round + 1,
            set.rounds,
            line.join("; ")
        );
    }
    Ok(runs)
}

/// How `ts-otlp-load` is run.
struct Load<'a> {
    bin: &'a Path,
    signal: Signal,
    rate: u64,
    connections: u64,
}

impl Load<'_> {
    /// Runs the generator against `port` for `seconds`; its JSON summary line.
    fn run(&self, port: u16, seconds: u64) -> anyhow::Result<String> {
        let batch = match self.signal {
            Signal::Traces => SPAN_BATCH,
            Signal::Metrics => POINT_BATCH,
        };
        util::output(util::command(
            &self.bin.display().to_string(),
            &[
                "--endpoint",
                &format!("127.0.0.1:{port}"),
                "--signal",
                self.signal.name(),
                "--rate",
                &self.rate.to_string(),
                "--batch",
                &batch.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--connections",
                &self.connections.to_string(),
                "--cpu",
                "0",
            ],
        ))
    }
}

fn measure(
    bin: &Path,
    load: &Load<'_>,
    seconds: u64,
    clk_tck: f64,
    round: usize,
) -> anyhow::Result<Run> {
    let dir = std::env::temp_dir().join(format!(
        "ts-bench-collector-{}-{round}-{}",
        std::process::id(),
        load.signal.name()
    ));
    let collector = Collector::start(bin, &dir)?;
    load.run(collector.http, WARMUP_S).context("warm-up load")?;
    let before = collector.scrape()?;
    let ticks = cpu_ticks(collector.pid())?;
    let out = load.run(collector.http, seconds);
    let ticks = cpu_ticks(collector.pid())? - ticks;
    let out = out.with_context(|| format!("load; collector log:\n{}", collector.log_tail()))?;
    let after = collector.scrape()?;
    let (rss_mib, peak_rss_mib) = collector.rss_mib();
    collector.stop()?;

    let num = |name: &str| {
        json_field(&out, name)?
            .parse::<f64>()
            .with_context(|| format!("{name} in {out}"))
    };
    let delta =
        |f: &dyn Fn(&str) -> Option<f64>| f(&after).unwrap_or(0.0) - f(&before).unwrap_or(0.0);
    let signal = load.signal;
    let accepted = match signal {
        Signal::Traces => delta(&|m| series_sum(m, SPANS)),
        Signal::Metrics => delta(&|m| labeled_sum(m, POINTS, &[("outcome", "accepted")])),
    };
    let not_ok = OUTCOMES[1..]
        .iter()
        .map(|&o| {
            (
                o,
                delta(&|m| labeled_sum(m, REQUESTS, &[("signal", signal.name()), ("outcome", o)])),
            )
        })
        .filter(|(_, n)| *n != 0.0)
        .collect();
    let rejected_by_reason = rejection_reasons(&after)
        .into_iter()
        .map(|r| {
            let n = delta(&|m| {
                labeled_sum(
                    m,
                    POINTS,
                    &[("outcome", "rejected"), ("reason", r.as_str())],
                )
            });
            (r, n)
        })
        .filter(|(_, n)| *n != 0.0)
        .collect();
    let batch = match signal {
        Signal::Traces => SPAN_BATCH,
        Signal::Metrics => POINT_BATCH,
    } as f64;
    let unsent_requests = num("requests_unsent")?;
    Ok(Run {
        signal,
        accepted,
        acknowledged: num("items_accepted")?,
        cpu_s: ticks as f64 / clk_tck,
        elapsed_s: num("elapsed_s")?,
        kept_up: json_field(&out, "kept_up")? == "true",
        lag_p99_ms: num("lag_p99_ms")?,
        latency_p99_ms: num("latency_p99_ms")?,
        failed: num("items_failed")? + unsent_requests * batch,
        unsent_requests,
        rejected: num("items_rejected")?,
        not_ok,
        rejected_by_reason,
        evidence: delta(&|m| series_sum(m, EVIDENCE)),
        rss_mib,
        peak_rss_mib,
        first_error: json_field(&out, "first_error")?
            .trim_matches('"')
            .to_owned(),
    })
}

/// The `reason` label values of rejected data points in a scrape.
fn rejection_reasons(metrics: &str) -> Vec<String> {
    let mut reasons: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with(POINTS) && l.contains("outcome=\"rejected\""))
        .filter_map(|l| {
            let rest = &l[l.find("reason=\"")? + 8..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    reasons
}

/// The raw value of `"name":` in a flat JSON object (numbers, booleans, strings without escapes).
fn json_field<'a>(json: &'a str, name: &str) -> anyhow::Result<&'a str> {
    let needle = format!("\"{name}\":");
    let rest = &json[json
        .find(&needle)
        .with_context(|| format!("no {name} in {json:?}"))?
        + needle.len()..];
    let end = if let Some(s) = rest.strip_prefix('"') {
        s.find('"').map_or(rest.len(), |e| e + 2)
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Ok(rest[..end].trim())
}

fn report(runs: &[Run], set: &Settings) -> String {
    let Settings {
        rounds,
        seconds,
        span_rate,
        point_rate,
        connections,
    } = set;
    let mut r = format!(
        "`ts-otlp-load` (pinned to CPU 0, with xtask) sends OTLP/HTTP protobuf exports over \
         {connections} keep-alive connections, open loop at a fixed offered rate, to a \
         `tenantscope-collector` started fresh for each measurement (default configuration: \
         SQLite store in WAL mode with `synchronous = FULL`, in a new temporary directory; \
         pinned to CPU 1): traces at {span_rate} spans/s in exports of {SPAN_BATCH} spans \
         (4 services, 1,000 tenants, two in three server spans, 1% 503 and 1% 900 ms, so \
         evidence is kept), metrics at {point_rate} data points/s in exports of {POINT_BATCH} \
         `http.server.request.duration` delta points (statuses 200 and 503 per tenant and route, \
         1,000 tenants x 20 routes, so one stored row per two points). {seconds} s per \
         measurement after {WARMUP_S} s of unrecorded warm-up; {rounds} rounds, the two signals \
         interleaved with the order rotated. Per core = items the collector accepted (its \
         `otlp_spans_total`, `otlp_data_points_total{{outcome=\"accepted\"}}`) / its \
         utime+stime over the load.\n\n\
         | signal | offered /s | per core /s (median) | collector CPU, share of one core \
         (median) | target per core: goal / must pass | result | drops (all rounds) | kept up \
         (rounds) | RSS MiB at the end (median) / peak (max) |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for signal in [Signal::Traces, Signal::Metrics] {
        let v: Vec<&Run> = runs.iter().filter(|x| x.signal == signal).collect();
        let col = |f: fn(&Run) -> f64| v.iter().map(|x| f(x)).collect::<Vec<f64>>();
        let per_core = median(&col(Run::per_core));
        let (goal, must) = signal.target();
        let result = if per_core >= goal {
            "goal met"
        } else if per_core >= must {
            "must-pass met, goal missed"
        } else {
            "MISSED"
        };
        let peak = col(|x| x.peak_rss_mib).into_iter().fold(0.0, f64::max);
        r.push_str(&format!(
            "| {} | {} {} | {:.0} | {:.0}% | {:.0}k / {:.0}k | {result} | {:.0} | {}/{} | {:.1} / {peak:.1} |\n",
            signal.name(),
            set.rate(signal),
            signal.items(),
            per_core,
            median(&col(Run::core_share)) * 100.0,
            goal / 1e3,
            must / 1e3,
            col(Run::drops).iter().sum::<f64>(),
            v.iter().filter(|x| x.kept_up).count(),
            v.len(),
            median(&col(|x| x.rss_mib)),
        ));
    }
    r.push_str(
        "\nRaw rounds (drops = items in failed or unsent exports + items rejected in partial \
         successes; kept up = every export sent, p99 lateness against the schedule <= 50 ms):\n\n\
         | round | signal | accepted (collector) | acknowledged (generator) | collector CPU s | \
         per core /s | share of a core | kept up | lag p99 ms | answer p99 ms | drops | other \
         outcomes | evidence stored | RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, x) in runs.iter().enumerate() {
        let mut other: Vec<String> = x
            .not_ok
            .iter()
            .map(|(o, n)| format!("{o} {n:.0}"))
            .chain(
                x.rejected_by_reason
                    .iter()
                    .map(|(why, n)| format!("rejected {why} {n:.0}")),
            )
            .collect();
        if x.unsent_requests > 0.0 {
            other.push(format!("unsent exports {:.0}", x.unsent_requests));
        }
        if !x.first_error.is_empty() {
            other.push(format!("first error: {}", x.first_error.replace('|', "/")));
        }
        r.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0}% | {} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.1} |\n",
            i / 2 + 1,
            x.signal.name(),
            x.accepted,
            x.acknowledged,
            x.cpu_s,
            x.per_core(),
            x.core_share() * 100.0,
            if x.kept_up { "yes" } else { "no" },
            x.lag_p99_ms,
            x.latency_p99_ms,
            x.drops(),
            if other.is_empty() {
                "-".to_owned()
            } else {
                other.join(", ")
            },
            x.evidence,
            x.rss_mib,
        ));
    }
    r
}

/// A collector for one measurement: free loopback ports, its store, config and log in `dir`,
/// pinned to CPU 1. Killed (and `dir` removed) on drop.
struct Collector {
    child: Child,
    http: u16,
    api: u16,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Collector {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Collector> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let (grpc, http, api) = (free_port()?, free_port()?, free_port()?);
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\notlp_grpc = \"127.0.0.1:{grpc}\"\notlp_http = \"127.0.0.1:{http}\"\n\
                 api = \"127.0.0.1:{api}\"\n\n[storage]\npath = \"{}\"\n",
                dir.join("collector.db").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("collector.log"))?;
        let child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tenantscope-collector (taskset from util-linux)")?;
        let mut c = Collector {
            child,
            http,
            api,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.child.try_wait()? {
                bail!("the collector exited with {status}:\n{}", c.log_tail());
            }
            if crate::bench::get(api, "/readyz").is_ok_and(|r| ok_status(&r)) {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("the collector was not ready after 20 s:\n{}", c.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process (taskset execs it).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The body of `/metrics`.
    fn scrape(&self) -> anyhow::Result<String> {
        let r = crate::bench::get(self.api, "/metrics")?;
        let (head, body) = r
            .split_once("\r\n\r\n")
            .context("malformed /metrics response")?;
        if !ok_status(head) {
            bail!("/metrics: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_owned())
    }

    /// `VmRSS` and `VmHWM`, MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("the collector exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        crate::bench::terminate(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok_status(response: &str) -> bool {
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}
