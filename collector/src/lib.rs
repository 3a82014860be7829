//! Tenantscope collector: receives OTLP metrics and traces from agents, keeps per-tenant SLI
//! rollups (embedded SQLite by default), computes SLOs and error budgets, renders SLA reports and
//! forwards to Prometheus-compatible engines and OTLP trace backends.

pub mod api;
pub mod auth;
pub mod config;
pub mod forward;
pub mod gauges;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod objectives;
pub mod promql;
pub mod remote_write;
pub mod report;
pub mod server;
pub mod sla;
pub mod sli;
pub mod store;
pub mod tls;
