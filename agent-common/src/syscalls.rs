//! `syscalls` probe: per-(process, syscall) counters and latency histograms kept in a kernel map.
//!
//! The kernel never sends an event per syscall. `sys_exit` adds into `SYSCALL_STATS`; the agent
//! reads the map on a timer and folds processes into workloads.

/// Syscall numbers at or above this are folded into [`NR_INVALID`] so that a process calling
/// `syscall(random)` cannot grow the map without bound.
pub const NR_MAX: u32 = 1024;
/// The folded value for out-of-range syscall numbers.
pub const NR_INVALID: u32 = NR_MAX - 1;

/// Number of latency slots per key.
pub const HIST_SLOTS: usize = 32;
/// Slot 0 holds every latency below `2^(HIST_MIN_LOG2 + 1)` ns (256 ns).
pub const HIST_MIN_LOG2: u32 = 7;

/// Map key: one process (thread group) and one syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    pub tgid: u32,
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallKey>() == 8);

/// Map value, updated with atomic adds (shared by all CPUs, so memory does not grow with the
/// CPU count). The call count is the sum of `buckets`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    /// Sum of latencies in nanoseconds.
    pub sum_ns: u64,
    /// Calls that returned an error (`-4095..=-1`).
    pub errors: u64,
    /// Log2 latency histogram, see [`slot`].
    pub buckets: [u64; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<SyscallStats>() == 16 + 8 * HIST_SLOTS);

impl SyscallStats {
    pub const ZERO: Self = Self {
        sum_ns: 0,
        errors: 0,
        buckets: [0; HIST_SLOTS],
    };

    /// Number of calls recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

/// Per-thread record of a syscall in flight, written at `sys_enter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStart {
    /// Entry time; 0 means "no syscall in flight" (cleared at exit instead of deleting the entry,
    /// which is cheaper).
    pub ts_ns: u64,
    pub nr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallStart>() == 16);

/// Floor of log2, without loops (the verifier likes straight-line code). `log2(0) == 0`.
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Histogram slot of a latency: slot `i > 0` holds `[2^(i+7), 2^(i+8))` ns, slot 0 everything
/// below 256 ns, the last slot everything from `2^38` ns (~275 s) up.
#[inline(always)]
pub fn slot(ns: u64) -> usize {
    let l = log2_floor(ns);
    let s = l.saturating_sub(HIST_MIN_LOG2);
    if s as usize >= HIST_SLOTS {
        HIST_SLOTS - 1
    } else {
        s as usize
    }
}

/// Exclusive upper bound in nanoseconds of slot `i` (`None` for the open-ended last slot).
pub fn slot_upper_ns(i: usize) -> Option<u64> {
    (i < HIST_SLOTS - 1).then(|| 1u64 << (HIST_MIN_LOG2 + 1 + i as u32))
}

/// A syscall return value is an error when it is in `-4095..=-1` (the kernel's `IS_ERR_VALUE`).
#[inline(always)]
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding bytes (size asserted above).
    unsafe impl aya::Pod for super::SyscallKey {}
    unsafe impl aya::Pod for super::SyscallStats {}
    unsafe impl aya::Pod for super::SyscallStart {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [1u64, 2, 3, 4, 255, 256, 1 << 20, (1 << 33) + 5, u64::MAX] {
            assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "v={v}");
        }
        assert_eq!(log2_floor(0), 0);
    }

    #[test]
    fn slots_cover_bounds() {
        assert_eq!(slot(0), 0);
        assert_eq!(slot(255), 0);
        assert_eq!(slot(256), 1);
        assert_eq!(slot_upper_ns(0), Some(256));
        // 10 ms lands in [2^23, 2^24) ns.
        let s = slot(10_000_000);
        assert_eq!(slot_upper_ns(s), Some(1 << 24));
        assert!(slot_upper_ns(s - 1).unwrap() <= 10_000_000);
        assert_eq!(slot(u64::MAX), HIST_SLOTS - 1);
        assert_eq!(slot_upper_ns(HIST_SLOTS - 1), None);
        for ns in [1u64, 300, 4_000, 1 << 30, 1 << 40] {
            let s = slot(ns);
            assert!(slot_upper_ns(s).is_none_or(|u| ns < u), "ns={ns}");
            assert!(s == 0 || ns >= slot_upper_ns(s - 1).unwrap(), "ns={ns}");
        }
    }

    #[test]
    fn error_range() {
        assert!(is_error(-1));
        assert!(is_error(-4095));
        assert!(!is_error(-4096));
        assert!(!is_error(0));
        assert!(!is_error(12));
    }
}
