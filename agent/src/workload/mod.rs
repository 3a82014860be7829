//! Workload identity: pid -> cgroup -> container id -> (in Kubernetes) pod and its owner, or the
//! process name for host processes.
//!
//! [`ProcessTable`] is pure: it is fed process events, `/proc` readings (done by the thin
//! [`procfs`] shell) and pod events (from the [`k8s`] watch) and answers "which workload label,
//! and which pod, does tgid N count under". The number of distinct labels is capped; processes
//! beyond the cap fold into [`OTHER`], counted.

pub mod cgroup;
pub mod k8s;
pub mod listeners;
pub mod pods;
pub mod procfs;
pub mod runtime;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::aggregate::FastMap;

pub use cgroup::{ContainerRef, Runtime};
pub use pods::{PodEvent, PodIndex, PodMeta, WorkloadNaming};

/// Label of processes whose workload did not fit under `workloads.max`.
pub const OTHER: &str = "_other";
/// Label of processes the agent could not identify (exited before it could read `/proc`, and no
/// process event described them).
pub const UNKNOWN: &str = "_unknown";

/// What a process is, before any Kubernetes enrichment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A container, identified by its runtime and id.
    Container(ContainerRef),
    /// A host process, identified by its name (`comm`).
    Host { comm: String },
    /// Could not be identified.
    Unknown,
}

impl Workload {
    /// The `workload` label value: the process name for host processes, `<runtime>/<short id>`
    /// for containers. Pod owners replace the latter once pod metadata is available.
    pub fn label(&self) -> String {
        match self {
            Self::Container(c) => format!("{}/{}", c.runtime.as_str(), c.short_id()),
            Self::Host { comm } => comm.clone(),
            Self::Unknown => UNKNOWN.to_owned(),
        }
    }

    /// The workload of a process given its `/proc/<pid>/cgroup` contents and name.
    pub fn from_proc(cgroup: Option<&str>, comm: &str) -> Self {
        match cgroup.and_then(cgroup::container_from_proc_cgroup) {
            Some(c) => Self::Container(c),
            None if comm.is_empty() => Self::Unknown,
            None => Self::Host {
                comm: comm.to_owned(),
            },
        }
    }
}

/// Decodes a NUL-padded kernel `comm` into a printable name.
pub fn comm_from_bytes(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Who a process is, as the HTTP pipeline needs it: its workload label and, in Kubernetes, its
/// pod (whose labels and namespace the tenant chain reads, and whose attributes spans carry).
#[derive(Debug, Clone)]
pub struct Origin {
    pub workload: Arc<str>,
    pub pod: Option<Arc<PodMeta>>,
}

impl Origin {
    pub fn host(workload: impl Into<Arc<str>>) -> Self {
        Self {
            workload: workload.into(),
            pod: None,
        }
    }
}

/// Same workload label and same pod (by UID; pod updates do not make a new origin).
impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.workload == other.workload
            && self.pod.as_ref().map(|p| &p.uid) == other.pod.as_ref().map(|p| &p.uid)
    }
}

impl Eq for Origin {}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.workload.hash(state);
        self.pod.as_ref().map(|p| &p.uid).hash(state);
    }
}

#[derive(Debug)]
struct ProcEntry {
    workload: Workload,
    /// The pod of a container process, when the pod watch knows it.
    pod: Option<Arc<PodMeta>>,
    /// Assigned the first time the process is seen making syscalls, so idle processes do not
    /// take workload slots.
    label: Option<Arc<str>>,
    /// Set when the process exited; the entry stays until its last counts were folded.
    exited: bool,
    /// Read from its executable the first time it is asked for (reset by exec).
    runtime: Option<runtime::Runtime>,
}

#[derive(Debug)]
struct LabelSlot {
    /// Live (not exited) labelled processes counting under this label.
    live: usize,
    /// When `live` last dropped to zero, or when the label was admitted.
    idle_since: Instant,
}

/// Counters the table reports about itself (exported as agent self-metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// Processes whose workload was folded into [`OTHER`] because the cap was reached.
    pub overflowed_processes: u64,
    /// Workload labels removed after `idle_ttl` with no live process.
    pub expired_workloads: u64,
}

/// tgid -> workload, with a cap on distinct labels.
#[derive(Debug)]
pub struct ProcessTable {
    max_workloads: usize,
    idle_ttl: Duration,
    procs: FastMap<u32, ProcEntry>,
    labels: FastMap<Arc<str>, LabelSlot>,
    stats: TableStats,
    pods: PodIndex,
    naming: WorkloadNaming,
    /// [`PodIndex::generation`] the entries were last resolved against.
    pods_seen: u64,
}

