//! `cargo xtask setup`: installs what a fresh machine of the project's kind (Debian 12, root, rustup
//! with the toolchain pinned in rust-toolchain.toml) needs to build, run and test the project.
//! Every step checks first, so a second run only reads state; steps that need root and find
//! something missing say how to fix it and make setup fail at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, command, output, succeeds};

/// Components of the pinned toolchain: clippy and rustfmt for `cargo xtask test`, rust-src for
/// `-Z build-std=core` when building the eBPF crate.
const COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];

/// The bpf-linker release that works with the aya 0.14 line (shared/docs/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-deny release `cargo xtask test` checks deny.toml with (0.20 needs rustc 1.88).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Debian packages the project needs on the machine, and what uses each.
const APT_PACKAGES: &[&str] = &[
    // promtool (checks the exposition output) and a real Prometheus server that scrapes the agent
    // in the privileged tests.
    "prometheus",
    // `ip netns`/veth: network namespaces for the privileged tests.
    "iproute2",
    // `nft`: the TCP tests drop SYNs and segments inside their own server namespace.
    "nftables",
    // ps, pgrep, sysctl: tests find and inspect processes and kernel settings.
    "procps",
    // setpriv (runs the agent unprivileged in a test); mount and mountpoint for this setup.
    "util-linux",
    // Scrapes /metrics, /healthz and /readyz in tests and by hand.
    "curl",
    // `python3 -m venv` for the independent OTLP decoder (Debian's python3 needs it).
    "python3-venv",
    // A real HTTP server for the http probe's tests, and the load generator of its benchmark.
    "nginx-light",
    "wrk",
    // The peer reference of `cargo xtask bench overhead` (xtask/bench/peer.bt).
    "bpftrace",
    // Headless browser: the collector's HTML SLA report test renders the page and reads its DOM.
    "chromium",
    // Self-signed certificates for the collector's and the agent's TLS tests.
    "openssl",
    // SQLite's own integrity check of the store a SIGKILLed collector left (tests/faults.rs).
    "sqlite3",
    // Go 1.19: the Go services of the span-parenting tests (built offline from the standard
    // library by the tests).
    "golang-go",
];

/// The independent OTLP decoder the span tests use: PyPI `opentelemetry-proto` in a venv under
/// the cache directory (pinned, so a new upstream release cannot change what the tests decode).
pub const PY_OTLP_PACKAGES: &[&str] = &["opentelemetry-proto==1.45.2", "protobuf==7.36.2"];

/// The manifest checks of tests/tests/deploy.rs (shared/docs/conventions.md): PyPI
/// `kubernetes-validate` (offline schemas, strict mode) and `checkov` (security checks of the
/// manifests and Dockerfiles) in a venv under the cache directory, pinned like the OTLP decoder.
pub const PY_DEPLOY_PACKAGES: &[(&str, &str)] =
    &[("kubernetes-validate", "1.37.0"), ("checkov", "3.3.30")];

/// Filesystems the agent needs: tracefs (`TracePoint::attach` reads it) and bpffs.
const MOUNTS: &[Mount] = &[
    Mount {
        name: "tracefs",
        fstype: "tracefs",
        path: "/sys/kernel/tracing",
    },
    Mount {
        name: "bpffs",
        fstype: "bpf",
        path: "/sys/fs/bpf",
    },
];

struct Mount {
    name: &'static str,
    fstype: &'static str,
    path: &'static str,
}

/// What one step found or did.
enum Outcome {
    Present,
    Installed(String),
    /// Something is missing and only root can add it: what is missing, and the fix.
    NeedsRoot {
        missing: String,
        fix: String,
    },
}

