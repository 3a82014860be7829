//! deploy/ and docker/: the Kubernetes manifests and the Dockerfiles.
//!
//! For deploy/base and every overlay under deploy/overlays: `kubectl kustomize` builds it,
//! `kubernetes-validate --strict` accepts every object against the oldest and the newest
//! Kubernetes schemas it ships, checkov (`--framework kubernetes`) fails nothing that is not
//! skipped with a reason, the properties the agent and the collector depend on hold (least
//! privilege, host paths, downward API, tokens, scrape targets, scale-out), and the shipped TOML
//! files load in the real binaries. checkov also checks docker/*.Dockerfile
//! (`--framework dockerfile`); nothing can build them here (no Docker engine).
//!
//! kubernetes-validate, checkov and PyYAML (to read the rendered YAML) come from the venv that
//! `cargo xtask setup` creates (`~/.cache/tenantscope/pydeploy`), kubectl from the machine.
//! Without them the tests print SKIP, unless TENANTSCOPE_REQUIRE_PRIVILEGED=1 (`cargo xtask
//! test`), where that is a failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

/// The Kubernetes versions validated against: the oldest and the newest schema set that
/// kubernetes-validate 1.37 bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25", "1.37"];

/// The only kinds without a schema in kubernetes-validate that the manifests may use: the
/// Prometheus Operator's. See [`validate_strict`] for how they are checked instead.
const CRD_KINDS: [(&str, &str); 3] = [
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    // Its rules are checked by promtool in tests/tests/rules.rs, which also keeps it equal to
    // deploy/prometheus/rules/.
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

/// The agent's capabilities: exactly these, every other one dropped (deploy/README.md says why).
const AGENT_CAPABILITIES: [&str; 4] = ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"];

/// Host paths the agent mounts, at the same path in the container, and whether read-only.
const AGENT_HOST_PATHS: [(&str, bool); 4] = [
    ("/sys/kernel/tracing", true),
    ("/sys/kernel/btf", true),
    ("/sys/fs/bpf", true),
    ("/sys/fs/cgroup", true),
];

const NAMESPACE: &str = "tenantscope";
const AGENT: &str = "tenantscope-agent";
const COLLECTOR: &str = "tenantscope-collector";
const TOKENS_SECRET: &str = "tenantscope-tokens";

/// The checkout this run is in, read at run time: a shared CARGO_TARGET_DIR reuses test binaries
/// across clones, and a compile-time path would name the clone they were built in.
fn workspace() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn require_tools() -> bool {
    std::env::var("TENANTSCOPE_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

/// Prints SKIP (or fails under TENANTSCOPE_REQUIRE_PRIVILEGED=1) and returns None.
fn skip<T>(test: &str, reason: &str) -> Option<T> {
    if require_tools() {
        panic!("{test}: {reason}, and TENANTSCOPE_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}");
    None
}

/// The external programs, found the way `cargo xtask setup` installs them.
struct Tools {
    /// The venv's bin directory: kubernetes-validate, checkov, python (with PyYAML).
    venv: PathBuf,
}

impl Tools {
    fn find(test: &str) -> Option<Tools> {
        let home = std::env::var_os("HOME").expect("HOME");
        let venv = PathBuf::from(home).join(".cache/tenantscope/pydeploy/bin");
        let mut missing: Vec<String> = ["kubernetes-validate", "checkov", "python"]
            .iter()
            .filter(|tool| !venv.join(tool).is_file())
            .map(|tool| venv.join(tool).display().to_string())
            .collect();
        if !quiet(Command::new("kubectl").args(["kustomize", "--help"]))
            .is_some_and(|o| o.status.success())
        {
            missing.push("`kubectl kustomize`".to_owned());
        }
        if missing.is_empty() {
            return Some(Tools { venv });
        }
        skip(
            test,
            &format!("{} missing: run `cargo xtask setup`", missing.join(", ")),
        )
    }

    fn venv(&self, tool: &str) -> Command {
        Command::new(self.venv.join(tool))
    }
}

/// Runs `cmd` with no stdin and captured output; None if it cannot start.
fn quiet(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// One kustomization, built.
struct Rendered {
    /// `base`, or the overlay's directory name.
    name: String,
    /// The YAML `kubectl kustomize` printed, also written to `file`.
    yaml: String,
    file: PathBuf,
    objects: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.try_get(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }

    fn try_get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The TOML file `key` of the ConfigMap that `volume` of `workload`'s pod mounts.
    fn mounted_config(&self, workload: &Value, volume: &str, key: &str) -> String {
        let name = volumes(workload)
            .into_iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap_or_else(|| panic!("{}: no configMap volume {volume}", self.name));
        let cm = self.get("ConfigMap", name);
        str_at(cm, &format!("/data/{key}")).to_owned()
    }
}

/// deploy/base and every deploy/overlays/* with a kustomization.
fn kustomizations() -> Vec<(String, PathBuf)> {
    let deploy = workspace().join("deploy");
    let mut dirs = vec![("base".to_owned(), deploy.join("base"))];
    let mut overlays: Vec<(String, PathBuf)> = std::fs::read_dir(deploy.join("overlays"))
        .expect("deploy/overlays")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs
}

/// Builds every kustomization into a scratch directory and reads the objects back.
fn render_all(tools: &Tools, scratch: &Path) -> Vec<Rendered> {
    kustomizations()
        .into_iter()
        .map(|(name, dir)| render(tools, scratch, name, &dir))
        .collect()
}

fn render(tools: &Tools, scratch: &Path, name: String, dir: &Path) -> Rendered {
    let out = run(Command::new("kubectl").arg("kustomize").arg(dir));
    if !out.status.success() {
        // The usual cause on a machine with Debian's kubectl 1.20: its kustomize v2.0.3 builds
        // deploy/base but not the overlays (resources pointing at directories, `patches`).
        let version = quiet(Command::new("kubectl").args(["version", "--client"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "kubectl kustomize {} failed: {}\n(kubectl version --client: {}; the overlays need \
             kustomize v4 or later)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr),
            version.trim()
        );
    }
    let yaml = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    let file = scratch.join(format!("{name}.yaml"));
    std::fs::write(&file, &yaml).expect("write rendered YAML");
    Rendered {
        objects: yaml_to_json(tools, &yaml),
        name,
        yaml,
        file,
    }
}

/// Reads multi-document YAML with the venv's PyYAML (a kubernetes-validate dependency): the test
/// crate has serde_json but no YAML parser.
fn yaml_to_json(tools: &Tools, yaml: &str) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
    let mut child = tools
        .venv("python")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .expect("write YAML to python");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "YAML -> JSON: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(objects) => objects,
        other => panic!("expected a list of objects, got {other}"),
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tenantscope-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {}", name_of(v)))
}

fn name_of(v: &Value) -> String {
    format!("{} {}", v["kind"], v["metadata"]["name"])
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{}: no container {name}", name_of(workload)))
}

fn volumes(workload: &Value) -> Vec<&Value> {
    pod_spec(workload)["volumes"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

fn list<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `key` in `[section]` of a TOML file (strings unquoted). Enough for the flat
/// files shipped here; the binaries' own check-config does the real parsing
/// ([`shipped_configs_load_in_the_real_binaries`]).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            let v = v.split(" #").next().unwrap().trim();
            return Some(v.trim_matches('"').to_owned());
        }
    }
    None
}

/// Every value of `key`, in any table (e.g. each `[[auth.tokens]]`'s `token_file`).
fn toml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .collect()
}

/// Whether `selector` (matchLabels only, which is all the manifests use) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"]
        .as_object()
        .expect("selector.matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

/// kubernetes-validate in strict mode (unknown fields are errors) against
/// [`KUBERNETES_VERSIONS`].
///
/// kubernetes-validate only knows the built-in kinds. For any other kind it prints `WARN ...
/// Couldn't find schema for kind ...` and still exits 0: it has no option that turns a missing
/// schema into an error, nor one that loads a CRD's schema (`--no-warn` only hides the warning).
/// So its output is read line by line: every object must pass, and the only objects allowed to
/// lack a schema are the Prometheus Operator kinds of [`CRD_KINDS`], which [`check_monitors`]
/// checks instead (their fields against the monitoring.coreos.com/v1 CRDs, and that they point
/// at real labels and ports).
fn validate_strict(tools: &Tools, r: &Rendered) {
    let mut cmd = tools.venv("kubernetes-validate");
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["-k", v]);
    }
    let out = run(cmd.arg(&r.file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut passed = 0;
    let mut without_schema = 0;
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else if let Some(rest) = line
            .strip_prefix("WARN ")
            .and_then(|l| l.split_once("Couldn't find schema for kind "))
            .map(|(_, rest)| rest)
        {
            let allowed = CRD_KINDS
                .iter()
                .any(|(api, kind)| rest.starts_with(&format!("{kind} with api version {api} ")));
            assert!(
                allowed,
                "{}: no schema for {rest}: only the Prometheus Operator kinds may lack one",
                r.name
            );
            without_schema += 1;
        } else {
            panic!("{}: kubernetes-validate --strict: {line}", r.name);
        }
    }
    assert!(
        out.status.success(),
        "{}: kubernetes-validate failed:\n{stdout}{}",
        r.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let crds = r
        .objects
        .iter()
        .filter(|o| {
            CRD_KINDS
                .iter()
                .any(|(api, kind)| o["apiVersion"] == *api && o["kind"] == *kind)
        })
        .count();
    let versions = KUBERNETES_VERSIONS.len();
    assert_eq!(
        without_schema,
        crds * versions,
        "{}: objects without schema",
        r.name
    );
    assert_eq!(
        passed,
        (r.objects.len() - crds) * versions,
        "{}: objects validated",
        r.name
    );
    println!(
        "kubernetes-validate {}: {} objects passed against {KUBERNETES_VERSIONS:?}, {crds} \
         Prometheus Operator objects checked separately",
        r.name,
        r.objects.len() - crds
    );
}

/// Fields the PodMonitor/ServiceMonitor may use: a subset of the monitoring.coreos.com/v1 CRDs
/// (prometheus-operator), so that a typo, which kubernetes-validate cannot see here, fails.
fn check_fields(what: &str, v: &Value, allowed: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object"));
    for key in obj.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{what}: field {key:?} is not one of {allowed:?} (monitoring.coreos.com/v1)"
        );
    }
}

const ENDPOINT_FIELDS: &[&str] = &[
    "port",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "honorLabels",
    "relabelings",
    "metricRelabelings",
];
const RELABEL_FIELDS: &[&str] = &[
    "sourceLabels",
    "separator",
    "targetLabel",
    "regex",
    "modulus",
    "replacement",
    "action",
];
const METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];

fn check_endpoint(what: &str, endpoint: &Value, port_names: &BTreeSet<String>) {
    check_fields(what, endpoint, ENDPOINT_FIELDS);
    let port = str_at(endpoint, "/port");
    assert!(
        port_names.contains(port),
        "{what}: port {port:?} is not one of {port_names:?}"
    );
    assert_eq!(str_at(endpoint, "/path"), "/metrics", "{what}: path");
    for relabel in list(endpoint, "relabelings") {
        check_fields(&format!("{what} relabeling"), relabel, RELABEL_FIELDS);
    }
}

/// The PodMonitor scrapes the agent pods' metrics port, the ServiceMonitor the collector
/// Service's; both are well-formed for the CRDs (see [`validate_strict`]).
fn check_monitors(r: &Rendered) {
    let agents = r.get("DaemonSet", AGENT);
    let pm = r.get("PodMonitor", AGENT);
    check_fields("PodMonitor", &pm["metadata"], METADATA_FIELDS);
    check_fields(
        "PodMonitor spec",
        &pm["spec"],
        &[
            "selector",
            "namespaceSelector",
            "podMetricsEndpoints",
            "jobLabel",
            "podTargetLabels",
        ],
    );
    assert!(
        selects(
            &pm["spec"]["selector"],
            &agents["spec"]["template"]["metadata"]["labels"]
        ),
        "{}: the PodMonitor does not select the agent pods",
        r.name
    );
    let agent_ports: BTreeSet<String> = list(container(agents, "agent"), "ports")
        .iter()
        .map(|p| str_at(p, "/name").to_owned())
        .collect();
    let endpoints = list(&pm["spec"], "podMetricsEndpoints");
    assert!(!endpoints.is_empty(), "{}: PodMonitor endpoints", r.name);
    for e in &endpoints {
        check_endpoint("PodMonitor endpoint", e, &agent_ports);
    }
    // The rules and dashboards (deploy/prometheus/, dashboards/) select job
    // `(.+/)?tenantscope-agent` and filter on `node`.
    let job_label = str_at(pm, "/spec/jobLabel");
    assert_eq!(
        agents["spec"]["template"]["metadata"]["labels"][job_label], AGENT,
        "{}: the agent's job is {AGENT}",
        r.name
    );
    assert!(
        endpoints.iter().all(|e| list(e, "relabelings")
            .iter()
            .any(|rl| rl["targetLabel"] == "node"
                && strings(&rl["sourceLabels"]).contains("__meta_kubernetes_pod_node_name"))),
        "{}: the agent's series carry `node`",
        r.name
    );

    let sm = r.get("ServiceMonitor", COLLECTOR);
    check_fields("ServiceMonitor", &sm["metadata"], METADATA_FIELDS);
    check_fields(
        "ServiceMonitor spec",
        &sm["spec"],
        &[
            "selector",
            "namespaceSelector",
            "endpoints",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
        ],
    );
    // No jobLabel: the job is the Service's name, tenantscope-collector, as the rules expect.
    assert!(
        sm["spec"].get("jobLabel").is_none(),
        "{}: ServiceMonitor jobLabel",
        r.name
    );
    let service = r.get("Service", COLLECTOR);
    assert!(
        selects(&sm["spec"]["selector"], &service["metadata"]["labels"]),
        "{}: the ServiceMonitor does not select the collector Service",
        r.name
    );
    let service_ports: BTreeSet<String> = list(&service["spec"], "ports")
        .iter()
        .map(|p| str_at(p, "/name").to_owned())
        .collect();
    let endpoints = list(&sm["spec"], "endpoints");
    assert!(
        !endpoints.is_empty(),
        "{}: ServiceMonitor endpoints",
        r.name
    );
    for e in endpoints {
        check_endpoint("ServiceMonitor endpoint", e, &service_ports);
    }
    // Other Services that the ServiceMonitor also selects must not offer its port (no double
    // scrape through the StatefulSet's headless Service).
    for other in r.all("Service") {
        if other["metadata"]["name"] != COLLECTOR
            && selects(&sm["spec"]["selector"], &other["metadata"]["labels"])
        {
            assert!(
                list(&other["spec"], "ports").is_empty(),
                "{}: {} is selected by the ServiceMonitor too and would be scraped twice",
                r.name,
                name_of(other)
            );
        }
    }
}

/// One checkov report (a framework's results), as `-o json` prints it.
fn checkov(tools: &Tools, framework: &str, files: &[&Path]) -> Vec<Value> {
    let mut cmd = tools.venv("checkov");
    // --skip-download: no Prisma Cloud lookups (there is no network, and nothing is needed).
    cmd.args([
        "--framework",
        framework,
        "--skip-download",
        "-o",
        "json",
        "-f",
    ])
    .args(files);
    let out = run(&mut cmd);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov {framework} {files:?}: no JSON ({e}), exit {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // One framework prints an object, several a list.
    match json {
        Value::Array(reports) => reports,
        report => vec![report],
    }
}

/// No failed check, no parsing error, and every skip with its reason; prints what was skipped.
fn assert_checkov_clean(what: &str, reports: &[Value], expected_resources: usize) {
    let mut resources = 0;
    for report in reports {
        let summary = &report["summary"];
        resources += summary["resource_count"].as_u64().unwrap_or(0) as usize;
        let failed: Vec<String> = list(&report["results"], "failed_checks")
            .iter()
            .map(|c| {
                format!(
                    "{} {} on {} ({})",
                    str_at(c, "/check_id"),
                    str_at(c, "/check_name"),
                    str_at(c, "/resource"),
                    str_at(c, "/file_path")
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "checkov {what}: failed checks (fix them, or skip one with its reason: a \
             checkov.io/skipN annotation in the manifest or a `# checkov:skip=ID:reason` line in \
             the Dockerfile):\n  {}",
            failed.join("\n  ")
        );
        assert_eq!(
            summary["parsing_errors"], 0,
            "checkov {what}: parsing errors: {}",
            report["results"]["parsing_errors"]
        );
        let skipped = list(&report["results"], "skipped_checks");
        for c in &skipped {
            let reason = c["check_result"]["suppress_comment"].as_str().unwrap_or("");
            // checkov's placeholder for a skip without a reason is "No comment provided".
            assert!(
                reason.len() >= 20 && reason != "No comment provided",
                "checkov {what}: {} on {} is skipped without a reason ({reason:?})",
                str_at(c, "/check_id"),
                str_at(c, "/resource")
            );
        }
        println!(
            "checkov {what} ({}): {} passed, 0 failed, {} skipped",
            report["check_type"].as_str().unwrap_or("?"),
            summary["passed"],
            skipped.len()
        );
        for c in &skipped {
            println!(
                "  skipped {} on {}: {}",
                str_at(c, "/check_id"),
                str_at(c, "/resource"),
                c["check_result"]["suppress_comment"].as_str().unwrap_or("")
            );
        }
    }
    // checkov counts a workload's containers as resources of their own, so at least one
    // resource per object.
    assert!(
        resources >= expected_resources,
        "checkov {what}: {resources} resources scanned for {expected_resources} objects"
    );
}

#[test]
fn manifests_validate_in_strict_mode() {
    let Some(tools) = Tools::find("manifests_validate_in_strict_mode") else {
        return;
    };
    let scratch = Scratch::new("deploy-validate");
    let rendered = render_all(&tools, &scratch.0);
    assert!(
        rendered.iter().any(|r| r.name == "privileged")
            && rendered.iter().any(|r| r.name == "production"),
        "the privileged and production overlays exist"
    );
    for r in &rendered {
        validate_strict(&tools, r);
        check_monitors(r);
    }
}

#[test]
fn checkov_passes_manifests_and_dockerfiles() {
    let Some(tools) = Tools::find("checkov_passes_manifests_and_dockerfiles") else {
        return;
    };
    let scratch = Scratch::new("deploy-checkov");
    // One run per kustomization: checkov's graph checks relate resources by name, and the
    // overlays' objects share their names.
    for r in render_all(&tools, &scratch.0) {
        let reports = checkov(&tools, "kubernetes", &[&r.file]);
        assert_checkov_clean(&r.name, &reports, r.objects.len());
    }
    let docker = workspace().join("docker");
    let dockerfiles: Vec<PathBuf> = ["agent.Dockerfile", "collector.Dockerfile"]
        .iter()
        .map(|f| docker.join(f))
        .collect();
    let files: Vec<&Path> = dockerfiles.iter().map(PathBuf::as_path).collect();
    let reports = checkov(&tools, "dockerfile", &files);
    assert_checkov_clean("docker/*.Dockerfile", &reports, dockerfiles.len());
}

/// The workspace version (Cargo.toml `[workspace.package]`): the images' tag.
fn workspace_version() -> String {
    let text = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    toml_value(&text, "workspace.package", "version").expect("workspace.package.version")
}

/// What every kustomization shares: namespace, images, RBAC, the agent's least privilege (unless
/// privileged), its host paths, environment, probes and config, the collector's hardening,
/// Service, tokens and store.
fn check_common(r: &Rendered, agent_privileged: bool) {
    let what = &r.name;
    // Namespace: everything namespaced lives in it.
    r.get("Namespace", NAMESPACE);
    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap();
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert_eq!(
                o["metadata"]["namespace"],
                NAMESPACE,
                "{what}: {} namespace",
                name_of(o)
            );
        }
    }

    // Images: our registry path, a release tag (the workspace version), never `latest`.
    let version = workspace_version();
    for workload in r.all("DaemonSet").into_iter().chain(r.all("StatefulSet")) {
        for c in list(pod_spec(workload), "containers") {
            let image = str_at(c, "/image");
            let (repo, tag) = image.rsplit_once(':').unwrap_or((image, ""));
            let workload_name = str_at(workload, "/metadata/name");
            assert!(
                repo.ends_with(&format!("/{workload_name}")),
                "{what}: {} image {image} is <registry>/.../{workload_name}:<tag>",
                name_of(workload)
            );
            assert_eq!(tag, version, "{what}: {} image tag", name_of(workload));
        }
    }

    // RBAC: the agent reads pods, nothing else; bound to its own service account.
    let role = r.get("ClusterRole", AGENT);
    let rules = list(role, "rules");
    assert_eq!(rules.len(), 1, "{what}: ClusterRole rules");
    assert_eq!(
        strings(&rules[0]["apiGroups"]),
        BTreeSet::from([String::new()])
    );
    assert_eq!(
        strings(&rules[0]["resources"]),
        BTreeSet::from(["pods".to_owned()])
    );
    assert_eq!(
        strings(&rules[0]["verbs"]),
        BTreeSet::from(["get", "list", "watch"].map(str::to_owned))
    );
    let binding = r.get("ClusterRoleBinding", AGENT);
    assert_eq!(binding["roleRef"]["name"], AGENT);
    let subjects = list(binding, "subjects");
    assert_eq!(subjects.len(), 1, "{what}: binding subjects");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], AGENT);
    assert_eq!(subjects[0]["namespace"], NAMESPACE);

    check_agent(r, agent_privileged);
    check_collector(r);
}

fn check_agent(r: &Rendered, privileged: bool) {
    let what = &r.name;
    let ds = r.get("DaemonSet", AGENT);
    let spec = pod_spec(ds);
    assert_eq!(spec["hostPID"], true, "{what}: hostPID");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["serviceAccountName"], AGENT);
    assert_eq!(spec["automountServiceAccountToken"], true);
    assert_eq!(
        r.get("ServiceAccount", AGENT)["automountServiceAccountToken"],
        true
    );
    assert!(
        list(spec, "tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "{what}: a toleration with operator Exists and no key tolerates every taint"
    );
    assert!(
        spec.get("hostNetwork").is_none_or(|v| v == false),
        "{what}: hostNetwork"
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert!(
        !ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_null(),
        "{what}: rollingUpdate.maxUnavailable"
    );
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: agent seccomp"
    );

    let agent = container(ds, "agent");
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], privileged, "{what}: agent privileged");
    // Kubernetes rejects allowPrivilegeEscalation: false together with privileged: true.
    assert_eq!(
        sc["allowPrivilegeEscalation"], privileged,
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()]),
        "{what}: capabilities.drop"
    );
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut sorted = added.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, AGENT_CAPABILITIES,
        "{what}: capabilities.add (exactly)"
    );

    // Host paths: exactly these, mounted at the same path, read-only where the agent only reads.
    let host_volumes: BTreeMap<&str, &str> = volumes(ds)
        .into_iter()
        .filter_map(|v| Some((str_at(v, "/name"), v["hostPath"]["path"].as_str()?)))
        .collect();
    let mut paths: Vec<&str> = host_volumes.values().copied().collect();
    paths.sort_unstable();
    let mut wanted: Vec<&str> = AGENT_HOST_PATHS.iter().map(|(p, _)| *p).collect();
    wanted.sort_unstable();
    assert_eq!(paths, wanted, "{what}: agent host paths");
    let mounts = list(agent, "volumeMounts");
    for (path, read_only) in AGENT_HOST_PATHS {
        let volume = host_volumes
            .iter()
            .find(|(_, p)| **p == path)
            .map(|(name, _)| *name)
            .unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{what}: {path} is not mounted"));
        assert_eq!(mount["mountPath"], path, "{what}: {path} mount point");
        assert_eq!(
            mount["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{what}: {path} readOnly"
        );
    }
    // The agent reads /proc itself (no proc-root option); with hostPID that lists the host's
    // processes. Nothing may shadow it with a host mount.
    assert!(
        !mounts
            .iter()
            .any(|m| str_at(m, "/mountPath").starts_with("/proc")),
        "{what}: nothing is mounted over /proc"
    );

    // Environment: the downward API, and the collector token through the OTLP headers variable.
    let env = list(agent, "env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
            .unwrap_or_else(|| panic!("{what}: env {name} from the downward API"))
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
    // No secret in the environment: the collector token is a file, the key agent-token of the
    // Secret, mounted where otlp.token_file names it.
    assert!(
        env.iter()
            .all(|e| e["valueFrom"].get("secretKeyRef").is_none()),
        "{what}: a secret in the agent's environment"
    );
    let config = r.mounted_config(ds, "config", "agent.toml");
    let token_file = toml_value(&config, "otlp", "token_file").expect("otlp.token_file");
    let (dir, file) = token_file.rsplit_once('/').expect("a path");
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir} for otlp.token_file"));
    assert_eq!(
        mount["readOnly"], true,
        "{what}: the token mount is read-only"
    );
    let volume = volumes(ds)
        .into_iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the token volume");
    assert_eq!(
        volume["secret"]["secretName"], TOKENS_SECRET,
        "{what}: the token comes from Secret {TOKENS_SECRET}"
    );
    let items = volume["secret"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: only the agent's key is mounted"));
    assert_eq!(
        items.len(),
        1,
        "{what}: the admin token never reaches the nodes"
    );
    assert_eq!(
        (items[0]["key"].as_str(), items[0]["path"].as_str()),
        (Some("agent-token"), Some(file)),
        "{what}: otlp.token_file is the Secret's agent-token"
    );

    // Probes and the metrics port agree with the agent's config.
    let config = r.mounted_config(ds, "config", "agent.toml");
    let listen = toml_value(&config, "server", "listen").expect("server.listen");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{what}: the agent listens on the pod IP"
    );
    let metrics = list(agent, "ports")
        .into_iter()
        .find(|p| p["name"] == "metrics")
        .unwrap_or_else(|| panic!("{what}: agent port metrics"));
    assert_eq!(
        metrics["containerPort"], port,
        "{what}: metrics port = server.listen"
    );
    check_probes(what, agent);
    check_resources(what, agent);
    check_scrape_annotations(what, ds, port);
    // The args point at the mounted file.
    let args = strings(&agent["args"]);
    assert!(
        args.contains("/etc/tenantscope/agent.toml"),
        "{what}: --config"
    );

    // OTLP goes to the collector Service's gRPC port.
    assert_eq!(
        toml_value(&config, "otlp", "endpoint").as_deref(),
        Some("http://tenantscope-collector:4317"),
        "{what}: otlp.endpoint"
    );
    assert_eq!(
        toml_value(&config, "otlp", "protocol").as_deref(),
        Some("grpc")
    );

    // NetworkPolicy: ingress to the metrics port only.
    let np = r.get("NetworkPolicy", AGENT);
    assert!(selects(
        &np["spec"]["podSelector"],
        &ds["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        strings(&np["spec"]["policyTypes"]),
        BTreeSet::from(["Ingress".to_owned()])
    );
    let ports: BTreeSet<u64> = list(&np["spec"], "ingress")
        .iter()
        .flat_map(|rule| list(rule, "ports"))
        .map(|p| p["port"].as_u64().expect("numeric port"))
        .collect();
    assert_eq!(ports, BTreeSet::from([port]), "{what}: agent ingress ports");
}

fn check_probes(what: &str, c: &Value) {
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            c[probe]["httpGet"]["path"], path,
            "{what}: {} {probe}",
            c["name"]
        );
        assert_eq!(
            c[probe]["httpGet"]["port"], "metrics",
            "{what}: {probe} port"
        );
    }
}

