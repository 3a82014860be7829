//! Kubernetes pod identity: what the agent keeps of each pod on its node, and the index that maps
//! a container (by pod UID from its cgroup path, else by container id) to its pod.
//!
//! Pure and synchronous. The watch itself ([`super::k8s`]) converts API objects with
//! [`PodMeta::from_pod`] and feeds [`PodEvent`]s to [`PodIndex::apply`], whose resync semantics
//! follow the kube watcher's: `Init`, `InitApply`..., `InitDone` replace the whole index, so pods
//! deleted while the watch was down disappear.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;

use super::ContainerRef;

/// What controls a pod, resolved to the object an operator names: a Deployment rather than its
/// ReplicaSet, a CronJob rather than one of its Jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    Deployment,
    /// A ReplicaSet not made by a Deployment (or whose pods lack `pod-template-hash`).
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    CronJob,
    /// A Job not made by a CronJob.
    Job,
    ReplicationController,
    /// A static pod (its mirror pod is owned by the Node); named without the node suffix.
    StaticPod,
    /// No controller: the pod is its own workload.
    Pod,
    /// A controller of another kind (an operator's custom resource): named by it.
    Other,
}

impl OwnerKind {
    /// The `kind` label value of `tenantscope_workload_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::CronJob => "CronJob",
            Self::Job => "Job",
            Self::ReplicationController => "ReplicationController",
            Self::StaticPod => "StaticPod",
            Self::Pod => "Pod",
            Self::Other => "Other",
        }
    }

    /// The OpenTelemetry resource attribute naming the workload (`k8s.deployment.name`...).
    fn semconv_key(self) -> Option<&'static str> {
        match self {
            Self::Deployment => Some("k8s.deployment.name"),
            Self::ReplicaSet => Some("k8s.replicaset.name"),
            Self::StatefulSet => Some("k8s.statefulset.name"),
            Self::DaemonSet => Some("k8s.daemonset.name"),
            Self::CronJob => Some("k8s.cronjob.name"),
            Self::Job => Some("k8s.job.name"),
            Self::ReplicationController => Some("k8s.replicationcontroller.name"),
            Self::StaticPod | Self::Pod | Self::Other => None,
        }
    }
}

/// How the `workload` label is spelled for pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadNaming {
    /// The owner's name (`api`): short, and what dashboards show. Same-named workloads of two
    /// namespaces share the label; `tenantscope_workload_info` lists both.
    #[default]
    Owner,
    /// `namespace/owner` (`shop/api`): unique on a shared cluster.
    NamespaceOwner,
}

/// The part of a pod the agent keeps: identity, owner, the labels the tenant chain reads, and
/// its containers. Everything else of the API object is dropped on arrival (bounded memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub owner_kind: OwnerKind,
    /// The workload's name (see [`OwnerKind`]).
    pub owner_name: String,
    /// The intermediate controller: the ReplicaSet of a Deployment, the Job of a CronJob.
    pub controller: Option<String>,
    /// Only the keys the agent was asked to keep ([`PodIndex::keep_labels`]).
    pub labels: BTreeMap<String, String>,
    /// (container id without the `runtime://` scheme, container name).
    pub containers: Vec<(String, String)>,
}

/// Why an API object was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    MissingUid,
    MissingName,
    MissingNamespace,
}

/// Every `reason` of `tenantscope_agent_kubernetes_pods_skipped_total`.
pub const SKIP_REASONS: [&str; 4] = [
    "index_full",
    "missing_uid",
    "missing_name",
    "missing_namespace",
];

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingUid => "missing_uid",
            Self::MissingName => "missing_name",
            Self::MissingNamespace => "missing_namespace",
        }
    }
}

