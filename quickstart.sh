#!/usr/bin/env bash
# Quick start: from a fresh clone to events in NATS JetStream, no Docker needed.
#
#   ./quickstart.sh          build, run the demo, print the events, clean up
#   ./quickstart.sh --keep   …then keep everything running until Ctrl-C, to try your own writes
#
# It starts a throwaway PostgreSQL (wal_level=logical) and `nats-server -js` in a temporary
# directory on free ports, runs wal-listener with ./config.yml and examples/route.lua, makes a
# few writes and prints what arrived in the stream, then stops everything and deletes the
# directory. Missing PostgreSQL / nats-server packages are installed with apt-get (Debian,
# Ubuntu; as root or with sudo). Rust comes from https://rustup.rs.
#
# Environment: WAL_LISTENER_BIN=path uses that binary instead of `cargo build` (the test suite
# runs this script that way); PG_BIN=dir picks the PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")"

keep=false
[ "${1:-}" = "--keep" ] && keep=true
say() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

# --- what we need -------------------------------------------------------------------------
find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}
find_nats() {
  command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true
}

missing=()
[ -n "$(find_pg_bin)" ] || missing+=(postgresql)
[ -n "$(find_nats)" ] || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "please install ${missing[*]} (no apt-get here)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "please install ${missing[*]}, or run this as root"
    sudo="sudo"
  fi
  say "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PG_BIN=$(find_pg_bin)
NATS=$(find_nats)
[ -n "$PG_BIN" ] || die "PostgreSQL server binaries not found (set PG_BIN)"
[ -n "$NATS" ] || die "nats-server not found"

if [ -n "${WAL_LISTENER_BIN:-}" ]; then
  BIN=$WAL_LISTENER_BIN
else
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from https://rustup.rs, then run this again"
  say "building wal-listener (cargo build; the first build takes a few minutes)"
  cargo build --locked --quiet
  BIN=target/debug/wal-listener
fi

# --- throwaway servers --------------------------------------------------------------------
# initdb refuses to run as root: then the cluster belongs to the postgres OS user.
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  if command -v runuser >/dev/null 2>&1; then
    as_pg() { runuser -u postgres -- "$@"; }
  else
    as_pg() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }
  fi
fi

WORK=$(mktemp -d /tmp/wal-quickstart.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK" && chmod 755 "$WORK"
service_pid="" nats_pid=""
cleanup() {
  set +e
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  [ -f "$WORK/pg/postmaster.pid" ] && (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1)
  rm -rf "$WORK"
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on, below the kernel's ephemeral range (outgoing connections take
# those); a start that still finds its port taken is retried with another.
free_port() {
  local port
  for _ in $(seq 100); do
    port=$(( (RANDOM % 12000) + 20000 ))
    if ! (exec 5<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free TCP port found"
}

say "starting PostgreSQL ($PG_BIN) with wal_level=logical"
(cd "$WORK" && as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null)
cat >>"$WORK/pg/postgresql.conf" <<EOF
wal_level = logical
max_replication_slots = 4
max_wal_senders = 4
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
EOF
for attempt in 1 2 3 4 5; do
  PG_PORT=$(free_port)
  (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -o "-p $PG_PORT" -w start >/dev/null 2>&1) && break
  grep -q "could not bind\|Address already in use" "$WORK/pg.log" && [ "$attempt" -lt 5 ] ||
    die "PostgreSQL did not start: $(cat "$WORK/pg.log")"
done
echo "PostgreSQL on 127.0.0.1:$PG_PORT"
psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }

# --- tiny clients in plain bash: HTTP and the NATS protocol over /dev/tcp -------------------
http_get() { # path → status line and body
  exec 4<>"/dev/tcp/127.0.0.1/$HTTP_PORT" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&4
  tr -d '\r' <&4
  exec 4<&-
}
nats_request() { # subject payload → the reply's payload
  exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || return 1
  local line reply=""
  IFS= read -r -t 5 line <&3 || { exec 3<&-; return 1; } # INFO
  printf 'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _INBOX.quickstart 1\r\nPUB %s _INBOX.quickstart %d\r\n%s\r\nPING\r\n' \
    "$1" "${#2}" "$2" >&3
  while IFS= read -r -t 5 line <&3; do
    case ${line%$'\r'} in
      MSG*) IFS= read -r -t 5 reply <&3; break ;;
      HMSG* | -ERR*) break ;; # no responders (JetStream not ready yet) or an error
    esac
  done
  exec 3<&-
  [ -n "$reply" ] && printf '%s\n' "${reply%$'\r'}"
}
wait_for() { # description, command…: retry for 60 s
  local what=$1; shift
  for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out waiting for $what (logs in $WORK)"
}
say "starting nats-server -js"
for attempt in 1 2 3 4 5; do
  NATS_PORT=$(free_port)
  "$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do
    nats_request '$JS.API.INFO' '' >/dev/null 2>&1 && break 2
    kill -0 "$nats_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null; nats_pid=""
  [ "$attempt" -lt 5 ] || die "nats-server did not start: $(cat "$WORK/nats.log")"
