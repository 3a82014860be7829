//! Builds the kernel programs (agent-ebpf) for the bpf target and leaves the object in OUT_DIR,
//! where `src/probes/mod.rs` embeds it with `include_bytes_aligned!`.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // At run time: a build script binary can be reused across clones sharing CARGO_TARGET_DIR,
    // and its compile-time CARGO_MANIFEST_DIR would name the clone it was first built in.
    let manifest_dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?,
    );
    let metadata_root = manifest_dir
        .parent()
        .context("agent crate has no parent directory")?
        .join("agent-ebpf");
    // Same toolchain as the rest of the workspace (rust-toolchain.toml); `-Z build-std=core`
    // needs unstable flags, which RUSTC_BOOTSTRAP enables for the child cargo only.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".to_owned());
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let root = metadata_root
        .to_str()
        .context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "tenantscope-agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (needs bpf-linker and rust-src)")
}
