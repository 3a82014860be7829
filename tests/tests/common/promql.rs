//! The PromQL of the Grafana dashboards (`dashboards/*.json`) and of the Prometheus rules
//! (`deploy/prometheus/rules/*.yaml`): where it is, how Grafana's variables are replaced before
//! parsing, and which metric names it references.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use promql_parser::{
    label::MatchOp,
    parser::{self, Expr},
};
use serde_json::Value;

/// The repository root (this crate is `tests/`).
/// Read at run time: a shared CARGO_TARGET_DIR reuses test binaries across clones, and a
/// compile-time path would name the clone they were built in.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Files of `dir` (relative to the repo) ending in `suffix`, sorted.
pub fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = repo().join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} file in {}", dir.display());
    out
}

pub fn dashboard_files() -> Vec<PathBuf> {
    files("dashboards", ".json")
}

pub fn rule_files() -> Vec<PathBuf> {
    files("deploy/prometheus/rules", ".yaml")
}

pub fn rule_test_files() -> Vec<PathBuf> {
    files("deploy/prometheus/tests", ".yaml")
}

pub fn name(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

pub fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", name(path)));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", name(path)))
}

/// A YAML file with one document, as JSON (rules and their tests only use strings, numbers,
/// lists and maps with string keys).
pub fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", name(path)));
    yaml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", name(path)))
}

pub fn yaml_str(text: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.as_slice() {
        [doc] => yaml_to_json(doc),
        _ => Err(format!("expected one YAML document, found {}", docs.len())),
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => {
            let f: f64 = r.parse().map_err(|_| format!("bad number {r}"))?;
            Value::from(f)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => return Err(format!("unsupported YAML key {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err(format!("unsupported YAML node {y:?}")),
    })
}

/// Every panel of a dashboard, the panels of (collapsed) rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// The templating variables of a dashboard.
pub fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

/// One PromQL expression and where it comes from (for messages).
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    /// As written (with Grafana variables, for dashboards).
    pub raw: String,
    /// Ready to parse.
    pub expr: String,
    /// A panel target (the lint rules apply), not a variable's selector or a rule.
    pub is_target: bool,
}

/// The query of a `label_values(...)` variable, as Grafana stores it (a string, or an object
/// with a `query` field).
pub fn variable_query(var: &Value) -> Option<&str> {
    var["query"]
        .as_str()
        .or_else(|| var["query"]["query"].as_str())
}

/// `label_values(selector, label)` -> `selector`; `label_values(label)` -> None.
pub fn label_values_selector(q: &str) -> Result<Option<String>, String> {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("not a label_values(...) query: {q}"))?;
    // The label is after the last comma outside braces and quotes.
    let (mut depth, mut quoted, mut split) = (0i32, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '(' if !quoted => depth += 1,
            '}' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    Ok(split.map(|i| inner[..i].trim().to_owned()))
}

/// Every PromQL expression of a dashboard: panel targets and the selectors of its variables.
pub fn dashboard_queries(path: &Path, dashboard: &Value) -> Vec<Query> {
    let file = name(path);
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(raw) = t["expr"].as_str() {
                out.push(Query {
                    origin: format!(
                        "{file}: panel {:?} target {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    raw: raw.to_owned(),
                    expr: substitute_grafana_variables(raw),
                    is_target: true,
                });
            }
        }
    }
    for v in variables(dashboard) {
        if v["type"] != "query" {
            continue;
        }
        let origin = format!("{file}: variable {}", v["name"]);
        let q = variable_query(v).unwrap_or_else(|| panic!("{origin}: no query"));
        match label_values_selector(q) {
            Ok(Some(sel)) => out.push(Query {
                origin,
                raw: sel.clone(),
                expr: substitute_grafana_variables(&sel),
                is_target: false,
            }),
            Ok(None) => panic!("{origin}: label_values without a metric scans every series: {q}"),
            Err(e) => panic!("{origin}: {e}"),
        }
    }
    out
}

/// A rule of a rules file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: String,
    pub group: String,
    /// `alert` or `record` name.
    pub name: String,
    pub is_alert: bool,
    pub expr: String,
    pub value: Value,
}

pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = load_yaml(&path);
        let file = name(&path);
        let groups = doc["groups"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no groups"));
        for g in groups {
            let group = g["name"].as_str().expect("group name").to_owned();
            for r in g["rules"].as_array().into_iter().flatten() {
                let (name, is_alert) = match (r["alert"].as_str(), r["record"].as_str()) {
                    (Some(a), None) => (a, true),
                    (None, Some(r)) => (r, false),
                    _ => panic!("{file}: group {group}: a rule needs alert or record: {r}"),
                };
                out.push(Rule {
                    file: file.clone(),
                    group: group.clone(),
                    name: name.to_owned(),
                    is_alert,
                    expr: r["expr"].as_str().expect("expr").to_owned(),
                    value: r.clone(),
                });
            }
        }
    }
    out
}

