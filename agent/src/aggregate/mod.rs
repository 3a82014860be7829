//! Pure folding of kernel aggregates and events into per-workload series, one module per probe.

/// Maps and sets keyed by label values on the per-request path (see `foldhash` in Cargo.toml).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub mod http;
pub mod syscalls;
pub mod tcp;

pub use syscalls::{SyscallAggregator, SyscallSeries};
