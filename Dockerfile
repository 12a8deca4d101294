# syntax=docker/dockerfile:1
#
# registry-gateway container image: a release build of the sidecar on a distroless runtime that
# runs as a non-root user. Used by docker-compose.yml (`build: .`) and deploy/kubernetes/.
#
#   docker build -t registry-gateway:local .
#   docker run --rm registry-gateway:local --help
#
# The builder and the runtime must share a Debian release (bookworm = Debian 12 on both sides):
# the binary links glibc dynamically and must not need a newer glibc than the runtime has.
# Bump RUST_VERSION and the two image tags together.

ARG RUST_VERSION=1.95

# --- Build ---------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Only what the build reads. build.rs compiles proto/ with protox (pure Rust: no protoc), and TLS
# is rustls with ring (a C compiler, which the rust image has; no OpenSSL headers). Cargo reads the
# manifest of every workspace member (crates/, tools/) even to build the one binary.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY crates ./crates
COPY tools ./tools

# --locked: exactly the dependency versions of Cargo.lock, or fail. The cache mounts keep the
# crates.io download and the target directory between builds; the binary is copied out of the
# cached target directory in the same step, since cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin registry-gateway \
 && install -D -m 0755 target/release/registry-gateway /out/registry-gateway

# --- Runtime -------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates (for an https registry URL), no shell, no
# package manager. The `nonroot` tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/registry-gateway /usr/local/bin/registry-gateway

# Inside a container, loopback-only listeners are useless: listen on every interface by default.
# Flags (or these variables) override them; every flag of `serve` has a REGISTRY_GATEWAY_* twin.
ENV REGISTRY_GATEWAY_GRPC_LISTEN=0.0.0.0:50051 \
    REGISTRY_GATEWAY_ADMIN_LISTEN=0.0.0.0:9091

# Explicit numeric user, so Kubernetes `runAsNonRoot: true` can verify it without a passwd lookup.
USER 65532:65532

# 50051: gRPC (ext_proc, ext_authz, registry_gateway.v1.Policy, grpc.health.v1, reflection).
# 9091: HTTP admin (/metrics, /healthz, /readyz, /status).
EXPOSE 50051 9091

# `serve` is the default command; the other subcommands stay reachable without overriding the
# entrypoint, e.g. `docker run --rm -v $PWD/examples/config:/c:ro IMAGE check-config /c/config.yaml`.
ENTRYPOINT ["/usr/local/bin/registry-gateway"]
CMD ["serve"]
