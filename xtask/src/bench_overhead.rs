//! `cargo xtask bench overhead` (alias `bench http`): what observing a web server costs it. One
//! nginx (single process, 1 KiB static file, CPU 1) for the whole run, loaded by
//! `wrk -t1 -c<connections> -d<seconds>s` with `X-Tenant-ID: acme` (CPU 0); per measurement
//! wrk's requests/s and nginx's CPU time per request, with no observer, with the agent (all
//! probes, default configuration, fresh, CPU 0) and with a bpftrace script doing comparable
//! capture as the peer reference (`xtask/bench/peer.bt`, fresh, CPU 0), interleaved over
//! `--rounds` rounds with the order rotated (shared/docs/performance.md). `--breakdown` adds the
//! agent minus its syscalls probe and the agent minus its http probe. Prints the report and
//! appends it to docs/benchmarks.md.
//!
//! `--spans sink` (default) exports the agent's spans over OTLP/HTTP to a stand-in collector
//! inside xtask that discards them; `--spans refused` to a port where nothing listens (every
//! export fails; each agent then takes the export timeout, 10 s, to stop); `--spans off` turns
//! the spans off with `[otlp] enabled = false`.

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{
        Running, cpu_ticks, flag, get, labeled_sum, median, otlp_sink, record, release_bins,
        series_sum, terminate,
    },
    util,
};

/// What runs beside nginx in one configuration.
#[derive(Clone, Copy, PartialEq)]
enum Observer {
    None,
    /// The agent with these extra arguments (besides the span settings, which all agent
    /// configurations share).
    Agent(&'static [&'static str]),
    /// `bpftrace xtask/bench/peer.bt`.
    Bpftrace,
}

/// Configurations compared; the first [`MAIN_CONFIGS`] always, the rest with `--breakdown`.
const CONFIGS: [(&str, Observer); 5] = [
    ("no agent", Observer::None),
    ("all probes", Observer::Agent(&[])),
    ("bpftrace peer", Observer::Bpftrace),
    (
        "syscalls off (tcp+http+process)",
        Observer::Agent(&["--disable-probe", "syscalls"]),
    ),
    (
        "http off (syscalls+tcp+process)",
        Observer::Agent(&["--disable-probe", "http"]),
    ),
];
const MAIN_CONFIGS: usize = 3;

/// The peer's script, relative to the workspace root.
const PEER_SCRIPT: &str = "xtask/bench/peer.bt";
/// How each exchange line of the peer's output starts.
const PEER_MARK: &[u8] = b"@@ts ";

/// Targets of issue 7 for the agent with all probes: (goal, must).
const LOSS_TARGET: (f64, f64) = (0.05, 0.10);
const ADDED_US_TARGET: (f64, f64) = (1.0, 2.0);

/// Series read from the agent (prefixes for [`series_sum`]).
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
struct Run {
    /// Position of the configuration in its round (0 first).
    position: usize,
    /// wrk's Requests/sec.
    rps: f64,
    /// Requests wrk completed.
    requests: f64,
    /// nginx utime+stime over the wrk run, µs per request.
    server_us: f64,
    /// The observer's (agent's or bpftrace's) utime+stime over the wrk run, µs per request (NaN
    /// without one).
    observer_us: f64,
    /// Agent: delta of the http exchange events per request; bpftrace: exchange lines written
    /// per request. NaN without an observer or with the http probe off.
    events: f64,
    /// Delta of nginx's acme requests as the agent counts them, per request (NaN likewise).
    nginx_counted: f64,
    /// Agent: delta of the http ring-buffer drops; bpftrace: the events it reported lost.
    drops: f64,
    /// Delta of `tenantscope_agent_spans_total` per outcome, in [`SPAN_OUTCOMES`] order.
    spans: [f64; 4],
    /// The observer's RSS after the run, KiB (NaN without one).
    rss_kib: f64,
}

