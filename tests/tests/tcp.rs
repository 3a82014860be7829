//! `tcp` probe, end to end: a server and a client with exactly known traffic, each in its own
//! network namespace of a [`NetPair`], the real agent, /metrics.
//!
//! The namespaces are the test's own, so their kernel counters (`/proc/net/snmp`) are an
//! independent record of what happened; failure messages show them next to the agent's numbers.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tenantscope_tests::{Agent, Metrics, NetPair, privileged, require_nft};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ts-tcp-server");
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_ts-tcp-client");
/// Workload names: the binaries' file names, which are their `comm`.
const SERVER: &str = "ts-tcp-server";
const CLIENT: &str = "ts-tcp-client";

const OPENED: &str = "tenantscope_tcp_connections_opened_total";
const CLOSED: &str = "tenantscope_tcp_connections_closed_total";
const OPEN: &str = "tenantscope_tcp_connections_open";
const FAILURES: &str = "tenantscope_tcp_connect_failures_total";
const DURATION: &str = "tenantscope_tcp_connection_duration_seconds";
const BYTES: &str = "tenantscope_tcp_bytes_total";
const RETRANSMITS: &str = "tenantscope_tcp_retransmitted_segments_total";
const RESETS: &str = "tenantscope_tcp_resets_total";
const RTT: &str = "tenantscope_tcp_rtt_seconds";
const LISTEN: &str = "tenantscope_tcp_listen_info";
const EVENTS: &str = "tenantscope_agent_events_total";

/// How long the agent gets to report a finished run (it reads its maps every second).
const SETTLE: Duration = Duration::from_secs(15);
/// Upper bound for one load process; each is far faster unless something is broken.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// All tests here take turns, the agent-less one included: the agent counts every process on
/// the machine, so another test's clients would be counted as this test's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The `family` label of `tenantscope_tcp_listen_info`.
    fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn server(self, pair: &NetPair) -> IpAddr {
        match self {
            Family::V4 => pair.server_v4(),
            Family::V6 => pair.server_v6(),
        }
    }
}

