# syntax=docker/dockerfile:1
# wal-listener image: a release build on Debian, run as a non-root user.
#
#   docker build -t wal-listener .
#   docker run -e WAL_DATABASE_HOST=db.example -e WAL_DATABASE_PASSWORD=… \
#              -e WAL_PUBLISHER_ADDRESS=nats://nats.example:4222 wal-listener
#   docker run -v $(pwd)/config.yml:/app/config.yml -v $(pwd)/scripts:/app/scripts wal-listener
#   docker run … wal-listener check --connect
#
# /app/config.yml (docker/config.yml) reads everything from WAL_* variables when they are set;
# routing scripts live in /app/scripts. The HTTP endpoint (/healthz, /ready, /metrics) is on
# port 8080.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY scripts scripts
# Cache mounts keep the registry and build directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/wal-listener /usr/local/bin/wal-listener

FROM debian:bookworm-slim
# CA certificates for TLS to NATS or PostgreSQL with public certificates.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home wal
COPY --from=build /usr/local/bin/wal-listener /usr/local/bin/wal-listener
WORKDIR /app
COPY docker/config.yml /app/config.yml
COPY scripts /app/scripts
USER 10001:10001
EXPOSE 8080
# bash's /dev/tcp instead of curl: nothing extra in the image. Unhealthy while a connection is
# down (the process reconnects by itself meanwhile).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WAL_LISTENER_SERVERPORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# `-c config.yml` (the default) is /app/config.yml; `docker run IMAGE check --connect` works.
ENTRYPOINT ["wal-listener"]