fn check_resources(what: &str, c: &Value) {
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][bound][resource].is_string(),
                "{what}: {} resources.{bound}.{resource}",
                c["name"]
            );
        }
    }
}

fn check_scrape_annotations(what: &str, workload: &Value, port: u64) {
    let a = &workload["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        a["prometheus.io/scrape"],
        "true",
        "{what}: {}",
        name_of(workload)
    );
    assert_eq!(
        a["prometheus.io/port"],
        port.to_string(),
        "{what}: prometheus.io/port"
    );
    assert_eq!(
        a["prometheus.io/path"], "/metrics",
        "{what}: prometheus.io/path"
    );
}

/// The value a test gives `secretKeyRef` env entries.
fn fake_secret(secret: &str, key: &str) -> String {
    format!("test-{secret}-{key}")
}

/// The container's environment as the kubelet resolves it: downward API fields get test values,
/// secrets [`fake_secret`], and `$(NAME)` expands only names defined earlier in the list (the
/// kubelet leaves later or unknown ones as they are).
fn resolve_env(env: &[&Value]) -> BTreeMap<String, String> {
    let mut resolved: BTreeMap<String, String> = BTreeMap::new();
    for e in env {
        let name = str_at(e, "/name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_owned();
            for (k, val) in &resolved {
                v = v.replace(&format!("$({k})"), val);
            }
            assert!(
                !v.contains("$("),
                "env {name}: {v} refers to a variable not defined before it"
            );
            v
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            format!("test-{path}")
        } else if let Some(s) = e["valueFrom"].get("secretKeyRef") {
            fake_secret(str_at(s, "/name"), str_at(s, "/key"))
        } else {
            panic!("env {name}: unexpected source {e}");
        };
        resolved.insert(name, value);
    }
    resolved
}