impl PodMeta {
    /// Keeps what the agent needs of `pod`; only labels whose key is in `keep_labels`.
    pub fn from_pod(pod: &Pod, keep_labels: &HashSet<String>) -> Result<Self, Invalid> {
        let meta = &pod.metadata;
        let nonempty =
            |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let uid = nonempty(&meta.uid).ok_or(Invalid::MissingUid)?;
        let name = nonempty(&meta.name).ok_or(Invalid::MissingName)?;
        let namespace = nonempty(&meta.namespace).ok_or(Invalid::MissingNamespace)?;
        let node = pod.spec.as_ref().and_then(|s| nonempty(&s.node_name));
        let all_labels = meta.labels.as_ref();
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let template_hash = all_labels.and_then(|l| l.get("pod-template-hash"));
        let (owner_kind, owner_name, controller) = match controller {
            None => (OwnerKind::Pod, name.clone(), None),
            Some(o) => owner(&o.kind, &o.name, template_hash, &name, node.as_deref()),
        };
        let labels = all_labels
            .into_iter()
            .flatten()
            .filter(|(k, _)| keep_labels.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                [
                    &s.init_container_statuses,
                    &s.container_statuses,
                    &s.ephemeral_container_statuses,
                ]
            })
            .flatten()
            .flatten()
            .filter_map(|c| {
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; empty until started.
                let id = c.container_id.as_deref()?.rsplit_once("://")?.1;
                (!id.is_empty()).then(|| (id.to_ascii_lowercase(), c.name.clone()))
            })
            .collect();
        Ok(Self {
            uid,
            name,
            namespace,
            node,
            owner_kind,
            owner_name,
            controller,
            labels,
            containers,
        })
    }

    /// The `workload` label of this pod's processes.
    pub fn workload_label(&self, naming: WorkloadNaming) -> String {
        match naming {
            WorkloadNaming::Owner => self.owner_name.clone(),
            WorkloadNaming::NamespaceOwner => format!("{}/{}", self.namespace, self.owner_name),
        }
    }

    /// OpenTelemetry `k8s.*` resource attributes (semantic conventions), in a stable order.
    pub fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("k8s.namespace.name", self.namespace.clone()),
            ("k8s.pod.name", self.name.clone()),
            ("k8s.pod.uid", self.uid.clone()),
        ];
        if let Some(key) = self.owner_kind.semconv_key() {
            out.push((key, self.owner_name.clone()));
        }
        match (self.owner_kind, &self.controller) {
            (OwnerKind::Deployment, Some(rs)) => out.push(("k8s.replicaset.name", rs.clone())),
            (OwnerKind::CronJob, Some(job)) => out.push(("k8s.job.name", job.clone())),
            _ => {}
        }
        out
    }
}

/// Resolves a controller reference to (kind, workload name, intermediate controller).
fn owner(
    kind: &str,
    name: &str,
    template_hash: Option<&String>,
    pod_name: &str,
    node: Option<&str>,
) -> (OwnerKind, String, Option<String>) {
    match kind {
        // A Deployment names its ReplicaSets `<deployment>-<pod-template-hash>` and labels their
        // pods with the hash: strip it only when both agree, so a hand-made ReplicaSet keeps
        // its own name. No ReplicaSet lookup, so no extra RBAC and no extra watch.
        "ReplicaSet" => match template_hash.and_then(|h| name.strip_suffix(h.as_str())) {
            Some(d) if d.len() > 1 && d.ends_with('-') => (
                OwnerKind::Deployment,
                d[..d.len() - 1].to_owned(),
                Some(name.to_owned()),
            ),
            _ => (OwnerKind::ReplicaSet, name.to_owned(), None),
        },
        // A CronJob names its Jobs `<cronjob>-<scheduled time in minutes>`: one label per run
        // would be unbounded, so the run suffix goes (as OpenTelemetry's k8sattributes does).
        "Job" => match name.rsplit_once('-') {
            Some((cron, run))
                if !cron.is_empty()
                    && run.len() >= 8
                    && run.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (OwnerKind::CronJob, cron.to_owned(), Some(name.to_owned()))
            }
            _ => (OwnerKind::Job, name.to_owned(), None),
        },
        "StatefulSet" => (OwnerKind::StatefulSet, name.to_owned(), None),
        "DaemonSet" => (OwnerKind::DaemonSet, name.to_owned(), None),
        "ReplicationController" => (OwnerKind::ReplicationController, name.to_owned(), None),
        // Mirror pods of static pods are `<manifest name>-<node name>`.
        "Node" => {
            let base = node
                .and_then(|n| pod_name.strip_suffix(n))
                .and_then(|p| p.strip_suffix('-'))
                .filter(|p| !p.is_empty())
                .unwrap_or(pod_name);
            (OwnerKind::StaticPod, base.to_owned(), None)
        }
        _ => (OwnerKind::Other, name.to_owned(), None),
    }
}

/// One change from the pod watch, already converted.
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// A (re)list starts: the pods that follow replace the index at [`PodEvent::InitDone`].
    Init,
    InitApply(PodMeta),
    InitDone,
    Apply(PodMeta),
    Delete {
        uid: String,
    },
}

/// Counters the index keeps about itself (agent self-metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodIndexStats {
    /// Completed (re)lists: 1 after the first sync, more after watch expiries.
    pub relists: u64,
    /// Pods not kept because the index was full (`kubernetes.max_pods`).
    pub dropped_full: u64,
}

