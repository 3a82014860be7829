//! The Grafana dashboards of dashboards/: valid JSON models, and the lint rules of
//! shared/docs/conventions.md (from grafana dashboard-linter): every panel uses the
//! `${datasource}` variable and has a title, a description and a unit; every target is valid
//! PromQL, reads counters through rate()/irate()/increase() over `$__rate_interval`, aggregated
//! with `sum`; variables come in the conventions' order, refresh on time range change and are
//! used. Also: latency panels show exemplars, and provisioning and the kustomization list every
//! dashboard. That the metric names exist is tests/tests/live_metrics.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::promql;
use serde_json::Value;

fn dashboards() -> Vec<(String, Value)> {
    promql::dashboard_files()
        .into_iter()
        .map(|p| (promql::name(&p), promql::load_json(&p)))
        .collect()
}

const DATASOURCE: &str = "${datasource}";

#[test]
fn dashboards_are_valid_json_models() {
    let mut uids = BTreeMap::new();
    let mut titles = BTreeMap::new();
    for (file, d) in dashboards() {
        let uid = d["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{file}: uid must be 1-40 characters"
        );
        if let Some(other) = uids.insert(uid.to_owned(), file.clone()) {
            panic!("{file}: uid {uid} is also {other}'s");
        }
        let title = d["title"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no title"));
        if let Some(other) = titles.insert(title.to_owned(), file.clone()) {
            panic!("{file}: title {title:?} is also {other}'s");
        }
        let tags = d["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no tags"));
        assert!(
            tags.iter().any(|t| t == "tenantscope"),
            "{file}: tags must include tenantscope (the dashboards link to each other by it)"
        );
        let schema = d["schemaVersion"].as_u64();
        assert!(
            matches!(schema, Some(41 | 42)),
            "{file}: schemaVersion {schema:?}, want 41 or 42"
        );
        assert!(
            d["templating"]["list"].is_array(),
            "{file}: no templating.list"
        );
        assert!(
            d.get("id").is_none_or(Value::is_null),
            "{file}: a provisioned dashboard has no numeric id (Grafana assigns it)"
        );
        let panels = promql::panels(&d);
        assert!(!panels.is_empty(), "{file}: no panels");
        let mut ids = BTreeSet::new();
        let mut rects: Vec<(i64, i64, i64, i64, String)> = Vec::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{file}: panel id {id} is used twice");
            let g = &p["gridPos"];
            let get = |k: &str| {
                g[k].as_i64()
                    .unwrap_or_else(|| panic!("{file}: panel {title:?}: gridPos.{k} missing"))
            };
            let (x, y, w, h) = (get("x"), get("y"), get("w"), get("h"));
            assert!(
                x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{file}: panel {title:?}: gridPos {g} outside the 24-column grid"
            );
            for (ox, oy, ow, oh, other) in &rects {
                let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
                assert!(!overlap, "{file}: panels {title:?} and {other:?} overlap");
            }
            rects.push((x, y, w, h, title));
        }
    }
}

/// Variables: `datasource` (type datasource, Prometheus) first, then tenant, node, namespace,
/// job, instance in that order (those present), then the dashboard's own; every query variable
/// is a label_values(metric..., label) on `${datasource}` refreshed on time range change, and
/// every variable is used.
#[test]
fn variables_follow_the_conventions() {
    const ORDER: [&str; 5] = ["tenant", "node", "namespace", "job", "instance"];
    for (file, d) in dashboards() {
        let vars = promql::variables(&d);
        let first = vars
            .first()
            .unwrap_or_else(|| panic!("{file}: no variables"));
        assert!(
            first["name"] == "datasource"
                && first["type"] == "datasource"
                && first["query"] == "prometheus",
            "{file}: the first variable must be `datasource` of type datasource (prometheus)"
        );
        let names: Vec<&str> = vars
            .iter()
            .map(|v| v["name"].as_str().unwrap_or(""))
            .collect();
        let known: Vec<&str> = names[1..]
            .iter()
            .copied()
            .take_while(|n| ORDER.contains(n))
            .collect();
        let mut expected = known.clone();
        expected.sort_by_key(|n| ORDER.iter().position(|o| o == n));
        assert_eq!(
            known, expected,
            "{file}: variables out of order (datasource, then {ORDER:?})"
        );
        for n in &names[1 + known.len()..] {
            assert!(
                !ORDER.contains(n),
                "{file}: variable {n} must come before the dashboard's own variables"
            );
        }
        let mut used = BTreeSet::new();
        for p in promql::panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                used.extend(promql::grafana_variables_used(
                    t["expr"].as_str().unwrap_or(""),
                ));
            }
        }
        for v in &vars[1..] {
            let name = v["name"].as_str().unwrap_or("?");
            assert_eq!(v["type"], "query", "{file}: variable {name}: type query");
            assert_eq!(
                v["datasource"]["uid"], DATASOURCE,
                "{file}: variable {name} must query ${{datasource}}"
            );
            assert_eq!(
                v["refresh"], 2,
                "{file}: variable {name} must refresh on time range change (2)"
            );
            let q = promql::variable_query(v)
                .unwrap_or_else(|| panic!("{file}: variable {name}: no query"));
            assert!(
                q.starts_with("label_values("),
                "{file}: variable {name}: label_values(...) expected, got {q}"
            );
            used.extend(promql::grafana_variables_used(q));
        }
        for n in &names[1..] {
            assert!(
                used.contains(*n),
                "{file}: variable {n} is not used by any query"
            );
        }
        for n in &used {
            assert!(
                names.contains(&n.as_str()),
                "{file}: ${n} is used but not defined"
            );
        }
    }
}