fn check_collector(r: &Rendered) {
    let what = &r.name;
    let sts = r.get("StatefulSet", COLLECTOR);
    let spec = pod_spec(sts);
    assert_eq!(
        spec["automountServiceAccountToken"], false,
        "{what}: collector SA token"
    );
    assert_eq!(
        r.get("ServiceAccount", COLLECTOR)["automountServiceAccountToken"],
        false
    );
    let pod_sc = &spec["securityContext"];
    assert_eq!(
        pod_sc["runAsNonRoot"], true,
        "{what}: collector runAsNonRoot"
    );
    assert!(
        pod_sc["runAsUser"].as_u64().unwrap_or(0) > 0,
        "{what}: collector uid"
    );
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    let c = container(sts, "collector");
    let sc = &c["securityContext"];
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{what}: collector root fs"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    assert!(
        sc["capabilities"].get("add").is_none(),
        "{what}: collector adds no capability"
    );
    check_probes(what, c);
    check_resources(what, c);

    let config = r.mounted_config(sts, "config", "collector.toml");
    assert!(
        strings(&c["args"]).contains("/etc/tenantscope/collector.toml"),
        "{what}: --config"
    );
    let mounts = list(c, "volumeMounts");
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .map(|m| str_at(m, "/mountPath"))
            .unwrap_or_else(|| panic!("{what}: collector mount {volume}"))
    };

    // Listeners = container ports = Service ports; the API port carries metrics and probes.
    let service = r.get("Service", COLLECTOR);
    let container_ports: BTreeMap<&str, u64> = list(c, "ports")
        .iter()
        .map(|p| (str_at(p, "/name"), p["containerPort"].as_u64().unwrap()))
        .collect();
    for (key, name, port) in [
        ("otlp_grpc", "otlp-grpc", 4317),
        ("otlp_http", "otlp-http", 4318),
        ("api", "metrics", 9465),
    ] {
        assert_eq!(
            toml_value(&config, "server", key),
            Some(format!("0.0.0.0:{port}")),
            "{what}: server.{key}"
        );
        assert_eq!(
            container_ports.get(name),
            Some(&port),
            "{what}: container port {name}"
        );
        let sp = list(&service["spec"], "ports")
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{what}: Service port {name}"));
        assert_eq!(sp["port"], port, "{what}: Service port {name}");
        assert_eq!(sp["targetPort"], name, "{what}: Service targetPort {name}");
    }
    assert!(selects(
        &json_selector(&service["spec"]["selector"]),
        &sts["spec"]["template"]["metadata"]["labels"]
    ));
    check_scrape_annotations(what, sts, 9465);

    // Tokens: every token_file is a key of the token Secret, mounted where the config says.
    assert_eq!(
        toml_value(&config, "auth", "allow_unauthenticated").as_deref(),
        Some("false")
    );
    let token_files = toml_values(&config, "token_file");
    assert!(
        !token_files.is_empty(),
        "{what}: auth.tokens with token_file"
    );
    let secret_volume = volumes(sts)
        .into_iter()
        .find(|v| v["secret"]["secretName"] == TOKENS_SECRET)
        .unwrap_or_else(|| panic!("{what}: the collector mounts Secret {TOKENS_SECRET}"));
    let token_dir = mount_of(str_at(secret_volume, "/name"));
    for file in &token_files {
        let key = file
            .strip_prefix(token_dir)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{what}: token_file {file} is not under {token_dir}"));
        if let Some(secret) = r.try_get("Secret", TOKENS_SECRET) {
            assert!(
                secret["stringData"].get(key).is_some() || secret["data"].get(key).is_some(),
                "{what}: Secret {TOKENS_SECRET} has no key {key}"
            );
        }
    }
    // The agent's token is one the collector accepts as role "agent".
    assert!(
        token_files.iter().any(|f| f.ends_with("/agent-token")),
        "{what}: the collector knows the agent token"
    );

    // Store: storage.path is on the StatefulSet's volume.
    let store = toml_value(&config, "storage", "path").expect("storage.path");
    let data_dir = mount_of("data");
    assert!(
        store.starts_with(&format!("{data_dir}/")),
        "{what}: {store} on the data volume"
    );
    assert!(
        list(&sts["spec"], "volumeClaimTemplates")
            .iter()
            .any(|t| t["metadata"]["name"] == "data"),
        "{what}: a volume claim per replica for the store"
    );

    // NetworkPolicy: OTLP from the agents only, metrics/API from the monitoring namespace only.
    let np = r.get("NetworkPolicy", COLLECTOR);
    assert!(selects(
        &np["spec"]["podSelector"],
        &sts["spec"]["template"]["metadata"]["labels"]
    ));
    let agent_labels = &r.get("DaemonSet", AGENT)["spec"]["template"]["metadata"]["labels"];
    let mut otlp = BTreeSet::new();
    let mut monitoring = BTreeSet::new();
    for rule in list(&np["spec"], "ingress") {
        let ports: BTreeSet<u64> = list(rule, "ports")
            .iter()
            .map(|p| p["port"].as_u64().expect("numeric port"))
            .collect();
        for from in list(rule, "from") {
            if let Some(pods) = from.get("podSelector") {
                assert!(from.get("namespaceSelector").is_none());
                assert!(
                    selects(pods, agent_labels),
                    "{what}: OTLP only from the agents"
                );
                otlp.extend(ports.iter().copied());
            } else if let Some(ns) = from.get("namespaceSelector") {
                assert_eq!(
                    ns["matchLabels"]["kubernetes.io/metadata.name"],
                    "monitoring"
                );
                monitoring.extend(ports.iter().copied());
            } else {
                panic!("{what}: unexpected ingress source {from}");
            }
        }
    }
    assert_eq!(
        otlp,
        BTreeSet::from([4317, 4318]),
        "{what}: collector OTLP ingress"
    );
    assert_eq!(
        monitoring,
        BTreeSet::from([9465]),
        "{what}: collector metrics ingress"
    );
}