impl ProcessTable {
    pub fn new(max_workloads: usize, idle_ttl: Duration) -> Self {
        Self {
            max_workloads,
            idle_ttl,
            procs: FastMap::default(),
            labels: FastMap::default(),
            stats: TableStats::default(),
            pods: PodIndex::default(),
            naming: WorkloadNaming::default(),
            pods_seen: 0,
        }
    }

    /// Resolves container processes to pods of `index` (fed by [`Self::apply_pod_event`]).
    pub fn with_pods(mut self, index: PodIndex, naming: WorkloadNaming) -> Self {
        self.pods = index;
        self.naming = naming;
        self
    }

    pub fn pods(&self) -> &PodIndex {
        &self.pods
    }

    pub fn apply_pod_event(&mut self, event: PodEvent) {
        self.pods.apply(event);
    }

    /// Re-resolves live container processes after pod changes: a pod seen after its processes
    /// started, an owner or labels that changed, a pod gone. A process whose label changes
    /// counts under the new one from its next fold; the old label expires as usual.
    pub fn refresh_pods(&mut self, now: Instant) {
        if self.pods.generation() == self.pods_seen {
            return;
        }
        self.pods_seen = self.pods.generation();
        let mut released = Vec::new();
        for e in self.procs.values_mut() {
            let Workload::Container(c) = &e.workload else {
                continue;
            };
            if e.exited {
                continue;
            }
            let pod = self.pods.lookup(c).map(|m| m.pod.clone());
            let same = match (&pod, &e.pod) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let wanted = wanted_label(&e.workload, pod.as_deref(), self.naming);
            if let Some(old) = e.label.take_if(|l| **l != *wanted) {
                released.push(old);
            }
            e.pod = pod;
        }
        for l in released {
            self.release(&l, now);
        }
    }

    /// (workload label, pod) of live labelled processes that run in a known pod: the rows of
    /// `tenantscope_workload_info`.
    pub fn pod_workloads(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<PodMeta>)> {
        self.procs
            .values()
            .filter(|e| !e.exited)
            .filter_map(|e| Some((e.label.as_ref()?, e.pod.as_ref()?)))
    }