/// Pod UID -> pod, container id -> pod UID; at most `max_pods` pods.
#[derive(Debug, Default)]
pub struct PodIndex {
    max_pods: usize,
    keep_labels: HashSet<String>,
    pods: HashMap<String, Arc<PodMeta>>,
    containers: HashMap<String, (String, Arc<str>)>,
    /// Pods of a (re)list in progress.
    relisting: Option<HashMap<String, Arc<PodMeta>>>,
    synced: bool,
    /// Bumped on every change, so dependants re-resolve only when something changed.
    generation: u64,
    stats: PodIndexStats,
}

/// A pod found for a container, and the container's name when the pod status lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMatch<'a> {
    pub pod: &'a Arc<PodMeta>,
    pub container: Option<&'a str>,
}

impl PodIndex {
    pub fn new(max_pods: usize, keep_labels: impl IntoIterator<Item = String>) -> Self {
        Self {
            max_pods,
            keep_labels: keep_labels.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The pod label keys kept by [`PodMeta::from_pod`].
    pub fn keep_labels(&self) -> &HashSet<String> {
        &self.keep_labels
    }

    /// Whether a first list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn stats(&self) -> PodIndexStats {
        self.stats
    }

    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodMeta>> {
        self.pods.values()
    }

    pub fn apply(&mut self, event: PodEvent) {
        match event {
            PodEvent::Init => self.relisting = Some(HashMap::new()),
            PodEvent::InitApply(pod) => {
                // Without a preceding Init (not something the watcher does) it is an update.
                let Some(buf) = self.relisting.as_mut() else {
                    return self.upsert(pod);
                };
                if buf.len() < self.max_pods || buf.contains_key(&pod.uid) {
                    buf.insert(pod.uid.clone(), Arc::new(pod));
                } else {
                    self.stats.dropped_full += 1;
                }
            }
            PodEvent::InitDone => {
                if let Some(buf) = self.relisting.take() {
                    self.replace_all(buf);
                }
            }
            PodEvent::Apply(pod) => self.upsert(pod),
            PodEvent::Delete { uid } => {
                if let Some(old) = self.pods.remove(&uid) {
                    self.unindex(&old);
                    self.generation += 1;
                }
            }
        }
    }

    /// The pod of a container: by the pod UID of its cgroup path, else by its id.
    pub fn lookup(&self, c: &ContainerRef) -> Option<PodMatch<'_>> {
        let by_id = self.containers.get(&c.id);
        let uid = c
            .pod_uid
            .as_deref()
            .or(by_id.map(|(uid, _)| uid.as_str()))?;
        let pod = self.pods.get(uid)?;
        let container = by_id.filter(|(u, _)| u == uid).map(|(_, name)| &**name);
        Some(PodMatch { pod, container })
    }

    fn upsert(&mut self, pod: PodMeta) {
        if let Some(old) = self.pods.get(&pod.uid) {
            if **old == pod {
                return;
            }
            let old = old.clone();
            self.unindex(&old);
        } else if self.pods.len() >= self.max_pods {
            self.stats.dropped_full += 1;
            return;
        }
        let pod = Arc::new(pod);
        self.index(&pod);
        self.pods.insert(pod.uid.clone(), pod);
        self.generation += 1;
    }

    fn replace_all(&mut self, pods: HashMap<String, Arc<PodMeta>>) {
        self.containers.clear();
        for pod in pods.values() {
            self.index(pod);
        }
        // Unchanged pods keep their Arc, so dependants see no change for them.
        let old = std::mem::replace(&mut self.pods, pods);
        for (uid, pod) in self.pods.iter_mut() {
            if let Some(prev) = old.get(uid)
                && prev == pod
            {
                *pod = prev.clone();
            }
        }
        self.synced = true;
        self.stats.relists += 1;
        self.generation += 1;
    }

    fn index(&mut self, pod: &Arc<PodMeta>) {
        for (id, name) in &pod.containers {
            self.containers
                .insert(id.clone(), (pod.uid.clone(), Arc::from(name.as_str())));
        }
    }

