//! Per-tenant SLO gauges on `/metrics`: objective, attainment and error budget left in the
//! current period, and burn rates over the windows multi-window alerts use. Recomputed from the
//! store on a timer (the same SLA math as the reports), for at most `max_tenants` tenants.

use crate::metrics::{BurnLabels, CollectorMetrics, SloLabels};
use crate::objectives::ObjectivesConfig;
use crate::sla;
use crate::sli::SliSource;

/// Burn-rate windows: the long and short windows of the page and ticket alerts.
pub const BURN_WINDOWS: [(&str, i64); 6] = [
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("6h", 6 * 3600),
    ("1d", 86_400),
    ("3d", 3 * 86_400),
];

/// Recomputes every gauge as of `now`. Tenants that no longer have traffic disappear.
pub fn refresh(
    source: &dyn SliSource,
    objectives: &ObjectivesConfig,
    metrics: &CollectorMetrics,
    now: i64,
    max_tenants: usize,
) -> anyhow::Result<()> {
    let longest = BURN_WINDOWS.iter().map(|w| w.1).max().unwrap_or(0);
    // Tenants seen in the longest burn window or in the current period of the default tier.
    let default_period = sla::resolve_period("current", objectives.objective_for("").period, now)?;
    let since = default_period.start.min(now - longest);
    let tenants = source.tenants(since, now + 60)?;
    let (kept, overflow) = tenants.split_at(tenants.len().min(max_tenants));
    let mut values = Vec::with_capacity(kept.len());
    for tenant in kept {
        let objective = objectives.objective_for(tenant);
        let windows = objectives.windows_for(tenant);
        let period = sla::resolve_period("current", objective.period, now)?;
        let from = period.start.min(now - longest);
        let rows = source.rows(tenant, from, now + 60)?;
        let report = sla::compute(tenant, &objective, &windows, &period, now, &rows, &[]);
        let burns: Vec<_> = BURN_WINDOWS
            .iter()
            .map(|&(name, secs)| {
                (
                    name,
                    sla::burn_rate(&rows, &objective, &windows, now, secs),
                    sla::latency_burn_rate(&rows, &objective, &windows, now, secs),
                )
            })
            .collect();
        values.push((tenant.clone(), report, burns));
    }
    // Replace all at once, so a scrape sees either the old or the new set, not a mix for long.
    metrics.slo_target.clear();
    metrics.slo_attainment.clear();
    metrics.slo_budget_remaining.clear();
    metrics.slo_burn_rate.clear();
    for (tenant, report, burns) in values {
        for (slo, b) in [
            ("availability", &report.availability),
            ("latency", &report.latency),
        ] {
            let labels = SloLabels {
                tenant: tenant.clone(),
                slo,
            };
            metrics.slo_target.get_or_create(&labels).set(b.target);
            if let Some(a) = b.attainment {
                metrics.slo_attainment.get_or_create(&labels).set(a);
            }
            metrics
                .slo_budget_remaining
                .get_or_create(&labels)
                .set(b.remaining);
        }
        for (window, availability, latency) in burns {
            for (slo, rate) in [("availability", availability), ("latency", latency)] {
                if let Some(rate) = rate {
                    metrics
                        .slo_burn_rate
                        .get_or_create(&BurnLabels {
                            tenant: tenant.clone(),
                            slo,
                            window,
                        })
                        .set(rate);
                }
            }
        }
    }
    metrics.slo_tenants_overflow.set(overflow.len() as i64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sli::{MINUTE, SliCounts, SliRow, bucket_of};
    use crate::store::{Batch, Store, StoreOptions};

    const NOW: i64 = 1_795_000_000 / 60 * 60; // 2026-11-18

    fn row(tenant: &str, start: i64, requests: u64, errors: u64) -> SliRow {
        let mut counts = SliCounts {
            requests,
            errors,
            ..Default::default()
        };
        counts.buckets[bucket_of(0.01)] = requests;
        SliRow {
            tenant: tenant.into(),
            service: "api".into(),
            route: "/".into(),
            start,
            seconds: MINUTE,
            counts,
        }
    }

    #[test]
    fn gauges_follow_the_store() {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let rows = vec![
            // 1% errors in the last 5 minutes: a burn rate of 10 against 99.9 %.
            row("acme", NOW - 120, 1000, 10),
            // Clean traffic two hours ago.
            row("acme", NOW - 7200, 9000, 0),
            row("globex", NOW - 120, 10, 0),
        ];
        store
            .apply(
                &Batch {
                    digest: [1; 32],
                    rows,
                    evidence: vec![],
                },
                NOW,
            )
            .unwrap();
        let m = CollectorMetrics::new();
        let objectives = ObjectivesConfig::default();
        refresh(&store, &objectives, &m, NOW, 1).unwrap();
        let text = {
            let mut r = prometheus_client::registry::Registry::default();
            m.register(&mut r);
            crate::metrics::render(&r)
        };
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let burn5m = line(
            "tenantscope_collector_slo_burn_rate{tenant=\"acme\",slo=\"availability\",window=\"5m\"}",
        );
        assert!((burn5m - 10.0).abs() < 1e-9, "{burn5m}");
        let burn6h = line(
            "tenantscope_collector_slo_burn_rate{tenant=\"acme\",slo=\"availability\",window=\"6h\"}",
        );
        assert!((burn6h - 1.0).abs() < 1e-9, "{burn6h}");
        let att = line(
            "tenantscope_collector_slo_attainment_ratio{tenant=\"acme\",slo=\"availability\"}",
        );
        assert!((att - 0.999).abs() < 1e-12, "{att}");
        let left = line(
            "tenantscope_collector_slo_error_budget_remaining_ratio{tenant=\"acme\",slo=\"availability\"}",
        );
        assert!(left.abs() < 1e-9, "10 errors of 10 allowed: {left}");
        // Only one tenant fits: the other is counted.
        assert!(!text.contains("tenant=\"globex\""));
        assert_eq!(line("tenantscope_collector_slo_tenants_overflow"), 1.0);
    }
}