    /// The label and pod of `tgid` (see [`Self::label`]).
    pub fn origin(&mut self, tgid: u32, now: Instant) -> Origin {
        let workload = self.label(tgid, now);
        Origin {
            workload,
            pod: self.procs.get(&tgid).and_then(|e| e.pod.clone()),
        }
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Number of processes tracked (including exited ones not yet folded).
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Number of distinct workload labels currently exported (including `_other`).
    pub fn workloads(&self) -> usize {
        self.labels.len()
    }

    pub fn contains(&self, tgid: u32) -> bool {
        self.procs.contains_key(&tgid)
    }

    pub fn workload(&self, tgid: u32) -> Option<&Workload> {
        self.procs.get(&tgid).map(|e| &e.workload)
    }

    /// The label a process counts under, admitting its workload under the cap on first use.
    /// Unknown processes count under [`UNKNOWN`] (also admitted under the cap).
    pub fn label(&mut self, tgid: u32, now: Instant) -> Arc<str> {
        let (wanted, exited) = match self.procs.get(&tgid) {
            Some(ProcEntry { label: Some(l), .. }) => return l.clone(),
            Some(e) => (
                wanted_label(&e.workload, e.pod.as_deref(), self.naming),
                e.exited,
            ),
            None => {
                self.procs.insert(
                    tgid,
                    ProcEntry {
                        workload: Workload::Unknown,
                        pod: None,
                        label: None,
                        exited: false,
                        runtime: None,
                    },
                );
                (Workload::Unknown.label(), false)
            }
        };
        let label = self.admit(wanted, now);
        if exited {
            self.release(&label, now);
        }
        if let Some(e) = self.procs.get_mut(&tgid) {
            e.label = Some(label.clone());
        }
        label
    }

    /// Records (or replaces, after exec) what `tgid` is.
    pub fn upsert(&mut self, tgid: u32, workload: Workload, now: Instant) {
        if let Some(old) = self.procs.get(&tgid)
            && !old.exited
            && old.workload == workload
        {
            return;
        }
        if let Some(old) = self.procs.remove(&tgid)
            && !old.exited
            && let Some(l) = old.label
        {
            self.release(&l, now);
        }
        let pod = match &workload {
            Workload::Container(c) => self.pods.lookup(c).map(|m| m.pod.clone()),
            _ => None,
        };
        self.procs.insert(
            tgid,
            ProcEntry {
                workload,
                pod,
                label: None,
                exited: false,
                runtime: None,
            },
        );
    }

    /// The runtime of a known process, once read (see [`Self::set_runtime`]).
    pub fn runtime(&self, tgid: u32) -> Option<runtime::Runtime> {
        self.procs.get(&tgid).and_then(|e| e.runtime)
    }

    /// Remembers what `tgid` runs (`None`: forget it, after an exec); ignored for an unknown
    /// process.
    pub fn set_runtime(&mut self, tgid: u32, runtime: Option<runtime::Runtime>) {
        if let Some(e) = self.procs.get_mut(&tgid) {
            e.runtime = runtime;
        }
    }

    /// A new process inherits its parent's workload (same cgroup, same name until it execs).
    /// Returns false when the parent is unknown; the caller then reads `/proc`.
    pub fn fork(&mut self, child: u32, parent: u32, now: Instant) -> bool {
        match self.procs.get(&parent) {
            Some(p) if !p.exited => {
                let workload = p.workload.clone();
                self.upsert(child, workload, now);
                true
            }
            _ => false,
        }
    }

    /// Marks a process exited. Its entry stays until [`Self::remove`] is called after its
    /// final counts were read.
    pub fn exit(&mut self, tgid: u32, now: Instant) {
        if let Some(e) = self.procs.get_mut(&tgid)
            && !e.exited
        {
            e.exited = true;
            if let Some(l) = e.label.clone() {
                self.release(&l, now);
            }
        }
    }

    /// tgids of exited processes, whose kernel entries can be folded and deleted.
    pub fn exited(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, e)| e.exited)
            .map(|(t, _)| *t)
            .collect()
    }

    /// tgids of live processes (for reconciling against `/proc`).
    pub fn live(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, e)| !e.exited)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Forgets a process.
    pub fn remove(&mut self, tgid: u32, now: Instant) {
        if let Some(e) = self.procs.remove(&tgid)
            && !e.exited
            && let Some(l) = e.label
        {
            self.release(&l, now);
        }
    }

    /// Drops labels that have had no live process for `idle_ttl`. Returns the removed labels so
    /// the aggregator can drop their series.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let ttl = self.idle_ttl;
        let referenced: std::collections::HashSet<&Arc<str>> = self
            .procs
            .values()
            .filter_map(|e| e.label.as_ref())
            .collect();
        let expired: Vec<Arc<str>> = self
            .labels
            .iter()
            .filter(|(l, s)| {
                s.live == 0 && now.duration_since(s.idle_since) >= ttl && !referenced.contains(l)
            })
            .map(|(l, _)| l.clone())
            .collect();
        for l in &expired {
            self.labels.remove(l);
        }
        self.stats.expired_workloads += expired.len() as u64;
        expired
    }

    fn admit(&mut self, wanted: String, now: Instant) -> Arc<str> {
        if let Some((label, _)) = self.labels.get_key_value(wanted.as_str()) {
            let label = label.clone();
            if let Some(slot) = self.labels.get_mut(&label) {
                slot.live += 1;
            }
            return label;
        }
        // The cap counts real workloads; `_other` is one extra value beyond it.
        let real = self.labels.len() - usize::from(self.labels.contains_key(OTHER));
        let label: Arc<str> = if real < self.max_workloads {
            Arc::from(wanted)
        } else {
            self.stats.overflowed_processes += 1;
            Arc::from(OTHER)
        };
        let slot = self.labels.entry(label.clone()).or_insert(LabelSlot {
            live: 0,
            idle_since: now,
        });
        slot.live += 1;
        label
    }

    fn release(&mut self, label: &Arc<str>, now: Instant) {
        if let Some(slot) = self.labels.get_mut(label) {
            slot.live = slot.live.saturating_sub(1);
            if slot.live == 0 {
                slot.idle_since = now;
            }
        }
    }
}

