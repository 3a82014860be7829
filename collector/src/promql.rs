//! promql
