//! `syscalls` probe, end to end: a workload with a known syscall mix, the real agent, /metrics.

use std::time::Duration;

use tenantscope_tests::{Agent, Metrics, privileged, run_load};

const LOAD: &str = env!("CARGO_BIN_EXE_ts-syscall-load");
const GETPPID: u64 = 20_000;
const SLEEPS: u64 = 20;
const CLOSE_ERRORS: u64 = 500;
const DURATION: &str = "tenantscope_syscall_duration_seconds";

fn count(m: &Metrics, syscall: &str, workload: &str) -> f64 {
    m.get(
        &format!("{DURATION}_count"),
        &[("syscall", syscall), ("workload", workload)],
    )
    .unwrap_or(0.0)
}

fn bucket(m: &Metrics, syscall: &str, workload: &str, le: &str) -> f64 {
    m.get(
        &format!("{DURATION}_bucket"),
        &[("syscall", syscall), ("workload", workload), ("le", le)],
    )
    .unwrap_or_else(|| panic!("no {le} bucket for {syscall}/{workload}"))
}

/// Runs the load under `hook` and checks counts, errors and bucket placement exactly.
fn counts_and_buckets(hook: &str) {
    let agent = Agent::start(&["--syscall-hook", hook]);
    run_load(
        LOAD.as_ref(),
        &[
            "--getppid",
            &GETPPID.to_string(),
            "--nanosleep",
            &SLEEPS.to_string(),
            "--sleep-ms",
            "10",
            "--close-errors",
            &CLOSE_ERRORS.to_string(),
        ],
    );
    let w = "ts-syscall-load";
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        count(m, "getppid", w) >= GETPPID as f64 && count(m, "nanosleep", w) >= SLEEPS as f64
    });
    let log = agent.log_text();

    // Exact: the load makes no other getppid/nanosleep calls, and nothing may be lost or doubled.
    assert_eq!(
        count(&m, "getppid", w),
        GETPPID as f64,
        "getppid count\n{log}"
    );
    assert_eq!(count(&m, "nanosleep", w), SLEEPS as f64, "nanosleep count");
    let close_err = m.get(
        "tenantscope_syscall_errors_total",
        &[("syscall", "close"), ("workload", w)],
    );
    assert!(
        close_err >= Some(CLOSE_ERRORS as f64),
        "close errors: {close_err:?}"
    );
    assert_eq!(
        m.get(
            "tenantscope_syscall_errors_total",
            &[("syscall", "getppid"), ("workload", w)]
        ),
        Some(0.0)
    );

    // 10 ms sleeps: none at or below 4.19 ms, all by 16.78 ms (the bucket holding [8.4, 16.8) ms).
    assert_eq!(bucket(&m, "nanosleep", w, "0.004194304"), 0.0);
    assert_eq!(bucket(&m, "nanosleep", w, "0.016777216"), SLEEPS as f64);
    let sum = m
        .get(
            &format!("{DURATION}_sum"),
            &[("syscall", "nanosleep"), ("workload", w)],
        )
        .unwrap();
    assert!((0.2..0.4).contains(&sum), "nanosleep sum {sum}");
    // getppid takes well under 4 µs; allow a few preempted outliers on a busy 2-core machine.
    let fast = bucket(&m, "getppid", w, "0.000004096");
    assert!(
        fast >= GETPPID as f64 * 0.95,
        "only {fast} getppid calls under 4 µs"
    );
    assert_eq!(bucket(&m, "getppid", w, "+Inf"), GETPPID as f64);
}

#[test]
fn syscalls_raw_tracepoint_counts_and_buckets() {
    if privileged("syscalls_raw_tracepoint_counts_and_buckets") {
        counts_and_buckets("raw-tracepoint");
    }
}

#[test]
fn syscalls_classic_tracepoint_counts_and_buckets() {
    if privileged("syscalls_classic_tracepoint_counts_and_buckets") {
        counts_and_buckets("tracepoint");
    }
}

#[test]
fn syscalls_agent_does_not_observe_itself() {
    if !privileged("syscalls_agent_does_not_observe_itself") {
        return;
    }
    let agent = Agent::start(&[]);
    // Scrapes make the agent read, write and epoll; none of that may show up.
    for _ in 0..5 {
        agent.metrics();
    }
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        m.find(&format!("{DURATION}_count"), &[]).count() > 0
    });
    let name = format!("{DURATION}_count");
    let own: Vec<_> = m
        .find(&name, &[])
        .filter(|s| s.labels["workload"].starts_with("tenantscope-age"))
        .collect();
    assert!(own.is_empty(), "the agent counted itself: {own:?}");
}

#[test]
fn syscalls_workload_cap_folds_overflow_without_losing_counts() {
    if !privileged("syscalls_workload_cap_folds_overflow_without_losing_counts") {
        return;
    }
    // Three distinct workloads: the comm after exec is the file name, so symlinks suffice.
    let dir = std::env::temp_dir().join(format!("ts-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["ts-load-a", "ts-load-b", "ts-load-c"];
    for n in names {
        let _ = std::fs::remove_file(dir.join(n));
        std::os::unix::fs::symlink(LOAD, dir.join(n)).unwrap();
    }
    let agent = Agent::start(&["--max-workloads", "2"]);
    for n in names {
        run_load(&dir.join(n), &["--getppid", "1000"]);
    }
    let folded = |m: &Metrics| {
        names
            .iter()
            .chain(&["_other"])
            .map(|w| count(m, "getppid", w))
            .sum::<f64>()
    };
    let m = agent.wait_metrics(Duration::from_secs(15), |m| folded(m) >= 3000.0);
    // A load that kept its own workload has exactly its calls; the folded ones are in `_other`,
    // which also takes any other process's getppid calls on this machine (hence at least).
    let named: Vec<f64> = names
        .iter()
        .map(|w| count(&m, "getppid", w))
        .filter(|&c| c > 0.0)
        .collect();
    assert!(named.iter().all(|&c| c == 1000.0), "{named:?}");
    let other = count(&m, "getppid", "_other");
    assert!(
        other >= 1000.0 * (3 - named.len()) as f64,
        "every call counted, folded or not: {named:?}, _other {other}"
    );
    let name = format!("{DURATION}_count");
    let workloads: std::collections::BTreeSet<&str> = m
        .find(&name, &[])
        .map(|s| s.labels["workload"].as_str())
        .collect();
    assert!(workloads.len() <= 3, "cap 2 + `_other`: {workloads:?}");
    assert!(workloads.contains("_other"), "{workloads:?}");
    assert!(m.get("tenantscope_agent_workload_overflow_total", &[]) >= Some(1.0));
    assert!(m.get("tenantscope_agent_workloads", &[]) <= Some(3.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
