//! `syscalls` probe: enter/exit pairing per thread and in-kernel aggregation per (tgid, nr).
//!
//! Two hook flavours run the same logic: the BTF-typed raw tracepoints `sys_enter`/`sys_exit`
//! (the default, cheapest here, shared with the `http` probe so that a syscall pays for one pair
//! of program runs whatever the probes) and classic `raw_syscalls` tracepoints (kept for kernels
//! without BTF and for the cost comparison in docs/benchmarks.md).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use tenantscope_agent_common::{
    counters,
    syscalls::{self as common, NR_INVALID, NR_MAX, SyscallKey, SyscallStart, SyscallStats},
};

use crate::{agent_tgid, atomic_add, count, http};

/// Which probes the shared `sys_enter`/`sys_exit` programs serve, patched at load (a frozen
/// global, so the verifier drops the code of a probe that is off).
#[unsafe(no_mangle)]
static SYSCALL_HOOKS: u32 = 0;
const HOOK_SYSCALLS: u32 = 1;
const HOOK_HTTP: u32 = 2;

#[inline(always)]
fn hooks() -> u32 {
    // SAFETY: a read-only global patched by the loader; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&SYSCALL_HOOKS) }
}

const BPF_F_NO_PREALLOC: u32 = 1;

/// Syscall in flight per thread id. LRU so threads that die inside a syscall age out.
#[map]
static SYSCALL_START: LruHashMap<u32, SyscallStart> = LruHashMap::with_max_entries(65536, 0);

/// Aggregates per (tgid, nr). Not preallocated: memory follows use, bounded by max_entries
/// (the agent sets it from config at load time).
#[map]
static SYSCALL_STATS: HashMap<SyscallKey, SyscallStats> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let h = hooks();
    let nr = ctx.arg::<i64>(1);
    if h & HOOK_SYSCALLS != 0 {
        on_enter(nr);
    }
    if h & HOOK_HTTP != 0 {
        http::on_enter(ctx.arg::<*const u8>(0) as u64, nr);
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let h = hooks();
    let ret = ctx.arg::<i64>(1);
    if h & HOOK_SYSCALLS != 0 {
        on_exit(ret);
    }
    if h & HOOK_HTTP != 0 {
        http::on_exit(ctx.arg::<*const u8>(0) as u64, ret);
    }
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_enter")]
pub fn syscalls_enter_tp(ctx: TracePointContext) -> u32 {
    // Record layout: 8-byte common header, then `long id`.
    // SAFETY: offset from the tracepoint format, checked against tracefs by the agent.
    if let Ok(nr) = unsafe { ctx.read_at::<i64>(8) } {
        on_enter(nr);
    }
    0
}

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn syscalls_exit_tp(ctx: TracePointContext) -> u32 {
    // Record layout: 8-byte common header, `long id`, `long ret`.
    // SAFETY: as above.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(16) } {
        on_exit(ret);
    }
    0
}

#[inline(always)]
fn on_enter(nr: i64) {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == agent_tgid() {
        return;
    }
    let tid = id as u32;
    let nr = if (0..NR_MAX as i64).contains(&nr) {
        nr as u32
    } else {
        count(counters::SYSCALL_NR_OUT_OF_RANGE);
        NR_INVALID
    };
    // SAFETY: ktime is always callable from tracing programs.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // Overwrite in place when the thread already has an entry: a lookup is cheaper than an update.
    if let Some(p) = SYSCALL_START.get_ptr_mut(tid) {
        // SAFETY: the pointer is a live map value for this thread only.
        unsafe {
            (*p).ts_ns = ts_ns;
            (*p).nr = nr;
        }
    } else {
        // An LRU insert cannot fail for lack of space; it evicts instead.
        let _ = SYSCALL_START.insert(tid, SyscallStart { ts_ns, nr, _pad: 0 }, 0);
    }
}

#[inline(always)]
fn on_exit(ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == agent_tgid() {
        return;
    }
    let tid = id as u32;
    let Some(start) = SYSCALL_START.get_ptr_mut(tid) else {
        count(counters::SYSCALL_UNPAIRED_EXIT);
        return;
    };
    // SAFETY: live map value owned by this thread.
    let (ts_ns, nr) = unsafe { ((*start).ts_ns, (*start).nr) };
    if ts_ns == 0 {
        count(counters::SYSCALL_UNPAIRED_EXIT);
        return;
    }
    // SAFETY: as above.
    unsafe { (*start).ts_ns = 0 };
    // SAFETY: ktime is always callable from tracing programs.
    let dur = unsafe { bpf_ktime_get_ns() }.wrapping_sub(ts_ns);

    let key = SyscallKey { tgid, nr };
    let stats = match SYSCALL_STATS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            // NOEXIST: another CPU may have inserted the key meanwhile; then the lookup below
            // finds it.
            let _ = SYSCALL_STATS.insert(key, SyscallStats::ZERO, u64::from(BPF_NOEXIST));
            match SYSCALL_STATS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    count(counters::SYSCALL_STATS_FULL);
                    return;
                }
            }
        }
    };
    let slot = common::slot(dur);
    // SAFETY: `stats` points at a live map value; the fields are updated with atomic adds
    // because threads of one process run on several CPUs at once.
    unsafe {
        if slot < common::HIST_SLOTS {
            atomic_add(&raw mut (*stats).buckets[slot], 1);
        }
        atomic_add(&raw mut (*stats).sum_ns, dur);
        if common::is_error(ret) {
            atomic_add(&raw mut (*stats).errors, 1);
        }
    }
}
