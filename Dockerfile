# openshell-sandbox image: one binary, used as the entrypoint of both the proxy sidecar
# (OPENSHELL_MODE=proxy) and the agent container (OPENSHELL_PROXY_MODE=sidecar).
#
# The base images are build arguments so the image can be built without a registry
# from locally imported bases (see docs/podman.md):
#   podman build --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=... -t openshell-sandbox .
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

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

FROM ${RUNTIME_IMAGE} AS runtime
# The system roots the proxy verifies upstreams against (and bundles into ca-bundle.pem).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/openshell-sandbox /usr/local/bin/openshell-sandbox
COPY policies /etc/openshell/policies
# The mode comes from the environment the driver sets; healthcheck follows the same mode.
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/openshell-sandbox", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/openshell-sandbox"]
