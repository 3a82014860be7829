//! `cargo xtask bench <probe> [args...]`: per-probe benchmarks, measured the way
//! `shared/docs/performance.md` prescribes: configurations interleaved in one run over several
//! rounds with the order rotated, minimum of repeated tight loops per measurement, median of the
//! per-round differences.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;

pub fn bench(probe: String, args: Vec<String>) -> anyhow::Result<()> {
    match probe.as_str() {
        "syscalls" => syscalls(&args),
        "tcp" => tcp(&args),
        "overhead" | "http" => crate::bench_overhead::overhead(&args),
        "memory" => crate::bench_memory::memory(&args),
        "collector" => crate::bench_collector::collector(&args),
        "pipeline" => crate::bench_pipeline::pipeline(&args),
        other => bail!(
            "bench {other}: unknown benchmark (available: syscalls, tcp, overhead (alias http), \
             memory, collector, pipeline)"
        ),
    }
}

/// Builds the agent, the collector and the load generators (release); returns their directory.
pub(crate) fn release_bins() -> anyhow::Result<PathBuf> {
    util::run(util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "tenantscope-agent",
        "-p",
        "tenantscope-collector",
        "-p",
        "tenantscope-tests",
        "--bins",
        // In the same build: an example alone unifies features differently (dev-dependencies)
        // and would rebuild every dependency, then the next bench would rebuild them back.
        "--example",
        "pipeline",
    ]))?;
    Ok(util::target_dir()?.join("release"))
}

