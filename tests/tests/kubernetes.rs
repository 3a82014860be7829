//! End to end in "Kubernetes": a real process in a real cgroup laid out as the kubelet's
//! systemd driver lays out a containerd container, a fake API server that lists that pod for
//! this node only, and the real agent binary with its kernel probes. HTTP requests served by
//! the process must count under the pod's Deployment and, without a tenant header, under the
//! tenant of the pod's label; `tenantscope_workload_info` must describe the workload.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use tenantscope_tests::{Agent, http_get_headers, privileged, python_http_server};

const NODE: &str = "node-e2e";
const POD_UID: &str = "5a1c9e7e-0b1d-4c2e-8f3a-6b7c8d9e0f12";
const CONTAINER: &str = "e2e0c0ffee0a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef012345";

/// Lists one pod, and only to a request for this node's pods; watches stay open and quiet.
const FAKE_API: &str = r#"
import http.server, json, socketserver, sys, time, urllib.parse
node, uid, container = "@NODE@", "@UID@", "@CONTAINER@"
pod = {
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {
    "name": "api-7d4b9c8f6d-x2x9q", "namespace": "shop", "uid": uid, "resourceVersion": "41",
    "labels": {"app": "api", "pod-template-hash": "7d4b9c8f6d", "platform.example/tenant": "acme"},
    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9c8f6d",
                         "uid": "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a", "controller": True}]
  },
  "spec": {"nodeName": node, "containers": [{"name": "api", "image": "registry.example/api:1.4.2"}]},
  "status": {"phase": "Running", "containerStatuses": [
    {"name": "api", "containerID": "containerd://" + container, "ready": True, "restartCount": 0,
     "image": "registry.example/api:1.4.2", "imageID": "", "state": {"running": {}}}]}
}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        mine = q.get("fieldSelector") == ["spec.nodeName=" + node]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if q.get("watch") == ["true"]:
            self.wfile.flush()
            time.sleep(3600)
            return
        items = [pod] if mine else []
        self.wfile.write(json.dumps({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "41"}, "items": items}).encode())
"#;

const SERVER: &str = r#"
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
"#;

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount (the agent needs one too)")
}

/// The pod's cgroups, created for the test and removed (once empty) at the end.
struct PodCgroup {
    dirs: Vec<PathBuf>,
    server: Option<Child>,
}

impl PodCgroup {
    fn create(root: &Path) -> Self {
        let slice = root.join("kubepods.slice");
        let pod = slice.join(format!("kubepods-pod{}.slice", POD_UID.replace('-', "_")));
        let leaf = pod.join(format!("cri-containerd-{CONTAINER}.scope"));
        std::fs::create_dir_all(&leaf).expect("create the pod's cgroups");
        Self {
            dirs: vec![leaf, pod, slice],
            server: None,
        }
    }

    fn adopt(&mut self, child: Child) {
        std::fs::write(self.dirs[0].join("cgroup.procs"), child.id().to_string())
            .expect("move the server into the container's cgroup");
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(cgroup.contains(CONTAINER), "{cgroup}");
        self.server = Some(child);
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            // Only empty cgroups go; one the machine already had (kubepods.slice) stays.
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn container_in_a_pod_counts_under_its_deployment_and_pod_label_tenant() {
    if !privileged("container_in_a_pod_counts_under_its_deployment_and_pod_label_tenant") {
        return;
    }
    let script = FAKE_API
        .replace("@NODE@", NODE)
        .replace("@UID@", POD_UID)
        .replace("@CONTAINER@", CONTAINER);
    let (api, api_port) = python_http_server(&script);
    let _api = Killed(api);
    let api_port = api_port.trim();
    let mut cgroup = PodCgroup::create(&cgroup2_mount());
    let (server, port) = python_http_server(SERVER);
    let port: u16 = port.trim().parse().expect("port");
    cgroup.adopt(server);

    let config = std::env::temp_dir().join(format!("tenantscope-k8s-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[kubernetes]
enabled = "on"
api_url = "http://127.0.0.1:{api_port}"
node_name = "{NODE}"

[otlp]
enabled = false

[[http.tenant.sources]]
source = "header"
name = "X-Tenant-ID"

[[http.tenant.sources]]
source = "pod_label"
name = "platform.example/tenant"

[[http.tenant.sources]]
source = "namespace"
"#
        ),
    )
    .unwrap();
    // Ready only once this node's pods are listed.
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    for _ in 0..10 {
        assert_eq!(
            http_get_headers(port, "/posts", &[]).map(|r| r.0),
            Some(200)
        );
    }
    for _ in 0..5 {
        let r = http_get_headers(port, "/posts", &[("X-Tenant-ID", "globex")]);
        assert_eq!(r.map(|r| r.0), Some(200));
    }
    // Not a valid id: counted, and the chain goes on to the pod label.
    let r = http_get_headers(port, "/posts", &[("X-Tenant-ID", "Not A Tenant!")]);
    assert_eq!(r.map(|r| r.0), Some(200));
    let count = "http_server_request_duration_seconds_count";
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        // The info series is published with the next read cycle.
        m.sum(count, &[("workload", "api")]) >= 16.0
            && m.sum("tenantscope_workload_info", &[("workload", "api")]) > 0.0
    });
    let log = agent.log_text();
    assert_eq!(
        m.sum(count, &[("workload", "api"), ("tenant", "acme")]),
        11.0,
        "no header, or an invalid one: the pod label's tenant\n{log}"
    );
    assert_eq!(
        m.sum(count, &[("workload", "api"), ("tenant", "globex")]),
        5.0,
        "the header comes first in the chain\n{log}"
    );
    assert_eq!(
        m.sum(
            count,
            &[("workload", &format!("containerd/{}", &CONTAINER[..12]))]
        ),
        0.0,
        "never under the bare container id"
    );
    assert_eq!(
        m.get(
            "tenantscope_workload_info",
            &[
                ("workload", "api"),
                ("namespace", "shop"),
                ("kind", "Deployment")
            ]
        ),
        Some(1.0),
        "{log}"
    );
    // Seen by the server and by the client (this test process, whose request line starts
    // with a 4-byte write of the method).
    assert_eq!(
        m.get(
            "tenantscope_agent_tenant_invalid_total",
            &[("source", "header")]
        ),
        Some(2.0)
    );
    assert_eq!(m.get("tenantscope_agent_kubernetes_synced", &[]), Some(1.0));
    assert_eq!(m.get("tenantscope_agent_kubernetes_pods", &[]), Some(1.0));
    assert_eq!(
        m.sum("tenantscope_agent_kubernetes_relists_total", &[]),
        1.0
    );
    drop(agent);
    let _ = std::fs::remove_file(&config);
}

/// A child process killed when the test ends, also when it fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
