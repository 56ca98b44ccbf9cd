# syntax=docker/dockerfile:1
# The registry-node image: one binary, roles session, data or standalone (the default);
# registryctl (the CLI client) rides along for debugging and quickstarts.
# Build from the repository root:
#   docker build -f docker/registry-node.Dockerfile -t sofaregistry/registry-node:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The workspace is built as locked; the cache mounts keep crates and objects between builds,
# so the binary is copied out of the cached target dir within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p registry-node --bin registry-node \
        -p registry-client --bin registryctl \
    && install -D -m 0755 target/release/registry-node /out/registry-node \
    && install -D -m 0755 target/release/registryctl /out/registryctl

# glibc and libgcc only: TLS is rustls, so no OpenSSL is needed at run time.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/registry-node /out/registryctl /usr/local/bin/
# distroless "nonroot": uid/gid 65532.
USER 65532:65532
# A container must listen on every interface; the binary's defaults are loopback.
ENV REGISTRY_HTTP_ADDR=0.0.0.0:9603 \
    REGISTRY_DATA_ADDR=0.0.0.0:9622 \
    RUST_LOG=info
# 9603: public HTTP API (session role); 9622: internal data listener (data role).
EXPOSE 9603 9622
ENTRYPOINT ["/usr/local/bin/registry-node"]
