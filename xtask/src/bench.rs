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
        "http" => http(&args),
        "memory" => crate::bench_memory::memory(&args),
        "collector" => crate::bench_collector::collector(&args),
        other => bail!(
            "bench {other}: unknown probe (available: syscalls, tcp, http, memory, collector)"
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

/// HTTP configurations compared: `None` is no agent, else the agent's extra arguments (besides
/// the span settings, which all agent configurations share).
const HTTP_CONFIGS: [(&str, Option<&[&str]>); 4] = [
    ("no agent", None),
    ("agent (default probes)", Some(&[])),
    (
        "agent, syscalls probe disabled (tcp+http+process)",
        Some(&["--disable-probe", "syscalls"]),
    ),
    (
        "agent, http probe disabled (syscalls+tcp+process)",
        Some(&["--disable-probe", "http"]),
    ),
];

/// Series read by the http bench (prefixes for [`series_sum`]).
const HTTP_EVENTS: &str = "tenantscope_agent_events_total{probe=\"http\",kind=\"exchange\"";
const HTTP_DROPS: &str = "tenantscope_agent_ringbuf_dropped_events_total{probe=\"http\"";
const HTTP_PROBE_ATTACHED: &str =
    "tenantscope_agent_probe_status{probe=\"http\",status=\"attached\"";
const SPANS: &str = "tenantscope_agent_spans_total{";
const SPAN_QUEUE: &str = "tenantscope_agent_span_queue_length";
const SPAN_OUTCOMES: [&str; 4] = [
    "exported",
    "dropped_queue_full",
    "dropped_export_failed",
    "not_sampled",
];
/// nginx's requests as the agent counts them (server side), and wrk's (client side).
const NGINX_REQUESTS: &str = "http_server_request_duration_seconds_count";
const WRK_REQUESTS: &str = "http_client_request_duration_seconds_count";

/// One wrk run against nginx.
#[derive(Clone)]
struct HttpRun {
    /// wrk's Requests/sec.
    rps: f64,
    /// Requests wrk completed.
    requests: f64,
    /// nginx utime+stime over the wrk run, µs per request.
    server_us: f64,
    /// The agent's utime+stime over the wrk run, µs per request (NaN without agent).
    agent_us: f64,
    /// Delta of the http exchange events per request (NaN without agent or http probe).
    events: f64,
    /// Delta of nginx's acme requests as the agent counts them, per request (NaN likewise).
    nginx_counted: f64,
    /// Delta of the http ring-buffer drops.
    drops: f64,
    /// Delta of `tenantscope_agent_spans_total` per outcome, in [`SPAN_OUTCOMES`] order.
    spans: [f64; 4],
    /// Agent RSS after the run, KiB (NaN without agent).
    rss_kib: f64,
}

/// Server cost of the `http` probe: one nginx (single process, 1 KiB static file, CPU 1) for
/// the whole run, loaded by `wrk -t1 -c<connections> -d<seconds>s` with `X-Tenant-ID: acme`
/// (CPU 0); per measurement wrk's requests/s and nginx's CPU time per request, with no agent,
/// the default agent, the agent minus its syscalls probe and the agent minus its http probe
/// (fresh, on CPU 0), interleaved over `--rounds` rounds with the order rotated.
///
/// `--spans sink` (default) exports the spans over OTLP/HTTP to a stand-in collector inside
/// xtask that discards them; `--spans refused` to a port where nothing listens (every export
/// fails; each agent then takes the export timeout, 10 s, to stop); `--spans off` turns the
/// spans off with `[otlp] enabled = false`.
fn http(args: &[String]) -> anyhow::Result<()> {
    let rounds = flag(args, "--rounds", 7)? as usize;
    let seconds = flag(args, "--seconds", 10)?;
    let connections = flag(args, "--connections", 50)?;
    let spans_mode = match args.iter().position(|a| a == "--spans") {
        Some(i) => args.get(i + 1).context("--spans needs a value")?.as_str(),
        None => "sink",
    };
    if rounds == 0 || seconds == 0 || connections == 0 {
        bail!("--rounds, --seconds and --connections must be at least 1");
    }
    for tool in ["nginx", "wrk", "taskset"] {
        if util::which(tool).is_none() {
            bail!("{tool} not found on PATH (`cargo xtask setup` installs nginx-light and wrk)");
        }
    }
    let agent = release_bins()?.join("tenantscope-agent");
    let target = util::target_dir()?;
    let clk_tck: f64 = util::output(util::command("getconf", &["CLK_TCK"]))?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    // xtask itself (scrapes, the OTLP sink's threads) stays off nginx's CPU; threads started
    // from now on inherit this.
    util::output(util::command(
        "taskset",
        &["-a", "-p", "-c", "0", &std::process::id().to_string()],
    ))?;

    let dir = std::env::temp_dir().join(format!("ts-bench-http-{}", std::process::id()));
    let nginx = Nginx::start(&dir)?;
    let url = format!("http://127.0.0.1:{}/1k.bin", nginx.port);

    let mut agent_args: Vec<String> = Vec::new();
    let spans_note = match spans_mode {
        "sink" => {
            let port = otlp_sink()?;
            agent_args.extend([
                "--otlp-protocol".to_owned(),
                "http/protobuf".to_owned(),
                "--otlp-endpoint".to_owned(),
                format!("http://127.0.0.1:{port}"),
            ]);
            "spans on (default sampling) and exported over OTLP/HTTP (`--otlp-protocol \
             http/protobuf --otlp-endpoint http://127.0.0.1:<port>`) to a stand-in collector \
             inside xtask (CPU 0) that reads and discards them and answers 200"
        }
        "refused" => {
            agent_args.extend(
                [
                    "--otlp-protocol",
                    "http/protobuf",
                    "--otlp-endpoint",
                    "http://127.0.0.1:9",
                ]
                .map(str::to_owned),
            );
            "spans on, exported to `http://127.0.0.1:9` (http/protobuf) where nothing listens: \
             every export fails"
        }
        "off" => {
            let file = dir.join("agent.toml");
            std::fs::write(&file, "[otlp]\nenabled = false\n")?;
            agent_args.extend(["-c".to_owned(), file.display().to_string()]);
            "spans off: every agent configuration runs with `-c agent.toml` holding \
             `[otlp]\\nenabled = false` (otherwise the defaults)"
        }
        other => bail!("--spans {other}: expected sink, refused or off"),
    };

    // Warm-up (not recorded): nginx's caches, the page cache, the loopback path.
    wrk(&url, connections, 2)?;

    // [config][round]
    let mut runs: Vec<Vec<HttpRun>> = vec![Vec::new(); HTTP_CONFIGS.len()];
    for round in 0..rounds {
        for k in 0..HTTP_CONFIGS.len() {
            let c = (k + round) % HTTP_CONFIGS.len();
            let (name, extra) = HTTP_CONFIGS[c];
            let running = extra
                .map(|extra| {
                    let all: Vec<&str> = agent_args
                        .iter()
                        .map(String::as_str)
                        .chain(extra.iter().copied())
                        .collect();
                    Running::start(&agent, &all)
                })
                .transpose()?;
            let http_on = extra.is_some_and(|e| !e.contains(&"http"));
            let before = running.as_ref().map(|r| r.scrape()).transpose()?;
            let agent_pid = running.as_ref().map(|r| r.child.id());
            let agent_ticks = agent_pid.map(cpu_ticks).transpose()?;
            let server_ticks = cpu_ticks(nginx.pid())?;
            let out = wrk(&url, connections, seconds)?;
            let ended = Instant::now();
            let server_ticks = cpu_ticks(nginx.pid())? - server_ticks;
            let agent_ticks = match (agent_pid, agent_ticks) {
                (Some(pid), Some(t)) => Some(cpu_ticks(pid)? - t),
                _ => None,
            };
            let per_request_us = |ticks: u64| ticks as f64 / clk_tck * 1e6 / out.requests;
            let mut run = HttpRun {
                rps: out.rps,
                requests: out.requests,
                server_us: per_request_us(server_ticks),
                agent_us: agent_ticks.map_or(f64::NAN, per_request_us),
                events: f64::NAN,
                nginx_counted: f64::NAN,
                drops: 0.0,
                spans: [0.0; 4],
                rss_kib: f64::NAN,
            };
            if let (Some(r), Some(before)) = (running.as_ref(), before) {
                // Spans of wrk's last requests: client spans wait up to 2 s (default
                // otlp.client_parent_wait) for a parent, then up to 1 s (otlp.batch_timeout) for
                // their batch.
                let linger = if http_on && spans_mode != "off" {
                    Duration::from_millis(3500)
                } else {
                    Duration::ZERO
                };
                let after = r.quiet_scrape(ended, linger)?;
                let delta = |prefix: &str| {
                    series_sum(&after, prefix).unwrap_or(0.0)
                        - series_sum(&before, prefix).unwrap_or(0.0)
                };
                if http_on {
                    if series_sum(&after, HTTP_PROBE_ATTACHED) != Some(1.0) {
                        bail!("{name}: the agent's http probe is not attached");
                    }
                    let nginx_acme = |m: &str| {
                        labeled_sum(
                            m,
                            NGINX_REQUESTS,
                            &[("workload", "nginx"), ("tenant", "acme")],
                        )
                    };
                    let Some(counted) = nginx_acme(&after) else {
                        bail!(
                            "{name}: no {NGINX_REQUESTS}{{workload=\"nginx\",tenant=\"acme\"}} \
                             series after {} requests: the http probe did not see nginx",
                            out.requests
                        );
                    };
                    run.nginx_counted =
                        (counted - nginx_acme(&before).unwrap_or(0.0)) / out.requests;
                    run.events = delta(HTTP_EVENTS) / out.requests;
                }
                run.drops = delta(HTTP_DROPS);
                for (i, outcome) in SPAN_OUTCOMES.iter().enumerate() {
                    let prefix = format!("{SPANS}outcome=\"{outcome}\"");
                    run.spans[i] = delta(&prefix);
                }
            }
            if let Some(r) = running {
                run.rss_kib = r.rss_kib() as f64;
                r.stop()?;
            }
            runs[c].push(run);
        }
        eprintln!(
            "bench http: round {}/{rounds}: {}",
            round + 1,
            HTTP_CONFIGS
                .iter()
                .zip(&runs)
                .map(|((n, _), v)| {
                    let r = &v[round];
                    format!(
                        "{n}: {:.0} req/s, {:.2} µs server CPU/req, {:.2} events/req",
                        r.rps, r.server_us, r.events
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    nginx.stop()?;

    let report = http_report(&runs, rounds, seconds, connections, spans_note);
    println!("{report}");
    let out = target.join("bench").join("http.md");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    std::fs::write(&out, &report)?;
    eprintln!("bench http: written to {}", out.display());
    Ok(())
}

fn http_report(
    runs: &[Vec<HttpRun>],
    rounds: usize,
    seconds: u64,
    connections: u64,
    spans_note: &str,
) -> String {
    let col = |c: usize, f: fn(&HttpRun) -> f64| -> Vec<f64> { runs[c].iter().map(f).collect() };
    let base_rps = col(0, |r| r.rps);
    let base_cpu = col(0, |r| r.server_us);
    let mut report = format!(
        "`wrk -t1 -c{connections} -d{seconds}s -H 'X-Tenant-ID: acme'` against nginx on \
         127.0.0.1: one process (`daemon off; master_process off;`), `access_log off`, \
         `keepalive_requests 1000000`, a 1 KiB static file (sendfile off, the nginx default). \
         nginx is pinned to CPU 1 and kept for the whole run; wrk, the agent and xtask are pinned \
         to CPU 0, so the agent's userspace competes with wrk (throughput) and not with nginx. \
         The agent is started fresh per measurement and wrk starts once /readyz answers; \
         {rounds} rounds with the configuration order rotated. Agent: {spans_note}.\n\n\
         | configuration | req/s (median) | throughput loss (median of per-round ratios) | \
         server CPU µs/request (median) | server CPU added µs/request (median of per-round \
         differences) | agent CPU µs/request (median) | http events/request (median) | agent RSS \
         MiB (median) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (c, (name, extra)) in HTTP_CONFIGS.iter().enumerate() {
        let rps = col(c, |r| r.rps);
        let cpu = col(c, |r| r.server_us);
        let loss: Vec<f64> = rps
            .iter()
            .zip(&base_rps)
            .map(|(a, b)| 1.0 - a / b)
            .collect();
        let added: Vec<f64> = cpu.iter().zip(&base_cpu).map(|(a, b)| a - b).collect();
        let or_dash = |v: f64, digits: usize| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.digits$}")
            }
        };
        let (loss, added) = match extra {
            None => ("-".to_owned(), "-".to_owned()),
            Some(_) => (
                format!("{:.1}%", median(&loss) * 100.0),
                format!("{:+.2}", median(&added)),
            ),
        };
        let finite = |v: Vec<f64>| v.into_iter().filter(|x| !x.is_nan()).collect::<Vec<_>>();
        report.push_str(&format!(
            "| {name} | {:.0} | {loss} | {:.2} | {added} | {} | {} | {} |\n",
            median(&rps),
            median(&cpu),
            or_dash(median(&finite(col(c, |r| r.agent_us))), 2),
            or_dash(median(&finite(col(c, |r| r.events))), 3),
            or_dash(median(&finite(col(c, |r| r.rss_kib))) / 1024.0, 1),
        ));
    }
    report.push_str(
        "\nServer CPU: nginx's utime+stime (`/proc/<pid>/stat`) over the wrk run divided by the \
         requests wrk completed; agent CPU likewise for the agent's process (all threads). \
         Events per request: the delta of \
         `tenantscope_agent_events_total{probe=\"http\",kind=\"exchange\"}` divided by wrk's \
         requests; both ends of each request are captured (nginx's server side and wrk's client \
         side), so about 2 is expected.\n\n\
         | configuration | requests (all rounds) | nginx acme requests counted per wrk request \
         (median) | http ring-buffer drops (all rounds) | spans exported / dropped_queue_full / \
         dropped_export_failed / not_sampled (all rounds) |\n|---|---|---|---|---|\n",
    );
    for (c, (name, extra)) in HTTP_CONFIGS.iter().enumerate() {
        if extra.is_none() {
            continue;
        }
        let requests: f64 = runs[c].iter().map(|r| r.requests).sum();
        let counted: Vec<f64> = runs[c]
            .iter()
            .map(|r| r.nginx_counted)
            .filter(|x| !x.is_nan())
            .collect();
        let counted = if counted.is_empty() {
            "- (probe off)".to_owned()
        } else {
            format!("{:.4}", median(&counted))
        };
        let drops: f64 = runs[c].iter().map(|r| r.drops).sum();
        let spans: Vec<String> = (0..SPAN_OUTCOMES.len())
            .map(|i| format!("{:.0}", runs[c].iter().map(|r| r.spans[i]).sum::<f64>()))
            .collect();
        report.push_str(&format!(
            "| {name} | {requests:.0} | {counted} | {drops:.0} | {} |\n",
            spans.join(" / ")
        ));
    }
    report
}

/// What one wrk run reported.
struct WrkOut {
    requests: f64,
    rps: f64,
}

/// `wrk -t1 -c<connections> -d<seconds>s` pinned to CPU 0, with the tenant header; fails on
/// socket errors or non-2xx/3xx responses.
fn wrk(url: &str, connections: u64, seconds: u64) -> anyhow::Result<WrkOut> {
    let out = util::output(util::command(
        "taskset",
        &[
            "-c",
            "0",
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-H",
            "X-Tenant-ID: acme",
            url,
        ],
    ))?;
    if out.contains("Non-2xx or 3xx responses") || out.contains("Socket errors") {
        bail!("wrk reported errors:\n{out}");
    }
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    Ok(WrkOut { requests, rps })
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

/// nginx for the http bench: single process, its prefix, config and 1 KiB file in `dir`,
/// pinned to CPU 1 on a free port of 127.0.0.1. Stopped (and `dir` removed) on drop too.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("www"))?;
        let body: Vec<u8> = (0..1024u32)
            .map(|i| {
                if i % 64 == 63 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        std::fs::write(dir.join("www").join("1k.bin"), body)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/logs/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n keepalive_requests 1000000;\n\
             client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port};\n\
             location = /1k.bin {{ root {d}/www; }}\n }}\n}}\n",
            d = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let stderr = std::fs::File::create(dir.join("logs").join("stderr.log"))?;
        let child = Command::new("taskset")
            .args(["-c", "1", "nginx", "-c"])
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                bail!(
                    "nginx exited with {status}: {}{}",
                    std::fs::read_to_string(dir.join("logs").join("stderr.log"))
                        .unwrap_or_default(),
                    std::fs::read_to_string(dir.join("logs").join("error.log")).unwrap_or_default()
                );
            }
            if let Ok(got) = get(port, "/1k.bin") {
                if !got.starts_with("HTTP/1.0 200") && !got.starts_with("HTTP/1.1 200") {
                    bail!(
                        "nginx answered {:?}",
                        got.lines().next().unwrap_or_default()
                    );
                }
                let body = got.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
                if body != 1024 {
                    bail!("nginx served {body} bytes instead of 1024");
                }
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!("nginx not answering on 127.0.0.1:{port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nginx process (taskset execs it).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        // nginx exits 0 on SIGTERM (fast shutdown).
        if !status.success() {
            bail!("nginx exited with {status}");
        }
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        terminate(&mut self.child, Duration::from_secs(5))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

    /// After a load run that ended at `ended`: scrapes every 500 ms until nginx's and wrk's
    /// request counts have stopped changing, at least `linger` has passed since `ended` and no
    /// span is queued, for at most 15 s; returns the last scrape. (Not the event counters: each
    /// scrape is itself an HTTP exchange of xtask's that the agent captures.)
    fn quiet_scrape(&self, ended: Instant, linger: Duration) -> anyhow::Result<String> {
        let value = |m: &str| {
            labeled_sum(m, NGINX_REQUESTS, &[("workload", "nginx")]).unwrap_or(0.0)
                + labeled_sum(m, WRK_REQUESTS, &[("workload", "wrk")]).unwrap_or(0.0)
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = self.scrape()?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let next = self.scrape()?;
            let queued = series_sum(&next, SPAN_QUEUE).unwrap_or(0.0);
            if (value(&next) == value(&last) && ended.elapsed() >= linger && queued == 0.0)
                || Instant::now() > deadline
            {
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
