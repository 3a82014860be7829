//! Folds kernel per-(process, syscall) aggregates into per-(workload, syscall) totals.
//!
//! Pure and synchronous: the caller reads the kernel map and passes the entries in. Kernel
//! values are cumulative per process; this keeps the last value seen per key and adds the
//! difference to the workload, so totals stay monotonic when processes come and go.

use std::{collections::HashMap, sync::Arc};

use tenantscope_agent_common::syscalls::{
    HIST_SLOTS, NR_INVALID, SyscallKey, SyscallStats, slot_upper_ns,
};

/// Histogram slots exposed as `le` buckets: every other power of two from ~1 µs to ~17 s
/// (13 buckets + `+Inf`). Coarser than the kernel's slots to bound series per (workload, syscall);
/// cumulative counts at these bounds are exact.
pub const EXPOSED_SLOTS: [usize; 13] = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26];

/// Name of a syscall number on this architecture, from the `syscalls` crate's table.
pub fn syscall_name(nr: u32) -> &'static str {
    if nr == NR_INVALID {
        return "_invalid";
    }
    syscalls::Sysno::new(nr as usize).map_or("_unknown", |s| s.name())
}

/// Totals of one (workload, syscall) pair, ready for exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallSeries {
    pub workload: Arc<str>,
    pub syscall: &'static str,
    pub count: u64,
    pub errors: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds, cumulative count)` for each of [`EXPOSED_SLOTS`].
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Default)]
pub struct SyscallAggregator {
    last: HashMap<SyscallKey, SyscallStats>,
    totals: HashMap<(Arc<str>, u32), SyscallStats>,
}

impl SyscallAggregator {
    /// Folds one read of the kernel map; `label_of(tgid)` names the workload of a process.
    pub fn fold<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a (SyscallKey, SyscallStats)>,
        mut label_of: impl FnMut(u32) -> Arc<str>,
    ) {
        for (key, value) in entries {
            let prev = self.last.insert(*key, *value).unwrap_or(SyscallStats::ZERO);
            let delta = delta(&prev, value);
            if delta == SyscallStats::ZERO {
                continue;
            }
            let total = self
                .totals
                .entry((label_of(key.tgid), key.nr))
                .or_insert(SyscallStats::ZERO);
            add(total, &delta);
        }
    }

    /// Forgets a key that was deleted from the kernel map (its counts were already folded).
    pub fn forget(&mut self, key: &SyscallKey) {
        self.last.remove(key);
    }

    /// Drops the series of workloads that expired.
    pub fn drop_workloads(&mut self, labels: &[Arc<str>]) {
        if !labels.is_empty() {
            self.totals.retain(|(l, _), _| !labels.contains(l));
        }
    }

    /// Number of kernel keys being tracked.
    pub fn tracked_keys(&self) -> usize {
        self.last.len()
    }

    /// All series, sorted by workload then syscall name.
    pub fn snapshot(&self) -> Vec<SyscallSeries> {
        let mut out: Vec<SyscallSeries> = self
            .totals
            .iter()
            .map(|((workload, nr), s)| {
                let mut cumulative = 0u64;
                let mut next = 0usize;
                let mut buckets = Vec::with_capacity(EXPOSED_SLOTS.len());
                for &slot in &EXPOSED_SLOTS {
                    while next <= slot {
                        cumulative += s.buckets[next];
                        next += 1;
                    }
                    let upper = slot_upper_ns(slot).expect("exposed slots are bounded");
                    buckets.push((upper as f64 / 1e9, cumulative));
                }
                SyscallSeries {
                    workload: workload.clone(),
                    syscall: syscall_name(*nr),
                    count: s.count(),
                    errors: s.errors,
                    sum_seconds: s.sum_ns as f64 / 1e9,
                    buckets,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.workload, a.syscall).cmp(&(&b.workload, b.syscall)));
        out
    }
}

/// `cur - prev`, or `cur` when the kernel entry was recreated since the last read.
fn delta(prev: &SyscallStats, cur: &SyscallStats) -> SyscallStats {
    let reset = cur.sum_ns < prev.sum_ns
        || cur.errors < prev.errors
        || cur.buckets.iter().zip(&prev.buckets).any(|(c, p)| c < p);
    if reset {
        return *cur;
    }
    let mut d = SyscallStats::ZERO;
    d.sum_ns = cur.sum_ns - prev.sum_ns;
    d.errors = cur.errors - prev.errors;
    for i in 0..HIST_SLOTS {
        d.buckets[i] = cur.buckets[i] - prev.buckets[i];
    }
    d
}

fn add(total: &mut SyscallStats, d: &SyscallStats) {
    total.sum_ns = total.sum_ns.wrapping_add(d.sum_ns);
    total.errors = total.errors.wrapping_add(d.errors);
    for i in 0..HIST_SLOTS {
        total.buckets[i] = total.buckets[i].wrapping_add(d.buckets[i]);
    }
}

#[cfg(test)]
mod tests {
    use tenantscope_agent_common::syscalls::slot;

    use super::*;

    fn stats(samples: &[(u64, bool)]) -> SyscallStats {
        let mut s = SyscallStats::ZERO;
        for &(ns, err) in samples {
            s.buckets[slot(ns)] += 1;
            s.sum_ns += ns;
            s.errors += u64::from(err);
        }
        s
    }

    fn key(tgid: u32, nr: u32) -> SyscallKey {
        SyscallKey { tgid, nr }
    }

    #[test]
    fn folds_processes_into_workloads_with_deltas() {
        let mut agg = SyscallAggregator::default();
        let label = |tgid: u32| -> Arc<str> {
            if tgid < 100 {
                "web".into()
            } else {
                "db".into()
            }
        };
        let getppid = syscalls::Sysno::getppid as u32;
        let first = [
            (key(1, getppid), stats(&[(500, false); 3])),
            (key(2, getppid), stats(&[(500, false)])),
        ];
        agg.fold(&first, label);
        // Second read: process 1 made 2 more calls, one failing; process 2 unchanged.
        let second = [
            (
                key(1, getppid),
                stats(&[
                    (500, false),
                    (500, false),
                    (500, false),
                    (500, false),
                    (2_000, true),
                ]),
            ),
            (key(2, getppid), stats(&[(500, false)])),
            (key(100, getppid), stats(&[(10_000_000, false)])),
        ];
        agg.fold(&second, label);
        let snap = agg.snapshot();
        assert_eq!(snap.len(), 2);
        let web = snap.iter().find(|s| &*s.workload == "web").unwrap();
        assert_eq!(web.syscall, "getppid");
        assert_eq!(web.count, 6);
        assert_eq!(web.errors, 1);
        assert!((web.sum_seconds - 4_500e-9).abs() < 1e-12);
        let db = snap.iter().find(|s| &*s.workload == "db").unwrap();
        assert_eq!(db.count, 1);
        // 10 ms lies in (4.19 ms, 16.78 ms]: first cumulative bucket that holds it is 2^24 ns.
        let holding: Vec<f64> = db
            .buckets
            .iter()
            .filter(|b| b.1 == 1)
            .map(|b| b.0)
            .collect();
        assert!((holding[0] - 0.016_777_216).abs() < 1e-12, "{holding:?}");
        assert!(
            db.buckets
                .iter()
                .all(|b| b.0 < 0.016 && b.1 == 0 || b.0 > 0.016 && b.1 == 1)
        );
    }

    #[test]
    fn recreated_key_counts_from_zero_and_forget_works() {
        let mut agg = SyscallAggregator::default();
        let l = |_| -> Arc<str> { "w".into() };
        agg.fold(&[(key(5, 0), stats(&[(300, false); 10]))], l);
        agg.forget(&key(5, 0));
        assert_eq!(agg.tracked_keys(), 0);
        // Same tgid reused by a new process: its fresh, smaller counts are a new delta.
        agg.fold(&[(key(5, 0), stats(&[(300, false); 4]))], l);
        assert_eq!(agg.snapshot()[0].count, 14);
        // Without forget, a drop in counts is also treated as a reset rather than wrapping.
        agg.fold(&[(key(5, 0), stats(&[(300, false); 1]))], l);
        assert_eq!(agg.snapshot()[0].count, 15);
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_count() {
        let mut agg = SyscallAggregator::default();
        let samples: Vec<(u64, bool)> =
            [100, 1_500, 70_000, 3_000_000, 900_000_000, 60_000_000_000]
                .map(|n| (n, false))
                .into();
        agg.fold(&[(key(1, 1), stats(&samples))], |_| "w".into());
        let s = &agg.snapshot()[0];
        assert!(
            s.buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        // 60 s is above the last exposed bound (~17 s): only +Inf (the count) holds it.
        assert_eq!(s.buckets.last().unwrap().1, 5);
        assert_eq!(s.count, 6);
    }

    #[test]
    fn drop_workloads_and_names() {
        let mut agg = SyscallAggregator::default();
        agg.fold(&[(key(1, 1), stats(&[(1, false)]))], |_| "gone".into());
        agg.drop_workloads(&["gone".into()]);
        assert!(agg.snapshot().is_empty());
        assert_eq!(syscall_name(NR_INVALID), "_invalid");
        assert_eq!(syscall_name(syscalls::Sysno::nanosleep as u32), "nanosleep");
        assert_eq!(syscall_name(1000), "_unknown");
    }
}
