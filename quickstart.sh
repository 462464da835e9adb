#!/usr/bin/env bash
# Quick start: from a fresh clone to events in NATS JetStream, no Docker needed.
#
#   ./quickstart.sh          build, run the demo, print the events, clean up
#   ./quickstart.sh --keep   …then keep everything running and print every new message of the
#                            stream (subject  payload, one line each) until Ctrl-C
#
# It starts a throwaway PostgreSQL (wal_level=logical) and `nats-server -js` in a temporary
# directory on free ports, runs wal-listener with ./config.yml and examples/route.lua, makes a
# few writes and prints what arrived in the stream, then stops everything and deletes the
# directory. Missing PostgreSQL / nats-server packages are installed with apt-get (Debian,
# Ubuntu; as root or with sudo). Rust comes from https://rustup.rs.
#
# Environment. The script honours exactly these variables:
#   WAL_LISTENER_BIN=path  run that binary instead of building one (the test suite runs the
#                          script this way); the script's own knob, not a service setting
#   PG_BIN=dir             the PostgreSQL server binaries (initdb, pg_ctl, psql)
#   CARGO_TARGET_DIR etc.  cargo's own; the binary's path is the one cargo reports
# Every other WAL_* variable of your shell is removed before the service starts, so settings
# meant for another wal-listener cannot change the demo. The service's settings are config.yml
# plus the WAL_* overrides this script passes (ports, script, log format).
#
# On any failure the script says what failed and shows the end of the service's log before it
# cleans up; when the service itself exited, the script's exit status is the service's.
set -euo pipefail

# Read our own knob and resolve a relative path before leaving the caller's directory.
BIN=${WAL_LISTENER_BIN:-}
if [[ -n $BIN && $BIN == */* && $BIN != /* ]]; then BIN=$PWD/$BIN; fi
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^WAL_' || true)

cd "$(dirname "$0")"

keep=false
case "${1:-}" in
  "") ;;
  --keep) keep=true ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) printf 'quickstart: unknown argument %s (use --keep, --help, or nothing)\n' "$1" >&2; exit 2 ;;
esac

IO_TIMEOUT=5       # seconds for one connection: connect, request, whole answer
READY_TIMEOUT=60   # seconds for wal-listener to report ready
EVENTS_TIMEOUT=60  # seconds for the demo's events to reach the stream
STREAM=wal_listener

say() { printf '\n==> %s\n' "$*"; }
die() { # message [exit status]
  printf 'quickstart: %s\n' "$1" >&2
  exit "${2:-1}"
}
# Under `set -e` a failing command ends the script; say which one.
trap 'printf "quickstart: line %s: \`%s\` failed (status %s)\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

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

if [ -n "$BIN" ]; then
  if [[ $BIN == */* ]]; then
    [ -f "$BIN" ] && [ -x "$BIN" ] || die "WAL_LISTENER_BIN=$BIN is not an executable file (unset it to build one with cargo)"
  else
    BIN=$(command -v "$BIN") || die "WAL_LISTENER_BIN=$BIN: no such command on PATH (unset it to build one with cargo)"
  fi
else
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from https://rustup.rs, then run this again"
  say "building wal-listener with cargo (the first build compiles about 250 crates: a few minutes)"
  # Progress and diagnostics go to stderr as usual; stdout carries cargo's JSON messages, which
  # name the executable wherever cargo put it (CARGO_TARGET_DIR, build.target-dir, …).
  status=0
  messages=$(cargo build --locked --bin wal-listener --message-format=json-render-diagnostics) || status=$?
  [ "$status" -eq 0 ] || die "cargo build failed (status $status); its messages are above" "$status"
  BIN=$(printf '%s\n' "$messages" | grep '"reason":"compiler-artifact"' | grep '"name":"wal-listener"' |
    grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4 || true)
  [ -n "$BIN" ] || die "cargo build succeeded but reported no wal-listener executable in its JSON messages"
  [ -x "$BIN" ] || die "cargo reported $BIN as the wal-listener executable, but it is not an executable file"
  echo "built $BIN"
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
SERVICE_LOG=$WORK/wal-listener.log
service_pid="" nats_pid=""