pub fn setup() -> anyhow::Result<()> {
    let root = util::is_root();
    let toolchain = pinned_toolchain()?;
    let mut need_root = Vec::new();
    let mut report = |step: String, outcome: Outcome| match outcome {
        Outcome::Present => println!("setup: {step}: ok (present)"),
        Outcome::Installed(what) => println!("setup: {step}: installed{what}"),
        Outcome::NeedsRoot { missing, fix } => {
            println!("setup: {step}: MISSING {missing}; needs root, fix with: {fix}");
            need_root.push(step);
        }
    };

    report(
        format!("rustup components ({toolchain}: {})", COMPONENTS.join(", ")),
        components(&toolchain)?,
    );
    report(
        format!("bpf-linker {BPF_LINKER_VERSION}"),
        bpf_linker(&toolchain)?,
    );
    report(
        format!("cargo-fuzz {}", crate::fuzz::CARGO_FUZZ_VERSION),
        cargo_fuzz(&toolchain)?,
    );
    report(
        format!("cargo-deny {CARGO_DENY_VERSION}"),
        cargo_deny(&toolchain)?,
    );
    report("apt packages".to_owned(), apt_packages(root)?);
    report(
        format!("python OTLP decoder ({})", PY_OTLP_PACKAGES.join(", ")),
        python_otlp()?,
    );
    report(
        "manifest checks (kubernetes-validate, checkov)".to_owned(),
        python_deploy_tools()?,
    );
    report("kubectl kustomize".to_owned(), kubectl_kustomize(root)?);
    for mount in MOUNTS {
        report(
            format!("{} at {}", mount.name, mount.path),
            mounted(mount, root)?,
        );
    }

    if !need_root.is_empty() {
        bail!(
            "setup: not root, and these steps need root: {}; run the fixes above (or `cargo xtask \
             setup` as root)",
            need_root.join("; ")
        );
    }
    Ok(())
}

/// The `channel` of the workspace's rust-toolchain.toml, e.g. "1.95.0".
fn pinned_toolchain() -> anyhow::Result<String> {
    let path = util::workspace_root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .find(|value| !value.is_empty())
        .with_context(|| format!("no `channel = \"...\"` in {}", path.display()))
}

fn rustup_run(toolchain: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = command("rustup", &["run", toolchain, program]);
    cmd.args(args);
    cmd
}

fn components(toolchain: &str) -> anyhow::Result<Outcome> {
    let listed = command(
        "rustup",
        &["component", "list", "--installed", "--toolchain", toolchain],
    );
    let Ok(installed) = output(listed) else {
        // The toolchain itself is missing (only possible when xtask was started through another
        // one: the rustup proxy refuses to run cargo without the pinned toolchain).
        let mut install = command(
            "rustup",
            &["toolchain", "install", toolchain, "--profile", "minimal"],
        );
        install.arg("--component").arg(COMPONENTS.join(","));
        util::run(install)?;
        return Ok(Outcome::Installed(format!(" (toolchain {toolchain})")));
    };
    // Listed as `rust-src`, or with the host triple: `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Present);
    }
    let mut add = command("rustup", &["component", "add", "--toolchain", toolchain]);
    add.args(&missing);
    util::run(add)?;
    Ok(Outcome::Installed(format!(" ({})", missing.join(", "))))
}

/// bpf-linker built against the pinned toolchain's own libLLVM (shared/docs/toolchain.md). The
/// binary is tied to that exact libLLVM file through its RUNPATH, so it is rebuilt whenever it
/// does not run or resolves libLLVM from anywhere else (e.g. after a toolchain change).
fn bpf_linker(toolchain: &str) -> anyhow::Result<Outcome> {
    let sysroot =
        PathBuf::from(output(rustup_run(toolchain, "rustc", &["--print", "sysroot"]))?.trim());
    let lib = sysroot.join("lib");
    if check_bpf_linker(&lib).is_ok() {
        return Ok(Outcome::Present);
    }

    let version = output(rustup_run(toolchain, "rustc", &["-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc -vV` names no LLVM version")?;
    let link_name = llvm_link_name(&lib)?;
    let rustflags = format!(
        "-L native={lib} -l dylib={link_name} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib.display()
    );
    let mut install = rustup_run(
        toolchain,
        "cargo",
        &[
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major},no-llvm-linking"),
        ],
    );
    install
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // A temporary target dir: these RUSTFLAGS must not land in the project's build cache.
        .env_remove("CARGO_TARGET_DIR");
    println!(
        "setup: bpf-linker: building (takes a few minutes): {}",
        util::display(&install)
    );
    util::run(install)?;
    check_bpf_linker(&lib).context("bpf-linker was installed but still does not check out")?;
    Ok(Outcome::Installed(String::new()))
}

/// `libLLVM-22-rust-1.95.0-stable.so` in the sysroot's lib dir -> `LLVM-22-rust-1.95.0-stable`.
fn llvm_link_name(lib: &Path) -> anyhow::Result<String> {
    std::fs::read_dir(lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            let stem = name.strip_prefix("lib")?.strip_suffix(".so")?;
            stem.starts_with("LLVM-").then(|| stem.to_owned())
        })
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))
}

