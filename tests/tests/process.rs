//! `process` probe, end to end: fork/exec/exit events keep pid -> workload current, including
//! container identity from a real cgroup.

use std::{path::Path, process::Command, time::Duration};

use tenantscope_tests::{Agent, Metrics, privileged};

const LOAD: &str = env!("CARGO_BIN_EXE_ts-syscall-load");

fn getppid_count(m: &Metrics, workload: &str) -> f64 {
    m.get(
        "tenantscope_syscall_duration_seconds_count",
        &[("syscall", "getppid"), ("workload", workload)],
    )
    .unwrap_or(0.0)
}

#[test]
fn process_forked_child_counts_under_its_parents_workload() {
    if !privileged("process_forked_child_counts_under_its_parents_workload") {
        return;
    }
    let agent = Agent::start(&[]);
    let before = agent.metrics();
    let forks = before.sum(
        "tenantscope_agent_events_total",
        &[("probe", "process"), ("kind", "fork")],
    );
    tenantscope_tests::run_load(LOAD.as_ref(), &["--fork", "--getppid", "5000"]);
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        getppid_count(m, "ts-syscall-load") >= 10_000.0
    });
    // Parent and its forked (not exec'd) child: both count under the parent's workload.
    assert_eq!(
        getppid_count(&m, "ts-syscall-load"),
        10_000.0,
        "{}",
        agent.log_text()
    );
    for kind in ["fork", "exec", "exit"] {
        let n = m.sum(
            "tenantscope_agent_events_total",
            &[("probe", "process"), ("kind", kind)],
        );
        assert!(n >= 1.0, "no {kind} events");
    }
    assert!(m.sum("tenantscope_agent_events_total", &[("kind", "fork")]) >= forks + 2.0);
    assert_eq!(
        m.get(
            "tenantscope_agent_ringbuf_dropped_events_total",
            &[("probe", "process")]
        ),
        Some(0.0)
    );
}

/// The cgroup v2 hierarchy (hybrid hosts mount it at `unified`), where the kernel's cgroup id
/// identifies the container even after a short-lived process has exited.
fn cgroup_root() -> Option<&'static Path> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
}

#[test]
fn process_container_identity_from_a_real_cgroup() {
    if !privileged("process_container_identity_from_a_real_cgroup") {
        return;
    }
    let root = cgroup_root().expect("no cgroup hierarchy mounted");
    // The docker cgroupfs-driver layout: /docker/<64 hex id>.
    let id = format!("{:016x}", std::process::id() as u64 * 0x9e37_79b9) + &"ab12cd34".repeat(6);
    assert_eq!(id.len(), 64);
    // A cgroup v2 parent only accepts processes in leaves; `docker/<id>` is a leaf.
    let dir = root.join("docker").join(&id);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let agent = Agent::start(&[]);
    // The shell moves itself into the container cgroup, then execs the load (as runc does).
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec {LOAD} --getppid 3000",
                dir.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let workload = format!("docker/{}", &id[..12]);
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        getppid_count(m, &workload) >= 3000.0
    });
    // The shell itself calls getppid once (for $PPID) before it execs, under the same tgid.
    let n = getppid_count(&m, &workload);
    assert!(
        (3000.0..=3001.0).contains(&n),
        "{n}\n{}\n{}",
        m.raw,
        agent.log_text()
    );
    assert_eq!(
        getppid_count(&m, "ts-syscall-load"),
        0.0,
        "not attributed to the host process"
    );
    drop(agent);
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(root.join("docker"));
}
