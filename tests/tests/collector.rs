//! End to end: real HTTP traffic on loopback -> the agent's kernel probes -> OTLP metrics and
//! spans -> the collector -> SLA report. The report's request totals, availability and latency
//! attainment per tenant must equal the scripted workload's ground truth.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tenantscope_tests::{
    Agent, Collector, collector_bin, http_get_headers, privileged, python_http_server,
};

const SERVER: &str = r#"
import http.server, socketserver, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        code = {"/fail": 503, "/missing": 404}.get(path, 200)
        if path == "/slow":
            time.sleep(0.4)
        body = b"ok"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"#;

const CLIENT: &str = r#"
import http.client, json, sys
port, plan = int(sys.argv[1]), json.loads(sys.argv[2])
for tenant, paths in plan.items():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for path, n in paths.items():
        for _ in range(n):
            conn.request("GET", path, headers={"X-Tenant-ID": tenant})
            r = conn.getresponse(); r.read()
    conn.close()
"#;

/// (tenant, ok, fail (503), slow (0.4 s, over the 250 ms threshold), missing (404)).
const PLAN: [(&str, u64, u64, u64, u64); 3] = [
    ("acme", 30, 4, 6, 2),
    ("globex", 25, 0, 0, 0),
    ("initech", 5, 5, 2, 0),
];

const AGENT_TOKEN: &str = "e2e-agent-token";
const ADMIN_TOKEN: &str = "e2e-admin-token";

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

fn start_collector(dir: &std::path::Path) -> Collector {
    Collector::start(
        dir,
        &format!(
            "[[auth.tokens]]\nname = \"agents\"\nrole = \"agent\"\nsha256 = \"{}\"\n\n\
             [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n\
             [objectives]\ndefault_tier = \"gold\"\n\n[objectives.tiers.gold]\n\
             availability = 99.0\nlatency_threshold = \"250ms\"\nlatency_target = 90.0\n\
             period = \"calendar_month\"\n",
            sha256_hex(AGENT_TOKEN),
            sha256_hex(ADMIN_TOKEN),
        ),
    )
}

fn report(c: &Collector, tenant: &str) -> Option<serde_json::Value> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (code, body) = http_get_headers(
        c.api,
        &format!("/api/v1/tenants/{tenant}/sla?period=current&format=json"),
        &[("Authorization", &auth)],
    )?;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).ok()
}

#[test]
fn collector_reports_equal_the_scripted_workload() {
    if !privileged("collector_reports_equal_the_scripted_workload") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-e2e-collector-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let collector = start_collector(&dir);
    let grpc = collector.grpc;
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[[http.tenant.sources]]\nsource = \"header\"\nname = \"X-Tenant-ID\"\n\n\
             [otlp]\nendpoint = \"http://127.0.0.1:{grpc}\"\nmetrics_interval = \"1s\"\n\
             batch_timeout = \"200ms\"\n\n[otlp.headers]\nauthorization = \"Bearer {AGENT_TOKEN}\"\n"
        ),
    )
    .expect("agent config");
    let agent = Agent::start(&["-c", agent_config.to_str().expect("utf-8")]);

    let (mut server, port) = python_http_server(SERVER);
    let plan: String = {
        let entries: Vec<String> = PLAN
            .iter()
            .map(|(t, ok, fail, slow, missing)| {
                format!(
                    "\"{t}\": {{\"/ok\": {ok}, \"/fail\": {fail}, \"/slow\": {slow}, \"/missing\": {missing}}}"
                )
            })
            .collect();
        format!("{{{}}}", entries.join(", "))
    };
    let status = Command::new("python3")
        .args(["-c", CLIENT, port.trim(), &plan])
        .status()
        .expect("client");
    assert!(status.success(), "client: {status}");

    // The agent exports SLIs every second and spans in their own batches; wait until every
    // tenant's total and the evidence its spans bring are there (or too late).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reports = Vec::new();
    for (tenant, ok, fail, slow, missing) in PLAN {
        let want = ok + fail + slow + missing;
        let r = loop {
            let r = report(&collector, tenant);
            let got = r.as_ref().and_then(|r| r["totals"]["requests"].as_u64());
            let has = |kind: &str| {
                r.as_ref()
                    .and_then(|r| r["evidence"].as_array())
                    .is_some_and(|e| e.iter().any(|e| e["kind"] == kind))
            };
            let complete =
                got == Some(want) && (fail == 0 || has("error")) && (slow == 0 || has("slow"));
            if complete || Instant::now() > deadline {
                break r.expect("a JSON report");
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        reports.push((tenant, ok, fail, slow, missing, r));
    }
    let _ = server.kill();
    let _ = server.wait();
    let log = collector.log_text();
    for (tenant, ok, fail, slow, missing, r) in &reports {
        let requests = ok + fail + slow + missing;
        let ctx = format!(
            "{tenant}: {r:#}\nagent log:\n{}\ncollector log:\n{log}",
            agent.log_text()
        );
        assert_eq!(r["totals"]["requests"].as_u64(), Some(requests), "{ctx}");
        assert_eq!(r["totals"]["errors"].as_u64(), Some(*fail), "{ctx}");
        assert_eq!(r["totals"]["slow"].as_u64(), Some(*slow), "{ctx}");
        let availability = (requests - fail) as f64 / requests as f64;
        let latency = (requests - slow) as f64 / requests as f64;
        let got_a = r["availability"]["attainment"]
            .as_f64()
            .expect("availability");
        let got_l = r["latency"]["attainment"].as_f64().expect("latency");
        assert!(
            (got_a - availability).abs() < 1e-12,
            "{got_a} != {availability}: {ctx}"
        );
        assert!(
            (got_l - latency).abs() < 1e-12,
            "{got_l} != {latency}: {ctx}"
        );
        // Spans reached the collector too: every failing tenant has error evidence.
        let evidence = r["evidence"].as_array().expect("evidence");
        if *fail > 0 {
            assert!(
                evidence.iter().any(|e| e["kind"] == "error"),
                "no error evidence: {ctx}"
            );
        }
        if *slow > 0 {
            assert!(
                evidence.iter().any(|e| e["kind"] == "slow"),
                "no slow evidence: {ctx}"
            );
        }
    }
    // The CLI computes the same figures from the store.
    let out = Command::new(collector_bin())
        .args(["--config"])
        .arg(&collector.config)
        .args(["report", "--tenant", "acme", "--format", "json"])
        .output()
        .expect("report CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(cli["totals"], reports[0].5["totals"]);
    drop(agent);
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
