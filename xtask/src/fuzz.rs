//! `cargo xtask fuzz [--seconds N] [--jobs N] [--record] [TARGET...]`: the `cargo fuzz` targets
//! of `fuzz/` (docs/fuzzing.md), each run for a bounded time with its committed seed corpus.
//! `cargo xtask test` runs it with `--seconds 30`; the longer runs recorded in docs/fuzzing.md
//! use the default (10 minutes per target) and `--record`.
//!
//! Each target gets two corpus directories: a scratch one under the fuzz cache (first, so
//! libFuzzer writes what it finds there and the next run on this machine starts from it) and
//! the committed seeds under `fuzz/corpus/<target>` (read only). A crash, a timeout or an input
//! over the memory limit fails the run, naming the target and the artifact libFuzzer wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::util;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "agent_event_decode",
    "agent_http_parse",
    "agent_trace_tenant",
    "collector_otlp_ingest",
    "config_parse",
];

/// The cargo-fuzz release `cargo xtask setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Time per target of a run without `--seconds`.
const DEFAULT_SECONDS: u64 = 600;
/// libFuzzer limits: the memory one input may take (ASan's overhead included), and the time.
const RSS_LIMIT_MB: u64 = 2048;
const TIMEOUT_S: u64 = 10;
/// Inputs a target's scratch corpus may hold before it is merged down to those that still add
/// coverage: each run adds some, and replaying them all would eat a short run's time.
const MAX_SCRATCH_INPUTS: usize = 4000;

/// Build flags, the same for `build` and `run` (a difference would rebuild everything).
/// AddressSanitizer works on the pinned stable toolchain with RUSTC_BOOTSTRAP (it ships the
/// runtime); debug assertions make integer overflow a crash, as in the project's own tests.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "address", "--debug-assertions"];

/// The fuzz build's target directory: a cache outside the clone, like the main build's (so
/// CI's fuzz build is incremental), and apart from it: the sanitizer and coverage flags would
/// otherwise invalidate the main build's artifacts at every switch.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/tenantscope/fuzz-target"))
}

struct Options {
    seconds: u64,
    jobs: usize,
    record: bool,
    targets: Vec<&'static str>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: DEFAULT_SECONDS,
        jobs: 2,
        record: false,
        targets: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> anyhow::Result<u64> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a number"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = number("--seconds")?.max(1),
            "--jobs" => o.jobs = number("--jobs")?.max(1) as usize,
            "--record" => o.record = true,
            t => match TARGETS.iter().find(|known| **known == t) {
                Some(known) => o.targets.push(known),
                None => bail!(
                    "fuzz: unknown target or flag {t:?} (targets: {})",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.to_vec();
    }
    Ok(o)
}

/// `cargo fuzz <sub> <BUILD_FLAGS>` from the workspace root (so rust-toolchain.toml applies),
/// with the fuzz cache as target dir, at a lower priority than interactive work.
fn cargo_fuzz(sub: &str) -> anyhow::Result<Command> {
    let mut cmd = util::command("nice", &["-n", "10", "cargo", "fuzz", sub]);
    cmd.args(BUILD_FLAGS)
        .current_dir(util::workspace_root())
        // The sanitizer is a -Z flag: the pinned stable toolchain allows it with this (as for
        // the eBPF build).
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir()?)
        // cargo fuzz appends RUSTFLAGS to its own; the host's flags have no place here.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    Ok(cmd)
}

/// What one target's run reported.
#[derive(Debug, Default)]
struct Outcome {
    target: &'static str,
    seconds: u64,
    execs: u64,
    execs_per_s: u64,
    corpus: u64,
    cov: u64,
    ft: u64,
    new_units: u64,
    peak_rss_mb: u64,
    /// `None` when the run passed: what failed, and the artifact.
    failure: Option<String>,
}

