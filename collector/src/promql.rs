//! An [`SliSource`] backed by a Prometheus-compatible query API (Prometheus, Mimir, Thanos
//! query, VictoriaMetrics): the report mode that computes SLA figures from the engine the
//! collectors remote_write to, instead of one collector's embedded store.
//!
//! Rows are rebuilt from the series written by [`crate::remote_write`]: a `query_range` with a
//! 60 s step over `sum_over_time(...[1m])` returns, at each minute boundary `T`, the sample of
//! the minute `[T - 60, T)` (written at `T - 30`). The queries aggregate with `sum by`, so rows
//! written by several collectors (label `collector`) are merged.
//!
//! Evidence (sample trace ids) is not in the engine: in this mode [`SliSource::evidence`]
//! returns nothing and the traces are found in the trace backend by tenant and time.
//!
//! The client is blocking (the [`SliSource`] trait is synchronous): create and call a
//! `PromqlSource` from a blocking thread (`tokio::task::spawn_blocking`), never directly on an
//! async task.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::remote_write::{
    BasicAuth, ERRORS_METRIC, LATENCY_BUCKET_METRIC, REQUESTS_METRIC, build_headers, check_headers,
    check_http_url, redact_headers, redact_url, truncate_body,
};
use crate::sli::{BUCKETS, Evidence, MINUTE, SliCounts, SliRow, SliSource, bound_index};

/// Evaluation steps per `query_range` call: a day of minutes, far below Prometheus' limit of
/// 11,000 points per series, and small enough to keep each response modest.
pub const STEPS_PER_QUERY: i64 = 1440;

/// Responses larger than this are refused rather than buffered.
const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// `[promql]`: the query API the report mode reads SLIs from.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromqlConfig {
    /// Base URL of the Prometheus HTTP API, without `/api/v1`: `http://prometheus:9090`,
    /// `http://mimir-query-frontend:8080/prometheus`, `http://thanos-query:9090`.
    pub url: String,
    /// Extra request headers, e.g. `X-Scope-OrgID` for Mimir.
    pub headers: BTreeMap<String, String>,
    pub bearer_token: Option<String>,
    pub basic_auth: Option<BasicAuth>,
    /// Timeout of one query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PromqlConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            headers: BTreeMap::new(),
            bearer_token: None,
            basic_auth: None,
            timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for PromqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromqlConfig")
            .field("url", &redact_url(&self.url))
            .field("headers", &redact_headers(&self.headers))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("basic_auth", &self.basic_auth)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PromqlConfig {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        check_http_url("promql.url", &self.url)?;
        check_headers(
            "promql",
            &self.headers,
            &["content-type", "content-length", "host"],
            self.bearer_token.is_some() || self.basic_auth.is_some(),
        )?;
        if self.bearer_token.is_some() && self.basic_auth.is_some() {
            return Err("promql: set bearer_token or basic_auth, not both".into());
        }
        if self.timeout < Duration::from_secs(1) {
            return Err("promql.timeout must be at least 1s".into());
        }
        Ok(())
    }
}

/// A PromQL string literal: double-quoted, with `\`, `"` and control characters escaped (Go
/// escapes, as the PromQL lexer reads them).
pub fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The three per-minute queries for `tenant`.
pub fn minute_queries(tenant: &str) -> [String; 3] {
    let t = promql_string(tenant);
    [
        format!("sum by (service, route) (sum_over_time({REQUESTS_METRIC}{{tenant={t}}}[1m]))"),
        format!("sum by (service, route) (sum_over_time({ERRORS_METRIC}{{tenant={t}}}[1m]))"),
        format!(
            "sum by (service, route, le) (sum_over_time({LATENCY_BUCKET_METRIC}{{tenant={t}}}[1m]))"
        ),
    ]
}

fn floor_minute(t: i64) -> i64 {
    t.div_euclid(MINUTE) * MINUTE
}

fn ceil_minute(t: i64) -> i64 {
    floor_minute(t.saturating_add(MINUTE - 1))
}

/// Row-start ranges `[from, to)` (minute-aligned) of at most [`STEPS_PER_QUERY`] minutes that
/// cover the minutes starting in `[from, to)`.
pub fn chunks(from: i64, to: i64) -> Vec<(i64, i64)> {
    let (mut a, end) = (ceil_minute(from), ceil_minute(to));
    let mut out = Vec::new();
    while a < end {
        let b = a.saturating_add(STEPS_PER_QUERY * MINUTE).min(end);
        out.push((a, b));
        a = b;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The HTTP API's JSON

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
}

/// A count from a sample value: a finite, non-negative number, rounded.
fn count(v: &str) -> Result<u64> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| anyhow!("sample value `{v}` is not a number"))?;
    if !f.is_finite() || !(-0.5..1.8e19).contains(&f) {
        bail!("sample value `{v}` is not a count");
    }
    Ok(f.round().max(0.0) as u64)
}