/// A Service's plain `selector` map as a `matchLabels` selector.
fn json_selector(selector: &Value) -> Value {
    serde_json::json!({ "matchLabels": selector })
}

#[test]
fn manifests_keep_the_properties_agent_and_collector_need() {
    let Some(tools) = Tools::find("manifests_keep_the_properties_agent_and_collector_need") else {
        return;
    };
    let scratch = Scratch::new("deploy-properties");
    let rendered = render_all(&tools, &scratch.0);
    let by_name = |name: &str| {
        rendered
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("kustomization {name}"))
    };
    for r in &rendered {
        check_common(r, r.name == "privileged");
    }

    // Base: one collector on its own store, placeholder tokens clearly marked.
    let base = by_name("base");
    assert_eq!(base.get("StatefulSet", COLLECTOR)["spec"]["replicas"], 1);
    let tokens = base.get("Secret", TOKENS_SECRET);
    for (key, value) in tokens["stringData"].as_object().expect("stringData") {
        assert!(
            value.as_str().unwrap().starts_with("REPLACE-ME"),
            "base: token {key} is a placeholder marked REPLACE-ME"
        );
    }

    // Privileged overlay: the same DaemonSet, privileged (checked in check_common).
    by_name("privileged");

    // Production: several collectors, shipping to an engine, spread and protected.
    let prod = by_name("production");
    let sts = prod.get("StatefulSet", COLLECTOR);
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas > 1, "production: {replicas} collector replicas");
    let config = prod.mounted_config(sts, "config", "collector.toml");
    let url = toml_value(&config, "remote_write", "url").unwrap_or_default();
    assert!(
        url.starts_with("http://") || url.starts_with("https://"),
        "production: remote_write.url is set ({url:?})"
    );
    // Each replica must write its own `collector` label: the default (pod name) is unique.
    assert_eq!(
        toml_value(&config, "remote_write", "collector_id").unwrap_or_default(),
        "",
        "production: remote_write.collector_id must stay per replica (empty: the pod name)"
    );
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let pdbs: Vec<&Value> = prod
        .all("PodDisruptionBudget")
        .into_iter()
        .filter(|p| selects(&p["spec"]["selector"], labels))
        .collect();
    assert_eq!(
        pdbs.len(),
        1,
        "production: a PodDisruptionBudget for the collectors"
    );
    let anti = &pod_spec(sts)["affinity"]["podAntiAffinity"];
    assert!(
        list(anti, "requiredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .chain(list(anti, "preferredDuringSchedulingIgnoredDuringExecution").iter())
            .any(|t| {
                let term = t.get("podAffinityTerm").unwrap_or(t);
                term["topologyKey"] == "kubernetes.io/hostname"
                    && selects(&term["labelSelector"], labels)
            }),
        "production: collectors are spread over nodes"
    );
    assert_eq!(
        prod.get("Service", COLLECTOR)["spec"]["sessionAffinity"],
        "ClientIP",
        "production: sticky OTLP/HTTP senders (docs/scale-out.md)"
    );
    // No placeholder token reaches production: the Secret is created outside git.
    assert!(
        prod.try_get("Secret", TOKENS_SECRET).is_none(),
        "production: no placeholder Secret"
    );
    assert!(
        !prod.yaml.contains("REPLACE-ME"),
        "production: no placeholder"
    );
}

