//! Tenantscope node agent. `main.rs` is wiring; the logic lives here:
//! `probes` (kernel I/O) -> `aggregate` (pure) -> `metrics` (exposition) -> `server` (HTTP).
pub mod config;
pub mod workload;
