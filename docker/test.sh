#!/usr/bin/env bash
# The Docker path, built and run: builds the image and checks it against a PostgreSQL and a
# nats-server started on this machine (loopback only; the containers use --network host).
#
#   docker/test.sh            image from the Dockerfile's `prebuilt` target with a host-built
#                             binary (cargo build; WAL_LISTENER_BIN=path to use another one):
#                             no compiler runs in a container
#   docker/test.sh --full     image from the Dockerfile's default target (a release compile in
#                             the rust image: long, and needs rust:1.95-slim-bookworm)
#
# Checks: `IMAGE check --connect` passes; with a mounted /app/config.yml (serverPort not 8080)
# and a mounted scripts/ directory, events arrive in JetStream on the script's subjects; the
# process runs as uid/gid 10001; the HEALTHCHECK turns healthy; editing the mounted script
# reloads it; `docker stop` exits 0 within the grace period; and, when `docker compose` or
# `docker-compose` is there, `docker compose up` (docker-compose.yml) brings the three services up
# and events flow.
#
# Exit 0 with "skipped: …" when no engine answers or no base image can be had. Environment:
# DOCKER (default docker; podman works: build with --format docker, see README), PG_BIN,
# COMPOSE_POSTGRES_IMAGE / COMPOSE_NATS_IMAGE (stand-ins for postgres:16 / nats:2.10 when no
# registry can be reached), WAL_TEST_KEEP=1 (keep the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
IMAGE=wal-listener:test
full=false
[ "${1:-}" = "--full" ] && full=true

say() { printf '\n==> %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
skip() { printf 'skipped: %s\n' "$*"; exit 0; }
die() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

# --- engine and base image -------------------------------------------------------------------
command -v "$DOCKER" >/dev/null 2>&1 || skip "no container engine: $DOCKER not found (set DOCKER, or install docker.io and start dockerd)"
info_err=$("$DOCKER" info 2>&1 >/dev/null) || skip "the container engine does not answer ($DOCKER info: $(printf '%s' "$info_err" | tail -n 1))"
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1 || "$DOCKER" pull -q "$1" >/dev/null 2>&1; }
have_image debian:bookworm-slim ||
  skip "no debian:bookworm-slim image and none can be pulled; without a registry make one: mmdebstrap --variant=minbase bookworm bookworm.tar && $DOCKER import bookworm.tar debian:bookworm-slim"
if $full; then
  have_image rust:1.95-slim-bookworm || skip "--full needs rust:1.95-slim-bookworm, which is not here and cannot be pulled"
fi

find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}
PG_BIN=$(find_pg_bin)
NATS=$(command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)
[ -n "$PG_BIN" ] || die "PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)"
[ -n "$NATS" ] || die "nats-server not found (apt-get install nats-server)"

WORK=$(mktemp -d /tmp/wal-docker-test.XXXXXX)
# Compose names containers and networks after the project: one of its own per run.
export COMPOSE_PROJECT_NAME=waltest$$
chmod 755 "$WORK"
containers=() nats_pid="" compose_up=false
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres: "$WORK"
  as_pg() { runuser -u postgres -- "$@"; }
