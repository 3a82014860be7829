//! Harness for the privileged tests: start the real agent binary, scrape it, stop it.
//!
//! Tests that need root call [`privileged`]: without root they print why they skip, unless
//! `TENANTSCOPE_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test`), where skipping is a failure.

pub mod netns;
pub mod tcp_load;

pub use netns::{NetPair, TcpMib, has_nft, require_nft};

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Returns false (after printing the reason) when the test must skip for lack of root.
pub fn privileged(test: &str) -> bool {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = "needs root (loads eBPF programs)";
    if std::env::var("TENANTSCOPE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: {reason}, and TENANTSCOPE_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// The agent binary: `TENANTSCOPE_AGENT_BIN`, else next to this test's target directory.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TENANTSCOPE_AGENT_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/tenantscope-agent
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("tenantscope-agent");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build -p tenantscope-agent`; `cargo xtask test` does)",
        p.display()
    );
    p
}

/// The collector binary: `TENANTSCOPE_COLLECTOR_BIN`, else beside the agent binary.
pub fn collector_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TENANTSCOPE_COLLECTOR_BIN") {
        return p.into();
    }
    let p = agent_bin().with_file_name("tenantscope-collector");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build -p tenantscope-collector`; `cargo xtask test` does)",
        p.display()
    );
    p
}

/// A collector started by a test, killed on drop.
pub struct Collector {
    pub child: Child,
    /// API and `/metrics` port.
    pub api: u16,
    /// OTLP/gRPC port.
    pub grpc: u16,
    /// OTLP/HTTP port.
    pub http: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Collector {
    /// Starts the collector on free loopback ports with its store, config and log in `dir`;
    /// `extra` is appended to the TOML (auth, objectives, remote_write...). Waits until ready.
    pub fn start(dir: &std::path::Path, extra: &str) -> Collector {
        let (grpc, http, api) = (free_port(), free_port(), free_port());
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\notlp_grpc = \"127.0.0.1:{grpc}\"\notlp_http = \"127.0.0.1:{http}\"\n\
                 api = \"127.0.0.1:{api}\"\n\n[storage]\npath = \"{}\"\n\n{extra}",
                dir.join("collector.db").display(),
            ),
        )
        .expect("collector config");
        let log = dir.join("collector.log");
        let child = Self::spawn(&config, &log, false);
        let c = Collector {
            child,
            api,
            grpc,
            http,
            config,
            log,
        };
        c.wait_ready();
        c
    }

    fn spawn(config: &std::path::Path, log: &std::path::Path, append: bool) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(log)
            .expect("log");
        Command::new(collector_bin())
            .arg("--config")
            .arg(config)
            .stderr(file)
            .spawn()
            .expect("start the collector")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.api, "/readyz", None).map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the collector is not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash or an OOM kill would: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same configuration, ports and store (after [`Collector::kill`]);
    /// waits until ready. The log goes on in the same file.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.config, &self.log, true);
        self.wait_ready();
    }

    /// Its own `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.api, "/metrics", None).expect("scrape the collector");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Agents observe every process on the machine, so two tests with agents would see each
/// other's loads: tests in one binary take turns (cargo runs test binaries one at a time).
static ONE_AGENT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running agent, killed on drop if the test did not stop it.
pub struct Agent {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Agent {
    /// Starts the agent with `args` (plus a free port and a 1 s read interval) and waits until
    /// `/readyz` answers 200.
    pub fn start(args: &[&str]) -> Agent {
        Self::start_with(Command::new(agent_bin()), args)
    }

    /// Like [`Agent::start`] with a prepared command (e.g. a wrapper such as `unshare`).
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Agent {
        let turn = ONE_AGENT_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tenantscope-agent-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--read-interval",
            "1s",
        ])
        .args(args)
        .env("TENANTSCOPE_LOG", "info,tenantscope_agent=debug")
        .stdout(Stdio::null())
        .stderr(log_file);
        let child = cmd.spawn().expect("spawn agent");
        let mut agent = Agent {
            child: Some(child),
            port,
            log,
            _turn: turn,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("agent exited early with {status}:\n{}", agent.log_text());
            }
            if matches!(agent.get("/readyz"), Some((200, _))) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 30 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with an optional Accept header; `(status, body)`.
    pub fn get_with(&self, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
        http_get(self.port, path, accept)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_with(path, None)
    }

    /// `/metrics` in the classic text format, parsed.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Scrapes until `pred` holds or `timeout` passes; returns the last scrape.
    pub fn wait_metrics(&self, timeout: Duration, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if pred(&m) || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM, then wait up to 15 s.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "agent did not stop within 15 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal HTTP/1.0 GET against 127.0.0.1 (the server is ours; no client crate needed).
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let accept: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    http_get_headers(port, path, &accept)
}

/// [`http_get`] with request headers.
pub fn http_get_headers(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Starts nginx (one process, no access log, keep-alive without a request limit) on a free
/// loopback port with `locations` inside its `server` block, its files under `dir`; returns it
/// and the port once it accepts connections.
pub fn nginx(dir: &std::path::Path, locations: &str) -> (Child, u16) {
    std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
    let port = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n\
         server {{\n  listen 127.0.0.1:{port};\n{locations}\n }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .args(["-c", path.to_str().expect("utf-8"), "-p"])
        .arg(dir)
        .spawn()
        .expect("nginx (cargo xtask setup installs nginx-light)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// A process's resident memory (`VmRSS`), in MiB.
pub fn vm_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

/// The ids of the BPF programs and maps a process holds open, from `/proc/<pid>/fdinfo`: exactly
/// that process's objects, whatever else is loaded on the machine.
pub fn bpf_objects_of(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            let id = |key: &str| line.strip_prefix(key)?.trim().parse::<u32>().ok();
            if let Some(id) = id("prog_id:") {
                progs.insert(id);
            } else if let Some(id) = id("map_id:") {
                maps.insert(id);
            }
        }
    }
    (progs, maps)
}

/// Which of `progs` and `maps` are still loaded in the kernel.
pub fn bpf_still_loaded(
    progs: &BTreeSet<u32>,
    maps: &BTreeSet<u32>,
) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let loaded_progs: BTreeSet<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let loaded_maps: BTreeSet<u32> = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    (
        progs.intersection(&loaded_progs).copied().collect(),
        maps.intersection(&loaded_maps).copied().collect(),
    )
}

/// One sample of the classic text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parsed `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub raw: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line: {l}")))
            .collect();
        Metrics {
            samples,
            raw: text.to_owned(),
        }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the single sample matching, if any.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.find(name, labels);
        let first = it.next()?.value;
        assert!(
            it.next().is_none(),
            "{name} {labels:?} matches several samples"
        );
        Some(first)
    }