pub fn rule_queries() -> Vec<Query> {
    rules()
        .into_iter()
        .map(|r| Query {
            origin: format!("{}: {} {}", r.file, r.group, r.name),
            raw: r.expr.clone(),
            expr: r.expr,
            is_target: false,
        })
        .collect()
}

/// Names of the recording rules: not exported by anything, Prometheus makes them.
pub fn recorded_names() -> BTreeSet<String> {
    rules()
        .into_iter()
        .filter(|r| !r.is_alert)
        .map(|r| r.name)
        .collect()
}

/// Replaces Grafana's variables (`$x`, `${x}`, `${x:format}`) with sample values: durations for
/// the interval and range variables, a label value for the dashboard's own variables (they only
/// appear inside label matchers). `[[x]]` is Grafana's deprecated syntax: left as is, so it
/// fails to parse.
pub fn substitute_grafana_variables(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    let inner = &braced[..end];
                    (inner.split(':').next().unwrap_or(""), end + 2)
                }
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" | "__range_m" => "5m",
            "__range_s" | "__range_ms" | "__interval_ms" => "300",
            _ => "sample",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The Grafana variables an expression uses (`$x`, `${x}`, `${x:fmt}`), builtins (`__...`) and
/// regex group references (`$1`) left out.
pub fn grafana_variables_used(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        let after = rest[i + 1..].trim_start_matches('{');
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..end];
        if !name.is_empty() && !name.starts_with("__") && !name.chars().all(|c| c.is_ascii_digit())
        {
            out.insert(name.to_owned());
        }
        rest = &rest[i + 1..];
    }
    out
}

pub fn parse(q: &Query) -> Expr {
    parser::parse(&q.expr)
        .unwrap_or_else(|e| panic!("{}: invalid PromQL: {e}\n  {}", q.origin, q.expr))
}

/// Calls `f(node, ancestors)` for every node of the expression, parents first.
pub fn walk<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Expr, &[&'a Expr])) {
    fn go<'a>(e: &'a Expr, stack: &mut Vec<&'a Expr>, f: &mut dyn FnMut(&'a Expr, &[&'a Expr])) {
        f(e, stack);
        stack.push(e);
        match e {
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    go(p, stack, f);
                }
                go(&a.expr, stack, f);
            }
            Expr::Unary(u) => go(&u.expr, stack, f),
            Expr::Binary(b) => {
                go(&b.lhs, stack, f);
                go(&b.rhs, stack, f);
            }
            Expr::Paren(p) => go(&p.expr, stack, f),
            Expr::Subquery(s) => go(&s.expr, stack, f),
            Expr::Call(c) => {
                for a in &c.args.args {
                    go(a, stack, f);
                }
            }
            Expr::MatrixSelector(_)
            | Expr::VectorSelector(_)
            | Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::Extension(_) => {}
        }
        stack.pop();
    }
    go(e, &mut Vec::new(), f)
}

/// The metric name a selector selects: its name, or an equality matcher on `__name__`. A
/// selector without one (or with a regex on `__name__`) names no metric that could be checked:
/// an error.
pub fn selector_name(vs: &promql_parser::parser::VectorSelector) -> Result<String, String> {
    if let Some(n) = &vs.name {
        return Ok(n.clone());
    }
    for m in &vs.matchers.matchers {
        if m.name == "__name__" {
            return match m.op {
                MatchOp::Equal => Ok(m.value.clone()),
                _ => Err(format!("__name__ {} {:?}", m.op, m.value)),
            };
        }
    }
    Err(format!(
        "selector without a metric name: {{{}}}",
        vs.matchers
    ))
}

/// Every metric name the expression selects.
pub fn metric_names(q: &Query) -> BTreeSet<String> {
    let expr = parse(q);
    let mut out = BTreeSet::new();
    walk(&expr, &mut |e, _| {
        let vs = match e {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return,
        };
        match selector_name(vs) {
            Ok(n) => {
                out.insert(n);
            }
            Err(err) => panic!("{}: {err}\n  {}", q.origin, q.expr),
        }
    });
    out
}

/// Metrics that Prometheus makes itself for every target: they are never on a `/metrics` page.
pub const SYNTHETIC: [&str; 1] = ["up"];

