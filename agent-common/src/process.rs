//! `process` probe: low-volume fork/exec/exit events that keep pid -> workload current.

use crate::EventHeader;

/// A new process (not a thread) was created; `tgid` is the child, `ppid` the parent.
pub const FORK_KIND: u32 = 1;
/// A process called execve; `comm` is the new name.
pub const EXEC_KIND: u32 = 2;
/// A thread-group leader exited.
pub const EXIT_KIND: u32 = 3;

/// `CLONE_THREAD` from `linux/sched.h`: set when `task_newtask` creates a thread.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// Field offsets in the `task:task_newtask` tracepoint record (stable since Linux 4.x; the agent
/// checks them against tracefs before attaching).
pub const NEWTASK_PID_OFFSET: usize = 8;
pub const NEWTASK_CLONE_FLAGS_OFFSET: usize = 32;

pub const COMM_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub tgid: u32,
    /// Parent tgid for fork events, 0 otherwise.
    pub ppid: u32,
    /// cgroup v2 id of the task (0 on cgroup v1-only hosts).
    pub cgroup_id: u64,
    /// NUL-padded task name.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 16 + 8 + 8 + COMM_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding bytes (size asserted above).
    unsafe impl aya::Pod for super::ProcessEvent {}
}
