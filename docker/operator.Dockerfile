# syntax=docker/dockerfile:1
# The operator image: reconciles RegistryClusters; also ships crdgen to print the CRD.
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t sofaregistry/operator:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p operator --bin operator --bin crdgen \
    && install -D -m 0755 target/release/operator /out/operator \
    && install -D -m 0755 target/release/crdgen /out/crdgen

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/operator /out/crdgen /usr/local/bin/
USER 65532:65532
# /metrics, /healthz and /readyz.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
