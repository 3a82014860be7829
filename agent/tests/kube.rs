//! Pod identity against an in-process fake Kubernetes API: list and watch of Pod JSON as the API
//! server serves it (`PodList`, newline-delimited watch events, resource versions, a 410 after
//! compaction), with the agent's real watch (`workload::k8s`, the kube runtime watcher) and real
//! `/proc/<pid>/cgroup` samples from containerd, cri-o and docker nodes. Each process must map
//! to the right pod, workload label and tenant, also after a dropped watch and after a relist.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tenantscope_agent::{
    http::tenant::{RequestView, TenantConfig, TenantResolver, TenantSource},
    telemetry::KubeMetrics,
    workload::{
        PodEvent, PodIndex, ProcessTable, Workload, WorkloadNaming,
        k8s::{self, WatchSettings},
    },
};
use tokio::sync::mpsc;

const NODE: &str = "node-a";
const TENANT_LABEL: &str = "platform.example/tenant";

/// A real `/proc/<pid>/cgroup` sample (agent/src/workload/testdata).
fn sample(file: &str) -> String {
    // The checkout this run is in (not the one a shared CARGO_TARGET_DIR compiled it in).
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/src/workload/testdata/{file}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A pod as `kubectl get pod -o json` shows it on a running node.
struct PodSpec<'a> {
    name: &'a str,
    namespace: &'a str,
    uid: &'a str,
    node: &'a str,
    /// (kind, name) of the controller, if any.
    owner: Option<(&'a str, &'a str)>,
    labels: &'a [(&'a str, &'a str)],
    /// (container name, `runtime://id`).
    containers: &'a [(&'a str, &'a str)],
}

impl PodSpec<'_> {
    fn json(&self) -> Value {
        let mut labels: BTreeMap<&str, &str> = self.labels.iter().copied().collect();
        let mut owner_refs = Vec::new();
        if let Some((kind, name)) = self.owner {
            let api_version = match kind {
                "Job" => "batch/v1",
                "Node" => "v1",
                _ => "apps/v1",
            };
            if kind == "ReplicaSet" {
                labels.insert("pod-template-hash", name.rsplit('-').next().unwrap());
            }
            owner_refs.push(json!({
                "apiVersion": api_version, "kind": kind, "name": name,
                "uid": "5f1e0c1c-8d0e-4d0a-9d3c-2b6d7b1f0a11",
                "controller": true, "blockOwnerDeletion": true
            }));
        }
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, id)| {
                json!({
                    "name": name, "containerID": id, "ready": true, "restartCount": 0,
                    "started": true, "image": format!("registry.example/{name}:1.4.2"),
                    "imageID": format!("registry.example/{name}@sha256:{}", "ab".repeat(32)),
                    "state": {"running": {"startedAt": "2026-11-20T08:15:03Z"}},
                    "lastState": {}
                })
            })
            .collect();
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|(name, _)| {
                json!({
                    "name": name, "image": format!("registry.example/{name}:1.4.2"),
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                })
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "0",
                "creationTimestamp": "2026-11-20T08:14:58Z",
                "labels": labels,
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T08:14:00Z"},
                "ownerReferences": owner_refs
            },
            "spec": {
                "nodeName": self.node,
                "containers": containers,
                "restartPolicy": "Always",
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default",
                "schedulerName": "default-scheduler",
                "terminationGracePeriodSeconds": 30,
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 300}]
            },
            "status": {
                "phase": "Running",
                "hostIP": "10.0.3.17",
                "podIP": "10.244.1.23",
                "podIPs": [{"ip": "10.244.1.23"}],
                "qosClass": "Burstable",
                "startTime": "2026-11-20T08:14:58Z",
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-11-20T08:15:04Z"}],
                "containerStatuses": statuses
            }
        })
    }
}

/// The fake API server's state: pods, a resource version, the event log for resumed watches,
/// the open watches, and every request's query (to check the field selector).
#[derive(Default)]
struct Fake {
    rv: u64,
    pods: BTreeMap<String, Value>,
    log: Vec<(u64, &'static str, Value)>,
    watches: Vec<mpsc::UnboundedSender<Result<Bytes, std::io::Error>>>,
    /// Watches from a resource version below this get 410 Gone (the API server compacted).
    expired_below: u64,
    requests: Vec<HashMap<String, String>>,
}

type Shared = Arc<Mutex<Fake>>;

impl Fake {
    fn node_of(pod: &Value) -> &str {
        pod["spec"]["nodeName"].as_str().unwrap_or("")
    }

