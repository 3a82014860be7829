//! Config parsing of the agent and the collector from arbitrary TOML text, with their
//! `validate()`; for a configuration that validates, what the binaries then build from it must
//! not fail, and the agent's `--check-config` output must load back to the same configuration.
//!
//! Input: TOML text (non-UTF-8 bytes replaced); every input goes to both parsers.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tenantscope_agent::aggregate::http::{HttpMetrics, HttpPipeline};
use tenantscope_agent::config::{Config as AgentConfig, REDACTED};
use tenantscope_agent::spans::SpanOptions;
use tenantscope_collector::auth::Tokens;
use tenantscope_collector::config::Config as CollectorConfig;

fn agent(text: &str) {
    let Ok(cfg) = AgentConfig::from_toml(Path::new("fuzz.toml"), text) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    // What `--check-config` prints loads back to the same configuration (secrets redacted).
    let printed = cfg.to_toml();
    let reloaded = AgentConfig::from_toml(Path::new("printed.toml"), &printed)
        .unwrap_or_else(|e| panic!("--check-config output does not load: {e}\n{printed}"));
    let mut expected = cfg.clone();
    for v in expected.otlp.headers.values_mut() {
        *v = REDACTED.to_owned();
    }
    assert_eq!(reloaded, expected, "{printed}");
    reloaded
        .validate()
        .unwrap_or_else(|e| panic!("the printed configuration does not validate: {e}"));

    // Validated means buildable.
    HttpPipeline::from_config(&cfg.http, HttpMetrics::default())
        .unwrap_or_else(|e| panic!("a validated [http] does not build: {e}"));
    let _ = SpanOptions::from_config(&cfg.otlp);
    let _ = cfg.otlp.header_pairs();
    let _ = cfg.otlp.signal_url("traces");
}

fn collector(text: &str) {
    let Ok(cfg) = toml::from_str::<CollectorConfig>(text) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    cfg.storage
        .options()
        .validate()
        .unwrap_or_else(|e| panic!("validated storage options fail: {e}"));
    // Token files would be read: only configurations with hashes are loaded here.
    if cfg.auth.tokens.iter().all(|t| t.token_file.is_none()) {
        Tokens::load(&cfg.auth).unwrap_or_else(|e| panic!("validated tokens do not load: {e}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    agent(&text);
    collector(&text);
});
