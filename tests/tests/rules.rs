//! The Prometheus rules of deploy/prometheus: `promtool check rules` and `promtool test rules`
//! pass; every alert has a unit test where it fires and one where it stays quiet, every recording
//! rule a promql_expr_test; every alert carries a severity, a summary, a description, a runbook
//! and a runbook_url into RUNBOOKS.md; the SLO windows are the conventions'; the PrometheusRule
//! copy is generated from the rule files.
//!
//! promtool is Debian's `prometheus` package (2.42), installed by `cargo xtask setup`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use common::promql::{self, Query};

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (apt prometheus) is installed by `cargo xtask setup`");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {}:\n{report}",
        args.join(" ")
    );
    report
}

fn relative(paths: &[std::path::PathBuf], dir: &Path) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn promtool_check_rules() {
    let dir = promql::repo().join("deploy/prometheus");
    let files = relative(&promql::rule_files(), &dir);
    let mut args = vec!["check", "rules"];
    args.extend(files.iter().map(String::as_str));
    let report = promtool(&args, &dir);
    assert_eq!(
        report.matches("SUCCESS").count(),
        files.len(),
        "one SUCCESS per file:\n{report}"
    );
}

/// The example configuration loads every rule file (and is valid itself).
#[test]
fn promtool_check_config() {
    let dir = promql::repo().join("deploy/prometheus");
    let report = promtool(&["check", "config", "prometheus.yml"], &dir);
    for f in relative(&promql::rule_files(), &dir) {
        assert!(
            report.contains(&f),
            "prometheus.yml does not load {f}:\n{report}"
        );
    }
}

#[test]
fn promtool_unit_tests_pass() {
    let dir = promql::repo().join("deploy/prometheus/tests");
    let files = relative(&promql::rule_test_files(), &dir);
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    promtool(&args, &dir);
}

/// What the unit tests cover: per alert, whether a test expects it firing and one expects it
/// quiet; the names the promql_expr_tests query; the rule files they load.
#[derive(Default)]
struct Coverage {
    firing: BTreeSet<String>,
    quiet: BTreeSet<String>,
    queried: BTreeSet<String>,
    rule_files: BTreeSet<String>,
}

fn coverage() -> Coverage {
    let mut c = Coverage::default();
    for path in promql::rule_test_files() {
        let doc = promql::load_yaml(&path);
        let file = promql::name(&path);
        for f in doc["rule_files"].as_array().expect("rule_files") {
            let rel = f.as_str().expect("a path");
            let full = path.parent().expect("dir").join(rel);
            assert!(full.exists(), "{file}: rule file {rel} does not exist");
            c.rule_files
                .insert(promql::name(&full.canonicalize().expect("canonical")));
        }
        for t in doc["tests"].as_array().expect("tests") {
            for a in t["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().expect("alertname").to_owned();
                let fires = a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty());
                if fires {
                    c.firing.insert(name);
                } else {
                    c.quiet.insert(name);
                }
            }
            for e in t["promql_expr_test"].as_array().into_iter().flatten() {
                let q = Query {
                    origin: format!("{file}: promql_expr_test"),
                    raw: e["expr"].as_str().expect("expr").to_owned(),
                    expr: e["expr"].as_str().expect("expr").to_owned(),
                    is_target: false,
                };
                c.queried.extend(promql::metric_names(&q));
            }
        }
    }
    c
}