stop_pid() { # pid: SIGTERM, SIGKILL after 10 s, reap
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}
show_log() { # file what: its last lines, on stderr (the file is about to be deleted)
  [ -s "$1" ] || return 0
  printf '\nquickstart: the last lines of the %s log:\n' "$2" >&2
  tail -n 30 "$1" | sed 's/^/  | /' >&2
}
cleanup() {
  local status=$?
  set +e
  trap - ERR
  # A failure (not Ctrl-C): show what the service said before its log is deleted.
  if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ]; then
    show_log "$SERVICE_LOG" wal-listener
  fi
  [ -n "$service_pid" ] && stop_pid "$service_pid"
  [ -n "$nats_pid" ] && stop_pid "$nats_pid"
  [ -f "$WORK/pg/postmaster.pid" ] && (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate -w -t 30 stop >/dev/null 2>&1)
  rm -rf "$WORK"
  if [ "$status" -eq 130 ] || [ "$status" -eq 143 ]; then say "stopped; removed $WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run one of this script's functions in a child bash, killed after that many seconds (then the
# status is 124). The functions use bash builtins only, so nothing outlives the timeout.
bounded() { # seconds function args…
  local secs=$1 fn=$2
  shift 2
  timeout "$secs" bash -c "$(declare -f "$fn"); $fn \"\$@\"" "$fn" "$@"
}

# A port nobody listens on, below the kernel's ephemeral range (outgoing connections take
# those); a start that still finds its port taken is retried with another.
probe() { exec 5<>"/dev/tcp/127.0.0.1/$1"; }
free_port() {
  local port
  for _ in $(seq 100); do
    port=$(((RANDOM % 12000) + 20000))
    if ! bounded 2 probe "$port" 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free TCP port found in 20000-31999 after 100 tries"
}

say "starting PostgreSQL ($PG_BIN) with wal_level=logical"
(cd "$WORK" && as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1) ||
  die "initdb failed: $(tail -n 20 "$WORK/initdb.log")"
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
  (cd "$WORK" && as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -o "-p $PG_PORT" -w -t 60 start >/dev/null 2>&1) && break
  grep -q "could not bind\|Address already in use" "$WORK/pg.log" && [ "$attempt" -lt 5 ] ||
    die "PostgreSQL did not start within 60 s; its log says: $(tail -n 20 "$WORK/pg.log")"
done
echo "PostgreSQL on 127.0.0.1:$PG_PORT"
psql_() { timeout 60 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }

# --- tiny clients in plain bash: HTTP and the NATS protocol over /dev/tcp -------------------
# Run through `bounded`: a port that accepts and never answers costs $IO_TIMEOUT s, not a hang.
raw_http_get() { # port path → status line, headers and body
  local line
  exec 4<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&4
  while IFS= read -r line <&4 || [ -n "$line" ]; do printf '%s\n' "${line%$'\r'}"; done
}
http_get() { bounded "$IO_TIMEOUT" raw_http_get "$HTTP_PORT" "$1"; }
raw_nats_request() { # port subject payload → the reply's payload
  local line reply
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  IFS= read -r line <&3 || exit 1 # INFO
  LC_ALL=C
  printf 'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _INBOX.quickstart 1\r\nPUB %s _INBOX.quickstart %d\r\n%s\r\nPING\r\n' \
    "$2" "${#3}" "$3" >&3
  while IFS= read -r line <&3; do
    case ${line%$'\r'} in
      MSG*) IFS= read -r reply <&3 && printf '%s\n' "${reply%$'\r'}" && exit 0 ;;
      HMSG* | -ERR*) exit 1 ;; # no responders (JetStream not ready yet) or an error
    esac
  done
  exit 1
}
nats_request() { bounded "$IO_TIMEOUT" raw_nats_request "$NATS_PORT" "$1" "$2"; }

service_alive() { [ -n "$service_pid" ] && kill -0 "$service_pid" 2>/dev/null; }
reap_service() { # the exited service's status → $service_status
  service_status=0
  wait "$service_pid" 2>/dev/null || service_status=$?
  service_pid=""
}
service_died() { # what we were doing → exit with the service's status (cleanup shows its log)
  reap_service
  # It never exits 0 by itself (only when told to stop); do not let that look like success.
  die "wal-listener exited with status $service_status $1" "$((service_status == 0 ? 1 : service_status))"
}
wait_for() { # description seconds command…: retry until it succeeds, the service dies, or time is up
  local what=$1 secs=$2 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ -z "$service_pid" ] || service_alive || service_died "while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after $secs s waiting for $what"
    sleep 0.1
  done
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
  stop_pid "$nats_pid"
  nats_pid=""
  [ "$attempt" -lt 5 ] || die "nats-server did not answer JetStream requests within 10 s; its log says: $(tail -n 20 "$WORK/nats.log")"
done
echo "nats-server on 127.0.0.1:$NATS_PORT"

