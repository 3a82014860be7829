//! Workload identity: pid -> cgroup -> container id, or the process name for host processes.
pub mod cgroup;
