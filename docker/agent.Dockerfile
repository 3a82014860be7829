# syntax=docker/dockerfile:1
# tenantscope-agent: the eBPF node agent (deploy/base/agent/daemonset.yaml runs it).
#
#   docker build -f docker/agent.Dockerfile -t <registry>/tenantscope-agent:<version> .
#
# Build context: the repository root (docker/agent.Dockerfile.dockerignore keeps target/ and the
# rest out). Validated by checkov in tests/tests/deploy.rs; never built there (no Docker engine).

# The toolchain pinned in rust-toolchain.toml: the aya 0.14 line needs exactly this rustc, and
# the eBPF crate is built with the same one (RUSTC_BOOTSTRAP, -Z build-std=core; agent/build.rs).
# Bookworm, like the runtime image below, so the binary's glibc matches.
ARG RUST_VERSION=1.95.0
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder

WORKDIR /src

# rust-src for -Z build-std=core, as `cargo xtask setup` installs it; rust-toolchain.toml first,
# so this layer is cached until the toolchain changes.
COPY rust-toolchain.toml ./
RUN rustup toolchain install && rustup component add rust-src

# bpf-linker 0.13.0 linked against the toolchain's own libLLVM (shared/docs/toolchain.md): no
# LLVM from apt, and always the LLVM that rustc emits bitcode for.
RUN set -eu; \
    SYSROOT="$(rustc --print sysroot)"; \
    LLVM_MAJOR="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"; \
    LLVM_LINKNAME="$(cd "$SYSROOT/lib" && ls libLLVM-*.so | sed 's/^lib//; s/\.so$//')"; \
    RUSTFLAGS="-L native=$SYSROOT/lib -l dylib=$LLVM_LINKNAME -C link-arg=-Wl,-rpath,$SYSROOT/lib" \
    cargo install bpf-linker@0.13.0 --locked --no-default-features \
        --features "llvm-$LLVM_MAJOR,no-llvm-linking"; \
    bpf-linker --version

COPY . .
# The release binary embeds the kernel programs (agent/build.rs builds agent-ebpf for the bpf
# target). Cache mounts keep the registry and the target dir between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tenantscope-agent \
 && install -D -m 0755 target/release/tenantscope-agent /out/tenantscope-agent

# Runtime: glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/tenantscope-agent /usr/local/bin/tenantscope-agent
# Metrics and health (server.listen).
EXPOSE 9464
# checkov:skip=CKV_DOCKER_8:the agent must run as uid 0: CAP_BPF/CAP_PERFMON reach only root's effective set (no file capabilities); the DaemonSet drops every other capability and forbids privilege escalation
USER 0:0
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the DaemonSet probes /healthz and /readyz, and the image has no HTTP client to run one
ENTRYPOINT ["/usr/local/bin/tenantscope-agent"]
