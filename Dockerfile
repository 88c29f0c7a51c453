# openshell-sandbox image: one binary, used as the entrypoint of both the proxy sidecar
# (OPENSHELL_MODE=proxy) and the agent container (OPENSHELL_PROXY_MODE=sidecar).
#
# The base images are build arguments so the image can be built without a registry
# from locally imported bases (see docs/podman.md):
#   podman build --format docker --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=... \
#     -t openshell-sandbox .
#
# Where the binary comes from is a build argument too. BINARY=build (the default)
# compiles it in the `build` stage. BINARY=prebuilt copies PREBUILT, a binary cargo
# already built (path inside the build context, default target/release/openshell-sandbox),
# from an image that only needs /etc/ssl/certs/ca-certificates.crt:
#   podman build --format docker --build-arg BINARY=prebuilt -t openshell-sandbox .
# The end-to-end test (tests/e2e_podman.rs) builds that way with the binary `cargo test`
# just built, so CI does not compile the crate a second time, and the `runtime` stage
# below, the image users run, is the one that was tested: both ways end in the same
# stage, which takes the binary and the roots from the stage named by BINARY.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARY=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY build.rs ./
COPY proto ./proto
COPY src ./src
COPY policies ./policies
COPY benches ./benches
RUN cargo build --release --locked --bin openshell-sandbox \
 && strip target/release/openshell-sandbox \
 && mkdir -p /out && cp target/release/openshell-sandbox /out/

FROM ${RUST_IMAGE} AS prebuilt
ARG PREBUILT=target/release/openshell-sandbox
COPY ${PREBUILT} /out/openshell-sandbox

FROM ${BINARY} AS binary

FROM ${RUNTIME_IMAGE} AS runtime
# The system roots the proxy verifies upstreams against (and bundles into ca-bundle.pem).
COPY --from=binary /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/openshell-sandbox /usr/local/bin/openshell-sandbox
COPY policies /etc/openshell/policies
# The mode comes from the environment the driver sets; healthcheck follows the same mode.
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/openshell-sandbox", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/openshell-sandbox"]
