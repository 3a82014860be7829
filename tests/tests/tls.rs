//! The agent exporting to a collector over TLS with its bearer token read from a file, over
//! both transports: the real agent (kernel probes, real requests) and the real collector with a
//! self-signed certificate, which the agent trusts through `otlp.tls_ca_file`. Without that file
//! the agent does not trust the certificate and nothing is stored.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tenantscope_tests::{
    Agent, OK_HANDLER, collector_bin, free_port, privileged, python_http_server,
};

const AGENT_TOKEN: &str = "agent-token-3b9d";
const ADMIN_TOKEN: &str = "admin-token-77c1";

/// `curl` over TLS, trusting `ca`: the status and body.
fn curl(ca: &Path, url: &str, token: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

struct TlsCollector {
    child: Child,
    grpc: u16,
    http: u16,
    api: u16,
}

impl Drop for TlsCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector(dir: &Path) -> TlsCollector {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl (installed by cargo xtask setup)");
    assert!(status.success(), "openssl req");
    std::fs::write(dir.join("agent.token"), format!("{AGENT_TOKEN}\n")).expect("token");
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).expect("token");
    let (grpc, http, api) = (free_port(), free_port(), free_port());
    let d = dir.display();
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\notlp_grpc = \"127.0.0.1:{grpc}\"\notlp_http = \"127.0.0.1:{http}\"\n\
             api = \"127.0.0.1:{api}\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n\n\
             [storage]\npath = \"{d}/collector.db\"\n\n\
             [[auth.tokens]]\nname = \"agents\"\nrole = \"agent\"\ntoken_file = \"{d}/agent.token\"\n\n\
             [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken_file = \"{d}/admin.token\"\n"
        ),
    )
    .expect("collector config");
    let log = std::fs::File::create(dir.join("collector.log")).expect("log");
    let child = Command::new(collector_bin())
        .arg("--config")
        .arg(&config)
        .stderr(log)
        .spawn()
        .expect("collector");
    let c = TlsCollector {
        child,
        grpc,
        http,
        api,
    };
    let ca = dir.join("cert.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&ca, &format!("https://127.0.0.1:{api}/readyz"), ADMIN_TOKEN).map(|r| r.0)
        != Some(200)
    {
        assert!(
            Instant::now() < deadline,
            "collector not ready over TLS:\n{}",
            std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

fn stored(dir: &Path, c: &TlsCollector, tenant: &str) -> Option<u64> {
    let url = format!(
        "https://127.0.0.1:{}/api/v1/tenants/{tenant}/sla?period=current&format=json",
        c.api
    );
    let (code, body) = curl(&dir.join("cert.pem"), &url, ADMIN_TOKEN)?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["totals"]["requests"].as_u64()
}

fn requests(port: u16, tenant: &str, n: usize) {
    for _ in 0..n {
        let r = tenantscope_tests::http_get_headers(port, "/tls", &[("X-Tenant-ID", tenant)]);
        assert_eq!(r.map(|r| r.0), Some(200));
    }
}

fn agent_config(dir: &Path, name: &str, otlp: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[otlp]\n{otlp}\ntoken_file = \"{}\"\nmetrics_interval = \"1s\"\n\
             batch_timeout = \"200ms\"\n",
            dir.join("agent.token").display()
        ),
    )
    .expect("agent config");
    path
}

#[test]
fn agent_exports_over_tls_with_a_token_file() {
    if !privileged("agent_exports_over_tls_with_a_token_file") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ts-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let collector = start_collector(&dir);
    let (mut server, port) = python_http_server(OK_HANDLER);
    let port: u16 = port.trim().parse().expect("port");
    let ca = dir.join("cert.pem");

    for (protocol, listener, tenant) in [
        ("grpc", collector.grpc, "tls-grpc"),
        ("http/protobuf", collector.http, "tls-http"),
    ] {
        let config = agent_config(
            &dir,
            tenant,
            &format!(
                "protocol = \"{protocol}\"\nendpoint = \"https://127.0.0.1:{listener}\"\n\
                 tls_ca_file = \"{}\"",
                ca.display()
            ),
        );
        let mut agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
        requests(port, tenant, 10);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stored(&dir, &collector, tenant) != Some(10) {
            assert!(
                Instant::now() < deadline,
                "{protocol}: not stored over TLS ({:?}):\n{}",
                stored(&dir, &collector, tenant),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let m = agent.wait_metrics(Duration::from_secs(15), |m| {
            m.get("tenantscope_agent_spans_total", &[("outcome", "exported")]) >= Some(10.0)
        });
        assert!(
            m.get("tenantscope_agent_spans_total", &[("outcome", "exported")]) >= Some(10.0),
            "{protocol}: spans over TLS\n{}",
            agent.log_text()
        );
        assert_eq!(
            m.sum(
                "tenantscope_agent_sli_exports_total",
                &[("outcome", "failed")]
            ),
            0.0
        );
        let status = agent.stop();
        assert!(status.success(), "{status}");
    }

    // The Mozilla roots do not include a self-signed certificate: every export fails, counted.
    let config = agent_config(
        &dir,
        "untrusted",
        &format!("endpoint = \"https://127.0.0.1:{}\"", collector.grpc),
    );
    let agent = Agent::start(&["-c", config.to_str().expect("utf-8")]);
    requests(port, "tls-untrusted", 3);
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        m.sum(
            "tenantscope_agent_sli_exports_total",
            &[("outcome", "failed")],
        ) >= 1.0
    });
    assert!(
        m.sum(
            "tenantscope_agent_sli_exports_total",
            &[("outcome", "failed")]
        ) >= 1.0,
        "{}",
        agent.log_text()
    );
    assert_eq!(
        m.get("tenantscope_agent_sli_exports_total", &[("outcome", "ok")]),
        Some(0.0)
    );
    assert_eq!(stored(&dir, &collector, "tls-untrusted").unwrap_or(0), 0);
    drop(agent);
    let _ = server.kill();
    let _ = server.wait();
    drop(collector);
    let _ = std::fs::remove_dir_all(&dir);
}