    /// Sum over all samples matching.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some(Sample {
                name: n.into(),
                labels: BTreeMap::new(),
                value: parse_value(v)?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let bytes = rest.as_bytes();
    let mut i = 1;
    loop {
        if bytes.get(i) == Some(&b'}') {
            i += 1;
            break;
        }
        let eq = rest[i..].find('=')? + i;
        let key = rest[i..eq].trim_start_matches(',').to_owned();
        let mut j = eq + 2; // skip ="
        let mut val = String::new();
        while bytes.get(j)? != &b'"' {
            if bytes[j] == b'\\' {
                j += 1;
                val.push(match bytes.get(j)? {
                    b'n' => '\n',
                    c => *c as char,
                });
            } else {
                let ch = rest[j..].chars().next()?;
                val.push(ch);
                j += ch.len_utf8() - 1;
            }
            j += 1;
        }
        labels.insert(key, val);
        i = j + 1;
        if bytes.get(i) == Some(&b',') {
            i += 1;
        }
    }
    Some(Sample {
        name: name.into(),
        labels,
        value: parse_value(rest[i..].trim())?,
    })
}

fn parse_value(v: &str) -> Option<f64> {
    match v.split_whitespace().next()? {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        x => x.parse().ok(),
    }
}

/// Runs `promtool check metrics` (apt prometheus) on a classic-text scrape; panics with its
/// report unless it is clean.
pub fn assert_promtool_clean(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt prometheus) is installed by `cargo xtask setup`");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// Python with PyPI `opentelemetry-proto`, the independent OTLP decoder (`cargo xtask setup`
/// installs it). Panics with the fix when missing: nothing may skip where setup ran.
pub fn py_otlp() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let python = PathBuf::from(home).join(".cache/tenantscope/pyotel/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup` (installs the OTLP decoder venv)",
        python.display()
    );
    python
}

/// An OTLP/HTTP receiver written in Python (`script`, run with the OTLP decoder's venv) that
/// prints its port first and then what it decodes. Its output is collected as it comes: a full
/// pipe would stall the receiver and fail the agent's exports.
pub struct PyReceiver {
    child: Child,
    output: Option<std::thread::JoinHandle<String>>,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl PyReceiver {
    pub fn start(script: &str) -> PyReceiver {
        use std::io::{BufRead as _, BufReader};
        let mut child = Command::new(py_otlp())
            .args(["-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut port = String::new();
        out.read_line(&mut port).expect("receiver port");
        let output = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        PyReceiver {
            child,
            output: Some(output),
            endpoint: format!("http://127.0.0.1:{}", port.trim()),
        }
    }

    /// Stops the receiver; everything it printed after its port.
    pub fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output
            .take()
            .and_then(|o| o.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator (file name = comm) to completion.
pub fn run_load(bin: &std::path::Path, args: &[&str]) {
    let status = Command::new(bin).args(args).status().expect("spawn load");
    assert!(status.success(), "{} {args:?}: {status}", bin.display());
}

/// Serves the request handler class `H` that a [`python_server`] script defines: threaded, on a
/// free loopback port, printed first, without request logs.
const PY_SERVE: &str = r#"
H.log_message = lambda self, *a: None
class _S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
_s = _S(("127.0.0.1", 0), H)
print(_s.server_address[1], flush=True)
_s.serve_forever()
"#;

/// Starts an HTTP server on loopback: `handler` is Python defining the request handler class
/// `H` (a `http.server.BaseHTTPRequestHandler`). Returns the process and its port line.
pub fn python_http_server(handler: &str) -> (Child, String) {
    python_server(&format!(
        "import http.server, socketserver\n{handler}\n{PY_SERVE}"
    ))
}

/// A [`python_http_server`] handler that answers `200 ok` to every GET, keep-alive.
pub const OK_HANDLER: &str = r#"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
"#;

/// Starts `python3 -c script`, which prints its listening port first; returns it and that line.
pub fn python_server(script: &str) -> (Child, String) {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    spawn_with_port(cmd)
}

/// Spawns a server that prints its listening port on its first line; returns it and that line.
pub fn spawn_with_port(mut cmd: Command) -> (Child, String) {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("the server's port");
    (child, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples() {
        let m = Metrics::parse(
            "# HELP x y\na_total 3\nb{x=\"1\",y=\"q\\\"u,o}te\"} 2.5\nc_bucket{le=\"+Inf\"} 7\n",
        );
        assert_eq!(m.get("a_total", &[]), Some(3.0));
        assert_eq!(m.get("b", &[("y", "q\"u,o}te")]), Some(2.5));
        assert_eq!(m.get("c_bucket", &[("le", "+Inf")]), Some(7.0));
    }
}