fi
cleanup() {
  set +e
  for c in "${containers[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
  $compose_up && (cd "$WORK/compose" && "${COMPOSE[@]}" down -v >/dev/null 2>&1)
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  [ -f "$WORK/pg/postmaster.pid" ] && (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1)
  if [ "${WAL_TEST_KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the image -------------------------------------------------------------------------------
if $full; then
  say "docker build (default target: release compile in the rust image)"
  DOCKER_BUILDKIT=1 "$DOCKER" build -t "$IMAGE" . || die "docker build failed"
else
  if [ -n "${WAL_LISTENER_BIN:-}" ]; then
    BIN=$WAL_LISTENER_BIN
  else
    say "cargo build (the binary the prebuilt target copies)"
    cargo build --locked --quiet
    BIN=target/debug/wal-listener
  fi
  # A small context: the Dockerfile, what its runtime stage copies, and the binary (target/ is
  # in .dockerignore).
  ctx=$WORK/context
  mkdir -p "$ctx/docker"
  cp Dockerfile "$ctx/"
  cp docker/config.yml "$ctx/docker/"
  cp -r scripts "$ctx/"
  cp "$BIN" "$ctx/wal-listener"
  say "docker build --target prebuilt ($BIN)"
  # The prebuilt target needs no BuildKit feature; without buildx a current client builds it
  # with the classic builder.
  buildkit=1
  "$DOCKER" buildx version >/dev/null 2>&1 || buildkit=0
  DOCKER_BUILDKIT=$buildkit "$DOCKER" build --target prebuilt --build-arg BINARY=wal-listener -t "$IMAGE" "$ctx" ||
    die "docker build failed"
fi
ok "image $IMAGE built"
[ "$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || die "the image does not run as 10001:10001"
[ -n "$("$DOCKER" image inspect -f '{{if .Config.Healthcheck}}yes{{end}}' "$IMAGE")" ] || die "the image has no HEALTHCHECK (podman: build with --format docker)"

# --- servers on loopback ---------------------------------------------------------------------
free_port() {
  local port
  for _ in $(seq 100); do
    port=$(((RANDOM % 12000) + 20000))
    if ! (exec 5<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free TCP port found"
}
wait_for() { # description, seconds, command…
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${secs}s waiting for $what"
}

say "PostgreSQL and nats-server on 127.0.0.1"
(cd "$WORK" && as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null)
cat >>"$WORK/pg/postgresql.conf" <<EOF
wal_level = logical
max_replication_slots = 8
max_wal_senders = 8
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
EOF
PG_PORT=$(free_port)
(cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -o "-p $PG_PORT" -w start >/dev/null) ||
  die "PostgreSQL did not start: $(cat "$WORK/pg.log")"
psql_() { "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
NATS_PORT=$(free_port)
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
nats_pid=$!

nats_request() { # subject payload → the reply's payload (core NATS protocol over bash's /dev/tcp)
  exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || return 1
  local line reply=""
  IFS= read -r -t 5 line <&3 || { exec 3<&-; return 1; }
  printf 'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _INBOX.t 1\r\nPUB %s _INBOX.t %d\r\n%s\r\nPING\r\n' \
    "$1" "${#2}" "$2" >&3
  while IFS= read -r -t 5 line <&3; do
    case ${line%$'\r'} in
      MSG*) IFS= read -r -t 5 reply <&3; break ;;
      HMSG* | -ERR*) break ;;
    esac
  done
  exec 3<&-
  [ -n "$reply" ] && printf '%s\n' "${reply%$'\r'}"
}
wait_for "nats-server" 30 nats_request '$JS.API.INFO' ''
# A message on exactly this subject is in stream wal_listener.
has_subject() { nats_request '$JS.API.STREAM.MSG.GET.wal_listener' "{\"last_by_subj\":\"$1\"}" | grep -q '"message"'; }
ok "PostgreSQL on 127.0.0.1:$PG_PORT, nats-server on 127.0.0.1:$NATS_PORT"

# --- check --connect with the image's own config, driven by WAL_* ----------------------------
say "$IMAGE check --connect"
out=$("$DOCKER" run --rm --network host -e WAL_DATABASE_HOST=127.0.0.1 -e WAL_DATABASE_PORT="$PG_PORT" \
  -e WAL_PUBLISHER_ADDRESS="nats://127.0.0.1:$NATS_PORT" "$IMAGE" check --connect 2>&1) ||
  die "check --connect failed: $out"
printf '%s\n' "$out" | sed 's/^/  /'
printf '%s\n' "$out" | grep -q '^ok: configuration is valid' || die "check --connect did not pass"
ok "check --connect"

# --- a mounted config and scripts directory --------------------------------------------------
say "run with a mounted /app/config.yml and /app/scripts"
HTTP_PORT=$(free_port)
mkdir -p "$WORK/mount/scripts"
cat >"$WORK/mount/config.yml" <<EOF
listener:
  slotName: docker_test
  serverHost: 127.0.0.1
  serverPort: $HTTP_PORT            # not 8080: the HEALTHCHECK must find it here
database:
  host: 127.0.0.1
  port: $PG_PORT
  user: postgres
  sslMode: disable
publisher:
  type: nats
  address: nats://127.0.0.1:$NATS_PORT
  topic: wal_listener
scripts:
  path: scripts/route.lua
  watch: true
logger:
  fmt: text
EOF
write_script() { # version: route everything to wal_listener.<version>.<table>, replaced like an editor does
  printf 'function route(event)\n  return "wal_listener.%s." .. event.table\nend\n' "$1" >"$WORK/mount/scripts/.route.lua.tmp"
  mv "$WORK/mount/scripts/.route.lua.tmp" "$WORK/mount/scripts/route.lua"
}
write_script v1
chmod -R a+rX "$WORK/mount"
psql_ -c "CREATE TABLE docker_items (id int PRIMARY KEY)"
c=wal-listener-test-$$
containers+=("$c")
"$DOCKER" run -d --name "$c" --network host --health-interval 2s --health-start-period 60s \
  -v "$WORK/mount/config.yml:/app/config.yml:ro" -v "$WORK/mount/scripts:/app/scripts" "$IMAGE" >/dev/null
healthy() { [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$c")" = healthy ]; }
running() { [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$c")" = true ]; }
for _ in $(seq 600); do
  healthy && break
  running || die "the container exited: $("$DOCKER" logs "$c" 2>&1 | tail -n 20)"
  sleep 0.1
done
healthy || die "not healthy after 60 s: $("$DOCKER" inspect -f '{{json .State.Health}}' "$c")"
ok "HEALTHCHECK healthy with serverPort $HTTP_PORT from the mounted config"
uids=$("$DOCKER" exec "$c" sh -c 'grep -E "^(Uid|Gid):" /proc/1/status' | awk '{print $2}' | tr '\n' ' ')
[ "$uids" = "10001 10001 " ] || die "the process runs as uid/gid $uids, not 10001"
ok "the process runs as uid 10001, gid 10001 (group $("$DOCKER" exec "$c" id -gn))"

psql_ -c "INSERT INTO docker_items VALUES (1)"
wait_for "an event on wal_listener.v1.docker_items (the mounted script)" 60 has_subject wal_listener.v1.docker_items
ok "events arrive in JetStream on the mounted script's subject"

write_script v2
reloaded() { "$DOCKER" logs "$c" 2>&1 | grep -q "script reloaded"; }
wait_for 'the log line "script reloaded"' 30 reloaded
psql_ -c "INSERT INTO docker_items VALUES (2)"
wait_for "an event on wal_listener.v2.docker_items (the edited script)" 60 has_subject wal_listener.v2.docker_items
ok "editing the mounted script reloads it"

start=$(date +%s)
"$DOCKER" stop -t 10 "$c" >/dev/null
took=$(($(date +%s) - start))
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || die "docker stop: exit status $code: $("$DOCKER" logs "$c" 2>&1 | tail -n 5)"
[ "$took" -lt 10 ] || die "docker stop took ${took}s: the grace period ran out"
ok "docker stop: exit 0 after ${took}s (grace period 10 s)"

# --- docker compose up -----------------------------------------------------------------------
COMPOSE=()
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
fi
if [ ${#COMPOSE[@]} = 0 ]; then
  echo "skipped: docker compose up (neither \`$DOCKER compose\` nor docker-compose is installed)"
else
  pg_image=${COMPOSE_POSTGRES_IMAGE:-postgres:16}
  nats_image=${COMPOSE_NATS_IMAGE:-nats:2.10}
  if ! have_image "$pg_image" || ! have_image "$nats_image"; then
    echo "skipped: docker compose up ($pg_image or $nats_image is not here and cannot be pulled; set COMPOSE_POSTGRES_IMAGE and COMPOSE_NATS_IMAGE to local stand-ins)"
  else
    say "docker compose up (docker-compose.yml, wal-listener from $IMAGE, HTTP on host port $HTTP_PORT)"
    mkdir -p "$WORK/compose"
    cp docker-compose.yml "$WORK/compose/"
    cp -r scripts "$WORK/compose/"
    chmod -R a+rX "$WORK/compose"
    # The image built above instead of `build: .`, and the stand-ins when asked for.
    cat >"$WORK/compose/docker-compose.override.yml" <<EOF
services:
  postgres:
    image: $pg_image
  nats:
    image: $nats_image
  wal-listener:
    image: $IMAGE
EOF
    cd "$WORK/compose"
    compose_up=true
    # --no-build: the image built above, not `build: .` again.
    WAL_HTTP_PORT=$HTTP_PORT "${COMPOSE[@]}" up -d --no-build >/dev/null 2>"$WORK/compose.log" ||
      die "docker compose up failed: $(tail -n 20 "$WORK/compose.log")"
    http_get() { exec 4<>"/dev/tcp/127.0.0.1/$HTTP_PORT" && printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&4 && cat <&4; }
    ready() { http_get /ready | head -n 1 | grep -q ' 200 '; }
    wait_for "wal-listener in compose to be ready on host port $HTTP_PORT" 120 ready
    "${COMPOSE[@]}" exec -T postgres psql -U postgres -c "CREATE TABLE compose_t (id int PRIMARY KEY)" -c "INSERT INTO compose_t VALUES (1)" >/dev/null
    count() { http_get /metrics | tr -d '\r' | grep -E '^published_events_total' | awk '{s+=$2} END {print s+0}'; }
    published() { [ "$(count)" -ge 1 ]; }
    wait_for "an event published by wal-listener in compose" 60 published
    "${COMPOSE[@]}" ps | sed 's/^/  /'
    ok "docker compose up: postgres, nats and wal-listener up; events flow (published_events_total $(count))"
    cd - >/dev/null
  fi
fi

say "docker/test.sh passed"
