//! Pure folding of kernel aggregates and events into per-workload series, one module per probe.

pub mod http;
pub mod syscalls;
pub mod tcp;

pub use syscalls::{SyscallAggregator, SyscallSeries};