#[test]
fn panels_follow_the_lint_rules() {
    let mut problems = Vec::new();
    for (file, d) in dashboards() {
        for p in promql::panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            let mut problem = |s: String| problems.push(format!("{file}: panel {title:?}: {s}"));
            if title.trim().is_empty() {
                problem("no title".into());
            }
            if p["type"] == "row" {
                continue;
            }
            if p["description"]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problem("no description".into());
            }
            if p["datasource"]["uid"] != DATASOURCE {
                problem(format!("datasource is not {DATASOURCE}"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problem("no unit (fieldConfig.defaults.unit)".into());
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problem("no targets".into());
            }
            for t in &targets {
                if t["datasource"]["uid"] != DATASOURCE {
                    problem(format!(
                        "target {} datasource is not {DATASOURCE}",
                        t["refId"]
                    ));
                }
                if t["expr"].as_str().is_none_or(str::is_empty) {
                    problem(format!("target {} has no expr", t["refId"]));
                }
            }
        }
        for q in promql::dashboard_queries(std::path::Path::new(&file), &d) {
            // Parses (panics with the query otherwise).
            promql::parse(&q);
            if !q.is_target {
                continue;
            }
            for p in promql::counter_lint(&q) {
                problems.push(format!("{}: {p}\n  {}", q.origin, q.raw));
            }
            for r in promql::ranges(&q.raw) {
                if r != "$__rate_interval" {
                    problems.push(format!(
                        "{}: range [{r}]: use [$__rate_interval]\n  {}",
                        q.origin, q.raw
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The agent puts the request's trace id on its HTTP duration buckets as an exemplar: every
/// panel reading those buckets asks for exemplars, and the data source example turns `trace_id`
/// into a link to the trace.
#[test]
fn latency_panels_show_exemplars_linked_to_traces() {
    let mut n = 0;
    for (file, d) in dashboards() {
        for p in promql::panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("");
                if expr.contains("http_server_request_duration_seconds_bucket")
                    || expr.contains("http_client_request_duration_seconds_bucket")
                {
                    n += 1;
                    assert_eq!(
                        t["exemplar"], true,
                        "{file}: panel {:?}: exemplar must be true",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(n > 0, "no latency panel");
    let ds = promql::load_yaml(&promql::repo().join("dashboards/provisioning/datasource.yaml"));
    assert_eq!(ds["apiVersion"], 1);
    let prom = &ds["datasources"][0];
    assert_eq!(prom["type"], "prometheus");
    let dest = prom["jsonData"]["exemplarTraceIdDestinations"]
        .as_array()
        .expect("exemplarTraceIdDestinations");
    assert!(
        dest.iter()
            .any(|d| d["name"] == "trace_id"
                && (d["datasourceUid"].is_string() || d["url"].is_string())),
        "no exemplar destination for trace_id"
    );
}

/// The file provider and the kustomization (one ConfigMap per dashboard, labelled for the Grafana
/// sidecar, stable names) cover every dashboard.
#[test]
fn provisioning_and_kustomization_cover_every_dashboard() {
    let root = promql::repo().join("dashboards");
    let prov = promql::load_yaml(&root.join("provisioning/dashboards.yaml"));
    assert_eq!(prov["apiVersion"], 1);
    let provider = &prov["providers"][0];
    assert_eq!(provider["type"], "file");
    assert!(provider["options"]["path"].is_string());

    let k = promql::load_yaml(&root.join("kustomization.yaml"));
    assert_eq!(k["kind"], "Kustomization");
    let opts = &k["generatorOptions"];
    assert_eq!(opts["disableNameSuffixHash"], true);
    assert_eq!(opts["labels"]["grafana_dashboard"], "1");
    let mut listed = BTreeSet::new();
    for cm in k["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator")
    {
        for f in cm["files"].as_array().expect("files") {
            assert!(
                listed.insert(f.as_str().expect("file").to_owned()),
                "{f} listed twice"
            );
        }
    }
    let files: BTreeSet<String> = promql::dashboard_files()
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml must list every dashboard"
    );
}

/// `tenantscope_workload_info` is newer than the rest: one panel only, so that a dashboard does
/// not go blank if it is missing.
#[test]
fn workload_info_is_used_in_one_panel_only() {
    let mut uses = Vec::new();
    for (file, d) in dashboards() {
        for q in promql::dashboard_queries(std::path::Path::new(&file), &d) {
            if promql::metric_names(&q).contains("tenantscope_workload_info") {
                uses.push(q.origin);
            }
        }
    }
    for q in promql::rule_queries() {
        if promql::metric_names(&q).contains("tenantscope_workload_info") {
            uses.push(q.origin);
        }
    }
    assert_eq!(uses.len(), 1, "{uses:?}");
}
