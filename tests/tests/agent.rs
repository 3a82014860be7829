//! The agent as a whole: lifecycle, privileges, failure visibility, exposition checked by real
//! Prometheus tools.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tenantscope_tests::{Agent, agent_bin, free_port, http_get, privileged};

/// Names the kernel shows for the agent's programs and maps (truncated to 15 chars).
const PROGRAMS: [&str; 9] = [
    "sys_enter",
    "sys_exit",
    "process_fork",
    "process_exec",
    "process_exit",
    "tcp_state",
    "tcp_retransmit",
    "tcp_reset_tx",
    "tcp_reset_rx",
];
const MAPS: [&str; 12] = [
    "SYSCALL_STATS",
    "SYSCALL_START",
    "KERNEL_COUNTERS",
    "PROCESS_EVENTS",
    "TCP_CONNS",
    "TCP_STATS",
    "TCP_EVENTS",
    "HTTP_SOCKS",
    "HTTP_STASH",
    "HTTP_PENDING",
    "HTTP_EVENTS",
    ".rodata",
];

fn loaded_program_ids() -> BTreeSet<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect()
}

fn loaded_map_ids() -> BTreeSet<(u32, String)> {
    aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter_map(|m| Some((m.id(), m.name_as_str()?.to_owned())))
        .collect()
}

#[test]
fn agent_stop_leaves_no_programs_or_maps() {
    if !privileged("agent_stop_leaves_no_programs_or_maps") {
        return;
    }
    let (progs_before, maps_before) = (loaded_program_ids(), loaded_map_ids());
    let mut agent = Agent::start(&[]);
    let progs: BTreeSet<_> = loaded_program_ids()
        .difference(&progs_before)
        .cloned()
        .collect();
    let maps: BTreeSet<_> = loaded_map_ids().difference(&maps_before).cloned().collect();
    let ours = |set: &BTreeSet<(u32, String)>, names: &[&str]| -> BTreeSet<(u32, String)> {
        set.iter()
            .filter(|(_, n)| {
                names
                    .iter()
                    .any(|x| x.starts_with(n.as_str()) || n.starts_with(x))
            })
            .cloned()
            .collect()
    };
    let (progs, maps) = (ours(&progs, &PROGRAMS), ours(&maps, &MAPS));
    let prog_names: BTreeSet<&str> = progs.iter().map(|(_, n)| n.as_str()).collect();
    for p in PROGRAMS {
        assert!(
            prog_names.iter().any(|n| p.starts_with(n)),
            "{p} not loaded while running: {prog_names:?}"
        );
    }
    assert!(
        maps.len() >= 4,
        "expected the agent's maps while running: {maps:?}"
    );

    let status = agent.stop();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("stopped; all probes detached"),
        "{}",
        agent.log_text()
    );
    // Programs and maps are freed asynchronously (after an RCU grace period) once the last
    // reference goes; poll briefly rather than race the kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let progs_left: Vec<_> = progs.intersection(&loaded_program_ids()).cloned().collect();
        let maps_left: Vec<_> = maps.intersection(&loaded_map_ids()).cloned().collect();
        if progs_left.is_empty() && maps_left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left loaded 10 s after stop: programs {progs_left:?}, maps {maps_left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_sigint_also_stops_cleanly() {
    if !privileged("agent_sigint_also_stops_cleanly") {
        return;
    }
    let mut agent = Agent::start(&[]);
    let child = agent.child.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", out.status, agent.log_text());
}

#[test]
fn agent_unprivileged_fails_with_an_actionable_error() {
    if !privileged("agent_unprivileged_fails_with_an_actionable_error") {
        return;
    }
    // Drop to nobody with no capabilities; the listener binds fine, loading must not.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(agent_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("setpriv (util-linux) is installed by `cargo xtask setup`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not privileged") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn agent_missing_tracefs_fails_the_process_probe_only() {
    if !privileged("agent_missing_tracefs_fails_the_process_probe_only") {
        return;
    }
    // A private mount namespace without tracefs: the raw-tracepoint syscalls probe does not
    // need it, the process probe does.
    let script = "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
                  umount /sys/kernel/debug 2>/dev/null; exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(agent_bin());
    let agent = Agent::start_with(cmd, &[]);
    let m = agent.metrics();
    let status = |probe: &str, s: &str| {
        m.get(
            "tenantscope_agent_probe_status",
            &[("probe", probe), ("status", s)],
        )
    };
    assert_eq!(status("process", "failed"), Some(1.0), "{}", m.raw);
    assert_eq!(status("process", "attached"), Some(0.0));
    assert_eq!(status("syscalls", "attached"), Some(1.0));
    let log = agent.log_text();
    assert!(
        log.contains("tracefs is not mounted") && log.contains("mount -t tracefs"),
        "{log}"
    );
    // The syscalls probe keeps working.
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        m.find("tenantscope_syscall_duration_seconds_count", &[])
            .count()
            > 0
    });
    assert!(
        m.find("tenantscope_syscall_duration_seconds_count", &[])
            .count()
            > 0
    );
}

