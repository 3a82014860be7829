//! `process` probe: fork (process, not thread), exec and exit events over a ring buffer.
//! Low volume by nature; wakeups are batched unless the buffer is filling up.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
};
use tenantscope_agent_common::{
    EventHeader, counters,
    process::{
        CLONE_THREAD, COMM_LEN, EXEC_KIND, EXIT_KIND, FORK_KIND, NEWTASK_CLONE_FLAGS_OFFSET,
        NEWTASK_PID_OFFSET, ProcessEvent,
    },
};

use crate::{agent_tgid, count};

/// Wake the consumer once this many bytes are queued; otherwise it polls on a short timer.
const WAKEUP_BYTES: u64 = 64 * core::mem::size_of::<ProcessEvent>() as u64;

#[map]
static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[tracepoint(category = "task", name = "task_newtask")]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint format, checked against tracefs by the agent.
    let (Ok(child), Ok(flags)) = (unsafe { ctx.read_at::<i32>(NEWTASK_PID_OFFSET) }, unsafe {
        ctx.read_at::<u64>(NEWTASK_CLONE_FLAGS_OFFSET)
    }) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(FORK_KIND, child as u32, parent);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    // After exec the current task is the thread-group leader and `comm` is already the new name.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(EXEC_KIND, tgid, 0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    crate::http::thread_exited(id);
    // Only the thread-group leader's exit ends the process for our purposes.
    if (id >> 32) as u32 == id as u32 {
        emit(EXIT_KIND, (id >> 32) as u32, 0);
    }
    0
}

#[inline(always)]
fn emit(kind: u32, tgid: u32, ppid: u32) {
    if tgid == agent_tgid() {
        return;
    }
    let Some(mut entry) = PROCESS_EVENTS.reserve::<ProcessEvent>(0) else {
        count(counters::PROCESS_EVENTS_DROPPED);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    entry.write(ProcessEvent {
        // SAFETY: helpers always callable from tracing programs.
        header: EventHeader {
            kind,
            _pad: 0,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        tgid,
        ppid,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    });
    // Exec events wake the consumer at once: it must read /proc/<pid>/cgroup while the process
    // still exists. Fork and exit events can wait for the batch or the consumer's timer.
    let flags = if kind == EXEC_KIND {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        crate::wakeup_flags(
            PROCESS_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)),
            core::mem::size_of::<ProcessEvent>() as u64,
            WAKEUP_BYTES,
        )
    };
    entry.submit(flags);
}
