//! Layout shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, has explicit padding and a compile-time size check,
//! and uses integers rather than `bool`/enums across the kernel boundary.
#![no_std]

pub mod http;
pub mod process;
pub mod syscalls;
pub mod tcp;

/// Indices into the kernel's `KERNEL_COUNTERS` per-CPU array: every failure path in a kernel
/// program increments one of these instead of logging.
pub mod counters {
    /// A process event could not be reserved in the ring buffer (consumer too slow).
    pub const PROCESS_EVENTS_DROPPED: u32 = 0;
    /// A new (process, syscall) key could not be inserted: `SYSCALL_STATS` is full.
    pub const SYSCALL_STATS_FULL: u32 = 1;
    /// A syscall exit had no recorded entry (in flight when the probe attached, or evicted).
    pub const SYSCALL_UNPAIRED_EXIT: u32 = 2;
    /// A syscall number outside the table was folded into `syscalls::NR_INVALID`.
    pub const SYSCALL_NR_OUT_OF_RANGE: u32 = 3;
    /// A TCP event could not be reserved in the ring buffer (consumer too slow).
    pub const TCP_EVENTS_DROPPED: u32 = 4;
    /// A new (process, direction) key could not be inserted: `TCP_STATS` is full.
    pub const TCP_STATS_FULL: u32 = 5;
    /// A connection closed that `TCP_CONNS` did not hold (opened before the agent started, or
    /// its storage could not be created: `TCP_STORAGE_FAILED`).
    pub const TCP_CLOSE_UNTRACKED: u32 = 6;
    /// A listener could not be recorded: `TCP_LISTENERS` is full.
    pub const TCP_LISTENERS_FULL: u32 = 7;
    /// A TCP socket's `tcp_sock` could not be obtained (`bpf_skc_to_tcp_sock` returned NULL):
    /// its bytes, RTT and retransmits are missing from that close or retransmit.
    pub const TCP_READ_FAILED: u32 = 8;
    /// An HTTP record could not be reserved in the ring buffer (consumer too slow).
    pub const HTTP_EVENTS_DROPPED: u32 = 9;
    /// Reading user memory (a payload prefix, an iovec, a sockaddr) failed.
    pub const HTTP_READ_FAILED: u32 = 10;
    /// A request's stash was evicted (more requests in flight than the stash map holds): its
    /// remaining bytes are not captured.
    pub const HTTP_STASH_EVICTED: u32 = 11;
    /// A process's request counts could not be created: `HTTP_REQUESTS` is full (its requests
    /// are missing from the coverage figure and the in-flight gauge).
    pub const HTTP_REQUESTS_FULL: u32 = 12;
    /// A thread that read a server request could not be given an `HTTP_SERVING` entry, or its
    /// process could not be marked multiplexing in `HTTP_MULTIPLEXED`: the process's client
    /// calls are no longer parented (they may not be exact).
    pub const HTTP_SERVING_FULL: u32 = 13;
    /// A connection's socket storage could not be created (no memory, or not a full socket): it
    /// is not tracked, and its close is counted as untracked.
    pub const TCP_STORAGE_FAILED: u32 = 14;
    /// Number of counters; the map has exactly this many slots.
    pub const COUNT: u32 = 15;

    /// `(index, probe, kind)` for exposition; one row per counter above.
    pub const ALL: [(u32, &str, &str); COUNT as usize] = [
        (PROCESS_EVENTS_DROPPED, "process", "ringbuf_full"),
        (SYSCALL_STATS_FULL, "syscalls", "stats_map_full"),
        (SYSCALL_UNPAIRED_EXIT, "syscalls", "unpaired_exit"),
        (SYSCALL_NR_OUT_OF_RANGE, "syscalls", "nr_out_of_range"),
        (TCP_EVENTS_DROPPED, "tcp", "ringbuf_full"),
        (TCP_STATS_FULL, "tcp", "stats_map_full"),
        (TCP_CLOSE_UNTRACKED, "tcp", "close_untracked"),
        (TCP_LISTENERS_FULL, "tcp", "listeners_map_full"),
        (TCP_READ_FAILED, "tcp", "read_failed"),
        (HTTP_EVENTS_DROPPED, "http", "ringbuf_full"),
        (HTTP_READ_FAILED, "http", "read_failed"),
        (HTTP_STASH_EVICTED, "http", "stash_evicted"),
        (HTTP_REQUESTS_FULL, "http", "requests_map_full"),
        (HTTP_SERVING_FULL, "http", "serving_map_full"),
        (TCP_STORAGE_FAILED, "tcp", "storage_failed"),
    ];
}

/// Header that starts every ring-buffer event. Kinds are explicit and never reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `*_KIND` constants of the probe modules.
    pub kind: u32,
    /// Explicit padding so the struct has no hidden bytes.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the event was produced (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