/// The bucket index of an `le` label value (`"0.25"`, `"1"`, `"1.0"`, `"+Inf"`).
fn le_index(le: &str) -> Option<usize> {
    let le = le.trim();
    if matches!(le, "+Inf" | "Inf" | "+inf" | "inf") {
        return Some(BUCKETS - 1);
    }
    le.parse::<f64>().ok().and_then(bound_index)
}

/// Merges the three query results into minute rows: requests and errors as is, cumulative
/// buckets back to per-bucket counts.
/// Counts of one (service, route, minute) being rebuilt, with the cumulative buckets as read.
type Partial = (SliCounts, [Option<u64>; BUCKETS]);

#[derive(Default)]
struct RowBuilder {
    rows: BTreeMap<(String, String, i64), Partial>,
}

impl RowBuilder {
    fn entry(&mut self, m: &BTreeMap<String, String>, t: f64) -> &mut Partial {
        let label = |k: &str| m.get(k).cloned().unwrap_or_default();
        // The value at the minute boundary T is the minute [T - 60, T).
        let start = (t.round() as i64).saturating_sub(MINUTE);
        self.rows
            .entry((label("service"), label("route"), start))
            .or_default()
    }

    fn into_rows(self, tenant: &str) -> Vec<SliRow> {
        self.rows
            .into_iter()
            .map(|((service, route, start), (mut counts, cumulative))| {
                let mut prev = 0u64;
                for (b, cum) in counts.buckets.iter_mut().zip(cumulative) {
                    // A missing `le` carries the previous cumulative count (an empty bucket).
                    let cum = cum.unwrap_or(prev).max(prev);
                    *b = cum - prev;
                    prev = cum;
                }
                SliRow {
                    tenant: tenant.to_string(),
                    service,
                    route,
                    start,
                    seconds: MINUTE,
                    counts,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The source

/// Reads SLI rows from a Prometheus-compatible engine. See the module docs.
pub struct PromqlSource {
    base_url: String,
    client: reqwest::blocking::Client,
}

impl fmt::Debug for PromqlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromqlSource")
            .field("base_url", &redact_url(&self.base_url))
            .finish()
    }
}

impl PromqlSource {
    /// Call from a blocking thread (see the module docs).
    pub fn new(cfg: &PromqlConfig) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!(e))?;
        if !cfg.enabled() {
            bail!("promql.url is empty");
        }
        let headers = build_headers(
            &cfg.headers,
            cfg.bearer_token.as_deref(),
            cfg.basic_auth.as_ref(),
        )?;
        let client = reqwest::blocking::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("tenantscope-collector/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .context("building the PromQL HTTP client")?;
        Ok(Self {
            base_url: cfg.url.trim().trim_end_matches('/').to_string(),
            client,
        })
    }

    /// The API base URL, credentials removed.
    pub fn base_url(&self) -> String {
        redact_url(&self.base_url)
    }

    /// POSTs a form to `/api/v1/<endpoint>` and returns `data` of a successful answer.
    fn api(&self, endpoint: &str, form: &[(&str, String)]) -> Result<ApiData> {
        let query = form
            .iter()
            .find(|(k, _)| *k == "query")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let url = format!("{}/api/v1/{endpoint}", self.base_url);
        let what = || format!("PromQL `{query}` at {}", redact_url(&url));
        let resp = self
            .client
            .post(&url)
            // Thanos: fail instead of answering from a subset of the stores (a partial answer
            // would understate the SLI). Other engines ignore the parameter.
            .form(&[form, &[("partial_response", "false".to_string())]].concat())
            .send()
            .with_context(what)?;
        let status = resp.status();
        let mut body = Vec::new();
        resp.take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("{}: reading the response", what()))?;
        if body.len() as u64 > MAX_RESPONSE_BYTES {
            bail!(
                "{}: response larger than {} MiB; query a shorter period",
                what(),
                MAX_RESPONSE_BYTES >> 20
            );
        }
        let parsed: Option<ApiResponse> = serde_json::from_slice(&body).ok();
        match parsed {
            Some(r) if status.is_success() && r.status == "success" => {
                for w in &r.warnings {
                    tracing::warn!(query, warning = %w, "PromQL warning");
                }
                r.data
                    .ok_or_else(|| anyhow!("{}: a success without data", what()))
            }
            Some(r) => bail!(
                "{}: HTTP {status}: {} {}",
                what(),
                r.error_type.unwrap_or_else(|| r.status.clone()),
                r.error.unwrap_or_default()
            ),
            None => bail!("{}: HTTP {status}: {}", what(), truncate_body(&body)),
        }
    }

    fn query_range(&self, query: &str, start: i64, end: i64) -> Result<Vec<MatrixSeries>> {
        let data = self.api(
            "query_range",
            &[
                ("query", query.to_string()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", MINUTE.to_string()),
            ],
        )?;
        if data.result_type != "matrix" {
            bail!(
                "PromQL `{query}`: expected a matrix, got a {}",
                data.result_type
            );
        }
        serde_json::from_value(data.result)
            .with_context(|| format!("PromQL `{query}`: unexpected matrix JSON"))
    }

    fn query(&self, query: &str, time: i64) -> Result<Vec<VectorSample>> {
        let data = self.api(
            "query",
            &[("query", query.to_string()), ("time", time.to_string())],
        )?;
        if data.result_type != "vector" {
            bail!(
                "PromQL `{query}`: expected a vector, got a {}",
                data.result_type
            );
        }
        serde_json::from_value(data.result)
            .with_context(|| format!("PromQL `{query}`: unexpected vector JSON"))
    }
}

impl SliSource for PromqlSource {
    /// Minute rows of `tenant` starting in `[from, to)`, merged over collectors.
    fn rows(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<SliRow>> {
        let [requests_q, errors_q, buckets_q] = minute_queries(tenant);
        let mut out = Vec::new();
        for (a, b) in chunks(from, to) {
            // Evaluating at T = a + 60 .. b returns the minutes a .. b - 60.
            let (start, end) = (a + MINUTE, b);
            let mut rows = RowBuilder::default();
            for s in self.query_range(&requests_q, start, end)? {
                for (t, v) in &s.values {
                    let n = count(v).with_context(|| format!("PromQL `{requests_q}`"))?;
                    rows.entry(&s.metric, *t).0.requests = n;
                }
            }
            for s in self.query_range(&errors_q, start, end)? {
                for (t, v) in &s.values {
                    let n = count(v).with_context(|| format!("PromQL `{errors_q}`"))?;
                    rows.entry(&s.metric, *t).0.errors = n;
                }
            }
            for s in self.query_range(&buckets_q, start, end)? {
                let le = s.metric.get("le").map(String::as_str).unwrap_or("");
                let Some(i) = le_index(le) else {
                    bail!("PromQL `{buckets_q}`: le=\"{le}\" is not one of the SLI latency bounds");
                };
                for (t, v) in &s.values {
                    let n = count(v).with_context(|| format!("PromQL `{buckets_q}`"))?;
                    rows.entry(&s.metric, *t).1[i] = Some(n);
                }
            }
            out.extend(
                rows.into_rows(tenant)
                    .into_iter()
                    .filter(|r| r.start >= from && r.start < to),
            );
        }
        Ok(out)
    }

    /// Evidence lives in the trace backend in this mode: always empty.
    fn evidence(&self, _: &str, _: i64, _: i64, _: usize) -> Result<Vec<Evidence>> {
        Ok(Vec::new())
    }

    /// Tenants with a minute starting in `[from, to)`: one instant query whose range holds
    /// exactly those minutes' samples (at `start + 30 s`).
    fn tenants(&self, from: i64, to: i64) -> Result<Vec<String>> {
        let (a, b) = (ceil_minute(from), ceil_minute(to));
        if b <= a {
            return Ok(Vec::new());
        }
        // Evaluated at b - 30 (the last minute's sample), the range reaches back to a: the
        // sample at a + 30 is in, the one at a - 30 is out, in both Prometheus 2 (closed
        // ranges) and 3 (left-open ranges).
        let time = b - MINUTE / 2;
        let range = time - a;
        let q = format!("count by (tenant) (count_over_time({REQUESTS_METRIC}[{range}s]))");
        let tenants: BTreeSet<String> = self
            .query(&q, time)?
            .into_iter()
            .filter_map(|s| s.metric.get("tenant").cloned())
            .filter(|t| !t.is_empty())
            .collect();
        Ok(tenants.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_promql() {
        assert_eq!(promql_string("acme"), "\"acme\"");
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(promql_string("a\nb\u{1}"), "\"a\\nb\\x01\"");
        assert_eq!(promql_string("ünï"), "\"ünï\"");
        let [r, e, b] = minute_queries("x\"y");
        assert_eq!(
            r,
            "sum by (service, route) (sum_over_time(tenantscope_sli_requests_per_minute{tenant=\"x\\\"y\"}[1m]))"
        );
        assert!(e.contains(ERRORS_METRIC));
        assert!(b.starts_with("sum by (service, route, le)"));
    }

    #[test]
    fn chunks_stay_under_the_point_limit_and_cover_the_range() {
        assert!(chunks(600, 600).is_empty());
        assert_eq!(chunks(590, 601), vec![(600, 660)]);
        let from = 1_700_000_000 - 1_700_000_000 % 60;
        let to = from + 31 * 86_400;
        let c = chunks(from, to);
        assert_eq!(c.first().unwrap().0, from);
        assert_eq!(c.last().unwrap().1, to);
        for w in c.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        for (a, b) in c {
            assert!((b - a) / MINUTE <= STEPS_PER_QUERY);
            assert!((b - a) / MINUTE < 11_000);
        }
    }

    #[test]
    fn counts_and_les_parse_strictly() {
        assert_eq!(count("12").unwrap(), 12);
        assert_eq!(count("1e+06").unwrap(), 1_000_000);
        assert!(count("NaN").is_err());
        assert!(count("-3").is_err());
        assert!(count("+Inf").is_err());
        assert!(count("x").is_err());
        assert_eq!(le_index("0.25"), Some(6));
        assert_eq!(le_index("1"), Some(9));
        assert_eq!(le_index("1.0"), Some(9));
        assert_eq!(le_index("+Inf"), Some(BUCKETS - 1));
        assert_eq!(le_index("0.3"), None);
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        let mut b = RowBuilder::default();
        let m: BTreeMap<String, String> = [("service".to_string(), "api".to_string())].into();
        let e = b.entry(&m, 660.0);
        e.0.requests = 6;
        for (i, c) in [(0, 1), (1, 1), (3, 3), (BUCKETS - 1, 6)] {
            e.1[i] = Some(c);
        }
        let rows = b.into_rows("t");
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.start, r.service.as_str(), r.route.as_str()),
            (600, "api", "")
        );
        let mut expected = [0u64; BUCKETS];
        expected[0] = 1;
        expected[3] = 2;
        expected[BUCKETS - 1] = 3;
        assert_eq!(r.counts.buckets, expected);
    }

    #[test]
    fn config_parses_and_validates() {
        let c: PromqlConfig = toml::from_str(
            r#"
            url = "http://mimir:8080/prometheus"
            headers = { "X-Scope-OrgID" = "platform" }
            timeout = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<PromqlConfig>("uri = \"x\"").is_err());
        let bad = PromqlConfig {
            url: "mimir:8080".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    /// A canned HTTP server for one or more requests (std only, no runtime: the client is
    /// blocking).
    fn canned(
        status: &'static str,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<String>) {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the form body (Content-Length).
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= i + 4 + len {
                        break;
                    }
                }
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        (format!("http://{addr}"), h)
    }

    #[test]
    fn engine_errors_name_the_query_and_the_status() {
        let (url, h) = canned(
            "400 Bad Request",
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
        );
        let src = PromqlSource::new(&PromqlConfig {
            url,
            headers: [("X-Scope-OrgID".to_string(), "p".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let err = format!("{:#}", src.tenants(0, 600).unwrap_err());
        assert!(err.contains("count by (tenant)"), "{err}");
        assert!(err.contains("400"), "{err}");
        assert!(
            err.contains("bad_data: parse error") || err.contains("bad_data parse error"),
            "{err}"
        );
        let req = h.join().unwrap();
        assert!(req.starts_with("POST /api/v1/query "), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("x-scope-orgid: p"),
            "{req}"
        );

        let (url, _h) = canned("502 Bad Gateway", "<html>upstream down</html>");
        let src = PromqlSource::new(&PromqlConfig {
            url,
            ..Default::default()
        })
        .unwrap();
        let err = format!("{:#}", src.rows("acme", 0, 600).unwrap_err());
        assert!(
            err.contains("502") && err.contains("upstream down"),
            "{err}"
        );
        assert!(err.contains("tenant=\"acme\""), "{err}");
    }

    #[test]
    fn matrix_answers_become_rows() {
        let (url, h) = canned(
            "200 OK",
            r#"{"status":"success","data":{"resultType":"matrix","result":[
                {"metric":{"service":"api","route":"/a"},"values":[[660,"5"],[720,"2"]]}]}}"#,
        );
        let src = PromqlSource::new(&PromqlConfig {
            url: format!("{url}/"),
            ..Default::default()
        })
        .unwrap();
        // The first query (requests) answers; the second hits a closed port: an error, but
        // the request was well-formed.
        let err = src.rows("acme", 600, 780).unwrap_err();
        let req = h.join().unwrap();
        assert!(req.starts_with("POST /api/v1/query_range "), "{req}");
        assert!(
            req.contains("start=660") && req.contains("end=780") && req.contains("step=60"),
            "{req}"
        );
        assert!(format!("{err:#}").contains("sum_over_time(tenantscope_sli_errors_per_minute"));
    }
}