#[test]
fn agent_health_endpoints_and_content_negotiation() {
    if !privileged("agent_health_endpoints_and_content_negotiation") {
        return;
    }
    let agent = Agent::start(&[]);
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(agent.get("/readyz").map(|r| r.0), Some(200));
    let (status, om) = agent
        .get_with(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "OpenMetrics must end with # EOF");
    assert!(om.contains("# TYPE tenantscope_agent_build info"));
    let text = agent.get("/metrics").unwrap().1;
    assert!(!text.contains("# EOF") && text.contains("# TYPE tenantscope_agent_build_info gauge"));
    let m = agent.metrics();
    for probe in ["syscalls", "process"] {
        assert_eq!(
            m.get(
                "tenantscope_agent_probe_status",
                &[("probe", probe), ("status", "attached")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        m.get(
            "tenantscope_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

#[test]
fn agent_metrics_pass_promtool_check_metrics() {
    if !privileged("agent_metrics_pass_promtool_check_metrics") {
        return;
    }
    let agent = Agent::start(&[]);
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        m.find("tenantscope_syscall_errors_total", &[]).count() > 0
    });
    tenantscope_tests::assert_promtool_clean(&m.raw);
}

/// A real Prometheus scrapes the agent (negotiating OpenMetrics) and can query its series.
#[test]
fn agent_is_scraped_by_a_real_prometheus() {
    if !privileged("agent_is_scraped_by_a_real_prometheus") {
        return;
    }
    let agent = Agent::start(&[]);
    let dir = std::env::temp_dir().join(format!("ts-prom-{}", agent.port));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: agent\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            agent.port
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt) is installed by `cargo xtask setup`");
    let query = |q: &str| {
        http_get(prom_port, &format!("/api/v1/query?query={q}"), None)
            .map(|r| r.1)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = query(
            "count(tenantscope_syscall_duration_seconds_bucket)%20and%20on()%20up%7Bjob%3D%22agent%22%7D%3D%3D1",
        );
        if last.contains("\"result\":[{") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let build = query("tenantscope_agent_build_info");
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        last.contains("\"result\":[{"),
        "Prometheus did not ingest the syscall histograms: {last}"
    );
    assert!(build.contains("tenantscope_agent_build_info"), "{build}");
}

#[test]
fn agent_config_errors_name_the_field() {
    // Needs no privileges: configuration is validated before anything is loaded.
    let out = Command::new(agent_bin())
        .args(["--read-interval", "0s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("read-interval") || stderr.contains("read_interval"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("ts-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(&file, "[workloads]\nmaximum = 3\n").unwrap();
    let out = Command::new(agent_bin())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("maximum"), "unknown field named: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);

    let help = Command::new(agent_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--config",
        "--max-workloads",
        "--syscall-hook",
        "--disable-probe",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn agent_busy_port_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let out = Command::new(agent_bin())
        .args(["--listen", &addr.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
}

/// CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON and CAP_BPF: what the DaemonSet adds.
const DOCUMENTED_CAPS: &str = "+dac_read_search,+sys_ptrace,+perfmon,+bpf";

/// A Python HTTP server running as nobody (another user than the agent), started before the
/// agent so that only the agent's `/proc` scan can find its listening socket.
fn server_as_nobody() -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let script = "import http.server\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20   protocol_version = 'HTTP/1.1'\n\
        \x20   def do_GET(self):\n\
        \x20       self.send_response(200); self.send_header('Content-Length', '2')\n\
        \x20       self.end_headers(); self.wfile.write(b'ok')\n\
        \x20   def log_message(self, *a): pass\n\
        s = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
        print(s.server_address[1], flush=True)\n\
        s.serve_forever()\n";
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            // The system interpreter: a user's (pyenv) may live where nobody cannot read.
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("port");
    (child, line.trim().parse().expect("port"))
}

/// `CapEff` of a process, as the kernel reports it.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).expect("hex")
}

fn agent_with_caps(caps: &str) -> Agent {
    let mut cmd = Command::new("setpriv");
    // Still uid 0 (as in the DaemonSet), but the bounding set leaves only `caps`.
    cmd.args([
        &format!("--bounding-set=-all,{caps}"),
        "--inh-caps=-all",
        "--",
    ])
    .arg(agent_bin());
    Agent::start_with(cmd, &[])
}

/// The agent with exactly the capabilities the DaemonSet gives it: every probe attaches, a
/// request is counted, and the listening socket of another user's process, found only in its
/// `/proc` (SYS_PTRACE, DAC_READ_SEARCH), is known. Without those two it is not.
#[test]
fn agent_runs_with_only_its_documented_capabilities() {
    if !privileged("agent_runs_with_only_its_documented_capabilities") {
        return;
    }
    let (mut server, port) = server_as_nobody();
    let listen = |m: &tenantscope_tests::Metrics| {
        m.get(
            "tenantscope_tcp_listen_info",
            &[("port", port.to_string().as_str()), ("family", "ipv4")],
        )
    };

    let agent = agent_with_caps(DOCUMENTED_CAPS);
    let want = (1u64 << 2) | (1 << 19) | (1 << 38) | (1 << 39);
    assert_eq!(
        effective_caps(agent.pid()),
        want,
        "exactly CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON and CAP_BPF"
    );
    let (status, _) = tenantscope_tests::http_get(port, "/caps", None).expect("request");
    assert_eq!(status, 200);
    let m = agent.wait_metrics(Duration::from_secs(15), |m| {
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("http_route", "/caps")],
        ) >= 1.0
            && listen(m).is_some()
    });
    for probe in ["process", "syscalls", "tcp", "http"] {
        assert_eq!(
            m.get(
                "tenantscope_agent_probe_status",
                &[("probe", probe), ("status", "attached")]
            ),
            Some(1.0),
            "{probe}:\n{}",
            agent.log_text()
        );
    }
    assert_eq!(
        m.sum(
            "http_server_request_duration_seconds_count",
            &[("http_route", "/caps")]
        ),
        1.0
    );
    assert_eq!(
        listen(&m),
        Some(1.0),
        "the other user's listener, from /proc"
    );
    drop(agent);

    // Without SYS_PTRACE and DAC_READ_SEARCH the probes still attach, but another user's
    // /proc/<pid>/fd is closed to the agent: the listener stays unknown.
    let agent = agent_with_caps("+perfmon,+bpf");
    let m = agent.wait_metrics(Duration::from_secs(3), |_| false);
    assert_eq!(
        m.get(
            "tenantscope_agent_probe_status",
            &[("probe", "http"), ("status", "attached")]
        ),
        Some(1.0)
    );
    assert_eq!(listen(&m), None, "{}", m.raw);
    drop(agent);
    let _ = server.kill();
    let _ = server.wait();
}