pub(crate) fn flag(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// Hook configurations compared, `None` meaning no agent running.
const CONFIGS: [(&str, Option<&str>); 3] = [
    ("no agent", None),
    ("raw tracepoint", Some("raw-tracepoint")),
    ("classic tracepoint", Some("tracepoint")),
];

/// Per-syscall cost of the `syscalls` probe: a tight getppid loop (minimum over 7 repetitions of
/// `--calls` calls) with no agent, with the raw-tracepoint hook and with the classic-tracepoint
/// hook, interleaved over `--rounds` rounds.
fn syscalls(args: &[String]) -> anyhow::Result<()> {
    let rounds = flag(args, "--rounds", 7)? as usize;
    let calls = flag(args, "--calls", 1_000_000)?;
    let release = release_bins()?;
    let (agent, load) = (
        release.join("tenantscope-agent"),
        release.join("ts-syscall-load"),
    );

    // ns per call, [config][round]
    let mut ns = vec![Vec::new(); CONFIGS.len()];
    let mut rss_kib = Vec::new();
    for round in 0..rounds {
        for k in 0..CONFIGS.len() {
            let c = (k + round) % CONFIGS.len();
            let (_, hook) = CONFIGS[c];
            let running = hook
                .map(|h| Running::start(&agent, &["--syscall-hook", h]))
                .transpose()?;
            let v = measure(&load, calls)?;
            if let Some(r) = running {
                rss_kib.push(r.rss_kib());
                r.stop()?;
            }
            ns[c].push(v);
        }
        eprintln!(
            "bench syscalls: round {}/{rounds}: {}",
            round + 1,
            CONFIGS
                .iter()
                .zip(&ns)
                .map(|((n, _), v)| format!("{n} {:.1} ns", v[round]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let base = &ns[0];
    let mut report = String::new();
    report.push_str(&format!(
        "| configuration | ns per getppid (median of {rounds} rounds) | added ns per syscall (median of per-round differences) | ratio to no agent |\n|---|---|---|---|\n"
    ));
    for (c, (name, _)) in CONFIGS.iter().enumerate() {
        let added: Vec<f64> = ns[c].iter().zip(base).map(|(a, b)| a - b).collect();
        let ratio: Vec<f64> = ns[c].iter().zip(base).map(|(a, b)| a / b).collect();
        report.push_str(&format!(
            "| {name} | {:.1} | {:+.1} | {:.2}x |\n",
            median(&ns[c]),
            median(&added),
            median(&ratio)
        ));
    }
    let rss = median(&rss_kib.iter().map(|&k| k as f64).collect::<Vec<_>>());
    report.push_str(&format!(
        "\nAgent RSS while measured (median): {:.1} MiB\n",
        rss / 1024.0
    ));
    println!("{report}");
    let out = util::target_dir()?.join("bench").join("syscalls.md");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    std::fs::write(&out, &report)?;
    eprintln!("bench syscalls: written to {}", out.display());
    Ok(())
}

/// TCP configurations compared: `None` is no agent, else the agent's extra arguments.
const TCP_CONFIGS: [(&str, Option<&[&str]>); 3] = [
    ("no agent", None),
    ("agent (default probes)", Some(&[])),
    (
        "agent, syscalls probe disabled",
        Some(&["--disable-probe", "syscalls"]),
    ),
];

/// One measurement of the TCP loop.
#[derive(Clone, Copy)]
struct TcpRun {
    /// Wall-clock ns per connection (fastest repetition).
    ns: f64,
    /// Thread CPU ns per connection (fastest repetition).
    cpu_ns: f64,
    /// `tenantscope_agent_events_total{probe="tcp"}` delta per connection (NaN without agent or
    /// when the agent exports no such series).
    events: f64,
}

/// Per-connection cost of the `tcp` probe: `ts-tcp-client --loop` (connect, accept, one byte each
/// way, close both, in one thread pinned to CPU 1, in a private network namespace on 127.0.0.1;
/// fastest of `--reps` repetitions of `--conns` connections) with no agent, with the default
/// agent and with the agent minus its syscalls probe, interleaved over `--rounds` rounds.
fn tcp(args: &[String]) -> anyhow::Result<()> {
    let rounds = flag(args, "--rounds", 7)? as usize;
    let conns = flag(args, "--conns", 20_000)?;
    let reps = flag(args, "--reps", 5)?.max(5);
    let release = release_bins()?;
    let (agent, load) = (
        release.join("tenantscope-agent"),
        release.join("ts-tcp-client"),
    );

    // [config][round]
    let mut runs: Vec<Vec<TcpRun>> = vec![Vec::new(); TCP_CONFIGS.len()];
    let mut rss_kib = Vec::new();
    let mut missing_events = false;
    let mut ringbuf_drops = 0.0;
    for round in 0..rounds {
        for k in 0..TCP_CONFIGS.len() {
            let c = (k + round) % TCP_CONFIGS.len();
            let (name, agent_args) = TCP_CONFIGS[c];
            let running = agent_args.map(|a| Running::start(&agent, a)).transpose()?;
            let before = running.as_ref().map(|r| r.scrape()).transpose()?;
            let (ns, cpu_ns) = measure_tcp(&load, conns, reps)?;
            let mut events = f64::NAN;
            if let (Some(r), Some(before)) = (running.as_ref(), before) {
                let after = r.settled_scrape(|m| series_sum(m, TCP_EVENTS))?;
                if series_sum(&after, TCP_PROBE_ATTACHED) != Some(1.0) {
                    bail!("{name}: the agent's tcp probe is not attached");
                }
                // A counter appears with its first event, so absent before means 0.
                let b = series_sum(&before, TCP_EVENTS).unwrap_or(0.0);
                match series_sum(&after, TCP_EVENTS) {
                    Some(a) => events = (a - b) / (conns * reps) as f64,
                    None => {
                        if !missing_events {
                            eprintln!("bench tcp: {name}: no {TCP_EVENTS}..}} series in /metrics");
                        }
                        missing_events = true;
                    }
                }
                let drops = series_sum(&after, TCP_DROPS).unwrap_or(0.0)
                    - series_sum(&before, TCP_DROPS).unwrap_or(0.0);
                ringbuf_drops += drops;
            }
            if let Some(r) = running {
                rss_kib.push(r.rss_kib());
                r.stop()?;
            }
            runs[c].push(TcpRun { ns, cpu_ns, events });
        }
        eprintln!(
            "bench tcp: round {}/{rounds}: {}",
            round + 1,
            TCP_CONFIGS
                .iter()
                .zip(&runs)
                .map(|((n, _), v)| format!(
                    "{n} {:.0} ns ({:.0} ns CPU, {:.2} events)/conn",
                    v[round].ns, v[round].cpu_ns, v[round].events
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let base: Vec<f64> = runs[0].iter().map(|r| r.ns).collect();
    let base_cpu: Vec<f64> = runs[0].iter().map(|r| r.cpu_ns).collect();
    let mut report = format!(
        "`ts-tcp-client --loop {conns}`: connect + accept + 1 byte each way + close both, one \
         thread on CPU 1, 127.0.0.1 in a private network namespace, agent pinned to CPU 0; fastest \
         of {reps} repetitions per measurement, {rounds} rounds with the configuration order \
         rotated.\n\n\
         | configuration | ns per connection (median) | CPU ns per connection (median) | added ns \
         (median of per-round differences) | ratio to no agent (median of per-round ratios) | CPU \
         ratio | tcp events per connection (median) |\n|---|---|---|---|---|---|---|\n"
    );
    for (c, (name, agent_args)) in TCP_CONFIGS.iter().enumerate() {
        let ns: Vec<f64> = runs[c].iter().map(|r| r.ns).collect();
        let cpu: Vec<f64> = runs[c].iter().map(|r| r.cpu_ns).collect();
        let added: Vec<f64> = ns.iter().zip(&base).map(|(a, b)| a - b).collect();
        let ratio: Vec<f64> = ns.iter().zip(&base).map(|(a, b)| a / b).collect();
        let cpu_ratio: Vec<f64> = cpu.iter().zip(&base_cpu).map(|(a, b)| a / b).collect();
        let events: Vec<f64> = runs[c]
            .iter()
            .map(|r| r.events)
            .filter(|e| !e.is_nan())
            .collect();
        let events = match (agent_args, events.is_empty()) {
            (None, _) => "-".to_owned(),
            (Some(_), true) => "missing".to_owned(),
            (Some(_), false) => format!("{:.2}", median(&events)),
        };
        report.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:+.0} | {:.3}x | {:.3}x | {events} |\n",
            median(&ns),
            median(&cpu),
            median(&added),
            median(&ratio),
            median(&cpu_ratio),
        ));
    }
    let rss = median(&rss_kib.iter().map(|&k| k as f64).collect::<Vec<_>>());
    report.push_str(&format!(
        "\nAgent RSS while measured (median): {:.1} MiB\n\nEvents per connection: the delta of \
         `tenantscope_agent_events_total{{probe=\"tcp\"}}` (all kinds) over the measurement, divided \
         by the loop's connections. Each connection has two sockets (client and accepted server \
         side); other traffic on the machine (including the scrapes) adds noise.\n\nTCP ring-buffer \
         events dropped during the measurements (all rounds): {ringbuf_drops}\n",
        rss / 1024.0
    ));
    println!("{report}");
    let out = util::target_dir()?.join("bench").join("tcp.md");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    std::fs::write(&out, &report)?;
    eprintln!("bench tcp: written to {}", out.display());
    Ok(())
}

/// Runs the loop once; `(wall ns, CPU ns)` per connection, each the fastest repetition.
fn measure_tcp(load: &Path, conns: u64, reps: u64) -> anyhow::Result<(f64, f64)> {
    let out = util::output(util::command(
        &load.display().to_string(),
        &[
            "--loop",
            &conns.to_string(),
            "--reps",
            &reps.to_string(),
            "--cpu",
            "1",
            "--private-netns",
        ],
    ))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let needle = format!("\"{name}\":");
        let rest = &out[out
            .find(&needle)
            .with_context(|| format!("no {name} in {out:?}"))?
            + needle.len()..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end]
            .trim()
            .parse()
            .with_context(|| format!("ts-tcp-client printed {out:?}"))
    };
    Ok((field("ns_per_conn")?, field("cpu_ns_per_conn")?))
}

/// Series prefixes summed by [`series_sum`].
const TCP_EVENTS: &str = "tenantscope_agent_events_total{probe=\"tcp\"";
const TCP_DROPS: &str = "tenantscope_agent_ringbuf_dropped_events_total{probe=\"tcp\"";
const TCP_PROBE_ATTACHED: &str = "tenantscope_agent_probe_status{probe=\"tcp\",status=\"attached\"";

/// Sum of the samples whose line starts with `prefix` (a name and its first labels, exactly as
/// the agent orders them); `None` when there is none.
pub(crate) fn series_sum(metrics: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// utime+stime of a process (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which ends at the last ')': state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Sum of the samples of metric `name` (no suffix added) whose labels include all of `labels`.
pub(crate) fn labeled_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter(|(set, _)| {
            labels.iter().all(|(k, v)| {
                let pair = format!("{k}=\"{v}\"");
                set.split(',').any(|p| p == pair)
            })
        })
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// SIGTERM, then SIGKILL after `grace`; the exit status.
pub(crate) fn terminate(
    child: &mut Child,
    grace: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Ok(child.wait()?)
}

/// One `GET path HTTP/1.0` to 127.0.0.1:port; the whole response.
pub(crate) fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut r = Vec::new();
    s.read_to_end(&mut r)?;
    Ok(String::from_utf8_lossy(&r).into_owned())
}

/// A stand-in OTLP/HTTP collector on a free port of 127.0.0.1: reads each request, discards
/// the body and answers 200 with an empty `ExportTraceServiceResponse`. Its threads live until
/// xtask exits.
pub(crate) fn otlp_sink() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_otlp(conn));
        }
    });
    Ok(port)
}

