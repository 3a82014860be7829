//! A client and a server network namespace joined by a veth pair, created for one test and
//! deleted on drop (even when the test panics).
//!
//! Everything lives inside namespaces this module creates: the veth is created directly in them
//! (`ip link add ... netns`), so the root namespace never holds an interface of ours, and no
//! traffic leaves the pair. Names carry the test's tag and the pid so that parallel runs and
//! parallel tests do not collide.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Pairs created by this process so far: makes addresses unique between concurrent tests.
static PAIRS: AtomicU32 = AtomicU32::new(0);

/// The veth end's name inside each namespace (namespaces are private, so a fixed name is fine).
const IFACE: &str = "veth0";

/// Whether the `nft` binary (Debian package `nftables`, installed by `cargo xtask setup`) runs.
pub fn has_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Panics with the fix when `nft` is missing: the tests that filter packets must not skip.
pub fn require_nft(test: &str) {
    assert!(
        has_nft(),
        "{test}: needs the `nft` binary (apt package nftables; `cargo xtask setup` installs it)"
    );
}

/// Two namespaces, `ts-<tag>-<pid>-c` (client) and `ts-<tag>-<pid>-s` (server), one veth
/// between them, IPv4 and IPv6 addresses on both ends.
pub struct NetPair {
    client: String,
    server: String,
    v4: [Ipv4Addr; 2],
    v6: [Ipv6Addr; 2],
}

