//! Collector configuration: the TOML file and the command line.
//!
//! Every option has a default, so the collector runs with no file at all: OTLP on
//! 127.0.0.1:4317 (gRPC) and :4318 (HTTP), API and `/metrics` on 127.0.0.1:9465, the store in
//! `/var/lib/tenantscope/collector.db`, no tokens (which is only allowed on loopback), one
//! "standard" objective. The shipped `collector/tenantscope-collector.example.toml` lists every
//! option at its default; a unit test keeps the two equal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::forward::ForwardConfig;
use crate::objectives::ObjectivesConfig;
use crate::promql::PromqlConfig;
use crate::remote_write::RemoteWriteConfig;
use crate::store::StoreOptions;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub objectives: ObjectivesConfig,
    pub remote_write: RemoteWriteConfig,
    pub forward: ForwardConfig,
    pub promql: PromqlConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// OTLP/gRPC listen address.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP listen address (`/v1/metrics`, `/v1/traces`, protobuf or JSON).
    pub otlp_http: SocketAddr,
    /// API, `/metrics`, `/healthz` and `/readyz` listen address.
    pub api: SocketAddr,
    /// Largest accepted request body, after decompression. OTLP/HTTP answers 413 (counted in
    /// `tenantscope_collector_otlp_requests_total`); OTLP/gRPC refuses the message in tonic
    /// (OUT_OF_RANGE or RESOURCE_EXHAUSTED, not counted by the collector). 1 KiB to 256 MiB.
    pub max_request_bytes: usize,
    /// TLS for all three listeners: PEM certificate chain and private key. Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// OTLP requests per second accepted from one sender (client address), both transports
    /// together; beyond it OTLP/HTTP answers 429 with `Retry-After` and OTLP/gRPC
    /// RESOURCE_EXHAUSTED (counted as `rate_limited`). An agent sends one span export per
    /// `otlp.batch_size` spans or `otlp.batch_timeout` and one SLI export per interval: the
    /// default leaves a busy node (100,000 spans/s in batches of 512: ~200/s) room. 0 is off;
    /// at most 100000.
    pub agent_rate_limit: u32,
    /// Requests one sender may make at once after being idle. 1 to 1000000.
    pub agent_rate_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            otlp_grpc: ([127, 0, 0, 1], 4317).into(),
            otlp_http: ([127, 0, 0, 1], 4318).into(),
            api: ([127, 0, 0, 1], 9465).into(),
            max_request_bytes: 8 << 20,
            tls_cert: None,
            tls_key: None,
            agent_rate_limit: 500,
            agent_rate_burst: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An EnvFilter directive, e.g. `info` or `info,tenantscope_collector=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[storage]`: where the embedded store lives and what it keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// SQLite database file (created with its directory).
    pub path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub minute_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub hour_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    pub evidence_per_hour: u32,
    /// How often minute rows are rolled up and old data expired.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let o = StoreOptions::default();
        Self {
            path: PathBuf::from("/var/lib/tenantscope/collector.db"),
            minute_retention: o.minute_retention,
            hour_retention: o.hour_retention,
            dedup_window: o.dedup_window,
            evidence_per_hour: o.evidence_per_hour,
            maintenance_interval: Duration::from_secs(300),
        }
    }
}

impl StorageConfig {
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            minute_retention: self.minute_retention,
            hour_retention: self.hour_retention,
            dedup_window: self.dedup_window,
            evidence_per_hour: self.evidence_per_hour,
        }
    }
}

/// `[ingest]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// How far in the future a data point may end (agents' clock skew).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Cumulative series remembered to compute deltas (memory bound; beyond, points are
    /// refused and counted).
    pub max_cumulative_series: usize,
    /// Tenants with their own SLO gauges on `/metrics` (memory and cardinality bound; the
    /// others are counted in `tenantscope_collector_slo_tenants_overflow`).
    pub max_slo_tenants: usize,
    /// How often the SLO gauges are recomputed from the store.
    #[serde(with = "humantime_serde")]
    pub slo_refresh_interval: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(300),
            max_cumulative_series: 100_000,
            max_slo_tenants: 1_000,
            slo_refresh_interval: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Reads and validates a config file; without a path, the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let cfg: Config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("reading config {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?
            }
        };
        Ok(cfg)
    }

    /// Checks every section; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if !(1024..=256 << 20).contains(&s.max_request_bytes) {
            return Err(format!(
                "server.max_request_bytes: {} is not between 1024 and 268435456",
                s.max_request_bytes
            ));
        }
        if s.agent_rate_limit > 100_000 {
            return Err(format!(
                "server.agent_rate_limit: {} is not between 0 and 100000",
                s.agent_rate_limit
            ));
        }
        if !(1..=1_000_000).contains(&s.agent_rate_burst) {
            return Err(format!(
                "server.agent_rate_burst: {} is not between 1 and 1000000",
                s.agent_rate_burst
            ));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err("server.tls_cert and server.tls_key: set both or neither".into());
        }
        let addrs = [s.otlp_grpc, s.otlp_http, s.api];
        if (0..3).any(|i| (i + 1..3).any(|j| addrs[i] == addrs[j] && addrs[i].port() != 0)) {
            return Err("server: otlp_grpc, otlp_http and api must be different addresses".into());
        }
        self.auth.validate()?;
        if self.auth.tokens.is_empty()
            && !self.auth.allow_unauthenticated
            && let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback())
        {
            return Err(format!(
                "server: {a} is not a loopback address and no auth.tokens are configured; \
                 configure tokens, or set auth.allow_unauthenticated = true"
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(format!("log.level: {:?}: {e}", self.log.level));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(format!(
                "log.format: {:?} is not text or json",
                self.log.format
            ));
        }
        self.storage.options().validate()?;
        if self.storage.maintenance_interval < Duration::from_secs(1) {
            return Err("storage.maintenance_interval must be at least 1s".into());
        }
        let i = &self.ingest;
        if !(1..=10_000_000).contains(&i.max_cumulative_series) {
            return Err("ingest.max_cumulative_series must be between 1 and 10000000".into());
        }
        if !(1..=100_000).contains(&i.max_slo_tenants) {
            return Err("ingest.max_slo_tenants must be between 1 and 100000".into());
        }
        if i.slo_refresh_interval < Duration::from_secs(1) {
            return Err("ingest.slo_refresh_interval must be at least 1s".into());
        }
        self.objectives.validate()?;
        self.remote_write.validate()?;
        self.forward.validate()?;
        self.promql.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../tenantscope-collector.example.toml");
        let cfg: Config = toml::from_str(text).unwrap();
        assert_eq!(cfg, Config::default());
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_options_and_bad_values_are_named() {
        let err = toml::from_str::<Config>("[server]\nnope = 1\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let mut cfg = Config::default();
        cfg.server.otlp_grpc = "0.0.0.0:4317".parse().unwrap();
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("0.0.0.0:4317 is not a loopback")
        );
        cfg.auth.allow_unauthenticated = true;
        cfg.validate().unwrap();
        cfg.server.tls_cert = Some("/c".into());
        assert!(cfg.validate().unwrap_err().contains("tls_key"));
        let mut cfg = Config::default();
        cfg.server.max_request_bytes = 10;
        assert!(cfg.validate().unwrap_err().contains("max_request_bytes"));
    }
}