pub(crate) fn overhead(args: &[String]) -> anyhow::Result<()> {
    let rounds = flag(args, "--rounds", 5)? as usize;
    let seconds = flag(args, "--seconds", 10)?;
    let connections = flag(args, "--connections", 50)?;
    let breakdown = args.iter().any(|a| a == "--breakdown");
    let spans_mode = match args.iter().position(|a| a == "--spans") {
        Some(i) => args.get(i + 1).context("--spans needs a value")?.as_str(),
        None => "sink",
    };
    if rounds == 0 || seconds == 0 || connections == 0 {
        bail!("--rounds, --seconds and --connections must be at least 1");
    }
    for tool in ["nginx", "wrk", "bpftrace", "taskset"] {
        if util::which(tool).is_none() {
            bail!(
                "{tool} not found on PATH (`cargo xtask setup` installs nginx-light, wrk and \
                 bpftrace)"
            );
        }
    }
    let script = util::workspace_root().join(PEER_SCRIPT);
    if !script.is_file() {
        bail!("{} missing", script.display());
    }
    let configs = &CONFIGS[..if breakdown {
        CONFIGS.len()
    } else {
        MAIN_CONFIGS
    }];
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

    let dir = std::env::temp_dir().join(format!("ts-bench-overhead-{}", std::process::id()));
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
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let c = (k + round) % configs.len();
            let run = measure(
                configs[c],
                k,
                &Setup {
                    agent: &agent,
                    agent_args: &agent_args,
                    spans_on: spans_mode != "off",
                    script: &script,
                    dir: &dir,
                    nginx: &nginx,
                    url: &url,
                    connections,
                    seconds,
                    clk_tck,
                },
            )?;
            runs[c].push(run);
        }
        eprintln!(
            "bench overhead: round {}/{rounds}: {}",
            round + 1,
            configs
                .iter()
                .zip(&runs)
                .map(|((n, _), v)| {
                    let r = &v[round];
                    format!(
                        "{n}: {:.0} req/s, {:.2} µs server CPU/req, {:.2} µs observer CPU/req, \
                         {:.2} events/req",
                        r.rps, r.server_us, r.observer_us, r.events
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    nginx.stop()?;

    let report = report(configs, &runs, rounds, seconds, connections, spans_note);
    println!("{report}");
    let out = target.join("bench").join("overhead.md");
    std::fs::create_dir_all(out.parent().expect("has parent"))?;
    std::fs::write(&out, &report)?;
    eprintln!("bench overhead: written to {}", out.display());
    let mut command = format!(
        "cargo xtask bench overhead --rounds {rounds} --seconds {seconds} --connections \
         {connections}"
    );
    if breakdown {
        command.push_str(" --breakdown");
    }
    if spans_mode != "sink" {
        command.push_str(&format!(" --spans {spans_mode}"));
    }
    record(
        "Overhead (nginx under wrk, agent vs bpftrace peer)",
        &command,
        &report,
    )
}

/// What every measurement shares.
struct Setup<'a> {
    agent: &'a PathBuf,
    agent_args: &'a [String],
    spans_on: bool,
    script: &'a Path,
    dir: &'a Path,
    nginx: &'a Nginx,
    url: &'a str,
    connections: u64,
    seconds: u64,
    clk_tck: f64,
}

/// One measurement: starts the configuration's observer, runs wrk, reads the counters, stops it.
fn measure((name, observer): (&str, Observer), position: usize, s: &Setup) -> anyhow::Result<Run> {
    let running = match observer {
        Observer::Agent(extra) => {
            let all: Vec<&str> = s
                .agent_args
                .iter()
                .map(String::as_str)
                .chain(extra.iter().copied())
                .collect();
            Some(Running::start(s.agent, &all)?)
        }
        _ => None,
    };
    let peer = match observer {
        Observer::Bpftrace => Some(Peer::start(s.script, s.dir)?),
        _ => None,
    };
    let http_on = matches!(observer, Observer::Agent(extra) if !extra.contains(&"http"));
    let before = running.as_ref().map(|r| r.scrape()).transpose()?;
    let observer_pid = running
        .as_ref()
        .map(Running::pid)
        .or(peer.as_ref().map(Peer::pid));
    let observer_ticks = observer_pid.map(cpu_ticks).transpose()?;
    let server_ticks = cpu_ticks(s.nginx.pid())?;
    let out = wrk(s.url, s.connections, s.seconds)?;
    let ended = Instant::now();
    let server_ticks = cpu_ticks(s.nginx.pid())? - server_ticks;
    let observer_ticks = match (observer_pid, observer_ticks) {
        (Some(pid), Some(t)) => Some(cpu_ticks(pid)? - t),
        _ => None,
    };
    let per_request_us = |ticks: u64| ticks as f64 / s.clk_tck * 1e6 / out.requests;
    let mut run = Run {
        position,
        rps: out.rps,
        requests: out.requests,
        server_us: per_request_us(server_ticks),
        observer_us: observer_ticks.map_or(f64::NAN, per_request_us),
        events: f64::NAN,
        nginx_counted: f64::NAN,
        drops: 0.0,
        spans: [0.0; 4],
        rss_kib: f64::NAN,
    };
    if let (Some(r), Some(before)) = (running.as_ref(), before) {
        // Spans of wrk's last requests: client spans wait up to 2 s (default
        // otlp.client_parent_wait) for a parent, then up to 1 s (otlp.batch_timeout) for their
        // batch.
        let linger = if http_on && s.spans_on {
            Duration::from_millis(3500)
        } else {
            Duration::ZERO
        };
        let after = quiet_scrape(r, ended, linger)?;
        let delta = |prefix: &str| {
            series_sum(&after, prefix).unwrap_or(0.0) - series_sum(&before, prefix).unwrap_or(0.0)
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
                    "{name}: no {NGINX_REQUESTS}{{workload=\"nginx\",tenant=\"acme\"}} series \
                     after {} requests: the http probe did not see nginx",
                    out.requests
                );
            };
            run.nginx_counted = (counted - nginx_acme(&before).unwrap_or(0.0)) / out.requests;
            run.events = delta(HTTP_EVENTS) / out.requests;
        }
        run.drops = delta(HTTP_DROPS);
        for (i, outcome) in SPAN_OUTCOMES.iter().enumerate() {
            run.spans[i] = delta(&format!("{SPANS}outcome=\"{outcome}\""));
        }
    }
    if let Some(r) = running {
        run.rss_kib = r.rss_kib() as f64;
        r.stop()?;
    }
    if let Some(p) = peer {
        run.rss_kib = p.rss_kib() as f64;
        let captured = p.stop()?;
        if captured.exchanges == 0 {
            bail!(
                "{name}: bpftrace wrote no exchange line for {} requests: the peer did not \
                 capture",
                out.requests
            );
        }
        run.events = captured.exchanges as f64 / out.requests;
        run.drops = captured.lost as f64;
    }
    Ok(run)
}

