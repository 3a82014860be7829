//! Tenantscope node agent. `main.rs` is wiring; the logic lives here:
//! `probes` (kernel I/O) -> `workload` + `aggregate` (pure) -> `telemetry` (exposition) ->
//! `server` (HTTP), driven by the `agent` loop.
pub mod agent;
pub mod aggregate;
pub mod config;
pub mod http;
pub mod otlp;
pub mod parenting;
pub mod probes;
pub mod replay;
pub mod server;
pub mod sli_export;
pub mod spans;
pub mod telemetry;
pub mod workload;
