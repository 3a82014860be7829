//! Tenantscope kernel programs. Each probe has one module here, named as in `agent-common` and
//! `agent/src/probes`. Programs are thin entry points around `try_*` functions; every failure
//! path increments a slot of `KERNEL_COUNTERS`.
#![no_std]
#![no_main]
// Inline asm on the bpf target (for atomic adds) is still unstable; the build enables it.
#![feature(asm_experimental_arch)]

mod http;
mod process;
mod syscalls;
mod tcp;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tenantscope_agent_common::counters;

/// The agent's own tgid, set at load time: the agent never observes itself.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// Failure counters, indexed by `tenantscope_agent_common::counters`.
#[map]
static KERNEL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

#[inline(always)]
fn agent_tgid() -> u32 {
    // SAFETY: a read-only global patched by the loader; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = KERNEL_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// `lock *(u64 *)(dst) += v`: the BPF atomic add without fetch, available on every BPF ISA
/// version (core's `AtomicU64::fetch_add` is not offered for the bpf target).
///
/// # Safety
/// `dst` must point at a live, 8-byte aligned map value.
#[inline(always)]
pub(crate) unsafe fn atomic_add(dst: *mut u64, v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({dst} + 0) += {v}",
            dst = in(reg) dst,
            v = in(reg) v,
            options(nostack),
        );
    }
}

/// Submit flags that wake a ring buffer's consumer once per batch: only the record that takes
/// the queued bytes (`queued`, read after reserving `record` bytes) across `threshold` forces a
/// wakeup. Beyond it the consumer is awake already or its poll timer is due; forcing a wakeup
/// per record while it catches up costs ~1.5 µs each on the producer (performance.md).
#[inline(always)]
fn wakeup_flags(queued: u64, record: u64, threshold: u64) -> u64 {
    use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    if queued >= threshold && queued < threshold + record {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: the probe_read helpers require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