/// The agent and collector binaries: `TENANTSCOPE_{AGENT,COLLECTOR}_BIN` (set by `cargo xtask
/// test`), else next to this test's target directory.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

#[test]
fn shipped_configs_load_in_the_real_binaries() {
    let test = "shipped_configs_load_in_the_real_binaries";
    let Some(tools) = Tools::find(test) else {
        return;
    };
    let agent_bin = binary("TENANTSCOPE_AGENT_BIN", AGENT);
    let collector_bin = binary("TENANTSCOPE_COLLECTOR_BIN", COLLECTOR);
    if !agent_bin.is_file() || !collector_bin.is_file() {
        let reason = format!(
            "{} or {} missing: `cargo build -p tenantscope-agent -p tenantscope-collector`",
            agent_bin.display(),
            collector_bin.display()
        );
        return skip(test, &reason).unwrap_or_default();
    }
    let scratch = Scratch::new("deploy-configs");
    for r in render_all(&tools, &scratch.0) {
        // The agent, with the DaemonSet's environment as the kubelet would pass it (the token
        // header included): --check-config exits 2 on any invalid value or unknown key.
        let ds = r.get("DaemonSet", AGENT);
        let file = scratch.0.join(format!("{}-agent.toml", r.name));
        std::fs::write(&file, r.mounted_config(ds, "config", "agent.toml")).unwrap();
        let env = resolve_env(&list(container(ds, "agent"), "env"));
        // The token file where the Secret would be mounted, here beside the config.
        let text = std::fs::read_to_string(&file).unwrap();
        let token_file = toml_value(&text, "otlp", "token_file").expect("otlp.token_file");
        let local_token = scratch.0.join(format!("{}-agent-token", r.name));
        std::fs::write(&local_token, fake_secret(TOKENS_SECRET, "agent-token")).unwrap();
        std::fs::write(
            &file,
            text.replace(&token_file, local_token.to_str().expect("utf-8")),
        )
        .unwrap();
        let out = run(Command::new(&agent_bin)
            .env_clear()
            .envs(&env)
            .arg("--config")
            .arg(&file)
            .arg("--check-config"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: tenantscope-agent --check-config: {}{stdout}",
            r.name,
            String::from_utf8_lossy(&out.stderr)
        );
        // The header made from otlp.token_file is in the effective config (redacted).
        assert!(
            stdout.contains("authorization = \"<redacted>\""),
            "{}: the agent token header is not in the effective config:\n{stdout}",
            r.name
        );

        let sts = r.get("StatefulSet", COLLECTOR);
        let file = scratch.0.join(format!("{}-collector.toml", r.name));
        std::fs::write(&file, r.mounted_config(sts, "config", "collector.toml")).unwrap();
        let out = run(Command::new(&collector_bin)
            .env_clear()
            .arg("check-config")
            .arg("--config")
            .arg(&file));
        assert!(
            out.status.success(),
            "{}: tenantscope-collector check-config: {}{}",
            r.name,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        println!(
            "{}: agent.toml and collector.toml load in the binaries",
            r.name
        );
    }
}
