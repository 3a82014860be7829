//! The `[objectives]` section of the collector's config: service-level objectives per tier and
//! tenant, and the maintenance windows excluded from them.
//!
//! ```toml
//! [objectives]
//! default_tier = "standard"
//!
//! [objectives.tiers.standard]
//! availability = 99.9            # percent of valid requests that must not fail
//! latency_threshold = "500ms"    # one of sli::LATENCY_BOUNDS
//! latency_target = 99.0          # percent of valid requests faster than the threshold
//! period = "calendar_month"      # or "rolling_30d"
//!
//! [objectives.tiers.premium]
//! availability = 99.95
//! latency_threshold = "250ms"
//! latency_target = 99.5
//! period = "rolling_30d"
//!
//! [objectives.tenants]
//! acme = { tier = "premium" }
//! globex = { availability = 99.5 }   # default tier, one field overridden
//!
//! [[objectives.maintenance]]
//! start = "2026-11-14T02:00:00Z"
//! end = "2026-11-14T04:00:00Z"
//! tenants = ["acme"]                 # empty or absent: every tenant
//! reason = "database upgrade"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer};

use crate::sli::{LATENCY_BOUNDS, bound_index};

/// The objectives of every tenant. Without an `[objectives]` section (or with an empty one) every
/// tenant gets the built-in "standard" tier (see [`Tier::standard`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectivesConfig {
    /// Named tiers. Defining any tier replaces the built-in "standard" one (define it again if
    /// you still want it).
    pub tiers: BTreeMap<String, Tier>,
    /// The tier of tenants not listed in `tenants`, and of listed tenants that name no tier.
    pub default_tier: String,
    /// Tenants with a tier other than the default, or with their own values for some fields.
    pub tenants: BTreeMap<String, TenantObjective>,
    /// Periods excluded from the objectives (planned work announced to the tenants).
    pub maintenance: Vec<MaintenanceWindow>,
}

/// A named set of objectives. Every field is required, so a typo cannot silently fall back.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Availability objective, percent of valid requests that did not fail (5xx or no
    /// response), e.g. 99.9. Must be above 0 and below 100: a 100 % objective has no error budget.
    pub availability: f64,
    /// Latency threshold, a humantime duration ("250ms", "1s"). Must be one of the SLI latency
    /// bucket bounds ([`LATENCY_BOUNDS`]) so the share of faster requests is exact.
    #[serde(with = "humantime_serde")]
    pub latency_threshold: Duration,
    /// Latency objective, percent of valid requests no slower than `latency_threshold`.
    pub latency_target: f64,
    /// The period the objectives are measured over.
    pub period: PeriodKind,
}

impl Tier {
    /// The built-in tier: 99.9 % availability, 99 % of requests within 500 ms, per calendar month.
    pub fn standard() -> Self {
        Tier {
            availability: 99.9,
            latency_threshold: Duration::from_millis(500),
            latency_target: 99.0,
            period: PeriodKind::CalendarMonth,
        }
    }
}

/// A tenant's tier and its own values for some of the tier's fields.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantObjective {
    /// Tier name; `default_tier` when absent.
    pub tier: Option<String>,
    /// Overrides the tier's `availability` (percent).
    pub availability: Option<f64>,
    /// Overrides the tier's `latency_threshold`.
    #[serde(with = "humantime_serde")]
    pub latency_threshold: Option<Duration>,
    /// Overrides the tier's `latency_target` (percent).
    pub latency_target: Option<f64>,
    /// Overrides the tier's `period`.
    pub period: Option<PeriodKind>,
}

/// The period objectives are measured over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum PeriodKind {
    /// A UTC calendar month.
    #[serde(rename = "calendar_month")]
    CalendarMonth,
    /// The 30 days ending now.
    #[serde(rename = "rolling_30d")]
    Rolling30d,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::CalendarMonth => "calendar_month",
            PeriodKind::Rolling30d => "rolling_30d",
        }
    }
}

/// A maintenance window: requests in it count for neither the objectives nor the budgets.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Start, an RFC 3339 timestamp with an offset (`2026-11-14T02:00:00Z`), inclusive.
    #[serde(deserialize_with = "timestamp")]
    pub start: Timestamp,
    /// End, an RFC 3339 timestamp with an offset, exclusive. Must be after `start`.
    #[serde(deserialize_with = "timestamp")]
    pub end: Timestamp,
    /// Tenants the window applies to; empty (the default) means every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Why, shown in reports.
    #[serde(default)]
    pub reason: String,
}