pub fn fuzz(args: Vec<String>) -> anyhow::Result<()> {
    let o = parse(&args)?;
    let started = Instant::now();
    // cargo fuzz has no --locked: check the fuzz crate's lock file first (and fetch with it).
    let mut fetch = util::cargo(&["fetch", "--locked", "--manifest-path", "fuzz/Cargo.toml"]);
    fetch.stdout(Stdio::null());
    util::run(fetch).context(
        "fuzz/Cargo.lock does not match the fuzz crate's dependencies (those of the agent and \
         the collector included): update it with `cargo metadata --manifest-path \
         fuzz/Cargo.toml --format-version 1 >/dev/null` and commit it",
    )?;
    util::run(cargo_fuzz("build")?)?;
    let built = started.elapsed().as_secs();
    println!("fuzz: built every target in {built}s");

    for target in &o.targets {
        compact(target)?;
    }

    let logs = target_dir()?.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let mut outcomes = Vec::new();
    let mut queue = o.targets.iter().copied();
    let mut running: Vec<(&'static str, std::process::Child, PathBuf, Instant)> = Vec::new();
    loop {
        while running.len() < o.jobs
            && let Some(target) = queue.next()
        {
            let log = logs.join(format!("{target}.log"));
            let child = start(target, o.seconds, &log)?;
            println!(
                "fuzz: {target}: running for {}s (log {})",
                o.seconds,
                log.display()
            );
            running.push((target, child, log, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].1.try_wait()? else {
                i += 1;
                continue;
            };
            let (target, _, log, since) = running.swap_remove(i);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut outcome = outcome(target, status.success(), &text);
            if outcome.seconds == 0 {
                // A run that failed prints no `Done ... in N second(s)`.
                outcome.seconds = since.elapsed().as_secs();
            }
            println!("fuzz: {}", summary(&outcome));
            if let Some(f) = &outcome.failure {
                // The end of the log: the panic or sanitizer report, and how to reproduce.
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- {target}: last lines of {}", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
                eprintln!("---- {target}: {f}");
            }
            outcomes.push(outcome);
        }
    }

    outcomes.sort_by_key(|o| TARGETS.iter().position(|t| *t == o.target));
    let table = table(&outcomes);
    println!("\n{table}");
    if o.record {
        record(&o, &table)?;
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.target, o.failure.as_ref()?)))
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz: {} target(s) failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    println!(
        "fuzz: {} targets, {}s each, no crash ({}s in all, {built}s of it building)",
        outcomes.len(),
        o.seconds,
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Merges a target's scratch corpus down to the inputs that add coverage (libFuzzer's
/// `-merge=1`) once it holds more than `MAX_SCRATCH_INPUTS`.
fn compact(target: &str) -> anyhow::Result<()> {
    let scratch = target_dir()?.join("corpus").join(target);
    let count = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let before = count(&scratch);
    if before <= MAX_SCRATCH_INPUTS {
        return Ok(());
    }
    let merged = scratch.with_extension("merged");
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged).with_context(|| merged.display().to_string())?;
    let mut cmd = cargo_fuzz("run")?;
    cmd.arg(target)
        .arg(&merged)
        .arg(&scratch)
        .arg("--")
        .arg("-merge=1")
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    util::run(cmd)?;
    std::fs::remove_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    std::fs::rename(&merged, &scratch).with_context(|| scratch.display().to_string())?;
    println!(
        "fuzz: {target}: scratch corpus merged from {before} to {} inputs",
        count(&scratch)
    );
    Ok(())
}

/// Starts `cargo fuzz run` for one target, its output (libFuzzer writes to stderr) in `log`.
fn start(target: &str, seconds: u64, log: &Path) -> anyhow::Result<std::process::Child> {
    let scratch = target_dir()?.join("corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let seeds = util::workspace_root().join("fuzz/corpus").join(target);
    anyhow::ensure!(seeds.is_dir(), "no seed corpus at {}", seeds.display());
    let mut cmd = cargo_fuzz("run")?;
    cmd.arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg("-print_final_stats=1");
    let file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    cmd.spawn()
        .with_context(|| format!("cannot start `{}`", util::display(&cmd)))
}

/// Reads libFuzzer's output: the last status line (`#N DONE cov: C ft: F corp: U/..`) and the
/// final stats (`stat::name: value`).
fn outcome(target: &'static str, success: bool, log: &str) -> Outcome {
    let mut o = Outcome {
        target,
        ..Outcome::default()
    };
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(&format!(" {name}: ")).nth(1)?;
        let value = rest.split_whitespace().next()?;
        value.split('/').next()?.parse().ok()
    };
    if let Some(last) = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains(" cov: "))
    {
        o.cov = field(last, "cov").unwrap_or(0);
        o.ft = field(last, "ft").unwrap_or(0);
        o.corpus = field(last, "corp").unwrap_or(0);
    }
    for line in log.lines() {
        let Some((name, value)) = line.strip_prefix("stat::").and_then(|l| l.split_once(':'))
        else {
            if let Some(secs) = line
                .strip_prefix("Done ")
                .and_then(|l| l.split(" in ").nth(1))
                .and_then(|l| l.split_whitespace().next())
            {
                o.seconds = secs.parse().unwrap_or(0);
            }
            continue;
        };
        let value: u64 = value.trim().parse().unwrap_or(0);
        match name {
            "number_of_executed_units" => o.execs = value,
            "average_exec_per_sec" => o.execs_per_s = value,
            "new_units_added" => o.new_units = value,
            "peak_rss_mb" => o.peak_rss_mb = value,
            _ => {}
        }
    }
    if !success {
        let artifact = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::trim);
        let lines: Vec<&str> = log.lines().collect();
        // A panic's location and its message (the next line), else the sanitizer's or
        // libFuzzer's verdict (timeout, out of memory, deadly signal).
        let what = match lines.iter().position(|l| l.contains("panicked at")) {
            Some(i) => lines[i..(i + 2).min(lines.len())]
                .join(" ")
                .trim()
                .to_owned(),
            None => lines
                .iter()
                .find(|l| l.starts_with("==") && l.contains("ERROR:"))
                .map_or("the fuzzer failed (see its log)", |l| l.trim())
                .to_owned(),
        };
        o.failure = Some(match artifact {
            Some(a) => format!("{what}; input: {a}"),
            None => what.to_owned(),
        });
    }
    o
}