/// After a load run that ended at `ended`: scrapes every 500 ms until nginx's and wrk's request
/// counts have stopped changing, at least `linger` has passed since `ended` and no span is
/// queued, for at most 15 s; returns the last scrape. (Not the event counters: each scrape is
/// itself an HTTP exchange of xtask's that the agent captures.)
fn quiet_scrape(r: &Running, ended: Instant, linger: Duration) -> anyhow::Result<String> {
    let value = |m: &str| {
        labeled_sum(m, NGINX_REQUESTS, &[("workload", "nginx")]).unwrap_or(0.0)
            + labeled_sum(m, WRK_REQUESTS, &[("workload", "wrk")]).unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = r.scrape()?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let next = r.scrape()?;
        let queued = series_sum(&next, SPAN_QUEUE).unwrap_or(0.0);
        if (value(&next) == value(&last) && ended.elapsed() >= linger && queued == 0.0)
            || Instant::now() > deadline
        {
            return Ok(next);
        }
        last = next;
    }
}

/// `x.x%` or `+x.xx`; `-` for NaN.
fn or_dash(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else {
        format!("{v:.digits$}")
    }
}

fn verdict(value: f64, (goal, must): (f64, f64)) -> &'static str {
    if value.is_nan() {
        "not measured"
    } else if value <= goal {
        "**goal met**"
    } else if value <= must {
        "must met, goal missed"
    } else {
        "**missed** (goal and must)"
    }
}

