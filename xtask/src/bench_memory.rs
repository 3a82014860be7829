//! `cargo xtask bench memory`: the agent's memory idle, with 10,000 open keep-alive HTTP
//! connections, and after traffic from 1,000 tenants over 1,000 routes, each phase with a fresh
//! agent (all probes, default configuration, spans to a local sink). Userspace RSS (`VmRSS`) and
//! kernel map memory (`memlock` of the agent's map fds) are reported separately: map memory is
//! kernel memory, charged to the agent's memory cgroup, not part of its RSS.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::bench::{Running, median, otlp_sink, release_bins};

/// An HTTP/1.1 server for many idle keep-alive connections: asyncio, one task per connection,
/// answers every request with 2 bytes and keeps the connection open.
const SERVER: &str = r#"
import asyncio, resource
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def conn(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(conn, "127.0.0.1", 0, backlog=4096)
    print(s.sockets[0].getsockname()[1], flush=True)
    await s.serve_forever()
asyncio.run(main())
"#;

/// Opens N connections, makes one request on each (so the HTTP probe tracks them) and holds
/// them until stdin closes; prints `held N` once all are open.
const HOLD: &str = r#"
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /hold HTTP/1.1\r\nHost: bench\r\nX-Tenant-ID: acme\r\n\r\n")
    await w.drain()
    await r.readexactly(len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    conns.append(w)
async def main():
    conns = []
    for start in range(0, n, 500):
        await asyncio.gather(*(one(i, conns) for i in range(start, min(n, start + 500))))
    print("held", len(conns), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"#;

/// `requests` requests over a few keep-alive connections, tenant `t<i % tenants>`, route
/// `/api/r<(i + i / tenants) % routes>/items` (every tenant meets many routes).
const TRAFFIC: &str = r#"
import http.client, sys
port, requests, tenants, routes = map(int, sys.argv[1:5])
conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(4)]
for i in range(requests):
    c = conns[i % 4]
    route = (i + i // tenants) % routes
    c.request("GET", "/api/r%04d/items" % route, headers={"X-Tenant-ID": "t%04d" % (i % tenants)})
    c.getresponse().read()
print("done", requests, flush=True)
"#;

const TENANTS: u64 = 1000;
const ROUTES: u64 = 1000;

/// One phase's reading.
#[derive(Clone, Copy)]
struct Reading {
    rss_mib: f64,
    maps_mib: f64,
}

pub fn memory(args: &[String]) -> anyhow::Result<()> {
    let rounds = crate::bench::flag(args, "--rounds", 3)? as usize;
    let connections = crate::bench::flag(args, "--connections", 10_000)?;
    let requests = crate::bench::flag(args, "--requests", 20_000)?;
    let bins = release_bins()?;
    let agent = bins.join("tenantscope-agent");
    let sink = otlp_sink()?;
    let config = std::env::temp_dir().join("tenantscope-bench-memory.toml");
    // Defaults, except that the route table may hold the 1,000 routes (200 per service by
    // default) and the OTLP export goes to the local sink.
    std::fs::write(
        &config,
        format!(
            "[otlp]\nprotocol = \"http/protobuf\"\nendpoint = \"http://127.0.0.1:{sink}\"\n\n\
             [http.routes]\nmax_routes_per_service = {ROUTES}\n"
        ),
    )?;
    let config = config.to_str().context("temp path")?.to_owned();
    let (mut server, port) = spawn_server()?;
    let mut phases: [Vec<Reading>; 3] = Default::default();
    let mut notes = Vec::new();
    for round in 0..rounds {
        eprintln!("bench memory: round {}/{rounds}", round + 1);
        // Idle: nothing but the machine's own background.
        let a = Running::start(&agent, &["--config", &config])?;
        std::thread::sleep(Duration::from_secs(5));
        phases[0].push(read(&a)?);
        a.stop()?;

        // 10,000 open keep-alive connections, each with one request seen by the agent.
        let a = Running::start(&agent, &["--config", &config])?;
        let mut hold = hold(port, connections)?;
        // Connection gauges are folded from kernel maps every read interval (10 s).
        std::thread::sleep(Duration::from_secs(12));
        let m = a.scrape()?;
        phases[1].push(read(&a)?);
        notes.push(format!(
            "round {}: tenantscope_tcp_connections_open {} (both ends of each held connection)",
            round + 1,
            crate::bench::labeled_sum(&m, "tenantscope_tcp_connections_open", &[])
                .map_or("-".to_owned(), |v| format!("{v:.0}"))
        ));
        drop(hold.stdin.take());
        let _ = hold.wait();
        a.stop()?;

        // 1,000 tenants x 1,000 routes.
        let a = Running::start(&agent, &["--config", &config])?;
        let started = Instant::now();
        let out = crate::util::output(crate::util::command(
            "python3",
            &[
                "-c",
                TRAFFIC,
                &port.to_string(),
                &requests.to_string(),
                &TENANTS.to_string(),
                &ROUTES.to_string(),
            ],
        ))?;
        if !out.starts_with("done") {
            bail!("traffic generator: {out}");
        }
        // The agent folds its maps every read interval (10 s): wait for one full cycle.
        std::thread::sleep(Duration::from_secs(12));
        let m = a.scrape()?;
        phases[2].push(read(&a)?);
        let tenants = crate::bench::series_sum(&m, "tenantscope_agent_tenants").unwrap_or(f64::NAN);
        let counted = crate::bench::labeled_sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[("workload", "python3")],
        )
        .unwrap_or(0.0);
        notes.push(format!(
            "round {}: {requests} requests in {:.1} s, {counted:.0} counted, {tenants:.0} tenant labels",
            round + 1,
            started.elapsed().as_secs_f64()
        ));
        a.stop()?;
    }
    let _ = server.kill();
    let _ = server.wait();

    let names = [
        "idle".to_owned(),
        format!("{connections} open keep-alive connections"),
        format!("{TENANTS} tenants x {ROUTES} routes ({requests} requests)"),
    ];
    let mut report = String::from(
        "| phase | agent RSS MiB (median) | raw | kernel map memory MiB (median) |\n\
         |---|---|---|---|\n",
    );
    for (name, readings) in names.iter().zip(&phases) {
        let rss: Vec<f64> = readings.iter().map(|r| r.rss_mib).collect();
        let maps: Vec<f64> = readings.iter().map(|r| r.maps_mib).collect();
        let raw: Vec<String> = rss.iter().map(|v| format!("{v:.1}")).collect();
        report.push_str(&format!(
            "| {name} | {:.1} | {} | {:.1} |\n",
            median(&rss),
            raw.join(", "),
            median(&maps)
        ));
    }
    report.push('\n');
    for n in notes {
        report.push_str(&format!("- {n}\n"));
    }
    println!("{report}");
    crate::bench::record(
        "Agent memory",
        &format!(
            "cargo xtask bench memory --rounds {rounds} --connections {connections} --requests {requests}"
        ),
        &report,
    )
}

fn spawn_server() -> anyhow::Result<(Child, u16)> {
    // The server is the workload: it runs beside the agent, not pinned.
    let mut child = Command::new("python3")
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("server printed {line:?}"))?;
    Ok((child, port))
}

/// Opens and holds the connections; returns once all are open (stdin closes them).
fn hold(port: u16, n: u64) -> anyhow::Result<Child> {
    let mut child = Command::new("python3")
        .args(["-c", HOLD, &port.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
    if line.trim() != format!("held {n}") {
        let _ = child.kill();
        bail!("holding {n} connections failed: {line:?}");
    }
    Ok(child)
}

fn read(a: &Running) -> anyhow::Result<Reading> {
    Ok(Reading {
        rss_mib: a.rss_kib() as f64 / 1024.0,
        maps_mib: map_memory(a.pid())? as f64 / (1024.0 * 1024.0),
    })
}

/// Bytes of kernel memory the agent's BPF maps hold: the `memlock` of every map fd.
fn map_memory(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !text.contains("map_type:") {
            continue;
        }
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
