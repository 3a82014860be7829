//! `cargo xtask test`: the whole suite, the one command CI runs (.ci/run). Steps run in order and
//! the first failure stops the run.

use std::process::Command;
use std::time::Instant;

use anyhow::bail;

use crate::{setup, util};

/// The eBPF crate: not host-buildable (`duplicate lang item panic_impl`), so `--workspace` runs
/// exclude it and a separate clippy step checks it for the bpf target.
const EBPF_PACKAGE: &str = "tenantscope-agent-ebpf";
/// The privileged tests: they share the kernel (tracepoints, namespaces, ports), so one at a time.
const PRIVILEGED_TESTS: &str = "tenantscope-tests";

enum Action {
    Setup,
    Run(Command),
}

struct Step {
    name: &'static str,
    action: Action,
}

pub fn test() -> anyhow::Result<()> {
    let started = Instant::now();
    let target_dir = util::target_dir()?;
    let agent_bin = target_dir.join("debug").join("tenantscope-agent");
    let collector_bin = target_dir.join("debug").join("tenantscope-collector");

    let mut steps = vec![Step {
        name: "setup",
        action: Action::Setup,
    }];
    let mut step = |name, cmd| {
        steps.push(Step {
            name,
            action: Action::Run(cmd),
        })
    };

    step("fmt", cargo("fmt --all --check"));
    // The fuzz crate is a workspace of its own (fuzz/).
    step(
        "fmt (fuzz)",
        cargo("fmt --all --check --manifest-path fuzz/Cargo.toml"),
    );
    step(
        "clippy (userspace)",
        cargo(&format!(
            "clippy --workspace --exclude {EBPF_PACKAGE} --all-targets --locked -- -D warnings"
        )),
    );

    // Checked the way aya-build builds it (agent/build.rs): the same toolchain with unstable
    // flags allowed, and none of the host's rustflags, which do not apply to the bpf target.
    // Its own target dir, so this build of `core` does not invalidate the host build's cache.
    let mut clippy_ebpf = cargo(&format!(
        "clippy -p {EBPF_PACKAGE} --bins --locked --target bpfel-unknown-none -Z build-std=core"
    ));
    clippy_ebpf
        .arg("--target-dir")
        .arg(target_dir.join("bpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    step("clippy (eBPF)", clippy_ebpf);

    // Licenses, bans and sources of the main workspace's dependency graph (deny.toml). Not
    // advisories: the RustSec database is on github.com, which this project's machines cannot
    // reach (deny.toml says what would enable it).
    step(
        "cargo deny",
        cargo("deny --locked check licenses bans sources"),
    );

    // The privileged tests start the real agent and collector binaries.
    step(
        "build agent and collector",
        cargo("build --locked -p tenantscope-agent -p tenantscope-collector"),
    );

    let with_test_env = |mut cmd: Command| {
        cmd.env("TENANTSCOPE_AGENT_BIN", &agent_bin)
            .env("TENANTSCOPE_COLLECTOR_BIN", &collector_bin)
            // Privileged tests fail instead of skipping when they cannot run.
            .env("TENANTSCOPE_REQUIRE_PRIVILEGED", "1");
        cmd
    };
    step(
        "unit tests",
        with_test_env(cargo(&format!(
            "test --workspace --locked --exclude {EBPF_PACKAGE} --exclude {PRIVILEGED_TESTS}"
        ))),
    );
    // Every cargo-fuzz target for a bounded time, from its committed seeds (fuzz/).
    step("fuzz (30 s per target)", cargo("xtask fuzz --seconds 30"));
    // --no-fail-fast: one failing test file does not hide the results of the others.
    step(
        "privileged tests",
        with_test_env(cargo(&format!(
            "test --locked --no-fail-fast -p {PRIVILEGED_TESTS} -- --test-threads=1"
        ))),
    );

    let total = steps.len();
    for (i, Step { name, action }) in steps.into_iter().enumerate() {
        let n = i + 1;
        let result = match action {
            Action::Setup => {
                println!("==> test [{n}/{total}] {name}");
                setup::setup()
            }
            Action::Run(cmd) => {
                println!("==> test [{n}/{total}] {name}: {}", util::display(&cmd));
                util::run(cmd)
            }
        };
        if let Err(e) = result {
            bail!(
                "test: FAILED at step {n}/{total} `{name}` after {}s ({} passed): {e:#}",
                started.elapsed().as_secs(),
                n - 1
            );
        }
    }
    println!(
        "test: all {total} steps passed (setup, fmt, clippy, cargo deny, build, tests) in {}s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// `cargo` with space-separated arguments (none of them contains a space).
fn cargo(args: &str) -> Command {
    util::cargo(&args.split_whitespace().collect::<Vec<_>>())
}