#[test]
fn every_alert_is_tested_firing_and_quiet_and_every_recording_rule_is_queried() {
    let c = coverage();
    let rules = promql::rules();
    let mut missing = Vec::new();
    for r in &rules {
        if r.is_alert {
            if !c.firing.contains(&r.name) {
                missing.push(format!("{}: no alert_rule_test where it fires", r.name));
            }
            if !c.quiet.contains(&r.name) {
                missing.push(format!(
                    "{}: no alert_rule_test where it stays quiet (empty exp_alerts)",
                    r.name
                ));
            }
        } else if !c.queried.contains(&r.name) {
            missing.push(format!("{}: no promql_expr_test queries it", r.name));
        }
    }
    for f in promql::rule_files() {
        let f = promql::name(&f);
        if !c.rule_files.contains(&f) {
            missing.push(format!("{f}: no unit test file loads it"));
        }
    }
    let alerts: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.is_alert)
        .map(|r| r.name.as_str())
        .collect();
    for name in c.firing.iter().chain(&c.quiet) {
        if !alerts.contains(name.as_str()) {
            missing.push(format!("{name}: tested but not defined"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alerts_carry_severity_summary_description_and_runbook() {
    let runbooks_path = promql::repo().join("deploy/prometheus/RUNBOOKS.md");
    let runbooks = std::fs::read_to_string(&runbooks_path).expect("RUNBOOKS.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let mut problems = Vec::new();
    let mut alert_anchors = BTreeSet::new();
    for r in promql::rules().iter().filter(|r| r.is_alert) {
        let mut problem = |p: String| problems.push(format!("{}: {p}", r.name));
        match r.value["labels"]["severity"].as_str() {
            Some("page" | "ticket") => {}
            other => problem(format!("severity must be page or ticket, not {other:?}")),
        }
        let a = &r.value["annotations"];
        for key in ["summary", "description", "runbook", "runbook_url"] {
            if a[key].as_str().is_none_or(|s| s.trim().is_empty()) {
                problem(format!("annotation {key} missing or empty"));
            }
        }
        if a["runbook"].as_str().is_some_and(|s| !s.contains("1. ")) {
            problem("runbook should be numbered steps".into());
        }
        let want = format!("deploy/prometheus/RUNBOOKS.md#{}", anchor(&r.name));
        if a["runbook_url"].as_str() != Some(want.as_str()) {
            problem(format!("runbook_url should be {want}"));
        }
        if !anchors.contains(&anchor(&r.name)) {
            problem("RUNBOOKS.md has no `## <alert name>` section".into());
        }
        alert_anchors.insert(anchor(&r.name));
    }
    for a in &anchors {
        if a.starts_with("tenantscope") && !alert_anchors.contains(a) {
            problems.push(format!("RUNBOOKS.md: section {a} has no alert"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every rule expression parses, counters are read the way the dashboards read them, and the
/// agent's metrics are selected by job: applications instrumented with OpenTelemetry export
/// `http_server_request_duration_seconds` too, and must not count in a tenant's SLO.
#[test]
fn rule_expressions_follow_the_lint_rules() {
    let mut problems = Vec::new();
    for q in promql::rule_queries() {
        for p in promql::counter_lint(&q) {
            problems.push(format!("{}: {p}\n  {}", q.origin, q.expr));
        }
        promql::walk(&promql::parse(&q), &mut |e, _| {
            let vs = match e {
                promql_parser::parser::Expr::VectorSelector(vs) => vs,
                promql_parser::parser::Expr::MatrixSelector(m) => &m.vs,
                _ => return,
            };
            let name = promql::selector_name(vs).unwrap_or_default();
            let agents = [
                "http_",
                "tenantscope_agent_",
                "tenantscope_tcp_",
                "tenantscope_syscall_",
            ];
            if agents.iter().any(|p| name.starts_with(p))
                && !vs.matchers.matchers.iter().any(|m| m.name == "job")
            {
                problems.push(format!("{}: {name} is not selected by job", q.origin));
            }
        });
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The windows of shared/docs/conventions.md: SLI ratios 5m .. 30d per tenant, and the burn
/// rates the alerts pair (page 1h+5m, 6h+30m; ticket 1d+2h, 3d+6h).
#[test]
fn slo_recording_rules_cover_every_window_per_tenant() {
    let rules = promql::rules();
    let windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"];
    let recorded: BTreeMap<&str, &promql::Rule> = rules
        .iter()
        .filter(|r| !r.is_alert)
        .map(|r| (r.name.as_str(), r))
        .collect();
    for w in windows {
        let name = format!("tenant:tenantscope_availability_errors:ratio_rate{w}");
        assert!(
            recorded.contains_key(name.as_str()),
            "{name} is not recorded"
        );
    }
    for w in &windows[..7] {
        let name = format!("tenant:tenantscope_availability_errors:burn_rate{w}");
        assert!(
            recorded.contains_key(name.as_str()),
            "{name} is not recorded"
        );
    }
    // Per tenant: every `tenant:` rule aggregates to exactly the tenant label.
    for r in rules.iter().filter(|r| r.name.starts_with("tenant:")) {
        let e = &r.expr;
        assert!(
            e.contains("by (tenant)") || e.contains("tenant:") || e.contains("on (tenant)"),
            "{}: not per tenant: {e}",
            r.name
        );
    }
    let slo_alerts: Vec<_> = rules
        .iter()
        .filter(|r| r.is_alert && r.value["labels"]["slo"].is_string())
        .collect();
    assert_eq!(
        slo_alerts.len(),
        4,
        "page and ticket, availability and latency"
    );
    for a in slo_alerts {
        let e = &a.expr;
        let pairs: &[(&str, &str, &str)] = match a.value["labels"]["severity"].as_str() {
            Some("page") => &[("1h", "5m", "14.4"), ("6h", "30m", "6")],
            // The collector has no 2h latency window (see rules/slo.yaml).
            _ if a.name.contains("Latency") => &[("1d", "1h", "3"), ("3d", "6h", "1")],
            _ => &[("1d", "2h", "3"), ("3d", "6h", "1")],
        };
        for (long, short, factor) in pairs {
            for w in [long, short] {
                assert!(
                    e.contains(&format!("burn_rate{w} > {factor}\n")),
                    "{}: no {w} window above {factor}x:\n{e}",
                    a.name
                );
            }
        }
    }
}

/// The PrometheusRule for the Prometheus Operator: the rule files' groups, verbatim.
fn prometheus_rule() -> String {
    let mut out = String::from(
        "# Generated from deploy/prometheus/rules/*.yaml by tests/tests/rules.rs; do not edit. After\n\
         # changing a rule file: TENANTSCOPE_UPDATE_PROMETHEUSRULE=1 cargo test -p tenantscope-tests --test rules\n\
         # Prometheus selects PrometheusRules by label (ruleSelector): add yours with a kustomize\n\
         # patch or commonLabels (kube-prometheus-stack: release: <release name>).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: tenantscope\n  labels:\n    app.kubernetes.io/part-of: tenantscope\n\
         spec:\n  groups:\n",
    );
    for path in promql::rule_files() {
        let text = std::fs::read_to_string(&path).expect("rules");
        let body = text
            .split_once("\ngroups:\n")
            .unwrap_or_else(|| panic!("{}: no top-level `groups:`", promql::name(&path)))
            .1;
        out.push_str(&format!("    # {}\n", promql::name(&path)));
        for line in body.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn prometheus_rule_is_generated_from_the_rule_files() {
    let path = promql::repo().join("deploy/prometheus/prometheusrule.yaml");
    let want = prometheus_rule();
    if std::env::var("TENANTSCOPE_UPDATE_PROMETHEUSRULE").as_deref() == Ok("1") {
        std::fs::write(&path, &want).expect("write prometheusrule.yaml");
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "deploy/prometheus/prometheusrule.yaml is not the rule files' groups: run \
         TENANTSCOPE_UPDATE_PROMETHEUSRULE=1 cargo test -p tenantscope-tests --test rules"
    );
    // And it means the same: the groups of every file, in order.
    let crd = promql::yaml_str(&got).expect("YAML");
    let mut groups = Vec::new();
    for f in promql::rule_files() {
        groups.extend(
            promql::load_yaml(&f)["groups"]
                .as_array()
                .expect("groups")
                .clone(),
        );
    }
    assert_eq!(crd["spec"]["groups"], serde_json::Value::Array(groups));
}