/// Fails unless `bpf-linker --version` names the wanted release and `ldd` resolves its libLLVM
/// inside `lib` (both canonicalized: rustup toolchains may be symlinks).
fn check_bpf_linker(lib: &Path) -> anyhow::Result<()> {
    let bin = util::which("bpf-linker").context("bpf-linker is not on PATH")?;
    let mut version = Command::new(&bin);
    version.arg("--version");
    let version = output(version)?;
    if !version.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        bail!("{} is {}", bin.display(), version.trim());
    }
    let ldd = output(command("ldd", &[&bin]))?;
    let llvm = ldd
        .lines()
        .filter(|l| l.contains("libLLVM"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next())
        .with_context(|| format!("{} links no libLLVM", bin.display()))?;
    let lib = lib.canonicalize()?;
    let llvm = Path::new(llvm)
        .canonicalize()
        .with_context(|| format!("{} resolves libLLVM to {llvm}", bin.display()))?;
    if !llvm.starts_with(&lib) {
        bail!(
            "{} uses {}, not one from {}",
            bin.display(),
            llvm.display(),
            lib.display()
        );
    }
    Ok(())
}

/// `cargo fuzz` for the fuzz targets (fuzz/, run by `cargo xtask fuzz` and `test`), at the
/// pinned release; reinstalled when another one is on PATH.
fn cargo_fuzz(toolchain: &str) -> anyhow::Result<Outcome> {
    cargo_tool(
        toolchain,
        "cargo-fuzz",
        crate::fuzz::CARGO_FUZZ_VERSION,
        "a minute or two",
    )
}

/// `cargo deny` for the dependency checks of `cargo xtask test` (deny.toml), at the pinned
/// release; reinstalled when another one is on PATH.
fn cargo_deny(toolchain: &str) -> anyhow::Result<Outcome> {
    cargo_tool(
        toolchain,
        "cargo-deny",
        CARGO_DENY_VERSION,
        "two or three minutes",
    )
}

/// `cargo install --locked` of crate `name` at `version`, unless `<name> --version` already
/// names that release (`cargo-fuzz 0.13.2`, `cargo-deny 0.20.2`).
fn cargo_tool(toolchain: &str, name: &str, version: &str, takes: &str) -> anyhow::Result<Outcome> {
    let installed = util::which(name).and_then(|bin| {
        let mut cmd = Command::new(bin);
        cmd.arg("--version");
        output(cmd).ok()
    });
    if installed.is_some_and(|v| v.split_whitespace().nth(1) == Some(version)) {
        return Ok(Outcome::Present);
    }
    let mut install = rustup_run(
        toolchain,
        "cargo",
        &["install", name, "--locked", "--force", "--version", version],
    );
    // A temporary target dir, not the project's build cache.
    install.env_remove("CARGO_TARGET_DIR");
    println!(
        "setup: {name}: building (takes {takes}): {}",
        util::display(&install)
    );
    util::run(install)?;
    Ok(Outcome::Installed(String::new()))
}

fn apt_packages(root: bool) -> anyhow::Result<Outcome> {
    // One query for all; dpkg-query exits non-zero when a package is unknown but still prints the
    // others, so read its output whatever the status.
    let out = command("dpkg-query", &["-W", "-f=${Package} ${Status}\n"])
        .args(APT_PACKAGES)
        .output()
        .context("cannot run dpkg-query")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !listed
                .lines()
                .any(|l| l == format!("{p} install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Present);
    }
    let mut install = command("apt-get", &["install", "-y", "--no-install-recommends"]);
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if !root {
        return Ok(Outcome::NeedsRoot {
            missing: missing.join(" "),
            fix: format!("sudo apt-get update && sudo {}", util::display(&install)),
        });
    }
    util::run(command("apt-get", &["update"]))?;
    util::run(install)?;
    Ok(Outcome::Installed(format!(" ({})", missing.join(", "))))
}

/// The venv with the test OTLP decoder: `<cache>/pyotel`, as `tests/src/lib.rs` expects it.
fn py_otlp_venv() -> anyhow::Result<std::path::PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(std::path::PathBuf::from(home).join(".cache/tenantscope/pyotel"))
}