fn summary(o: &Outcome) -> String {
    format!(
        "{}: {}s, {} execs ({}/s), corpus {} (+{}), cov {} ft {}, peak RSS {} MiB, {}",
        o.target,
        o.seconds,
        o.execs,
        o.execs_per_s,
        o.corpus,
        o.new_units,
        o.cov,
        o.ft,
        o.peak_rss_mb,
        o.failure.as_deref().unwrap_or("no crash")
    )
}

/// The results as the Markdown table of docs/fuzzing.md, failures listed below it.
fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| target | time | executions | exec/s | corpus (new) | cov | ft | peak RSS | result |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        t.push_str(&format!(
            "| `{}` | {} s | {} | {} | {} (+{}) | {} | {} | {} MiB | {} |\n",
            o.target,
            o.seconds,
            o.execs,
            o.execs_per_s,
            o.corpus,
            o.new_units,
            o.cov,
            o.ft,
            o.peak_rss_mb,
            if o.failure.is_some() {
                "**failed** (below)"
            } else {
                "no crash"
            }
        ));
    }
    for o in outcomes {
        if let Some(f) = &o.failure {
            t.push_str(&format!("\n- `{}`: {f}", o.target));
        }
    }
    t.push('\n');
    t
}

/// Appends the run to docs/fuzzing.md, under its recorded runs.
fn record(o: &Options, table: &str) -> anyhow::Result<()> {
    let out = |cmd: &str, args: &[&str]| {
        util::output(util::command(cmd, args))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    };
    let mut command = format!(
        "cargo xtask fuzz --seconds {} --jobs {} --record",
        o.seconds, o.jobs
    );
    if o.targets.len() != TARGETS.len() {
        command.push(' ');
        command.push_str(&o.targets.join(" "));
    }
    let entry = format!(
        "\n### Run of {}\n\n```\n{command}\n```\n\n{} CPUs, commit {}, cargo-fuzz {CARGO_FUZZ_VERSION}, \
         AddressSanitizer and debug assertions.\n\n{}",
        out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        out("nproc", &["--all"]),
        out("git", &["rev-parse", "--short", "HEAD"]),
        table
    );
    let path = util::workspace_root().join("docs/fuzzing.md");
    let mut text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    text.push_str(&entry);
    std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    println!("fuzz: recorded in {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Seed: 1234\n\
        #2\tINITED cov: 812 ft: 1020 corp: 31/12Kb exec/s: 0 rss: 61Mb\n\
        #131072\tpulse  cov: 2401 ft: 9100 corp: 290/80Kb lim: 4096 exec/s: 43690 rss: 120Mb\n\
        #1234567\tDONE   cov: 2451 ft: 9876 corp: 312/91Kb lim: 4096 exec/s: 41152 rss: 123Mb\n\
        Done 1234567 runs in 30 second(s)\n\
        stat::number_of_executed_units: 1234567\n\
        stat::average_exec_per_sec:     41152\n\
        stat::new_units_added:          281\n\
        stat::slowest_unit_time_sec:    0\n\
        stat::peak_rss_mb:              123\n";

    #[test]
    fn reads_libfuzzer_output() {
        let o = outcome("config_parse", true, LOG);
        assert_eq!(
            (
                o.seconds,
                o.execs,
                o.execs_per_s,
                o.corpus,
                o.cov,
                o.ft,
                o.new_units
            ),
            (30, 1_234_567, 41_152, 312, 2451, 9876, 281)
        );
        assert_eq!(o.peak_rss_mb, 123);
        assert!(o.failure.is_none());
        assert!(table(&[o]).contains("| `config_parse` | 30 s | 1234567 | 41152 |"));
    }

    #[test]
    fn names_the_failure_and_its_input() {
        let log = "thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:\nboom\n\
            ==42== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='fuzz/artifacts/x/'; Test unit written to fuzz/artifacts/x/crash-abc\n";
        let o = outcome("agent_http_parse", false, log);
        let f = o.failure.unwrap();
        assert!(f.contains("panicked at fuzz_targets/x.rs:3:5: boom"), "{f}");
        assert!(f.ends_with("input: fuzz/artifacts/x/crash-abc"), "{f}");
    }

    #[test]
    fn parses_flags_and_targets() {
        let o = parse(&["--seconds".into(), "5".into(), "config_parse".into()]).unwrap();
        assert_eq!(
            (o.seconds, o.targets.as_slice()),
            (5, &["config_parse"][..])
        );
        assert_eq!(parse(&[]).unwrap().targets.len(), TARGETS.len());
        assert!(parse(&["nope".into()]).is_err());
    }
}