/// Every metric name the dashboards and rules reference and an exporter must serve, with where
/// each is used: recording rules (made by the rules themselves) and [`SYNTHETIC`] left out.
pub fn referenced_exported_names() -> BTreeMap<String, Vec<String>> {
    let recorded = recorded_names();
    let mut queries = rule_queries();
    for path in dashboard_files() {
        queries.extend(dashboard_queries(&path, &load_json(&path)));
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for q in &queries {
        for n in metric_names(q) {
            if !recorded.contains(&n) && !SYNTHETIC.contains(&n.as_str()) {
                out.entry(n).or_default().push(q.origin.clone());
            }
        }
    }
    out
}

/// Suffixes of the series of counters and classic histograms: meaningless as raw values.
const COUNTER_SUFFIXES: [&str; 4] = ["_total", "_count", "_sum", "_bucket"];

fn is_raw_counter(name: &str) -> bool {
    // Recording rules (`level:metric:operation`) are rates or ratios already.
    !name.contains(':') && COUNTER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The lint rules on counters (grafana dashboard-linter's, which the rules follow too): a
/// counter is only read through rate(), irate() or increase(), and those are aggregated with
/// `sum` (`sum by`, `sum without`, or a plain `sum`, which is `sum by ()`), possibly under other
/// functions and operators (`histogram_quantile(0.99, sum by (le) (rate(...)))`, `topk`, `/`).
pub fn counter_lint(q: &Query) -> Vec<String> {
    let expr = parse(q);
    let mut problems = Vec::new();
    walk(&expr, &mut |e, ancestors| {
        let is_rate = |a: &&Expr| matches!(a, Expr::Call(c) if matches!(c.func.name, "rate" | "irate" | "increase"));
        match e {
            Expr::VectorSelector(vs)
            | Expr::MatrixSelector(promql_parser::parser::MatrixSelector { vs, .. }) => {
                if let Ok(n) = selector_name(vs)
                    && is_raw_counter(&n)
                    && !ancestors.iter().any(is_rate)
                {
                    problems.push(format!(
                        "counter {n} is not read through rate(), irate() or increase()"
                    ));
                }
            }
            Expr::Call(c) if is_rate(&e) => {
                let summed = ancestors
                    .iter()
                    .any(|a| matches!(a, Expr::Aggregate(agg) if agg.op.to_string() == "sum"));
                if !summed {
                    problems.push(format!(
                        "{}() is not aggregated with sum by / sum without",
                        c.func.name
                    ));
                }
            }
            _ => {}
        }
    });
    problems
}

/// The range selectors (`[...]`) of an expression as written, outside quoted strings (where
/// `[45]..` is a regex).
pub fn ranges(raw: &str) -> Vec<String> {
    let (mut out, mut quote, mut escaped, mut start) = (Vec::new(), None, false, None);
    for (i, c) in raw.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '[' => start = Some(i + 1),
                ']' => {
                    if let Some(s) = start.take() {
                        out.push(raw[s..i].to_owned());
                    }
                }
                _ => {}
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_are_replaced() {
        assert_eq!(
            substitute_grafana_variables(
                r#"sum by (x) (rate(a{t=~"$tenant", n=~"${node:regex}"}[$__rate_interval])) / $__range_s"#
            ),
            r#"sum by (x) (rate(a{t=~"sample", n=~"sample"}[5m])) / 300"#
        );
        assert_eq!(
            substitute_grafana_variables("a{x=\"$1\"}"),
            "a{x=\"sample\"}"
        );
        assert_eq!(
            grafana_variables_used(r#"a{t=~"$tenant", n=~"${node:regex}", r="$1"}[$__interval]"#),
            BTreeSet::from(["node".to_owned(), "tenant".to_owned()])
        );
    }

    #[test]
    fn label_values_selectors() {
        assert_eq!(
            label_values_selector(r#"label_values(a{x=~"$y", z="1,2"}, tenant)"#).unwrap(),
            Some(r#"a{x=~"$y", z="1,2"}"#.to_owned())
        );
        assert_eq!(label_values_selector("label_values(tenant)").unwrap(), None);
        assert!(label_values_selector("query_result(a)").is_err());
    }

    fn q(e: &str) -> Query {
        Query {
            origin: "t".into(),
            raw: e.into(),
            expr: e.into(),
            is_target: true,
        }
    }

    #[test]
    fn counter_lint_rules() {
        assert!(
            counter_lint(&q(
                "histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m])))"
            ))
            .is_empty()
        );
        assert!(
            counter_lint(&q(
                "topk(3, sum without (x) (increase(a_total[5m])) / sum(rate(b_count[5m])))"
            ))
            .is_empty()
        );
        assert!(counter_lint(&q("x:y_total:rate5m / 2")).is_empty());
        assert_eq!(counter_lint(&q("a_total")).len(), 1);
        assert_eq!(counter_lint(&q("max by (x) (rate(a_total[5m]))")).len(), 1);
        assert_eq!(counter_lint(&q("rate(a_total[5m])")).len(), 1);
    }

    #[test]
    fn range_selectors_outside_strings() {
        assert_eq!(
            ranges(r#"rate(a{c=~"[45].."}[$__rate_interval]) + b[5m:1m]"#),
            vec!["$__rate_interval".to_owned(), "5m:1m".to_owned()]
        );
    }

    #[test]
    fn names_of_selectors() {
        assert_eq!(
            metric_names(&q(
                r#"sum(rate(a_total[5m])) / on (x) group_left b or {__name__="d", y="1"}"#
            )),
            BTreeSet::from(["a_total".into(), "b".into(), "d".into()])
        );
    }
}
