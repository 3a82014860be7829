//! The embedded SLI store: SQLite in WAL mode.
//!
//! - `sli`: one row per (tenant, service, route, slot), minute slots while young and hour slots
//!   once older than the minute retention; request, error and latency-bucket counts.
//! - `exports`: digests of the OTLP exports already applied. An export is applied and its digest
//!   recorded in one transaction, and acknowledged only after the commit, so a retry of an export
//!   whose acknowledgement was lost is recognised and not counted twice.
//! - `evidence`: sample trace ids of bad and slow requests, a bounded number per tenant, hour
//!   and kind.
//! - `meta`: small key/value state of other components (the remote_write position).
//!
//! The API is synchronous; async callers use `spawn_blocking`. One connection writes, another
//! reads (WAL lets reports run while ingest commits).

use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::sli::{BUCKETS, Evidence, EvidenceKind, HOUR, MINUTE, SliCounts, SliRow, SliSource};

/// Retention and bounds of the store (`[storage]` in the config, beside `path`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    /// How long minute rows are kept before they are rolled up into hour rows. Calendar-month
    /// reports are exact to the minute (maintenance windows included) while the whole month is
    /// still in minute rows, hence the default of 35 days.
    #[serde(with = "humantime_serde")]
    pub minute_retention: Duration,
    /// How long hour rows (and evidence) are kept.
    #[serde(with = "humantime_serde")]
    pub hour_retention: Duration,
    /// How long export digests are kept to recognise retries; longer than any agent retries.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Evidence trace ids kept per tenant, hour and kind (error, slow).
    pub evidence_per_hour: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            minute_retention: Duration::from_secs(35 * 86_400),
            hour_retention: Duration::from_secs(400 * 86_400),
            dedup_window: Duration::from_secs(86_400),
            evidence_per_hour: 10,
        }
    }
}

impl StoreOptions {
    pub fn validate(&self) -> Result<(), String> {
        let day = Duration::from_secs(86_400);
        if self.minute_retention < day {
            return Err("storage.minute_retention must be at least 1d".into());
        }
        if self.hour_retention < self.minute_retention {
            return Err("storage.hour_retention must be at least storage.minute_retention".into());
        }
        if self.dedup_window < Duration::from_secs(600) {
            return Err("storage.dedup_window must be at least 10m".into());
        }
        if self.evidence_per_hour > 10_000 {
            return Err("storage.evidence_per_hour must be at most 10000".into());
        }
        Ok(())
    }
}

/// What one OTLP export adds to the store.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Digest of the export's canonical encoding (see `ingest::digest`).
    pub digest: [u8; 32],
    /// Minute rows; several rows with the same key are added up.
    pub rows: Vec<SliRow>,
    pub evidence: Vec<Evidence>,
}

/// The outcome of [`Store::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Committed: rows upserted, evidence kept (the rest was over the per-hour bound).
    Stored { rows: usize, evidence: usize },
    /// This export was applied before; nothing changed.
    Duplicate,
}

/// What [`Store::maintain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintained {
    pub minute_rows_rolled_up: usize,
    pub hour_rows_expired: usize,
    pub evidence_expired: usize,
    pub digests_expired: usize,
}

pub struct Store {
    writer: Mutex<Connection>,
    /// A second connection for reads when the database is a file; in memory there is only one.
    reader: Option<Mutex<Connection>>,
    opts: StoreOptions,
}

const SCHEMA_VERSION: i64 = 1;

fn bucket_columns() -> Vec<String> {
    (0..BUCKETS).map(|i| format!("b{i:02}")).collect()
}