/// The label a process should count under: its pod's workload, else what `/proc` said.
fn wanted_label(workload: &Workload, pod: Option<&PodMeta>, naming: WorkloadNaming) -> String {
    match pod {
        Some(p) => p.workload_label(naming),
        None => workload.label(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(c: &str) -> Workload {
        Workload::Host { comm: c.to_owned() }
    }

    #[test]
    fn fork_inherits_and_exec_replaces() {
        let now = Instant::now();
        let mut t = ProcessTable::new(10, Duration::from_secs(60));
        t.upsert(100, host("bash"), now);
        assert!(t.fork(101, 100, now));
        assert_eq!(&*t.label(101, now), "bash");
        t.upsert(101, host("getppid-loop"), now);
        assert_eq!(&*t.label(101, now), "getppid-loop");
        assert!(!t.fork(300, 299, now), "unknown parent");
        assert_eq!(t.workloads(), 2);
    }

    #[test]
    fn idle_processes_take_no_slot() {
        let now = Instant::now();
        let mut t = ProcessTable::new(1, Duration::from_secs(60));
        t.upsert(1, host("idle"), now);
        t.upsert(2, host("busy"), now);
        assert_eq!(t.workloads(), 0);
        assert_eq!(&*t.label(2, now), "busy");
        assert_eq!(&*t.label(3, now), OTHER, "unknown tgid, cap reached");
    }

    #[test]
    fn cap_folds_into_other_and_counts() {
        let now = Instant::now();
        let mut t = ProcessTable::new(2, Duration::from_secs(60));
        for (tgid, c) in [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "d")] {
            t.upsert(tgid, host(c), now);
        }
        let labels: Vec<Arc<str>> = (1..=5).map(|p| t.label(p, now)).collect();
        let labels: Vec<&str> = labels.iter().map(|l| &**l).collect();
        assert_eq!(labels, ["a", "b", OTHER, "a", OTHER]);
        assert_eq!(t.stats().overflowed_processes, 2);
        assert_eq!(t.workloads(), 3, "2 real labels + the overflow value");
    }

    #[test]
    fn exited_processes_keep_label_until_removed_then_expire() {
        let t0 = Instant::now();
        let mut t = ProcessTable::new(5, Duration::from_secs(60));
        t.upsert(7, host("job"), t0);
        t.label(7, t0);
        t.exit(7, t0);
        assert_eq!(t.exited(), vec![7]);
        assert_eq!(
            &*t.label(7, t0),
            "job",
            "still resolvable for the final fold"
        );
        assert!(
            t.expire(t0 + Duration::from_secs(120)).is_empty(),
            "referenced by tgid 7"
        );
        t.remove(7, t0);
        assert!(
            t.expire(t0 + Duration::from_secs(30)).is_empty(),
            "not idle long enough"
        );
        let gone = t.expire(t0 + Duration::from_secs(61));
        assert_eq!(gone.len(), 1);
        assert_eq!(t.workloads(), 0);
        assert_eq!(t.stats().expired_workloads, 1);
    }

    #[test]
    fn process_that_exited_before_first_fold_does_not_hold_its_label() {
        let t0 = Instant::now();
        let mut t = ProcessTable::new(5, Duration::from_secs(10));
        t.upsert(8, host("short"), t0);
        t.exit(8, t0);
        assert_eq!(&*t.label(8, t0), "short");
        t.remove(8, t0);
        assert_eq!(t.expire(t0 + Duration::from_secs(11)).len(), 1);
    }

    #[test]
    fn expiry_frees_a_slot_under_the_cap() {
        let t0 = Instant::now();
        let mut t = ProcessTable::new(1, Duration::from_secs(10));
        t.upsert(1, host("a"), t0);
        t.label(1, t0);
        t.exit(1, t0);
        t.remove(1, t0);
        t.expire(t0 + Duration::from_secs(11));
        t.upsert(2, host("b"), t0);
        assert_eq!(&*t.label(2, t0 + Duration::from_secs(12)), "b");
    }

    #[test]
    fn labels() {
        let c = ContainerRef {
            runtime: Runtime::Containerd,
            id: "3f2a1b9c0d4e".repeat(5) + "abcd",
            pod_uid: None,
        };
        assert_eq!(Workload::Container(c).label(), "containerd/3f2a1b9c0d4e");
        assert_eq!(
            Workload::from_proc(Some("0::/\n"), "nginx").label(),
            "nginx"
        );
        assert_eq!(Workload::from_proc(None, "").label(), UNKNOWN);
        assert_eq!(comm_from_bytes(b"nginx\0\0\0garbage"), "nginx");
        assert_eq!(comm_from_bytes(b"a\x01b"), "a?b");
    }
}