/// Serves one keep-alive connection of [`otlp_sink`] until the client closes it.
fn serve_otlp(conn: TcpStream) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        // Request line and headers.
        let (mut length, mut chunked, mut first) = (0u64, false, true);
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let size = line.trim().split(';').next().unwrap_or("0");
                let size = u64::from_str_radix(size, 16).unwrap_or(0);
                if size == 0 {
                    // Trailers up to the empty line.
                    loop {
                        line.clear();
                        if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                std::io::copy(&mut (&mut r).take(size + 2), &mut std::io::sink())?;
            }
        } else {
            std::io::copy(&mut (&mut r).take(length), &mut std::io::sink())?;
        }
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
}

fn measure(load: &Path, calls: u64) -> anyhow::Result<f64> {
    let out = util::output(util::command(
        &load.display().to_string(),
        &["--time", &calls.to_string(), "--rounds", "7", "--cpu", "1"],
    ))?;
    out.trim()
        .parse()
        .with_context(|| format!("ts-syscall-load printed {out:?}"))
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// An agent started for one measurement, pinned away from the measuring CPU.
pub(crate) struct Running {
    child: Child,
    port: u16,
}

impl Running {
    pub(crate) fn start(bin: &PathBuf, args: &[&str]) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the agent (taskset from util-linux)")?;
        let running = Running { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(port) {
            if Instant::now() > deadline {
                bail!("agent with {args:?} not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(running)
    }

    /// The body of `/metrics` (classic text format).
    pub(crate) fn scrape(&self) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        let (head, body) = r
            .split_once("\r\n\r\n")
            .context("malformed /metrics response")?;
        if !head.contains(" 200") {
            bail!("/metrics: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_owned())
    }

    /// Scrapes until `value` stops changing between two scrapes 500 ms apart (the agent drains
    /// its ring buffers asynchronously), for at most 10 s; returns the last scrape.
    fn settled_scrape(&self, value: impl Fn(&str) -> Option<f64>) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.scrape()?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let next = self.scrape()?;
            if value(&next) == value(&last) || Instant::now() > deadline {
                return Ok(next);
            }
            last = next;
        }
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        util::run(util::command(
            "kill",
            &["-TERM", &self.child.id().to_string()],
        ))?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("agent exited with {status}");
        }
        Ok(())
    }
}

/// An agent left running by an error path is stopped too.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = util::output(util::command(
                "kill",
                &["-TERM", &self.child.id().to_string()],
            ));
            let _ = self.child.wait();
        }
    }
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200")
}

/// Appends a dated entry to docs/benchmarks.md: the machine, the kernel, the command and the
/// harness's report (raw rounds and medians), under a heading naming the benchmark.
pub(crate) fn record(title: &str, command: &str, report: &str) -> anyhow::Result<()> {
    let out = |cmd: &str, args: &[&str]| {
        util::output(util::command(cmd, args))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let entry = format!(
        "\n### {title}: run of {}\n\n```\n{command}\n```\n\n{} CPUs ({cpu}), kernel {}, commit {}.\n\n{}\n",
        out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        out("nproc", &["--all"]),
        out("uname", &["-r"]),
        out("git", &["rev-parse", "--short", "HEAD"]),
        report.trim_end()
    );
    let path = util::workspace_root().join("docs/benchmarks.md");
    let mut text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    if !text.contains(RECORDED) {
        text.push_str(&format!(
            "\n{RECORDED}\n\nEvery `cargo xtask bench` run appends its entry here, newest last.\n"
        ));
    }
    text.push_str(&entry);
    std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    eprintln!("recorded in {}", path.display());
    Ok(())
}

/// The heading recorded runs go under, at the end of docs/benchmarks.md.
const RECORDED: &str = "## Recorded runs";
