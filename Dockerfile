# wal-listener image: Debian bookworm-slim, run as the unprivileged user wal (uid and gid 10001).
#
#   docker build -t wal-listener .
#   docker run -e WAL_DATABASE_HOST=db.example -e WAL_DATABASE_PASSWORD=… \
#              -e WAL_PUBLISHER_ADDRESS=nats://nats.example:4222 wal-listener
#   docker run -v $(pwd)/config.yml:/app/config.yml -v $(pwd)/scripts:/app/scripts wal-listener
#   docker run … wal-listener check --connect
#
# /app/config.yml (docker/config.yml) reads everything from WAL_* variables when they are set;
# routing scripts live in /app/scripts. The HTTP endpoint (/healthz, /ready, /metrics) is on
# port 8080 unless the config says otherwise. uid 10001 cannot bind ports below 1024: keep
# listener.serverPort at 1024 or more (the Go example's serverPort: 80 fails with a message
# saying so).
#
# Targets:
#   (default)  compiles a release build in the `build` stage (rust:1.95-slim-bookworm).
#   prebuilt   copies a wal-listener binary built on the host instead, so no compiler runs in
#              the build (BINARY: its path in the build context; glibc of the build host ≤ 2.36,
#              bookworm's). target/ is in .dockerignore, so build it from a small context, as
#              docker/test.sh does:
#                docker build --target prebuilt --build-arg BINARY=wal-listener -f Dockerfile CONTEXT
#
# The cache mounts of the build stage need BuildKit (DOCKER_BUILDKIT=1, the default of current
# engines); no `# syntax=` line, so nothing is pulled besides the two base images.

FROM debian:bookworm-slim AS runtime
# CA certificates for TLS to NATS or PostgreSQL with public certificates. A regular (not
# --system) user and group with one fixed id, so files on volumes can be given to 10001:10001.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 wal \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin wal
WORKDIR /app
COPY docker/config.yml /app/config.yml
COPY scripts /app/scripts
USER 10001:10001
EXPOSE 8080
# `wal-listener health` reads /app/config.yml (and WAL_*) for listener.serverHost/serverPort and
# asks /healthz there: unhealthy while a connection is down (the process reconnects by itself
# meanwhile). With the config elsewhere, pass it: --health-cmd "wal-listener health -c PATH".
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["wal-listener", "health"]
# `-c config.yml` (the default) is /app/config.yml; `docker run IMAGE check --connect` works.
ENTRYPOINT ["wal-listener"]

FROM runtime AS prebuilt
ARG BINARY=wal-listener
COPY ${BINARY} /usr/local/bin/wal-listener

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Everything Cargo.toml names must be here, or cargo cannot read the manifest (the [[bench]]
# targets): `cargo test` checks this list (tests/docker_context.rs).
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
COPY scripts scripts
# Cache mounts keep the registry and build directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/wal-listener /usr/local/bin/wal-listener

FROM runtime
COPY --from=build /usr/local/bin/wal-listener /usr/local/bin/wal-listener
