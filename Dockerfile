# syntax=docker/dockerfile:1
# wfm-worker: multi-stage build, non-root runtime with the binary only (the SQL
# schema files are embedded in it).

FROM rust:1.95-slim-bookworm AS build
# make: tikv-jemalloc-sys builds jemalloc with configure and make (the slim
# image has gcc but not make).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer of their own: rebuilt only when the manifest
# or the lock file changes, not on every source edit. RDS discovery and IAM
# auth (`rds`), the trace exporter (`otlp`) and the jemalloc allocator
# (`jemalloc`), default features, are named so the image never loses them.
# .cargo/config.toml holds jemalloc's compiled-in options.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --features rds,otlp,jemalloc --bin wfm-worker \
 && rm -rf src
COPY sql ./sql
COPY config ./config
COPY src ./src
# touch: make cargo see the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --features rds,otlp,jemalloc --bin wfm-worker \
 && cp target/release/wfm-worker /usr/local/bin/wfm-worker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin wfm
COPY --from=build /usr/local/bin/wfm-worker /usr/local/bin/wfm-worker
USER 10001:10001
# WFM_HTTP_ADDR: /healthz, /readyz, /metrics.
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["wfm-worker", "healthcheck"]
ENTRYPOINT ["wfm-worker"]
CMD ["run"]