fn report(
    configs: &[(&str, Observer)],
    runs: &[Vec<Run>],
    rounds: usize,
    seconds: u64,
    connections: u64,
    spans_note: &str,
) -> String {
    let col = |c: usize, f: fn(&Run) -> f64| -> Vec<f64> { runs[c].iter().map(f).collect() };
    let finite = |v: Vec<f64>| v.into_iter().filter(|x| !x.is_nan()).collect::<Vec<_>>();
    let base_rps = col(0, |r| r.rps);
    let base_cpu = col(0, |r| r.server_us);
    // Per configuration: (median loss, median added µs).
    let mut medians = Vec::new();
    let mut report = format!(
        "`wrk -t1 -c{connections} -d{seconds}s -H 'X-Tenant-ID: acme'` against nginx on \
         127.0.0.1: one process (`daemon off; master_process off;`), `access_log off`, \
         `keepalive_requests 1000000`, a 1 KiB static file (sendfile off, the nginx default). \
         nginx is pinned to CPU 1 and kept for the whole run; wrk, the observer (agent or \
         bpftrace) and xtask are pinned to CPU 0, so the observer's userspace competes with wrk \
         (throughput) and not with nginx; its kernel programs run in nginx's context (server \
         CPU). The observer is started fresh per measurement; wrk starts once the agent's \
         /readyz answers or bpftrace has attached. {rounds} rounds with the configuration order \
         rotated. Agent: default configuration, {spans_note}. Peer: `bpftrace {PEER_SCRIPT}` \
         (syscall counts and latency per process, one line per HTTP exchange and side with the \
         first 64 bytes of request and response, written to a file).\n\n\
         | configuration | req/s (median) | throughput loss (median of per-round ratios) | \
         nginx CPU µs/request (median) | added µs/request (median of per-round differences) | \
         observer CPU µs/request (median) | events/request (median) | ring drops / bpftrace lost \
         events (all rounds) | requests counted / wrk requests (median) | observer RSS MiB \
         (median) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (c, (name, observer)) in configs.iter().enumerate() {
        let rps = col(c, |r| r.rps);
        let cpu = col(c, |r| r.server_us);
        let loss: Vec<f64> = rps
            .iter()
            .zip(&base_rps)
            .map(|(a, b)| 1.0 - a / b)
            .collect();
        let added: Vec<f64> = cpu.iter().zip(&base_cpu).map(|(a, b)| a - b).collect();
        medians.push((median(&loss), median(&added)));
        let (loss, added, drops) = match observer {
            Observer::None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            _ => (
                format!("{:.1}%", median(&loss) * 100.0),
                format!("{:+.2}", median(&added)),
                format!("{:.0}", runs[c].iter().map(|r| r.drops).sum::<f64>()),
            ),
        };
        report.push_str(&format!(
            "| {name} | {:.0} | {loss} | {:.2} | {added} | {} | {} | {drops} | {} | {} |\n",
            median(&rps),
            median(&cpu),
            or_dash(median(&finite(col(c, |r| r.observer_us))), 2),
            or_dash(median(&finite(col(c, |r| r.events))), 3),
            or_dash(median(&finite(col(c, |r| r.nginx_counted))), 4),
            or_dash(median(&finite(col(c, |r| r.rss_kib))) / 1024.0, 1),
        ));
    }

    let (loss, added) = medians[1];
    let (peer_loss, peer_added) = medians[2];
    report.push_str(&format!(
        "\nTargets (issue 7), agent with all probes:\n\
         - throughput loss {:.1}% (goal <= {:.0}%, must <= {:.0}%): {}\n\
         - added server CPU {:+.2} µs/request (goal <= {:.0} µs, must <= {:.0} µs): {}\n\
         - peer reference (bpftrace): throughput loss {:.1}%, added server CPU {:+.2} \
         µs/request; the agent adds {:.2}x the peer's server CPU per request\n\
         - peer sanity: {} bpftrace exchange lines per wrk request (median; 2 expected: nginx's \
         side and wrk's)\n",
        loss * 100.0,
        LOSS_TARGET.0 * 100.0,
        LOSS_TARGET.1 * 100.0,
        verdict(loss, LOSS_TARGET),
        added,
        ADDED_US_TARGET.0,
        ADDED_US_TARGET.1,
        verdict(added, ADDED_US_TARGET),
        peer_loss * 100.0,
        peer_added,
        added / peer_added,
        or_dash(median(&finite(col(2, |r| r.events))), 3),
    ));

    report.push_str(
        "\nServer CPU: nginx's utime+stime (`/proc/<pid>/stat`) over the wrk run divided by the \
         requests wrk completed; observer CPU likewise for the agent's or bpftrace's process (all \
         threads). Events per request: for the agent the delta of \
         `tenantscope_agent_events_total{probe=\"http\",kind=\"exchange\"}`, for bpftrace the \
         exchange lines in its output, divided by wrk's requests; both ends of each request are \
         captured (nginx's server side and wrk's client side), so about 2 is expected.\n\n\
         | configuration | requests (all rounds) | spans exported / dropped_queue_full / \
         dropped_export_failed / not_sampled (all rounds) |\n|---|---|---|\n",
    );
    for (c, (name, observer)) in configs.iter().enumerate() {
        if !matches!(observer, Observer::Agent(_)) {
            continue;
        }
        let requests: f64 = runs[c].iter().map(|r| r.requests).sum();
        let spans: Vec<String> = (0..SPAN_OUTCOMES.len())
            .map(|i| format!("{:.0}", runs[c].iter().map(|r| r.spans[i]).sum::<f64>()))
            .collect();
        report.push_str(&format!(
            "| {name} | {requests:.0} | {} |\n",
            spans.join(" / ")
        ));
    }

    report.push_str(
        "\nRaw rounds (position: order within the round, 1 first):\n\n\
         | round | position | configuration | req/s | requests | nginx CPU µs/request | observer \
         CPU µs/request | events/request | ring drops / lost events | requests counted / wrk \
         requests |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for round in 0..rounds {
        let mut row: Vec<(usize, &Run)> = runs
            .iter()
            .enumerate()
            .map(|(c, v)| (c, &v[round]))
            .collect();
        row.sort_by_key(|(_, r)| r.position);
        for (c, r) in row {
            let drops = if configs[c].1 == Observer::None {
                "-".to_owned()
            } else {
                format!("{:.0}", r.drops)
            };
            report.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {drops} | {} |\n",
                round + 1,
                r.position + 1,
                configs[c].0,
                r.rps,
                r.requests,
                r.server_us,
                or_dash(r.observer_us, 2),
                or_dash(r.events, 3),
                or_dash(r.nginx_counted, 4),
            ));
        }
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