# --- the service ----------------------------------------------------------------------------
say "starting wal-listener with config.yml and examples/route.lua"
# 0: ready; 1: the service exited. Ends the script when the port stalls or time is up.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT)) answer status
  while :; do
    status=0
    answer=$(http_get /ready 2>/dev/null) || status=$?
    [ "$status" -eq 0 ] && [[ $answer == *" 200 "* ]] && return 0
    [ "$status" -ne 124 ] || die "timed out after $IO_TIMEOUT s waiting for an answer to GET http://127.0.0.1:$HTTP_PORT/ready: the port accepts connections but nothing replies"
    service_alive || return 1
    [ "$SECONDS" -lt "$deadline" ] ||
      die "timed out after $READY_TIMEOUT s waiting for wal-listener to be ready (GET /ready: $(tail -n 1 <<<"${answer:-no answer}"))"
    sleep 0.1
  done
}
for attempt in 1 2 3 4 5; do
  HTTP_PORT=$(free_port)
  WAL_DATABASE_HOST=127.0.0.1 WAL_DATABASE_PORT=$PG_PORT \
    WAL_PUBLISHER_ADDRESS=nats://127.0.0.1:$NATS_PORT \
    WAL_LISTENER_SERVERHOST=127.0.0.1 WAL_LISTENER_SERVERPORT=$HTTP_PORT \
    WAL_SCRIPTS_PATH=examples/route.lua WAL_LOGGER_FMT=text \
    "$BIN" -c config.yml >"$SERVICE_LOG" 2>&1 &
  service_pid=$!
  wait_ready && break
  # It exited: a port taken since we picked it is worth another try, anything else is not.
  grep -q "cannot listen" "$SERVICE_LOG" && [ "$attempt" -lt 5 ] && { reap_service; continue; }
  service_died "at start ($BIN -c config.yml)"
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
# One transaction per statement, as an application would.
printf '%s\n' "$sql" | psql_ -f - || die "psql could not run the demo's statements (status $?; 124 means it took over 60 s); its messages are above"

expected=5
stored() { nats_request "\$JS.API.STREAM.INFO.$STREAM" '' | grep -o '"messages":[0-9]*' | head -n 1 | cut -d: -f2; }
enough() { local n; n=$(stored); [ "${n:-0}" -ge "$expected" ]; }
wait_for "$expected events in stream $STREAM" "$EVENTS_TIMEOUT" enough

# A message of the stream as "subject  payload"; $last_seq is its sequence number.
get_message() { # request (JSON) → 0 printed; 1 no such message (yet)
  local reply subject data
  reply=$(nats_request "\$JS.API.STREAM.MSG.GET.$STREAM" "$1") || return 1
  [[ $reply == *'"message":'* ]] || return 1
  subject=$(sed -n 's/.*"subject":"\([^"]*\)".*/\1/p' <<<"$reply")
  data=$(sed -n 's/.*"data":"\([^"]*\)".*/\1/p' <<<"$reply" | base64 -d)
  last_seq=$(sed -n 's/.*"seq":\([0-9]*\).*/\1/p' <<<"$reply")
  printf '%s  %s\n' "$subject" "$data"
}

say "the events in JetStream stream $STREAM (subject  payload)"
for seq in $(seq 1 "$expected"); do
  get_message "{\"seq\":$seq}" || die "could not read message $seq of stream $STREAM from nats://127.0.0.1:$NATS_PORT"
done

say "a few metrics (GET /metrics)"
metrics=$(http_get /metrics) || die "GET http://127.0.0.1:$HTTP_PORT/metrics failed or got no answer within $IO_TIMEOUT s"
grep -E '^(published_events_total|wal_listener_replication_lag_bytes|wal_listener_publish_latency_seconds_count)' <<<"$metrics" | sed 's/^/  /'

if $keep; then
  say "everything keeps running until Ctrl-C; make your own writes:"
  echo "  PostgreSQL    $PG_BIN/psql -h 127.0.0.1 -p $PG_PORT -U postgres"
  echo "  NATS          nats://127.0.0.1:$NATS_PORT (stream $STREAM, subjects $STREAM.>)"
  echo "  wal-listener  http://127.0.0.1:$HTTP_PORT/metrics; log: $SERVICE_LOG"
  say "following stream $STREAM: each new message as it arrives (subject  payload); Ctrl-C stops and cleans up"
  next=$((last_seq + 1))
  while :; do
    # next_by_subj: the first message at or after $next, so a gap (a deleted message) is skipped.
    if get_message "{\"seq\":$next,\"next_by_subj\":\"$STREAM.>\"}"; then
      next=$((last_seq + 1))
      continue
    fi
    service_alive || service_died "while the stream was being followed"
    kill -0 "$nats_pid" 2>/dev/null || die "nats-server exited; its log says: $(tail -n 20 "$WORK/nats.log")"
    sleep 0.5
  done
fi
say "quick start OK: $expected events published; stopping and removing $WORK"
