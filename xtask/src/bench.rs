//! `cargo xtask bench <probe> [args...]`: per-probe benchmarks, measured the way
//! `shared/docs/performance.md` prescribes: configurations interleaved in one run over several
//! rounds with the order rotated, minimum of repeated tight loops per measurement, median of the
//! per-round differences.

use std::{
    io::{Read as _, Write as _},
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
        other => bail!("bench {other}: unknown probe (available: syscalls)"),
    }
}

fn flag(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
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
    util::run(util::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "tenantscope-agent",
        "-p",
        "tenantscope-tests",
        "--bins",
    ]))?;
    let release = util::target_dir()?.join("release");
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
            let running = hook.map(|h| Running::start(&agent, h)).transpose()?;
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

fn measure(load: &Path, calls: u64) -> anyhow::Result<f64> {
    let out = util::output(util::command(
        &load.display().to_string(),
        &["--time", &calls.to_string(), "--rounds", "7", "--cpu", "1"],
    ))?;
    out.trim()
        .parse()
        .with_context(|| format!("ts-syscall-load printed {out:?}"))
}

fn median(v: &[f64]) -> f64 {
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
struct Running {
    child: Child,
}

impl Running {
    fn start(bin: &PathBuf, hook: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--syscall-hook",
                hook,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the agent (taskset from util-linux)")?;
        let running = Running { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(port) {
            if Instant::now() > deadline {
                bail!("agent with hook {hook} not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(running)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
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