/// The bpftrace peer for one measurement: `bpftrace <script>` pinned to CPU 0, its stdout (the
/// exchange lines and, on exit, its maps) and stderr in files under the run's directory. Stopped
/// (and its files removed) on drop too.
struct Peer {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// What the peer captured.
struct Captured {
    /// Exchange lines in its output.
    exchanges: u64,
    /// Events bpftrace reported lost (`Lost N events`).
    lost: u64,
}

impl Peer {
    /// Starts bpftrace and waits until it has attached its probes.
    fn start(script: &Path, dir: &Path) -> anyhow::Result<Self> {
        let out = dir.join("peer.out");
        let err = dir.join("peer.err");
        let child = Command::new("taskset")
            .args(["-c", "0", "bpftrace"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting bpftrace")?;
        let mut peer = Peer { child, out, err };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // "Attaching N probes..." is the first line bpftrace prints.
            let head = std::fs::read(&peer.out).unwrap_or_default();
            if head.starts_with(b"Attaching ") && head.contains(&b'\n') {
                // The line is printed just before the attachments; let them finish.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(peer);
            }
            if let Some(status) = peer.child.try_wait()? {
                bail!(
                    "bpftrace exited with {status}: {}",
                    std::fs::read_to_string(&peer.err).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("bpftrace has not attached after 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The bpftrace process (taskset execs it).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGINT (bpftrace prints its maps and exits), SIGTERM/SIGKILL if it has not exited after
    /// 30 s; then counts what it wrote.
    fn stop(mut self) -> anyhow::Result<Captured> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                break terminate(&mut self.child, Duration::from_secs(5))?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!(
                "bpftrace exited with {status}: {}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
        }
        let mut captured = Captured {
            exchanges: 0,
            lost: 0,
        };
        let lost = |line: &[u8]| -> Option<u64> {
            std::str::from_utf8(line)
                .ok()?
                .trim()
                .strip_prefix("Lost ")?
                .strip_suffix(" events")?
                .parse()
                .ok()
        };
        let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(&self.out)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.starts_with(PEER_MARK) {
                captured.exchanges += 1;
            } else if let Some(n) = lost(&line) {
                captured.lost += n;
            }
        }
        let stderr = std::fs::read(&self.err)?;
        captured.lost += stderr.split(|&b| b == b'\n').filter_map(lost).sum::<u64>();
        Ok(captured)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = terminate(&mut self.child, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// nginx for the overhead bench: single process, its prefix, config and 1 KiB file in `dir`,
/// pinned to CPU 1 on a free port of 127.0.0.1. Stopped (and `dir` removed) on drop too.
pub(crate) struct Nginx {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl Nginx {
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::with_locations(dir, "")
    }

    /// Also serves `locations` (nginx `location` blocks), e.g. fixed answers per route.
    pub(crate) fn with_locations(dir: &Path, locations: &str) -> anyhow::Result<Self> {
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
             location = /1k.bin {{ root {d}/www; }}\n{locations}\n }}\n}}\n",
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

    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
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