    /// Records a change: bumps the resource version, logs it and sends it to open watches.
    fn change(&mut self, kind: &'static str, mut pod: Value) {
        self.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
        if kind == "DELETED" {
            self.pods.remove(&uid);
        } else {
            self.pods.insert(uid, pod.clone());
        }
        let line = event_line(kind, &pod);
        self.watches
            .retain(|w| Self::node_of(&pod) != NODE || w.send(Ok(line.clone())).is_ok());
        self.log.push((self.rv, kind, pod));
    }

    /// A change the agent can only learn about by relisting: made while no watch is open and
    /// compacted out of the log.
    fn silent_delete(&mut self, uid: &str) {
        self.pods.remove(uid);
        self.rv += 1;
        self.expired_below = self.rv;
    }

    /// Cuts every open watch mid-stream, as a load balancer or an API server restart does.
    fn drop_watches(&mut self) {
        for w in self.watches.drain(..) {
            let _ = w.send(Err(std::io::Error::other("connection reset")));
        }
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

async fn pods(State(fake): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut f = fake.lock().unwrap();
    f.requests.push(q.clone());
    let node = q
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("spec.nodeName="))
        .map(str::to_owned);
    let on_node = |pod: &Value| node.as_deref().is_none_or(|n| Fake::node_of(pod) == n);
    if q.get("watch").map(String::as_str) != Some("true") {
        let items: Vec<Value> = f.pods.values().filter(|p| on_node(p)).cloned().collect();
        let body = json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": f.rv.to_string()},
            "items": items
        });
        return ([("content-type", "application/json")], body.to_string()).into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < f.expired_below {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", f.expired_below),
            "reason": "Expired", "code": 410
        });
        let _ = tx.send(Ok(event_line("ERROR", &status)));
        drop(tx);
    } else {
        for (rv, kind, pod) in &f.log {
            if *rv > from && on_node(pod) {
                let _ = tx.send(Ok(event_line(kind, pod)));
            }
        }
        f.watches.push(tx);
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn serve_fake(fake: Shared) -> String {
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Waits until the agent has a watch open (the list is done before the watch starts).
async fn wait_watching(fake: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.lock().unwrap().watches.is_empty() {
        assert!(Instant::now() < deadline, "no watch opened within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies pod events to the table until `done` holds; fails after 20 s.
async fn pump(
    rx: &mut mpsc::Receiver<PodEvent>,
    table: &mut ProcessTable,
    what: &str,
    done: impl Fn(&ProcessTable) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(table) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                table.apply_pod_event(ev);
                table.refresh_pods(Instant::now());
            }
            Ok(None) => panic!("{what}: the pod watch ended"),
            Err(_) => panic!("{what}: not reached within 20 s"),
        }
    }
}

/// The tenant chain of the issue: header, then the pod label, then the namespace.
fn resolver() -> TenantResolver {
    TenantResolver::new(&TenantConfig {
        sources: vec![
            TenantSource::Header {
                name: "X-Tenant-ID".into(),
            },
            TenantSource::PodLabel {
                name: TENANT_LABEL.into(),
            },
            TenantSource::Namespace,
        ],
        ..TenantConfig::default()
    })
    .unwrap()
}

/// (workload label, namespace, tenant of a request without a tenant header) of process `tgid`.
fn identity(
    table: &mut ProcessTable,
    tenants: &mut TenantResolver,
    tgid: u32,
) -> (String, String, String) {
    let origin = table.origin(tgid, Instant::now());
    let pod = origin.pod.as_deref();
    let view = RequestView {
        path: "/posts",
        pod_labels: pod.map(|p| &p.labels),
        namespace: pod.map(|p| p.namespace.as_str()),
        ..RequestView::default()
    };
    (
        origin.workload.to_string(),
        pod.map(|p| p.namespace.clone()).unwrap_or_default(),
        tenants.resolve(&view).0.to_string(),
    )
}

const API_UID: &str = "9493223b-520e-4a97-a45f-359dcf967006";
const API_CTR: &str = "25d057a4c6c9555f2a0eb106e8896968c28f1c44aca4754174851aca7f89ad26";
const DB_UID: &str = "042efd86-1f3b-4f2f-8736-f31c58e95bbc";
const DB_CTR: &str = "f33f47b0db740bb647cb3e7ac62d96c74966dbb99cbfaf4563bfd42d387e8b44";
const LEGACY_UID: &str = "8712f785-1a3e-41ec-a00b-e2dcc77431cb";
const LEGACY_CTR: &str = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd";
const ETCD_UID: &str = "487a0dc6dccaeefbcfedba7a7ce1ca18";
const ETCD_CTR: &str = "7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e";
/// docker-cgroupfs-v1: `/docker/<id>`, no pod UID in the path: found by container id.
const BATCH_CTR: &str = "b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f";

#[tokio::test]
async fn processes_map_to_pods_and_tenants_through_list_watch_drop_and_relist() {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().unwrap();
        let api_ctr = format!("containerd://{API_CTR}");
        let db_ctr = format!("cri-o://{DB_CTR}");
        let legacy_ctr = format!("docker://{LEGACY_CTR}");
        let etcd_ctr = format!("cri-o://{ETCD_CTR}");
        for pod in [
            PodSpec {
                name: "api-7d4b9c8f6d-x2x9q",
                namespace: "shop",
                uid: API_UID,
                node: NODE,
                owner: Some(("ReplicaSet", "api-7d4b9c8f6d")),
                labels: &[("app", "api"), (TENANT_LABEL, "acme")],
                containers: &[("api", &api_ctr), ("envoy", "")],
            },
            PodSpec {
                name: "db-0",
                namespace: "billing",
                uid: DB_UID,
                node: NODE,
                owner: Some(("StatefulSet", "db")),
                labels: &[("app", "db")],
                containers: &[("postgres", &db_ctr)],
            },
            PodSpec {
                name: "legacy-5f7b8c9d4-q8w7e",
                namespace: "globex-prod",
                uid: LEGACY_UID,
                node: NODE,
                owner: Some(("ReplicaSet", "legacy-5f7b8c9d4")),
                labels: &[(TENANT_LABEL, "globex")],
                containers: &[("legacy", &legacy_ctr)],
            },
            PodSpec {
                name: "etcd-node-a",
                namespace: "kube-system",
                uid: ETCD_UID,
                node: NODE,
                owner: Some(("Node", NODE)),
                labels: &[("component", "etcd")],
                containers: &[("etcd", &etcd_ctr)],
            },
            // Another node's pod: the field selector must keep it away.
            PodSpec {
                name: "web-6d5f8b7c9-abcde",
                namespace: "shop",
                uid: "11111111-2222-3333-4444-555555555555",
                node: "node-b",
                owner: Some(("ReplicaSet", "web-6d5f8b7c9")),
                labels: &[],
                containers: &[],
            },
        ] {
            f.change("ADDED", pod.json());
        }
    }
    let url = serve_fake(fake.clone()).await;
    let metrics = KubeMetrics::default();
    let mut rx = k8s::start(
        WatchSettings {
            api_url: Some(url),
            node: NODE.into(),
            keep_labels: [TENANT_LABEL.to_owned()].into(),
        },
        metrics.clone(),
    )
    .await
    .unwrap();
    let mut table = ProcessTable::new(100, Duration::from_secs(60)).with_pods(
        PodIndex::new(64, [TENANT_LABEL.to_owned()]),
        WorkloadNaming::Owner,
    );
    let mut tenants = resolver();

    // Processes seen before the pods are known (the agent starts before its first list).
    let now = Instant::now();
    let processes = [
        (101, "containerd-systemd-v2.cgroup", "api"),
        (102, "crio-systemd-v2.cgroup", "postgres"),
        (103, "docker-kubepods-systemd-v2.cgroup", "legacy"),
        (104, "crio-systemd-static-pod-v1.cgroup", "etcd"),
        (105, "docker-cgroupfs-v1.cgroup", "batch"),
        (106, "host-systemd-service-v1.cgroup", "sshd"),
    ];
    for (tgid, file, comm) in processes {
        table.upsert(tgid, Workload::from_proc(Some(&sample(file)), comm), now);
    }
    assert_eq!(
        identity(&mut table, &mut tenants, 101).0,
        "containerd/25d057a4c6c9",
        "before the list, the container id"
    );

    pump(&mut rx, &mut table, "first list", |t| t.pods().synced()).await;
    assert_eq!(table.pods().len(), 4, "node-b's pod must not be listed");
    let want = [
        // Deployment via its ReplicaSet, tenant from the pod label.
        (101, ("api", "shop", "acme")),
        // StatefulSet, no tenant label: the namespace.
        (102, ("db", "billing", "billing")),
        (103, ("legacy", "globex-prod", "globex")),
        // Static pod: the manifest name, without the node suffix.
        (104, ("etcd", "kube-system", "kube-system")),
        // Not known yet: runtime and short id, no tenant from the pod.
        (105, ("docker/b43d92bf1e5c", "", "unknown")),
        (106, ("sshd", "", "unknown")),
    ];
    for (tgid, (workload, ns, tenant)) in want {
        assert_eq!(
            identity(&mut table, &mut tenants, tgid),
            (workload.to_owned(), ns.to_owned(), tenant.to_owned()),
            "tgid {tgid}"
        );
    }
    let origin = table.origin(101, Instant::now());
    let attrs = origin.pod.as_ref().unwrap().resource_attributes();
    for kv in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "api-7d4b9c8f6d-x2x9q"),
        ("k8s.pod.uid", API_UID),
        ("k8s.deployment.name", "api"),
        ("k8s.replicaset.name", "api-7d4b9c8f6d"),
    ] {
        assert!(
            attrs.contains(&(kv.0, kv.1.to_owned())),
            "{kv:?} in {attrs:?}"
        );
    }

    // The watch is cut; a CronJob's pod starts meanwhile. The watcher re-watches from its last
    // resource version and gets the event it missed, without a relist.
    let batch_ctr = format!("docker://{BATCH_CTR}");
    wait_watching(&fake).await;
    {
        let mut f = fake.lock().unwrap();
        f.drop_watches();
        f.change(
            "ADDED",
            PodSpec {
                name: "batch-29384756-7xk2p",
                namespace: "jobs",
                uid: "c0ffee00-1234-4abc-8def-0123456789ab",
                node: NODE,
                owner: Some(("Job", "batch-29384756")),
                labels: &[(TENANT_LABEL, "initech")],
                containers: &[("batch", &batch_ctr)],
            }
            .json(),
        );
    }
    pump(
        &mut rx,
        &mut table,
        "event missed while the watch was down",
        |t| t.pods().len() == 5,
    )
    .await;
    assert_eq!(
        identity(&mut table, &mut tenants, 105),
        ("batch".into(), "jobs".into(), "initech".into()),
        "CronJob pod, found by container id"
    );
    assert_eq!(
        table.pods().stats().relists,
        1,
        "a resumed watch, not a relist"
    );
    // Label changes reach the tenant chain.
    {
        let mut f = fake.lock().unwrap();
        let mut db = f.pods[DB_UID].clone();
        db["metadata"]["labels"][TENANT_LABEL] = json!("umbrella");
        f.change("MODIFIED", db);
    }
    pump(&mut rx, &mut table, "label update", |t| {
        t.pods()
            .pods()
            .any(|p| p.labels.get(TENANT_LABEL).is_some_and(|v| v == "umbrella"))
    })
    .await;
    assert_eq!(identity(&mut table, &mut tenants, 102).2, "umbrella");

    // The pod is deleted while the watch is down and the API server has compacted past the
    // watcher's resource version: the re-watch gets 410 Gone, the watcher relists, and the pod
    // disappears from the index although no DELETED event was ever sent.
    wait_watching(&fake).await;
    {
        let mut f = fake.lock().unwrap();
        f.silent_delete(LEGACY_UID);
        f.drop_watches();
    }
    pump(&mut rx, &mut table, "relist after 410", |t| {
        t.pods().stats().relists == 2
    })
    .await;
    assert_eq!(table.pods().len(), 4);
    assert_eq!(
        identity(&mut table, &mut tenants, 103),
        (
            "docker/73051af27110".into(),
            String::new(),
            "unknown".into()
        ),
        "a deleted pod's process falls back to its container id"
    );
    assert_eq!(
        identity(&mut table, &mut tenants, 101).0,
        "api",
        "others unchanged"
    );

    // Every request asked for this node's pods only; exactly two lists were made.
    wait_watching(&fake).await;
    let f = fake.lock().unwrap();
    assert!(
        f.requests
            .iter()
            .all(|q| q.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=node-a")),
        "{:?}",
        f.requests
    );
    let lists = f
        .requests
        .iter()
        .filter(|q| q.get("watch").map(String::as_str) != Some("true"))
        .count();
    assert_eq!(lists, 2, "{:?}", f.requests);
    // Watches: the first, the re-watch after the cut, the one that got 410, the one after the
    // relist. A cut connection ends the stream like a server-side timeout (kube-client reads an
    // unexpected EOF as the end); the 410 is an error, counted.
    assert_eq!(f.requests.len() - lists, 4, "{:?}", f.requests);
    assert_eq!(metrics.watch_errors.get(), 1, "the 410");
    let workloads: Vec<(String, String)> = table
        .pod_workloads()
        .map(|(w, p)| (w.to_string(), p.namespace.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        workloads,
        [
            ("api".to_owned(), "shop".to_owned()),
            ("batch".to_owned(), "jobs".to_owned()),
            ("db".to_owned(), "billing".to_owned()),
            ("etcd".to_owned(), "kube-system".to_owned()),
        ]
    );
}