impl Default for ObjectivesConfig {
    /// Zero-config: every tenant on the "standard" tier, no maintenance windows.
    fn default() -> Self {
        ObjectivesConfig {
            tiers: BTreeMap::from([("standard".to_owned(), Tier::standard())]),
            default_tier: "standard".to_owned(),
            tenants: BTreeMap::new(),
            maintenance: Vec::new(),
        }
    }
}

/// The objectives that apply to one tenant, resolved from its tier and overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// Name of the tier the values came from.
    pub tier: String,
    /// Availability objective as a fraction (99.9 % is 0.999).
    pub availability: f64,
    /// Index of the latency threshold in [`LATENCY_BOUNDS`].
    pub latency_bound: usize,
    /// Latency objective as a fraction.
    pub latency_target: f64,
    pub period: PeriodKind,
}

impl Objective {
    /// The latency threshold in seconds.
    pub fn latency_threshold(&self) -> f64 {
        LATENCY_BOUNDS[self.latency_bound.min(LATENCY_BOUNDS.len() - 1)]
    }

    /// Fraction of requests allowed to fail (0.001 for 99.9 %).
    pub fn availability_budget(&self) -> f64 {
        budget_of(self.availability)
    }

    /// Fraction of requests allowed to be slower than the threshold.
    pub fn latency_budget(&self) -> f64 {
        budget_of(self.latency_target)
    }
}

/// `1 - target`, rounded to 12 decimals: the subtraction alone turns 0.999 into
/// 0.0010000000000000009, which would leak into every budget figure of a report.
pub fn budget_of(target: f64) -> f64 {
    ((1.0 - target) * 1e12).round() / 1e12
}

/// A percent from the config as a fraction, the nearest double to the decimal value
/// (99.9 / 100.0 alone is 0.9990000000000001). Exact for up to 10 decimals.
fn fraction(percent: f64) -> f64 {
    (percent * 1e10).round() / 1e12
}

/// A maintenance window resolved for one tenant: `[start, end)` in Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
    pub reason: String,
}

impl Window {
    /// Whether the instant `t` (Unix seconds) is inside the window.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

impl ObjectivesConfig {
    /// Checks what serde cannot; the error names the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.tiers.is_empty() {
            return Err("objectives.tiers: at least one tier is needed".to_owned());
        }
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(format!(
                "objectives.default_tier: {:?} is not a defined tier (defined: {})",
                self.default_tier,
                self.tier_names()
            ));
        }
        for (name, tier) in &self.tiers {
            let at = format!("objectives.tiers.{name}");
            check_percent(&at, "availability", tier.availability)?;
            check_threshold(&at, tier.latency_threshold)?;
            check_percent(&at, "latency_target", tier.latency_target)?;
        }
        for (tenant, t) in &self.tenants {
            let at = format!("objectives.tenants.{tenant}");
            if tenant.is_empty() {
                return Err("objectives.tenants: empty tenant name".to_owned());
            }
            if let Some(tier) = &t.tier
                && !self.tiers.contains_key(tier)
            {
                return Err(format!(
                    "{at}.tier: {tier:?} is not a defined tier (defined: {})",
                    self.tier_names()
                ));
            }
            if let Some(v) = t.availability {
                check_percent(&at, "availability", v)?;
            }
            if let Some(v) = t.latency_threshold {
                check_threshold(&at, v)?;
            }
            if let Some(v) = t.latency_target {
                check_percent(&at, "latency_target", v)?;
            }
        }
        for (i, w) in self.maintenance.iter().enumerate() {
            let at = format!("objectives.maintenance[{i}]");
            if w.end <= w.start {
                return Err(format!(
                    "{at} ({:?}): end {} is not after start {}",
                    w.reason, w.end, w.start
                ));
            }
            if w.tenants.iter().any(|t| t.is_empty()) {
                return Err(format!("{at} ({:?}): empty tenant name", w.reason));
            }
        }
        Ok(())
    }

    /// The objectives of `tenant`. Meant for a validated config; on an invalid one it falls back
    /// (unknown tier: the default tier, then the built-in standard tier; a threshold that is not a
    /// bucket bound: the standard one) rather than panicking.
    pub fn objective_for(&self, tenant: &str) -> Objective {
        let own = self.tenants.get(tenant);
        let standard = Tier::standard();
        let (name, tier) = own
            .and_then(|t| t.tier.as_ref())
            .and_then(|n| self.tiers.get_key_value(n))
            .or_else(|| self.tiers.get_key_value(&self.default_tier))
            .map(|(n, t)| (n.as_str(), t))
            .unwrap_or(("standard", &standard));
        let own = own.cloned().unwrap_or_default();
        let threshold = own.latency_threshold.unwrap_or(tier.latency_threshold);
        let latency_bound = bound_index(threshold.as_secs_f64())
            .or_else(|| bound_index(standard.latency_threshold.as_secs_f64()))
            .unwrap_or(LATENCY_BOUNDS.len() - 1);
        Objective {
            tier: name.to_owned(),
            availability: fraction(own.availability.unwrap_or(tier.availability)),
            latency_bound,
            latency_target: fraction(own.latency_target.unwrap_or(tier.latency_target)),
            period: own.period.unwrap_or(tier.period),
        }
    }

    /// The maintenance windows that apply to `tenant`, sorted by start.
    pub fn windows_for(&self, tenant: &str) -> Vec<Window> {
        let mut out: Vec<Window> = self
            .maintenance
            .iter()
            .filter(|w| w.tenants.is_empty() || w.tenants.iter().any(|t| t == tenant))
            .map(|w| Window {
                start: w.start.as_second(),
                end: w.end.as_second(),
                reason: w.reason.clone(),
            })
            .collect();
        out.sort_by_key(|w| (w.start, w.end));
        out
    }

    fn tier_names(&self) -> String {
        let names: Vec<&str> = self.tiers.keys().map(String::as_str).collect();
        names.join(", ")
    }
}