fn schema() -> String {
    let buckets: Vec<String> = bucket_columns()
        .iter()
        .map(|c| format!("{c} INTEGER NOT NULL"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS exports (
             digest BLOB PRIMARY KEY, received INTEGER NOT NULL) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS exports_received ON exports (received);
         CREATE TABLE IF NOT EXISTS sli (
             tenant TEXT NOT NULL, start INTEGER NOT NULL, seconds INTEGER NOT NULL,
             service TEXT NOT NULL, route TEXT NOT NULL,
             requests INTEGER NOT NULL, errors INTEGER NOT NULL, {},
             PRIMARY KEY (tenant, start, seconds, service, route)) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS sli_start ON sli (start);
         CREATE TABLE IF NOT EXISTS evidence (
             tenant TEXT NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
             trace_id TEXT NOT NULL, service TEXT NOT NULL, route TEXT NOT NULL,
             status INTEGER NOT NULL, duration_ms REAL NOT NULL,
             PRIMARY KEY (tenant, at_ms, kind, trace_id)) WITHOUT ROWID;",
        buckets.join(", ")
    )
}

/// Built once: `apply` runs it for every row of every export.
static UPSERT: LazyLock<String> = LazyLock::new(upsert_sql);
static SELECT_BETWEEN: LazyLock<String> =
    LazyLock::new(|| select_sql("start >= ?1 AND start < ?2"));
static SELECT_TENANT: LazyLock<String> =
    LazyLock::new(|| select_sql("tenant = ?1 AND start >= ?2 AND start < ?3"));

/// Every count column, each formatted with `f`.
fn count_columns(f: impl Fn(&str) -> String) -> String {
    ["requests".to_string(), "errors".to_string()]
        .into_iter()
        .chain(bucket_columns())
        .map(|c| f(&c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// On a key already stored, the counts are added up.
const ON_CONFLICT_ADD: &str = "ON CONFLICT (tenant, start, seconds, service, route) DO UPDATE SET";

fn upsert_sql() -> String {
    let placeholders = vec!["?"; 7 + BUCKETS].join(", ");
    format!(
        "INSERT INTO sli (tenant, start, seconds, service, route, {}) VALUES ({placeholders}) \
         {ON_CONFLICT_ADD} {}",
        count_columns(|c| c.to_string()),
        count_columns(|c| format!("{c} = {c} + excluded.{c}"))
    )
}

fn select_sql(filter: &str) -> String {
    format!(
        "SELECT tenant, start, seconds, service, route, requests, errors, {} FROM sli WHERE {filter}",
        bucket_columns().join(", ")
    )
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<SliRow> {
    let mut counts = SliCounts {
        requests: r.get::<_, i64>(5)? as u64,
        errors: r.get::<_, i64>(6)? as u64,
        ..Default::default()
    };
    for (i, b) in counts.buckets.iter_mut().enumerate() {
        *b = r.get::<_, i64>(7 + i)? as u64;
    }
    Ok(SliRow {
        tenant: r.get(0)?,
        start: r.get(1)?,
        seconds: r.get(2)?,
        service: r.get(3)?,
        route: r.get(4)?,
        counts,
    })
}

/// SQLite stores signed 64-bit integers; counts beyond that are clamped rather than wrapped.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn configure(conn: &Connection) -> Result<()> {
    // FULL: a commit survives power loss, not only a process crash; the cost is one fsync per
    // export, which batching on the agent side keeps rare.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the store directory {}", dir.display()))?;
        }
        let writer = Connection::open(path)
            .with_context(|| format!("opening the store {}", path.display()))?;
        configure(&writer).with_context(|| format!("configuring the store {}", path.display()))?;
        init(&writer).with_context(|| format!("initialising the store {}", path.display()))?;
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Some(Mutex::new(reader)),
            opts,
        })
    }

    /// A store that lives in memory only (tests, and collectors that only forward).
    pub fn open_in_memory(opts: StoreOptions) -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        init(&conn)?;
        Ok(Store {
            writer: Mutex::new(conn),
            reader: None,
            opts,
        })
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    fn write(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (rusqlite rolls
        // back on drop), so a poisoned lock is still safe to use.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.reader {
            Some(r) => r.lock().unwrap_or_else(|e| e.into_inner()),
            None => self.write(),
        }
    }

    /// Applies one export atomically, unless its digest was applied before.
    pub fn apply(&self, batch: &Batch, now: i64) -> Result<Applied> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let fresh = tx.execute(
            "INSERT OR IGNORE INTO exports (digest, received) VALUES (?1, ?2)",
            params![&batch.digest[..], now],
        )?;
        if fresh == 0 {
            return Ok(Applied::Duplicate);
        }
        {
            let mut upsert = tx.prepare_cached(&UPSERT)?;
            for row in &batch.rows {
                let mut values: Vec<rusqlite::types::Value> = vec![
                    row.tenant.clone().into(),
                    row.start.into(),
                    row.seconds.into(),
                    row.service.clone().into(),
                    row.route.clone().into(),
                    sql_int(row.counts.requests).into(),
                    sql_int(row.counts.errors).into(),
                ];
                values.extend(row.counts.buckets.iter().map(|&b| sql_int(b).into()));
                upsert.execute(params_from_iter(values))?;
            }
        }
        let mut kept = 0;
        {
            let mut count = tx.prepare_cached(
                "SELECT COUNT(*) FROM evidence WHERE tenant = ?1 AND kind = ?2 \
                 AND at_ms >= ?3 AND at_ms < ?4",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO evidence \
                 (tenant, at_ms, kind, trace_id, service, route, status, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in &batch.evidence {
                let hour = e.at_ms.div_euclid(HOUR * 1000) * HOUR * 1000;
                let n: i64 = count.query_row(
                    params![e.tenant, e.kind.as_str(), hour, hour + HOUR * 1000],
                    |r| r.get(0),
                )?;
                if n >= i64::from(self.opts.evidence_per_hour) {
                    continue;
                }
                kept += insert.execute(params![
                    e.tenant,
                    e.at_ms,
                    e.kind.as_str(),
                    e.trace_id,
                    e.service,
                    e.route,
                    e.status,
                    e.duration_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(Applied::Stored {
            rows: batch.rows.len(),
            evidence: kept,
        })
    }

    /// Rows of every tenant whose slot starts in `[from, to)`.
    pub fn rows_between(&self, from: i64, to: i64) -> Result<Vec<SliRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&SELECT_BETWEEN)?;
        let rows = stmt
            .query_map(params![from, to], row_from)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Rolls minute rows past the minute retention up into hour rows, and expires hour rows,
    /// evidence and export digests past theirs, in one transaction.
    pub fn maintain(&self, now: i64) -> Result<Maintained> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        // Whole hours only, so an hour is never split between minute and hour rows (a late
        // minute for an hour already rolled up is added to it at the next run).
        let roll_before =
            (now.saturating_sub(secs(self.opts.minute_retention))).div_euclid(HOUR) * HOUR;
        let expire_before = now.saturating_sub(secs(self.opts.hour_retention));
        let digests_before = now.saturating_sub(secs(self.opts.dedup_window));
        let rollup = format!(
            "INSERT INTO sli (tenant, start, seconds, service, route, {}) \
             SELECT tenant, (start / {HOUR}) * {HOUR}, {HOUR}, service, route, {} FROM sli \
             WHERE seconds = {MINUTE} AND start < ?1 GROUP BY 1, 2, 4, 5 {ON_CONFLICT_ADD} {}",
            count_columns(|c| c.to_string()),
            count_columns(|c| format!("SUM({c})")),
            count_columns(|c| format!("{c} = {c} + excluded.{c}")),
        );
        let mut conn = self.write();
        let mut out = Maintained::default();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(&rollup, params![roll_before])?;
        out.minute_rows_rolled_up = tx.execute(
            &format!("DELETE FROM sli WHERE seconds = {MINUTE} AND start < ?1"),
            params![roll_before],
        )?;
        out.hour_rows_expired =
            tx.execute("DELETE FROM sli WHERE start < ?1", params![expire_before])?;
        out.evidence_expired = tx.execute(
            "DELETE FROM evidence WHERE at_ms < ?1",
            params![expire_before.saturating_mul(1000)],
        )?;
        out.digests_expired = tx.execute(
            "DELETE FROM exports WHERE received < ?1",
            params![digests_before],
        )?;
        tx.commit()?;
        Ok(out)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        let conn = self.read();
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.write().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// SQLite's own integrity check; an error names what it found.
    pub fn integrity_check(&self) -> Result<()> {
        let conn = self.write();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if lines == ["ok"] {
            Ok(())
        } else {
            anyhow::bail!("store integrity check failed: {}", lines.join("; "))
        }
    }

    /// (rows, evidence, digests) currently stored, for the collector's own metrics.
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        let conn = self.read();
        let n = |table: &str| -> Result<u64> {
            let v: i64 =
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
            Ok(v as u64)
        };
        Ok((n("sli")?, n("evidence")?, n("exports")?))
    }
}

fn init(conn: &Connection) -> Result<()> {
    conn.execute_batch(&schema())?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => anyhow::bail!(
            "the store has schema version {v}; this collector knows version {SCHEMA_VERSION}"
        ),
    }
    Ok(())
}

impl SliSource for Store {
    fn rows(&self, tenant: &str, from: i64, to: i64) -> Result<Vec<SliRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&SELECT_TENANT)?;
        let rows = stmt
            .query_map(params![tenant, from, to], row_from)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn evidence(&self, tenant: &str, from: i64, to: i64, limit: usize) -> Result<Vec<Evidence>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, at_ms, kind, trace_id, service, route, status, duration_ms \
             FROM evidence WHERE tenant = ?1 AND at_ms >= ?2 AND at_ms < ?3 \
             ORDER BY at_ms DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                tenant,
                from.saturating_mul(1000),
                to.saturating_mul(1000),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                let kind: String = r.get(2)?;
                Ok(Evidence {
                    tenant: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: EvidenceKind::parse(&kind).unwrap_or(EvidenceKind::Error),
                    trace_id: r.get(3)?,
                    service: r.get(4)?,
                    route: r.get(5)?,
                    status: r.get(6)?,
                    duration_ms: r.get(7)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn tenants(&self, from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT tenant FROM sli WHERE start >= ?1 AND start < ?2 ORDER BY tenant",
        )?;
        let rows = stmt
            .query_map(params![from, to], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sli::bucket_of;

    fn row(tenant: &str, route: &str, start: i64, requests: u64, errors: u64, secs: f64) -> SliRow {
        let mut counts = SliCounts {
            requests,
            errors,
            ..Default::default()
        };
        counts.buckets[bucket_of(secs)] = requests;
        SliRow {
            tenant: tenant.into(),
            service: "api".into(),
            route: route.into(),
            start,
            seconds: MINUTE,
            counts,
        }
    }

    fn batch(digest: u8, rows: Vec<SliRow>) -> Batch {
        Batch {
            digest: [digest; 32],
            rows,
            evidence: vec![],
        }
    }

    const T0: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z

    #[test]
    fn applies_adds_up_and_ignores_a_retried_export() {
        let s = Store::open_in_memory(StoreOptions::default()).unwrap();
        let b = batch(
            1,
            vec![
                row("acme", "/a", T0, 10, 1, 0.02),
                row("acme", "/a", T0, 5, 0, 0.3),
            ],
        );
        assert_eq!(
            s.apply(&b, T0).unwrap(),
            Applied::Stored {
                rows: 2,
                evidence: 0
            }
        );
        assert_eq!(s.apply(&b, T0 + 5).unwrap(), Applied::Duplicate);
        s.apply(&batch(2, vec![row("acme", "/a", T0, 1, 1, 20.0)]), T0)
            .unwrap();
        let rows = s.rows("acme", T0, T0 + 60).unwrap();
        assert_eq!(rows.len(), 1);
        let c = rows[0].counts;
        assert_eq!((c.requests, c.errors), (16, 2));
        assert_eq!(c.buckets[bucket_of(0.02)], 10);
        assert_eq!(c.buckets[bucket_of(0.3)], 5);
        assert_eq!(c.buckets[BUCKETS - 1], 1);
        assert!(s.rows("other", T0, T0 + 60).unwrap().is_empty());
        assert!(s.rows("acme", T0 + 60, T0 + 120).unwrap().is_empty());
        assert_eq!(s.tenants(T0, T0 + 60).unwrap(), vec!["acme".to_string()]);
    }

    #[test]
    fn rolls_minutes_up_into_hours_and_expires() {
        let opts = StoreOptions {
            minute_retention: Duration::from_secs(86_400),
            hour_retention: Duration::from_secs(3 * 86_400),
            ..Default::default()
        };
        let s = Store::open_in_memory(opts).unwrap();
        let rows: Vec<SliRow> = (0..120)
            .map(|m| row("acme", "/a", T0 + m * MINUTE, 2, 1, 0.01))
            .collect();
        s.apply(&batch(1, rows), T0).unwrap();
        s.apply(
            &batch(2, vec![row("acme", "/a", T0 + 86_400, 1, 0, 0.01)]),
            T0,
        )
        .unwrap();
        // Two days later: the first two hours roll up; the day-old minute stays.
        let m = s.maintain(T0 + 2 * 86_400 + 60).unwrap();
        assert_eq!(m.minute_rows_rolled_up, 120);
        assert_eq!(m.digests_expired, 2, "older than the dedup window");
        let rows = s.rows("acme", T0, T0 + 2 * 86_400).unwrap();
        let hours: Vec<_> = rows.iter().filter(|r| r.seconds == HOUR).collect();
        assert_eq!(hours.len(), 2);
        assert!(
            hours
                .iter()
                .all(|r| r.counts.requests == 120 && r.counts.errors == 60)
        );
        assert_eq!(rows.iter().filter(|r| r.seconds == MINUTE).count(), 1);
        // A late minute for a rolled-up hour joins it at the next run.
        s.apply(
            &batch(3, vec![row("acme", "/a", T0 + 5 * MINUTE, 4, 0, 0.01)]),
            T0,
        )
        .unwrap();
        assert_eq!(
            s.maintain(T0 + 2 * 86_400 + 120).unwrap().digests_expired,
            1
        );
        let first = s.rows("acme", T0, T0 + 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].counts.requests, 124);
        // Past the hour retention everything goes.
        let m = s.maintain(T0 + 10 * 86_400).unwrap();
        assert_eq!(m.hour_rows_expired, 3);
        assert_eq!(s.counts().unwrap(), (0, 0, 0));
        s.integrity_check().unwrap();
    }

    #[test]
    fn evidence_is_bounded_per_tenant_hour_and_kind() {
        let opts = StoreOptions {
            evidence_per_hour: 3,
            ..Default::default()
        };
        let s = Store::open_in_memory(opts).unwrap();
        let ev = |i: i64, kind| Evidence {
            tenant: "acme".into(),
            service: "api".into(),
            route: "/a".into(),
            at_ms: T0 * 1000 + i * 1000,
            kind,
            trace_id: format!("{i:032x}"),
            status: 500,
            duration_ms: 1.5,
        };
        let mut b = batch(1, vec![]);
        b.evidence = (0..5).map(|i| ev(i, EvidenceKind::Error)).collect();
        b.evidence.push(ev(9, EvidenceKind::Slow));
        b.evidence.push(ev(3700, EvidenceKind::Error));
        assert_eq!(
            s.apply(&b, T0).unwrap(),
            Applied::Stored {
                rows: 0,
                evidence: 5
            }
        );
        let got = s.evidence("acme", T0, T0 + 7200, 100).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].at_ms, (T0 + 3700) * 1000, "most recent first");
        assert_eq!(s.evidence("acme", T0, T0 + 7200, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_file_store_survives_reopening_and_meta_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/collector.db");
        {
            let s = Store::open(&path, StoreOptions::default()).unwrap();
            s.apply(&batch(1, vec![row("acme", "/a", T0, 3, 0, 0.01)]), T0)
                .unwrap();
            s.meta_set("remote_write.position", "42").unwrap();
            s.meta_set("remote_write.position", "43").unwrap();
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.rows_between(T0, T0 + 60).unwrap().len(), 1);
        assert_eq!(
            s.meta_get("remote_write.position").unwrap().as_deref(),
            Some("43")
        );
        assert_eq!(s.meta_get("nothing").unwrap(), None);
        assert_eq!(
            s.apply(&batch(1, vec![row("acme", "/a", T0, 3, 0, 0.01)]), T0)
                .unwrap(),
            Applied::Duplicate
        );
        s.integrity_check().unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(Store::open(&path, StoreOptions::default()).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(c);
        let err = Store::open(&path, StoreOptions::default()).err().unwrap();
        assert!(format!("{err:#}").contains("schema version 99"), "{err:#}");
    }

    #[test]
    fn options_are_validated() {
        assert!(StoreOptions::default().validate().is_ok());
        let bad = StoreOptions {
            hour_retention: Duration::from_secs(86_400),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("hour_retention"));
    }
}
