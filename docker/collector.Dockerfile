# syntax=docker/dockerfile:1
# tenantscope-collector: OTLP ingest, SLI rollups, SLOs and SLA reports
# (deploy/base/collector/statefulset.yaml runs it).
#
#   docker build -f docker/collector.Dockerfile -t <registry>/tenantscope-collector:<version> .
#
# Build context: the repository root (docker/collector.Dockerfile.dockerignore keeps target/ and
# the rest out). Validated by checkov in tests/tests/deploy.rs; never built there (no Docker engine).

# The toolchain pinned in rust-toolchain.toml; Bookworm, like the runtime image, for glibc.
ARG RUST_VERSION=1.95.0
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder

WORKDIR /src
COPY rust-toolchain.toml ./
RUN rustup toolchain install

COPY . .
# SQLite is compiled in (rusqlite "bundled"), so the runtime needs nothing but glibc.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tenantscope-collector \
 && install -D -m 0755 target/release/tenantscope-collector /out/tenantscope-collector \
 && install -d -m 0750 /out/var/lib/tenantscope

# Runtime: glibc, libgcc and CA certificates (remote_write, trace forwarding over https), no
# shell, no package manager; uid/gid 65532 ("nonroot"), as the StatefulSet expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/tenantscope-collector /usr/local/bin/tenantscope-collector
# The store's directory (storage.path), owned by the runtime user for `docker run` without a
# volume; in Kubernetes a volume is mounted here.
COPY --from=builder --chown=65532:65532 /out/var/lib/tenantscope /var/lib/tenantscope
# OTLP/gRPC, OTLP/HTTP, API and /metrics.
EXPOSE 4317 4318 9465
USER 65532:65532
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; the StatefulSet probes /healthz and /readyz, and the image has no HTTP client to run one
ENTRYPOINT ["/usr/local/bin/tenantscope-collector"]
CMD ["serve"]