fn check_percent(at: &str, field: &str, v: f64) -> Result<(), String> {
    if !(v > 0.0 && v < 100.0) {
        return Err(format!(
            "{at}.{field}: {v} is not a percentage above 0 and below 100 \
             (a 100 % objective leaves no error budget; use e.g. 99.999)"
        ));
    }
    Ok(())
}

fn check_threshold(at: &str, d: Duration) -> Result<(), String> {
    if bound_index(d.as_secs_f64()).is_none() {
        let allowed: Vec<String> = LATENCY_BOUNDS
            .iter()
            .map(|&b| humantime::format_duration(Duration::from_secs_f64(b)).to_string())
            .collect();
        return Err(format!(
            "{at}.latency_threshold: {} is not a latency bucket bound; use one of {}",
            humantime::format_duration(d),
            allowed.join(", ")
        ));
    }
    Ok(())
}

/// An RFC 3339 timestamp, written either as a TOML string or as a TOML offset date-time (which
/// the toml crate hands to serde as a one-entry map).
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Timestamp;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp with an offset, e.g. \"2026-11-14T02:00:00Z\"")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
            s.parse::<Timestamp>()
                .map_err(|e| E::custom(format!("invalid timestamp {s:?}: {e}")))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Timestamp, A::Error> {
            use serde::de::Error as _;
            let Some((_, value)) = map.next_entry::<String, String>()? else {
                return Err(A::Error::custom("empty date-time"));
            };
            self.visit_str(&value)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Root {
        #[serde(default)]
        objectives: ObjectivesConfig,
    }

    fn parse(s: &str) -> Result<ObjectivesConfig, String> {
        toml::from_str::<Root>(s)
            .map(|r| r.objectives)
            .map_err(|e| e.to_string())
    }

    fn valid(s: &str) -> ObjectivesConfig {
        let c = parse(s).unwrap_or_else(|e| panic!("parse: {e}"));
        c.validate().unwrap_or_else(|e| panic!("validate: {e}"));
        c
    }

    fn invalid(s: &str) -> String {
        match parse(s) {
            Err(e) => e,
            Ok(c) => c.validate().expect_err("config should be rejected"),
        }
    }

    const EXAMPLE: &str = r#"
        [objectives]
        default_tier = "standard"

        [objectives.tiers.standard]
        availability = 99.9
        latency_threshold = "500ms"
        latency_target = 99.0
        period = "calendar_month"

        [objectives.tiers.premium]
        availability = 99.95
        latency_threshold = "250ms"
        latency_target = 99.5
        period = "rolling_30d"

        [objectives.tenants]
        acme = { tier = "premium" }
        globex = { availability = 99.5 }

        [[objectives.maintenance]]
        start = "2026-11-14T02:00:00Z"
        end = "2026-11-14T04:00:00Z"
        tenants = ["acme"]
        reason = "database upgrade"

        [[objectives.maintenance]]
        start = 2026-11-20T01:00:00+01:00
        end = 2026-11-20T01:30:00Z
        reason = "network"
    "#;

    #[test]
    fn zero_config_is_the_standard_tier() {
        let c = valid("");
        assert_eq!(c, ObjectivesConfig::default());
        let c = valid("[objectives]\n");
        assert_eq!(c, ObjectivesConfig::default());
        let o = c.objective_for("anyone");
        assert_eq!(
            o,
            Objective {
                tier: "standard".into(),
                availability: 0.999,
                latency_bound: bound_index(0.5).unwrap(),
                latency_target: 0.99,
                period: PeriodKind::CalendarMonth,
            }
        );
        assert_eq!(o.latency_threshold(), 0.5);
        assert_eq!(o.availability_budget(), 0.001);
        assert_eq!(o.latency_budget(), 0.01);
        assert!(c.windows_for("anyone").is_empty());
    }

    #[test]
    fn example_resolves_tiers_overrides_and_windows() {
        let c = valid(EXAMPLE);
        let acme = c.objective_for("acme");
        assert_eq!(acme.tier, "premium");
        assert_eq!(acme.availability, 0.9995);
        assert_eq!(acme.latency_threshold(), 0.25);
        assert_eq!(acme.latency_target, 0.995);
        assert_eq!(acme.period, PeriodKind::Rolling30d);
        let globex = c.objective_for("globex");
        assert_eq!(globex.tier, "standard");
        assert_eq!(globex.availability, 0.995);
        assert_eq!(globex.latency_target, 0.99);
        assert_eq!(c.objective_for("other").availability, 0.999);

        let w = c.windows_for("acme");
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].reason, "database upgrade");
        assert_eq!(w[0].start, 1_794_621_600); // 2026-11-14T02:00:00Z
        assert_eq!(w[0].end - w[0].start, 7200);
        // The offset is honoured: 01:00+01:00 is 00:00Z.
        assert_eq!(w[1].start, 1_795_132_800); // 2026-11-20T00:00:00Z
        assert_eq!(w[1].end - w[1].start, 5400);
        let w = c.windows_for("globex");
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, "network");
    }

    #[test]
    fn every_tenant_field_can_be_overridden() {
        let c = valid(
            r#"[objectives.tenants.t]
            tier = "standard"
            availability = 99.99
            latency_threshold = "1s"
            latency_target = 95
            period = "rolling_30d""#,
        );
        let o = c.objective_for("t");
        assert_eq!(o.availability, 0.9999);
        assert_eq!(o.latency_threshold(), 1.0);
        assert_eq!(o.latency_target, 0.95);
        assert_eq!(o.period, PeriodKind::Rolling30d);
    }

    #[test]
    fn latency_threshold_must_be_a_bucket_bound() {
        let e = invalid(
            r#"[objectives.tiers.standard]
            availability = 99.9
            latency_threshold = "300ms"
            latency_target = 99
            period = "calendar_month""#,
        );
        assert!(
            e.contains("objectives.tiers.standard.latency_threshold"),
            "{e}"
        );
        assert!(e.contains("300ms"), "{e}");
        assert!(e.contains("5ms, 10ms, 25ms"), "{e}");
        assert!(e.contains("250ms, 500ms"), "{e}");
        assert!(e.contains("7s 500ms, 10s"), "{e}");

        let e = invalid("[objectives.tenants.acme]\nlatency_threshold = \"2s\"");
        assert!(
            e.contains("objectives.tenants.acme.latency_threshold"),
            "{e}"
        );
        valid("[objectives.tenants.acme]\nlatency_threshold = \"2.5s\"");
        valid("[objectives.tenants.acme]\nlatency_threshold = \"5ms\"");
    }

    #[test]
    fn bad_entries_are_named() {
        let tier = |a: &str| {
            format!(
                "[objectives.tiers.gold]\navailability = {a}\nlatency_threshold = \"1s\"\n\
                 latency_target = 99\nperiod = \"calendar_month\"\n[objectives]\ndefault_tier = \"gold\""
            )
        };
        valid(&tier("99.99"));
        for bad in ["100", "0", "-1", "150", "nan"] {
            let e = invalid(&tier(bad));
            assert!(
                e.contains("objectives.tiers.gold.availability"),
                "{bad}: {e}"
            );
        }
        // Defining a tier replaces the built-in one, so the default tier must be named.
        let e = invalid(
            "[objectives.tiers.gold]\navailability = 99\nlatency_threshold = \"1s\"\n\
             latency_target = 99\nperiod = \"calendar_month\"",
        );
        assert!(
            e.contains("objectives.default_tier") && e.contains("gold"),
            "{e}"
        );

        let e = invalid("[objectives.tenants.acme]\ntier = \"platinum\"");
        assert!(
            e.contains("objectives.tenants.acme.tier") && e.contains("platinum"),
            "{e}"
        );
        let e = invalid("[objectives.tenants.acme]\nlatency_target = 100.5");
        assert!(e.contains("objectives.tenants.acme.latency_target"), "{e}");
        let e = invalid("[objectives]\ntiers = {}");
        assert!(e.contains("objectives.tiers"), "{e}");
    }

    #[test]
    fn maintenance_windows_are_checked() {
        let w = |start: &str, end: &str| {
            format!("[[objectives.maintenance]]\nstart = {start}\nend = {end}\nreason = \"r\"")
        };
        valid(&w("\"2026-11-01T00:00:00Z\"", "\"2026-11-01T00:00:01Z\""));
        let e = invalid(&w("\"2026-11-01T00:00:00Z\"", "\"2026-11-01T00:00:00Z\""));
        assert!(e.contains("objectives.maintenance[0]"), "{e}");
        let e = invalid(&w("\"2026-11-02T00:00:00Z\"", "\"2026-11-01T00:00:00Z\""));
        assert!(e.contains("not after start"), "{e}");
        // No offset: ambiguous, rejected by the parser.
        let e = invalid(&w("\"2026-11-01T00:00:00\"", "\"2026-11-02T00:00:00Z\""));
        assert!(e.contains("invalid timestamp"), "{e}");
        let e = invalid(&w("\"yesterday\"", "\"2026-11-02T00:00:00Z\""));
        assert!(e.contains("invalid timestamp"), "{e}");
        let e = invalid(&w("2026-11-01", "\"2026-11-02T00:00:00Z\""));
        assert!(e.contains("invalid timestamp"), "{e}");
        let e = invalid(
            "[[objectives.maintenance]]\nstart = \"2026-11-01T00:00:00Z\"\n\
             end = \"2026-11-02T00:00:00Z\"\ntenants = [\"\"]",
        );
        assert!(e.contains("objectives.maintenance[0]"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = invalid("[objectives]\ndefault_teir = \"standard\"");
        assert!(e.contains("default_teir"), "{e}");
        let e = invalid("[objectives.tenants.acme]\ntire = \"standard\"");
        assert!(e.contains("tire"), "{e}");
        let e = invalid("[objectives.tenants.acme]\nperiod = \"weekly\"");
        assert!(e.contains("weekly"), "{e}");
        let e = invalid(
            "[[objectives.maintenance]]\nstart = \"2026-11-01T00:00:00Z\"\n\
             end = \"2026-11-02T00:00:00Z\"\nwhy = \"x\"",
        );
        assert!(e.contains("why"), "{e}");
    }

    #[test]
    fn objective_for_never_panics_on_an_invalid_config() {
        let mut c = ObjectivesConfig {
            default_tier: "missing".into(),
            ..Default::default()
        };
        c.tiers.get_mut("standard").unwrap().latency_threshold = Duration::from_millis(300);
        c.tenants.insert(
            "t".into(),
            TenantObjective {
                tier: Some("nope".into()),
                ..Default::default()
            },
        );
        assert!(c.validate().is_err());
        let o = c.objective_for("t");
        assert_eq!(o.tier, "standard");
        assert_eq!(o.latency_threshold(), 0.5);
        c.tiers.clear();
        assert_eq!(c.objective_for("t").tier, "standard");
    }

    #[test]
    fn window_bounds_are_half_open() {
        let w = Window {
            start: 10,
            end: 20,
            reason: String::new(),
        };
        assert!(!w.contains(9) && w.contains(10) && w.contains(19) && !w.contains(20));
    }
}