impl NetPair {
    /// Creates the pair and waits until both ends can send (link up, IPv6 not tentative).
    pub fn new(tag: &str) -> NetPair {
        let pid = std::process::id();
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        // 10.<200..249>.<pid % 250>.{1,2}: unique per pair within this process, and very likely
        // across processes; the agent resolves peers by address, so uniqueness matters.
        let (a, b) = (200 + (n % 50) as u8, (pid % 250) as u8);
        // fd00:7473 ("ts"), then the pid (up to 22 bits) and the pair number.
        let net6 = [
            0xfd00,
            0x7473,
            (pid & 0xffff) as u16,
            (((pid >> 16) & 0xff) << 8 | (n & 0xff)) as u16,
        ];
        let v6 = |host: u16| Ipv6Addr::new(net6[0], net6[1], net6[2], net6[3], 0, 0, 0, host);
        // The pair exists (and its Drop runs) before anything is created, so a failure halfway
        // still cleans up what was made.
        let pair = NetPair {
            client: format!("ts-{tag}-{pid}-c"),
            server: format!("ts-{tag}-{pid}-s"),
            v4: [Ipv4Addr::new(10, a, b, 1), Ipv4Addr::new(10, a, b, 2)],
            v6: [v6(1), v6(2)],
        };
        for ns in [&pair.client, &pair.server] {
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link",
            "add",
            IFACE,
            "netns",
            &pair.client,
            "type",
            "veth",
            "peer",
            "name",
            IFACE,
            "netns",
            &pair.server,
        ]);
        for (i, ns) in [&pair.client, &pair.server].into_iter().enumerate() {
            let v4 = format!("{}/24", pair.v4[i]);
            let v6 = format!("{}/64", pair.v6[i]);
            // No duplicate address detection at all, link-local included: a tentative
            // link-local address delays the first IPv6 neighbour exchange by about a second.
            let no_dad = format!("net.ipv6.conf.{IFACE}.accept_dad=0");
            run_in(ns, &["sysctl", "-qw", &no_dad]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &v4, "dev", IFACE]);
            ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", IFACE, "nodad"]);
            ip(&["-n", ns, "link", "set", IFACE, "up"]);
        }
        pair.wait_usable();
        pair
    }

    /// Carrier on both ends and no tentative IPv6 address (`nodad` should make that immediate).
    fn wait_usable(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = [&self.client, &self.server].into_iter().all(|ns| {
                let link = ip(&["-n", ns, "-o", "link", "show", "dev", IFACE]);
                let tentative = ip(&["-n", ns, "-6", "-o", "addr", "show", "tentative"]);
                link.contains("LOWER_UP") && tentative.trim().is_empty()
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "veth between {} and {} not usable after 10 s:\n{}\n{}",
                self.client,
                self.server,
                ip(&["-n", &self.client, "addr"]),
                ip(&["-n", &self.server, "addr"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client_ns(&self) -> &str {
        &self.client
    }

    pub fn server_ns(&self) -> &str {
        &self.server
    }

    pub fn client_v4(&self) -> IpAddr {
        self.v4[0].into()
    }

    pub fn server_v4(&self) -> IpAddr {
        self.v4[1].into()
    }

    pub fn client_v6(&self) -> IpAddr {
        self.v6[0].into()
    }

    pub fn server_v6(&self) -> IpAddr {
        self.v6[1].into()
    }

    /// `cmd` run inside the client namespace (`ip netns exec` execs it, so its comm is kept).
    pub fn exec_client(&self, cmd: &Command) -> Command {
        in_netns(&self.client, cmd)
    }

    /// `cmd` run inside the server namespace.
    pub fn exec_server(&self, cmd: &Command) -> Command {
        in_netns(&self.server, cmd)
    }

    /// Applies an nft ruleset (`nft -f -` syntax) inside the server namespace.
    pub fn nft_server(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn `ip netns exec ... nft` (apt nftables)");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .expect("write the ruleset to nft");
        let out = child.wait_with_output().expect("wait for nft");
        check(&out, &format!("nft -f - in {}:\n{rules}", self.server));
    }

    /// Removes every nft rule, chain and table in the server namespace.
    pub fn nft_server_flush(&self) {
        run_in(&self.server, &["nft", "flush", "ruleset"]);
    }

    /// Sets a per-namespace sysctl in the client namespace, e.g. `net.ipv4.tcp_syn_retries`.
    pub fn sysctl_client(&self, key: &str, value: &str) {
        run_in(&self.client, &["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// The client namespace's `Tcp:` counters from `/proc/net/snmp` (ActiveOpens, AttemptFails,
    /// RetransSegs, OutRsts, EstabResets, ...): the kernel's own count of what the namespace
    /// did, which only this pair's traffic touches.
    pub fn client_tcp_mib(&self) -> TcpMib {
        tcp_mib(&self.client)
    }

    /// The server namespace's `Tcp:` counters; see [`NetPair::client_tcp_mib`].
    pub fn server_tcp_mib(&self) -> TcpMib {
        tcp_mib(&self.server)
    }
}

/// `Tcp:` fields of `/proc/net/snmp` by name (`MaxConn` is -1, hence signed).
#[derive(Debug, Clone, Default)]
pub struct TcpMib(pub BTreeMap<String, i64>);

impl TcpMib {
    /// The field's value; panics on a name the kernel does not report.
    pub fn get(&self, name: &str) -> i64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no Tcp: {name} in /proc/net/snmp: {:?}", self.0))
    }

    /// `self - before` for one field.
    pub fn delta(&self, before: &TcpMib, name: &str) -> i64 {
        self.get(name) - before.get(name)
    }
}

impl std::fmt::Display for TcpMib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.0 {
            if !matches!(k.as_str(), "RtoAlgorithm" | "RtoMin" | "RtoMax" | "MaxConn") {
                write!(f, "{k}={v} ")?;
            }
        }
        Ok(())
    }
}

fn tcp_mib(ns: &str) -> TcpMib {
    // /proc/net is the reading process's namespace view, so `cat` must run inside it.
    let snmp = run_in(ns, &["cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        panic!("no Tcp: lines in /proc/net/snmp of {ns}:\n{snmp}");
    };
    TcpMib(
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .map(|(k, v)| (k.to_owned(), v.parse().expect("numeric Tcp: field")))
            .collect(),
    )
}

/// Runs `args` inside `ns` and returns its stdout; panics with its stderr on failure.
fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("spawn ip netns exec");
    check(&out, &format!("{} in {ns}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, and with it the peer. Errors are ignored:
        // a namespace that was never created has nothing to delete.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Runs `ip args` and returns its stdout; panics with its stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("spawn ip (iproute2)");
    check(&out, &format!("ip {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