fn python_otlp() -> anyhow::Result<Outcome> {
    let packages: Vec<String> = PY_OTLP_PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    py_venv(py_otlp_venv()?, &packages, |python| {
        let mut c = Command::new(python);
        c.args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ]);
        succeeds(c)
    })
}

/// The venv with the manifest checkers, `<cache>/pydeploy` as `tests/tests/deploy.rs` expects it;
/// reinstalled when an installed version differs from the pinned one.
fn python_deploy_tools() -> anyhow::Result<Outcome> {
    let pinned: Vec<String> = PY_DEPLOY_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    let wanted: Vec<String> = PY_DEPLOY_PACKAGES
        .iter()
        .map(|(name, version)| format!("({name:?}, {version:?})"))
        .collect();
    let script = format!(
        "import importlib.metadata as m, sys; \
         sys.exit(any(m.version(n) != v for n, v in [{}]))",
        wanted.join(", ")
    );
    py_venv(
        py_otlp_venv()?.with_file_name("pydeploy"),
        &pinned,
        |python| {
            let mut c = Command::new(python);
            c.args(["-c", &script]);
            succeeds(c)
        },
    )
}

/// A venv at `venv` with `packages` installed by pip, unless `ready(python)` already holds;
/// after installing, `ready` must hold.
fn py_venv(
    venv: std::path::PathBuf,
    packages: &[String],
    ready: impl Fn(&std::path::Path) -> bool,
) -> anyhow::Result<Outcome> {
    let python = venv.join("bin/python");
    if python.exists() && ready(&python) {
        return Ok(Outcome::Present);
    }
    util::run(command(
        "python3",
        &[
            std::ffi::OsStr::new("-m"),
            "venv".as_ref(),
            venv.as_os_str(),
        ],
    ))?;
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages);
    util::run(pip)?;
    anyhow::ensure!(
        ready(&python),
        "{} installed in {}, but the check after installing fails",
        packages.join(" "),
        venv.display()
    );
    Ok(Outcome::Installed(format!(" ({})", venv.display())))
}

/// `kubectl kustomize` renders deploy/ for tests/tests/deploy.rs. This machine kind ships kubectl
/// (kustomize v5); where it is missing, Debian's kubernetes-client is the packaged fallback
/// (kubectl 1.20, kustomize v2.0.3: it builds deploy/base but not the overlays; deploy/README.md).
fn kubectl_kustomize(root: bool) -> anyhow::Result<Outcome> {
    if succeeds(command("kubectl", &["kustomize", "--help"])) {
        return Ok(Outcome::Present);
    }
    let mut install = command(
        "apt-get",
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "kubernetes-client",
        ],
    );
    install.env("DEBIAN_FRONTEND", "noninteractive");
    if !root {
        return Ok(Outcome::NeedsRoot {
            missing: "kubectl".to_owned(),
            fix: format!("sudo apt-get update && sudo {}", util::display(&install)),
        });
    }
    util::run(command("apt-get", &["update"]))?;
    util::run(install)?;
    Ok(Outcome::Installed(" (kubernetes-client)".to_owned()))
}

fn mounted(mount: &Mount, root: bool) -> anyhow::Result<Outcome> {
    if succeeds(command("mountpoint", &["-q", mount.path])) {
        return Ok(Outcome::Present);
    }
    let cmd = command("mount", &["-t", mount.fstype, mount.fstype, mount.path]);
    if !root {
        return Ok(Outcome::NeedsRoot {
            missing: "mount".to_owned(),
            fix: format!("sudo {}", util::display(&cmd)),
        });
    }
    util::run(cmd)?;
    Ok(Outcome::Installed(" (mounted)".to_owned()))
}