done
echo "nats-server on 127.0.0.1:$NATS_PORT"

# --- the service ----------------------------------------------------------------------------
say "starting wal-listener with config.yml and examples/route.lua"
ready() { http_get /ready | head -n 1 | grep -q ' 200 '; }
for attempt in 1 2 3 4 5; do
  HTTP_PORT=$(free_port)
  WAL_DATABASE_HOST=127.0.0.1 WAL_DATABASE_PORT=$PG_PORT \
    WAL_PUBLISHER_ADDRESS=nats://127.0.0.1:$NATS_PORT \
    WAL_LISTENER_SERVERHOST=127.0.0.1 WAL_LISTENER_SERVERPORT=$HTTP_PORT \
    WAL_SCRIPTS_PATH=examples/route.lua WAL_LOGGER_FMT=text \
    "$BIN" -c config.yml >"$WORK/wal-listener.log" 2>&1 &
  service_pid=$!
  for _ in $(seq 600); do
    ready 2>/dev/null && break 2
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$service_pid" 2>/dev/null; then die "wal-listener did not become ready in 60 s: $(cat "$WORK/wal-listener.log")"; fi
  wait "$service_pid" 2>/dev/null; service_pid=""
  grep -q "cannot listen" "$WORK/wal-listener.log" && [ "$attempt" -lt 5 ] ||
    die "wal-listener exited: $(cat "$WORK/wal-listener.log")"
done
echo "wal-listener streaming; health, readiness and metrics on http://127.0.0.1:$HTTP_PORT"
echo "GET /ready: $(http_get /ready | tail -n 1)"

say "writing to PostgreSQL"
sql="CREATE TABLE customers (id int8 PRIMARY KEY, email text);
CREATE TABLE orders (id int8 PRIMARY KEY, customer int8, region text, total numeric(10,2));
INSERT INTO customers VALUES (1, 'ada@example.com');
INSERT INTO orders VALUES (100, 1, 'eu', 42.50), (101, 1, 'us', 7.00);
UPDATE customers SET email = 'ada@lovelace.dev' WHERE id = 1;
DELETE FROM orders WHERE id = 101;"
printf '%s\n' "$sql" | sed 's/^/  /'
printf '%s\n' "$sql" | psql_ -f - # one transaction per statement, as an application would

expected=5
stored() { nats_request '$JS.API.STREAM.INFO.wal_listener' '' | grep -o '"messages":[0-9]*' | head -n 1 | cut -d: -f2; }
enough() { [ "$(stored)" -ge "$expected" ]; }
wait_for "$expected events in the stream" enough

say "the events in JetStream stream wal_listener (subject  payload)"
for seq in $(seq 1 "$expected"); do
  reply=$(nats_request '$JS.API.STREAM.MSG.GET.wal_listener' "{\"seq\":$seq}")
  subject=$(printf '%s' "$reply" | sed -n 's/.*"subject":"\([^"]*\)".*/\1/p')
  data=$(printf '%s' "$reply" | sed -n 's/.*"data":"\([^"]*\)".*/\1/p' | base64 -d)
  printf '%s  %s\n' "$subject" "$data"
done

say "a few metrics (GET /metrics)"
http_get /metrics | grep -E '^(published_events_total|wal_listener_replication_lag_bytes|wal_listener_publish_latency_seconds_count)' | sed 's/^/  /'

if $keep; then
  say "running: psql -h 127.0.0.1 -p $PG_PORT -U postgres  |  nats://127.0.0.1:$NATS_PORT  |  http://127.0.0.1:$HTTP_PORT/metrics"
  echo "logs: $WORK/wal-listener.log; press Ctrl-C to stop and clean up"
  wait "$service_pid"
fi
say "quick start OK: $expected events published; stopping and removing $WORK"