fn addr(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A `ts-tcp-server` in the server namespace; killed on drop if the test did not finish it.
struct Server {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Server {
    /// Starts the server on an ephemeral port of `ip` and waits for its `READY <port>`.
    fn start(pair: &NetPair, ip: IpAddr, args: &[&str]) -> Server {
        let mut cmd = Command::new(SERVER_BIN);
        cmd.args(["--listen", &addr(ip, 0)]).args(args);
        let mut child = pair
            .exec_server(&cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ts-tcp-server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read server stdout");
        let Some(port) = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait server");
            panic!(
                "ts-tcp-server {args:?} did not get ready: {line:?}, {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Server {
            child: Some(child),
            stdout,
            port,
        }
    }

    /// Waits for the server to serve all its connections and exit 0; returns its summary line.
    fn finish(mut self) -> String {
        let child = self.child.take().expect("running");
        let out = wait_bounded(child, "ts-tcp-server");
        let mut summary = String::new();
        self.stdout
            .read_to_string(&mut summary)
            .expect("read server stdout");
        assert!(
            out.status.success(),
            "ts-tcp-server: {}\n{}{summary}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        summary
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits at most [`PROCESS_LIMIT`] for `child`, killing it past that; returns its output.
fn wait_bounded(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + PROCESS_LIMIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{what} still running after {PROCESS_LIMIT:?}; killed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// `ts-tcp-client args` spawned in the client namespace, stdout and stderr piped.
fn spawn_client(pair: &NetPair, args: &[&str], stdin: Stdio) -> Child {
    let mut cmd = Command::new(CLIENT_BIN);
    cmd.args(args);
    pair.exec_client(&cmd)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ts-tcp-client")
}

/// Waits for a client started by [`spawn_client`]; it must exit 0. Returns its summary line.
fn finish_client(child: Child, args: &[&str]) -> String {
    let out = wait_bounded(child, "ts-tcp-client");
    assert!(
        out.status.success(),
        "ts-tcp-client {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ts-tcp-client args` in the client namespace to completion; it must exit 0.
fn client(pair: &NetPair, args: &[&str]) -> String {
    finish_client(spawn_client(pair, args, Stdio::null()), args)
}

/// Sum of `name` over the samples of one workload and direction (0 when there are none).
fn side(m: &Metrics, name: &str, workload: &str, direction: &str) -> f64 {
    m.sum(name, &[("workload", workload), ("direction", direction)])
}

/// The tcp samples, both namespaces' kernel counters and the agent log's tail, for failures.
fn context(agent: &Agent, m: &Metrics, pair: &NetPair) -> String {
    let metrics: Vec<&str> = m
        .raw
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("tenantscope_tcp_") || l.contains("probe=\"tcp\""))
        })
        .collect();
    let log = agent.log_text();
    let tail: Vec<&str> = log.lines().rev().take(150).collect();
    format!(
        "\n--- tcp metrics ---\n{}\n--- kernel counters ---\nclient ns: {}\nserver ns: {}\n\
         --- agent log (last 150 lines) ---\n{}",
        metrics.join("\n"),
        pair.client_tcp_mib(),
        pair.server_tcp_mib(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Scrapes until `pred` holds (or [`SETTLE`] passes), then once more a little over one read
/// interval later, so that a late double count shows up instead of slipping past the check.
fn settle(agent: &Agent, pred: impl Fn(&Metrics) -> bool) -> Metrics {
    agent.wait_metrics(SETTLE, pred);
    std::thread::sleep(Duration::from_millis(1500));
    agent.metrics()
}

/// Waits until the agent reports the server's listening socket.
fn wait_listen_info(agent: &Agent, pair: &NetPair, family: Family, port: u16) {
    let port = port.to_string();
    let labels = [
        ("workload", SERVER),
        ("family", family.label()),
        ("port", port.as_str()),
    ];
    let m = agent.wait_metrics(SETTLE, |m| m.get(LISTEN, &labels).is_some());
    assert_eq!(
        m.get(LISTEN, &labels),
        Some(1.0),
        "{LISTEN} {labels:?}{}",
        context(agent, &m, pair)
    );
}

/// Every connection is counted exactly once on each side, and all of them are closed again.
fn connections_counted_exactly(family: Family, tag: &str) {
    const N: u64 = 25;
    let _turn = serial();
    let agent = Agent::start(&[]);
    let pair = NetPair::new(tag);
    let ip = family.server(&pair);
    let server = Server::start(
        &pair,
        ip,
        &[
            "--accept",
            &N.to_string(),
            "--recv-bytes",
            "100",
            "--send-bytes",
            "200",
        ],
    );
    // While the server listens: the listener may be forgotten once it closes.
    wait_listen_info(&agent, &pair, family, server.port);
    client(
        &pair,
        &[
            "--connect",
            &addr(ip, server.port),
            "--count",
            &N.to_string(),
            "--send-bytes",
            "100",
            "--recv-bytes",
            "200",
        ],
    );
    server.finish();
    assert_eq!(pair.client_tcp_mib().get("ActiveOpens"), N as i64);
    assert_eq!(pair.server_tcp_mib().get("PassiveOpens"), N as i64);

    let n = N as f64;
    let duration_count = |m: &Metrics, w: &str, d: &str, peer: &str| {
        m.sum(
            &format!("{DURATION}_count"),
            &[("workload", w), ("direction", d), ("peer", peer)],
        )
    };
    let m = settle(&agent, |m| {
        side(m, CLOSED, CLIENT, "active") >= n
            && side(m, CLOSED, SERVER, "passive") >= n
            && duration_count(m, CLIENT, "active", SERVER) >= n
            && duration_count(m, SERVER, "passive", CLIENT) >= n
    });
    let ctx = context(&agent, &m, &pair);
    for (w, d) in [(CLIENT, "active"), (SERVER, "passive")] {
        assert_eq!(side(&m, OPENED, w, d), n, "{OPENED} {w} {d}{ctx}");
        assert_eq!(side(&m, CLOSED, w, d), n, "{CLOSED} {w} {d}{ctx}");
        assert_eq!(side(&m, OPEN, w, d), 0.0, "{OPEN} {w} {d}{ctx}");
    }
    // Nothing lands on the wrong side.
    assert_eq!(side(&m, OPENED, CLIENT, "passive"), 0.0, "{ctx}");
    assert_eq!(side(&m, OPENED, SERVER, "active"), 0.0, "{ctx}");
    assert_eq!(
        duration_count(&m, CLIENT, "active", SERVER),
        n,
        "{DURATION}_count client -> server{ctx}"
    );
    assert_eq!(
        duration_count(&m, SERVER, "passive", CLIENT),
        n,
        "{DURATION}_count server <- client{ctx}"
    );
    // Small payloads are exact too: 100 bytes out and 200 back per connection.
    let bytes = |w: &str, d: &str, peer: &str, io: &str| {
        m.sum(
            BYTES,
            &[
                ("workload", w),
                ("direction", d),
                ("peer", peer),
                ("network_io_direction", io),
            ],
        )
    };
    assert_eq!(
        bytes(CLIENT, "active", SERVER, "transmit"),
        100.0 * n,
        "{ctx}"
    );
    assert_eq!(
        bytes(CLIENT, "active", SERVER, "receive"),
        200.0 * n,
        "{ctx}"
    );
    assert_eq!(
        bytes(SERVER, "passive", CLIENT, "transmit"),
        200.0 * n,
        "{ctx}"
    );
    assert_eq!(
        bytes(SERVER, "passive", CLIENT, "receive"),
        100.0 * n,
        "{ctx}"
    );
    // One close event per connection at most, but the machine's other connections (the
    // scrapes of this very test included) add theirs: only a lower bound holds.
    let events = m.sum(EVENTS, &[("probe", "tcp"), ("kind", "close")]);
    assert!(events >= n, "{EVENTS} close {events} < {n}{ctx}");
}

#[test]
fn tcp_connections_counted_exactly_both_sides_ipv4() {
    if privileged("tcp_connections_counted_exactly_both_sides_ipv4") {
        connections_counted_exactly(Family::V4, "cnt4");
    }
}

#[test]
fn tcp_connections_counted_exactly_both_sides_ipv6() {
    if privileged("tcp_connections_counted_exactly_both_sides_ipv6") {
        connections_counted_exactly(Family::V6, "cnt6");
    }
}

/// Payload bytes each way, per side and peer, with transfers large enough to span many
/// segments and windows.
fn bytes_exact_each_way(family: Family, tag: &str) {
    const N: u64 = 3;
    const UP: u64 = 100_000;
    const DOWN: u64 = 250_000;
    let _turn = serial();
    let agent = Agent::start(&[]);
    let pair = NetPair::new(tag);
    let ip = family.server(&pair);
    let server = Server::start(
        &pair,
        ip,
        &[
            "--accept",
            &N.to_string(),
            "--recv-bytes",
            &UP.to_string(),
            "--send-bytes",
            &DOWN.to_string(),
        ],
    );
    client(
        &pair,
        &[
            "--connect",
            &addr(ip, server.port),
            "--count",
            &N.to_string(),
            "--send-bytes",
            &UP.to_string(),
            "--recv-bytes",
            &DOWN.to_string(),
        ],
    );
    server.finish();

    let bytes = |m: &Metrics, w: &str, d: &str, peer: &str, io: &str| {
        m.sum(
            BYTES,
            &[
                ("workload", w),
                ("direction", d),
                ("peer", peer),
                ("network_io_direction", io),
            ],
        )
    };
    let (up, down) = ((N * UP) as f64, (N * DOWN) as f64);
    let m = settle(&agent, |m| {
        bytes(m, CLIENT, "active", SERVER, "receive") >= down
            && bytes(m, SERVER, "passive", CLIENT, "receive") >= up
    });
    let ctx = context(&agent, &m, &pair);
    assert_eq!(bytes(&m, CLIENT, "active", SERVER, "transmit"), up, "{ctx}");
    assert_eq!(
        bytes(&m, CLIENT, "active", SERVER, "receive"),
        down,
        "{ctx}"
    );
    assert_eq!(
        bytes(&m, SERVER, "passive", CLIENT, "transmit"),
        down,
        "{ctx}"
    );
    assert_eq!(bytes(&m, SERVER, "passive", CLIENT, "receive"), up, "{ctx}");
    // One smoothed RTT per closed connection and side.
    for (w, d, peer) in [(CLIENT, "active", SERVER), (SERVER, "passive", CLIENT)] {
        let labels = [("workload", w), ("direction", d), ("peer", peer)];
        let count = m.sum(&format!("{RTT}_count"), &labels);
        assert_eq!(count, N as f64, "{RTT}_count {labels:?}{ctx}");
        let inf = m.sum(
            &format!("{RTT}_bucket"),
            &[
                ("workload", w),
                ("direction", d),
                ("peer", peer),
                ("le", "+Inf"),
            ],
        );
        assert_eq!(inf, count, "{RTT}_bucket +Inf {labels:?}{ctx}");
        let sum = m.sum(&format!("{RTT}_sum"), &labels);
        assert!(sum.is_finite() && sum >= 0.0, "{RTT}_sum {sum}{ctx}");
    }
}

#[test]
fn tcp_bytes_exact_each_way_ipv4() {
    if privileged("tcp_bytes_exact_each_way_ipv4") {
        bytes_exact_each_way(Family::V4, "byt4");
    }
}

#[test]
fn tcp_bytes_exact_each_way_ipv6() {
    if privileged("tcp_bytes_exact_each_way_ipv6") {
        bytes_exact_each_way(Family::V6, "byt6");
    }
}

/// nft rules for the server namespace: SYNs to `port` vanish (connects time out).
fn drop_syns(port: u16) -> String {
    format!(
        "table inet ts_test {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         tcp dport {port} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
    )
}

/// nft rules for the server namespace: every TCP segment to `port` vanishes.
fn drop_all(port: u16) -> String {
    format!(
        "table inet ts_test {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         tcp dport {port} drop\n  }}\n}}\n"
    )
}

#[test]
fn tcp_failed_connects_by_reason() {
    const TEST: &str = "tcp_failed_connects_by_reason";
    if !privileged(TEST) {
        return;
    }
    require_nft(TEST);
    const REFUSED_EACH: u64 = 5;
    // Nothing listens in the fresh server namespace: every port is closed.
    const CLOSED_PORT: u16 = 9;
    const DROPPED_PORT: u16 = 7;
    let _turn = serial();
    let agent = Agent::start(&[]);
    let pair = NetPair::new("fail");
    for ip in [pair.server_v4(), pair.server_v6()] {
        client(
            &pair,
            &[
                "--connect",
                &addr(ip, CLOSED_PORT),
                "--count",
                &REFUSED_EACH.to_string(),
                "--expect",
                "refused",
            ],
        );
    }
    // One SYN retransmit, then ETIMEDOUT after about 3 s; both families at once.
    pair.sysctl_client("net.ipv4.tcp_syn_retries", "1");
    pair.nft_server(&drop_syns(DROPPED_PORT));
    let targets = [
        addr(pair.server_v4(), DROPPED_PORT),
        addr(pair.server_v6(), DROPPED_PORT),
    ];
    let running: Vec<_> = targets
        .iter()
        .map(|t| {
            let args = ["--connect", t.as_str(), "--expect", "timeout"];
            (spawn_client(&pair, &args, Stdio::null()), args)
        })
        .collect();
    for (child, args) in running {
        finish_client(child, &args);
    }
    pair.nft_server_flush();
    let kernel = pair.client_tcp_mib();
    assert_eq!(
        kernel.get("AttemptFails"),
        2 * REFUSED_EACH as i64 + 2,
        "client ns: {kernel}"
    );

    let reason = |m: &Metrics, r: &str| m.sum(FAILURES, &[("workload", CLIENT), ("reason", r)]);
    let refused = (2 * REFUSED_EACH) as f64;
    let m = settle(&agent, |m| {
        reason(m, "refused") >= refused && reason(m, "timeout") >= 2.0
    });
    let ctx = context(&agent, &m, &pair);
    assert_eq!(reason(&m, "refused"), refused, "refused{ctx}");
    assert_eq!(reason(&m, "timeout"), 2.0, "timeout{ctx}");
    for other in ["unreachable", "aborted", "other"] {
        assert_eq!(reason(&m, other), 0.0, "{other}{ctx}");
    }
    // Connections that never opened are no connections.
    let all = |name: &str| m.sum(name, &[("workload", CLIENT)]);
    assert_eq!(all(OPENED), 0.0, "{OPENED}{ctx}");
    assert_eq!(all(CLOSED), 0.0, "{CLOSED}{ctx}");
    assert_eq!(all(OPEN), 0.0, "{OPEN}{ctx}");
    assert_eq!(all(&format!("{DURATION}_count")), 0.0, "{ctx}");
}

#[test]
fn tcp_loss_causes_retransmits_and_reset_is_counted() {
    const TEST: &str = "tcp_loss_causes_retransmits_and_reset_is_counted";
    if !privileged(TEST) {
        return;
    }
    require_nft(TEST);
    const BYTES_UP: &str = "300000";
    let _turn = serial();
    let agent = Agent::start(&[]);
    let pair = NetPair::new("loss");
    let ip = pair.server_v4();

    // 1. The client connects, then the server namespace drops everything to the port while the
    // client sends; after 1.5 s the rule goes and retransmissions deliver the data.
    let server = Server::start(
        &pair,
        ip,
        &[
            "--accept",
            "1",
            "--recv-bytes",
            BYTES_UP,
            "--send-bytes",
            "10",
        ],
    );
    let target = addr(ip, server.port);
    let args = [
        "--connect",
        &target,
        "--send-bytes",
        BYTES_UP,
        "--recv-bytes",
        "10",
        "--wait-stdin",
    ];
    let mut lossy = spawn_client(&pair, &args, Stdio::piped());
    let mut line = String::new();
    BufReader::new(lossy.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("client stdout");
    assert!(line.starts_with("CONNECTED "), "client said {line:?}");
    pair.nft_server(&drop_all(server.port));
    lossy
        .stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("release the client");
    std::thread::sleep(Duration::from_millis(1500));
    pair.nft_server_flush();
    finish_client(lossy, &args);
    server.finish();
    assert!(
        pair.client_tcp_mib().get("RetransSegs") > 0,
        "the drop rule caused no retransmit"
    );

    // 2. The server resets the connection (SO_LINGER 0) after reading the client's bytes.
    // tcp_disconnect() moves the socket to TCP_CLOSE *before* it sends the reset, so this also
    // checks that the probe attributes resets of just-closed sockets.
    let server = Server::start(
        &pair,
        ip,
        &["--accept", "1", "--recv-bytes", "1000", "--reset"],
    );
    client(
        &pair,
        &[
            "--connect",
            &addr(ip, server.port),
            "--send-bytes",
            "1000",
            "--expect",
            "reset",
        ],
    );
    server.finish();

    let resets = |m: &Metrics, w: &str, d: &str, io: &str| {
        m.sum(
            RESETS,
            &[
                ("workload", w),
                ("direction", d),
                ("network_io_direction", io),
            ],
        )
    };
    let m = settle(&agent, |m| {
        side(m, RETRANSMITS, CLIENT, "active") > 0.0
            && resets(m, SERVER, "passive", "transmit") >= 1.0
            && resets(m, CLIENT, "active", "receive") >= 1.0
            && side(m, CLOSED, CLIENT, "active") >= 2.0
    });
    let ctx = context(&agent, &m, &pair);
    let retrans = side(&m, RETRANSMITS, CLIENT, "active");
    // Only the client's sockets live in its namespace: the kernel's segment count there is the
    // ground truth, and the probe reads the same per-socket counter.
    let kernel_retrans = pair.client_tcp_mib().get("RetransSegs");
    assert!(retrans > 0.0, "{RETRANSMITS} client {retrans}{ctx}");
    assert_eq!(
        retrans, kernel_retrans as f64,
        "{RETRANSMITS} client vs the kernel's RetransSegs{ctx}"
    );
    assert_eq!(
        resets(&m, SERVER, "passive", "transmit"),
        1.0,
        "one RST sent by the server (after its close){ctx}"
    );
    assert_eq!(
        resets(&m, CLIENT, "active", "receive"),
        1.0,
        "one RST received by the client{ctx}"
    );
    // Both connections were established and closed once, the reset one included.
    assert_eq!(side(&m, OPENED, CLIENT, "active"), 2.0, "{ctx}");
    assert_eq!(side(&m, CLOSED, CLIENT, "active"), 2.0, "{ctx}");
    assert_eq!(side(&m, OPEN, CLIENT, "active"), 0.0, "{ctx}");
}

#[test]
fn tcp_promtool_check_metrics_clean() {
    if !privileged("tcp_promtool_check_metrics_clean") {
        return;
    }
    let _turn = serial();
    let agent = Agent::start(&[]);
    let pair = NetPair::new("prom");
    let ip = pair.server_v4();
    let server = Server::start(
        &pair,
        ip,
        &["--accept", "3", "--recv-bytes", "10", "--send-bytes", "10"],
    );
    let target = addr(ip, server.port);
    client(
        &pair,
        &[
            "--connect",
            &target,
            "--count",
            "3",
            "--send-bytes",
            "10",
            "--recv-bytes",
            "10",
        ],
    );
    server.finish();
    client(
        &pair,
        &[
            "--connect",
            &addr(ip, 9),
            "--count",
            "2",
            "--expect",
            "refused",
        ],
    );
    let m = agent.wait_metrics(SETTLE, |m| {
        side(m, CLOSED, CLIENT, "active") >= 3.0 && m.sum(FAILURES, &[("workload", CLIENT)]) >= 2.0
    });
    assert!(
        side(&m, CLOSED, CLIENT, "active") >= 3.0,
        "no tcp metrics to check{}",
        context(&agent, &m, &pair)
    );
    tenantscope_tests::assert_promtool_clean(&m.raw);
}

/// The load itself, without the agent, against the namespaces' own kernel counters: when an
/// agent test fails, this one says whether the traffic was what the test meant.
#[test]
fn tcp_load_generates_the_intended_traffic() {
    const TEST: &str = "tcp_load_generates_the_intended_traffic";
    if !privileged(TEST) {
        return;
    }
    require_nft(TEST);
    let _turn = serial();
    let pair = NetPair::new("load");
    let (c0, s0) = (pair.client_tcp_mib(), pair.server_tcp_mib());

    // Orderly connections, both families, exact bytes (the bins check the counts themselves).
    for ip in [pair.server_v4(), pair.server_v6()] {
        let server = Server::start(
            &pair,
            ip,
            &[
                "--accept",
                "4",
                "--recv-bytes",
                "70000",
                "--send-bytes",
                "90000",
            ],
        );
        let summary = client(
            &pair,
            &[
                "--connect",
                &addr(ip, server.port),
                "--count",
                "4",
                "--send-bytes",
                "70000",
                "--recv-bytes",
                "90000",
            ],
        );
        assert!(
            summary.contains("\"sent\":280000,\"received\":360000"),
            "{summary}"
        );
        let summary = server.finish();
        assert!(
            summary.contains("\"received\":280000,\"sent\":360000"),
            "{summary}"
        );
    }
    let (c1, s1) = (pair.client_tcp_mib(), pair.server_tcp_mib());
    assert_eq!(c1.delta(&c0, "ActiveOpens"), 8, "client: {c1}");
    assert_eq!(s1.delta(&s0, "PassiveOpens"), 8, "server: {s1}");
    assert_eq!(c1.delta(&c0, "AttemptFails"), 0, "client: {c1}");
    assert_eq!(c1.delta(&c0, "EstabResets"), 0, "client: {c1}");

    // Refused: the server namespace answers each SYN with an RST.
    client(
        &pair,
        &[
            "--connect",
            &addr(pair.server_v4(), 9),
            "--count",
            "3",
            "--expect",
            "refused",
        ],
    );
    let (c2, s2) = (pair.client_tcp_mib(), pair.server_tcp_mib());
    assert_eq!(c2.delta(&c1, "AttemptFails"), 3, "client: {c2}");
    assert_eq!(s2.delta(&s1, "OutRsts"), 3, "server: {s2}");

    // Timeout: SYNs dropped, TCP_SYNCNT 1 through the client's own flag this time.
    pair.nft_server(&drop_syns(7));
    let t0 = Instant::now();
    client(
        &pair,
        &[
            "--connect",
            &addr(pair.server_v6(), 7),
            "--expect",
            "timeout",
            "--syn-retries",
            "1",
        ],
    );
    eprintln!("{TEST}: connect timed out after {:?}", t0.elapsed());
    pair.nft_server_flush();
    let c3 = pair.client_tcp_mib();
    assert_eq!(c3.delta(&c2, "AttemptFails"), 1, "client: {c3}");
    // At least one SYN retransmit (6.x with tcp_syn_linear_timeouts sends two in those 3 s).
    assert!(c3.delta(&c2, "RetransSegs") >= 1, "SYN retransmits: {c3}");

    // Reset: SO_LINGER 0 on the server.
    let server = Server::start(
        &pair,
        pair.server_v4(),
        &["--accept", "1", "--recv-bytes", "1000", "--reset"],
    );
    client(
        &pair,
        &[
            "--connect",
            &addr(pair.server_v4(), server.port),
            "--send-bytes",
            "1000",
            "--expect",
            "reset",
        ],
    );
    server.finish();
    let (c4, s4) = (pair.client_tcp_mib(), pair.server_tcp_mib());
    assert_eq!(s4.delta(&s2, "OutRsts"), 1, "server: {s4}");
    assert_eq!(c4.delta(&c3, "EstabResets"), 1, "client: {c4}");

    // Loss: everything to the port dropped for 1.5 s while the client sends.
    let server = Server::start(
        &pair,
        pair.server_v4(),
        &[
            "--accept",
            "1",
            "--recv-bytes",
            "300000",
            "--send-bytes",
            "10",
        ],
    );
    let target = addr(pair.server_v4(), server.port);
    let args = [
        "--connect",
        &target,
        "--send-bytes",
        "300000",
        "--recv-bytes",
        "10",
        "--pause-ms",
        "500",
    ];
    let lossy = spawn_client(&pair, &args, Stdio::null());
    // --pause-ms: the client connects, then waits before writing; the rule goes in meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pair.client_tcp_mib().get("CurrEstab") < 1 {
        assert!(
            Instant::now() < deadline,
            "the lossy client never connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pair.nft_server(&drop_all(server.port));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    pair.nft_server_flush();
    finish_client(lossy, &args);
    server.finish();
    eprintln!(
        "{TEST}: lossy transfer finished {:?} after the drop rule went in",
        t0.elapsed()
    );
    let c5 = pair.client_tcp_mib();
    assert!(c5.delta(&c4, "RetransSegs") > 0, "client: {c5}");
}
