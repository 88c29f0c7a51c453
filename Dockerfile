# openshell-sandbox image: one binary, used as the entrypoint of both the proxy sidecar
# (OPENSHELL_MODE=proxy) and the agent container (OPENSHELL_PROXY_MODE=sidecar).
#
# The base images are build arguments so the image can be built without a registry
# from locally imported bases (see docs/podman.md). `--format docker` keeps HEALTHCHECK
# (the OCI format has no place for it):
#   podman build --format docker --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=... \
#     -t openshell-sandbox .
#
# Two targets share every layer but the binary's. The default (last) target `runtime`
# compiles the binary in the `build` stage. `--target prebuilt` copies PREBUILT instead, a
# binary cargo already built (a path in the build context, default
# target/release/openshell-sandbox; .dockerignore keeps only that file of target/):
#   cargo build --release && podman build --format docker --target prebuilt -t openshell-sandbox .
# The end-to-end test (tests/e2e/podman.rs) builds `prebuilt` with the binary `cargo test`
# just built, so CI does not compile the crate a second time. What it tests is what users
# run: the base, roots, policies, HEALTHCHECK and ENTRYPOINT all come from `runtime-base`.
# (Targets, not a `FROM ${BINARY}` stage switch: podman 4.3 skips the stage such a switch
# names by its default value, then fails.)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# The system roots the proxy verifies upstreams against (and bundles into ca-bundle.pem);
# the slim runtime image has none.
FROM ${RUST_IMAGE} AS roots

FROM ${RUNTIME_IMAGE} AS runtime-base
COPY --from=roots /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY policies /etc/openshell/policies
# The proxy listens on 0.0.0.0:3128 and, without OPENSHELL_PROXY_ALLOWED_CLIENTS, serves
# any client that reaches it, with the sandbox's credentials (it warns at startup). The
# driver must set it to the agent's internal subnet, plus 127.0.0.1/32 for this
# HEALTHCHECK's probe, e.g. OPENSHELL_PROXY_ALLOWED_CLIENTS=10.89.10.0/24,127.0.0.1/32
# (docs/podman.md). The image sets no default: it cannot know the subnet, a loopback-only
# default would refuse every agent, and a private-range default would still admit the
# neighbours on the proxy's outer network, the very clients the list must keep out.
# The mode comes from the environment the driver sets; healthcheck follows the same mode.
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/openshell-sandbox", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/openshell-sandbox"]

FROM runtime-base AS prebuilt
ARG PREBUILT=target/release/openshell-sandbox
COPY ${PREBUILT} /usr/local/bin/openshell-sandbox

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY build.rs ./
COPY proto ./proto
COPY src ./src
COPY policies ./policies
COPY benches ./benches
RUN cargo build --release --locked --bin openshell-sandbox \
 && strip target/release/openshell-sandbox

FROM runtime-base AS runtime
COPY --from=build /src/target/release/openshell-sandbox /usr/local/bin/openshell-sandbox