    fn unindex(&mut self, pod: &PodMeta) {
        for (id, _) in &pod.containers {
            if self
                .containers
                .get(id)
                .is_some_and(|(uid, _)| *uid == pod.uid)
            {
                self.containers.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Runtime;

    fn pod_json(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod json")
    }

    fn keep(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    fn meta(uid: &str, owner: &str) -> PodMeta {
        PodMeta {
            uid: uid.to_owned(),
            name: format!("{owner}-x"),
            namespace: "ns".to_owned(),
            node: Some("n1".to_owned()),
            owner_kind: OwnerKind::Deployment,
            owner_name: owner.to_owned(),
            controller: None,
            labels: BTreeMap::new(),
            containers: vec![(format!("{uid:0>64}"), "app".to_owned())],
        }
    }

    #[test]
    fn owners_resolve_to_what_operators_name() {
        let cases = [
            // (kind, name, pod-template-hash, pod name, node) -> (kind, workload, controller)
            (
                (
                    "ReplicaSet",
                    "api-7d4b9c8f6d",
                    Some("7d4b9c8f6d"),
                    "api-7d4b9c8f6d-x2x9q",
                    None,
                ),
                (OwnerKind::Deployment, "api", Some("api-7d4b9c8f6d")),
            ),
            (
                (
                    "ReplicaSet",
                    "hand-made",
                    Some("7d4b9c8f6d"),
                    "hand-made-abcde",
                    None,
                ),
                (OwnerKind::ReplicaSet, "hand-made", None),
            ),
            (
                ("ReplicaSet", "api-7d4b9c8f6d", None, "p", None),
                (OwnerKind::ReplicaSet, "api-7d4b9c8f6d", None),
            ),
            (
                ("Job", "backup-29384756", None, "p", None),
                (OwnerKind::CronJob, "backup", Some("backup-29384756")),
            ),
            (
                ("Job", "migrate-v2", None, "p", None),
                (OwnerKind::Job, "migrate-v2", None),
            ),
            (
                ("Job", "-29384756", None, "p", None),
                (OwnerKind::Job, "-29384756", None),
            ),
            (
                ("StatefulSet", "db", None, "db-0", None),
                (OwnerKind::StatefulSet, "db", None),
            ),
            (
                ("DaemonSet", "fluentbit", None, "p", None),
                (OwnerKind::DaemonSet, "fluentbit", None),
            ),
            (
                ("Node", "node-a", None, "etcd-node-a", Some("node-a")),
                (OwnerKind::StaticPod, "etcd", None),
            ),
            (
                ("Node", "node-a", None, "etcd-other", Some("node-a")),
                (OwnerKind::StaticPod, "etcd-other", None),
            ),
            (
                ("Rollout", "web", None, "p", None),
                (OwnerKind::Other, "web", None),
            ),
        ];
        for ((kind, name, hash, pod, node), (want_kind, want_name, want_ctl)) in cases {
            let hash = hash.map(str::to_owned);
            let got = owner(kind, name, hash.as_ref(), pod, node);
            assert_eq!(
                got,
                (want_kind, want_name.to_owned(), want_ctl.map(str::to_owned)),
                "{kind}/{name}"
            );
        }
    }

    #[test]
    fn from_pod_keeps_only_what_is_needed() {
        let pod = pod_json(serde_json::json!({
            "metadata": {
                "name": "api-7d4b9c8f6d-x2x9q", "namespace": "shop",
                "uid": "9493223b-520e-4a97-a45f-359dcf967006",
                "labels": {"app": "api", "pod-template-hash": "7d4b9c8f6d",
                           "platform.example/tenant": "acme"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "x", "uid": "u0"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9c8f6d",
                     "uid": "u1", "controller": true}
                ]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "api"}]},
            "status": {
                "containerStatuses": [
                    {"name": "api", "containerID": "containerd://ABCDEF", "image": "i", "imageID": "",
                     "ready": true, "restartCount": 0},
                    {"name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://0123", "image": "i", "imageID": "",
                     "ready": false, "restartCount": 0}
                ]
            }
        }));
        let m = PodMeta::from_pod(&pod, &keep(&["platform.example/tenant"])).unwrap();
        assert_eq!(m.owner_kind, OwnerKind::Deployment);
        assert_eq!(m.owner_name, "api");
        assert_eq!(m.node.as_deref(), Some("node-a"));
        assert_eq!(
            m.labels,
            BTreeMap::from([("platform.example/tenant".to_owned(), "acme".to_owned())])
        );
        assert_eq!(
            m.containers,
            [
                ("0123".to_owned(), "init".to_owned()),
                ("abcdef".to_owned(), "api".to_owned())
            ]
        );
        assert_eq!(m.workload_label(WorkloadNaming::Owner), "api");
        assert_eq!(m.workload_label(WorkloadNaming::NamespaceOwner), "shop/api");
        let attrs = m.resource_attributes();
        assert!(attrs.contains(&("k8s.deployment.name", "api".to_owned())));
        assert!(attrs.contains(&("k8s.replicaset.name", "api-7d4b9c8f6d".to_owned())));
        assert!(attrs.contains(&("k8s.namespace.name", "shop".to_owned())));

        let bare = pod_json(serde_json::json!({
            "metadata": {"name": "debug", "namespace": "default", "uid": "u"}
        }));
        let m = PodMeta::from_pod(&bare, &keep(&[])).unwrap();
        assert_eq!(
            (m.owner_kind, m.owner_name.as_str()),
            (OwnerKind::Pod, "debug")
        );
        for (json, why) in [
            (
                serde_json::json!({"metadata": {"name": "a", "namespace": "b"}}),
                Invalid::MissingUid,
            ),
            (
                serde_json::json!({"metadata": {"uid": "u", "namespace": "b"}}),
                Invalid::MissingName,
            ),
            (
                serde_json::json!({"metadata": {"uid": "u", "name": "a", "namespace": ""}}),
                Invalid::MissingNamespace,
            ),
        ] {
            assert_eq!(PodMeta::from_pod(&pod_json(json), &keep(&[])), Err(why));
        }
    }

    fn cref(id: &str, pod_uid: Option<&str>) -> ContainerRef {
        ContainerRef {
            runtime: Runtime::Containerd,
            id: id.to_owned(),
            pod_uid: pod_uid.map(str::to_owned),
        }
    }

    #[test]
    fn lookup_by_pod_uid_then_container_id() {
        let mut idx = PodIndex::new(10, []);
        idx.apply(PodEvent::Apply(meta("p1", "api")));
        let id = format!("{:0>64}", "p1");
        let by_uid = idx.lookup(&cref(&"f".repeat(64), Some("p1"))).unwrap();
        assert_eq!(
            (by_uid.pod.owner_name.as_str(), by_uid.container),
            ("api", None)
        );
        let by_id = idx.lookup(&cref(&id, None)).unwrap();
        assert_eq!(
            (by_id.pod.uid.as_str(), by_id.container),
            ("p1", Some("app"))
        );
        assert!(idx.lookup(&cref(&id, Some("other"))).is_none(), "uid wins");
        assert!(idx.lookup(&cref(&"e".repeat(64), None)).is_none());
    }

    #[test]
    fn relist_replaces_everything_and_keeps_unchanged_arcs() {
        let mut idx = PodIndex::new(10, []);
        idx.apply(PodEvent::Init);
        idx.apply(PodEvent::InitApply(meta("a", "api")));
        idx.apply(PodEvent::InitApply(meta("b", "web")));
        assert!(!idx.synced() && idx.is_empty(), "nothing before InitDone");
        idx.apply(PodEvent::InitDone);
        assert!(idx.synced());
        assert_eq!(idx.len(), 2);
        let a = idx.lookup(&cref("x", Some("a"))).unwrap().pod.clone();
        let generation = idx.generation();

        // The watch dropped; while it was down `b` was deleted and `c` created.
        idx.apply(PodEvent::Init);
        idx.apply(PodEvent::InitApply(meta("a", "api")));
        idx.apply(PodEvent::InitApply(meta("c", "worker")));
        assert_eq!(
            idx.len(),
            2,
            "the old view serves until the relist completes"
        );
        idx.apply(PodEvent::InitDone);
        assert!(idx.generation() > generation);
        assert!(idx.lookup(&cref("x", Some("b"))).is_none());
        assert!(idx.lookup(&cref(&format!("{:0>64}", "b"), None)).is_none());
        assert!(idx.lookup(&cref("x", Some("c"))).is_some());
        let a2 = idx.lookup(&cref("x", Some("a"))).unwrap().pod;
        assert!(Arc::ptr_eq(&a, a2), "unchanged pod keeps its Arc");
        assert_eq!(idx.stats().relists, 2);
    }

    #[test]
    fn bounded_and_deletes_clean_up() {
        let mut idx = PodIndex::new(2, []);
        for uid in ["a", "b", "c"] {
            idx.apply(PodEvent::Apply(meta(uid, uid)));
        }
        assert_eq!((idx.len(), idx.stats().dropped_full), (2, 1));
        let g = idx.generation();
        idx.apply(PodEvent::Apply(meta("a", "a")));
        assert_eq!(idx.generation(), g, "an identical update changes nothing");
        idx.apply(PodEvent::Delete { uid: "a".into() });
        idx.apply(PodEvent::Delete { uid: "zz".into() });
        assert_eq!(idx.len(), 1);
        assert!(idx.lookup(&cref(&format!("{:0>64}", "a"), None)).is_none());
        idx.apply(PodEvent::Init);
        for uid in ["x", "y", "z"] {
            idx.apply(PodEvent::InitApply(meta(uid, uid)));
        }
        idx.apply(PodEvent::InitDone);
        assert_eq!((idx.len(), idx.stats().dropped_full), (2, 2));
    }
}
