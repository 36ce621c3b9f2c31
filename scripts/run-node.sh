#!/usr/bin/env bash
# A single-node Ferry on this machine, for trying it out (`make run` calls this after `make deps`
# and `cargo build --release --bins`):
#   nats-server with JetStream under ./.ferry/nats, the five services from target/release with the
#   node settings file ./.ferry/node.toml, logs in ./.ferry/logs, and the quickstart task
#   (examples/quickstart.toml: ./.ferry/demo/inbox -> ./.ferry/demo/outbox every minute).
# Ctrl-C (SIGINT) or SIGTERM stops the services (SIGTERM, they drain), then nats-server.
#
# Ports (all on 127.0.0.1) can be moved with these variables:
#   FERRY_NATS_PORT (4222)  FERRY_NATS_HTTP_PORT (8222, NATS monitoring)
#   FERRY_METRICS_BASE_PORT (9181: scheduler, +1 file-collector, +2 transfer, +3 cert-handler,
#   +4 failover-coordinator)
# and, for tests of this script: FERRY_RUN_DIR (the directory holding .ferry/, default the
# repository), FERRY_BIN_DIR (default target/release), FERRY_NATS_SERVER (the nats-server binary).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$(cd "${FERRY_RUN_DIR:-$ROOT}" && pwd)
cd "$RUN_DIR"
STATE=$RUN_DIR/.ferry
LOGS=$STATE/logs
BIN=${FERRY_BIN_DIR:-$ROOT/target/release}
NODE_TOML=$STATE/node.toml
NATS_BIN=${FERRY_NATS_SERVER:-$ROOT/.ferry/tools/bin/nats-server}
NATS_PORT=${FERRY_NATS_PORT:-4222}
NATS_HTTP_PORT=${FERRY_NATS_HTTP_PORT:-8222}
METRICS_BASE=${FERRY_METRICS_BASE_PORT:-9181}
# Start order: the coordinator first (it declares the node active and sets the epoch).
SERVICES=(failover-coordinator cert-handler scheduler file-collector transfer)
declare -A METRICS_PORT=(
  [scheduler]=$METRICS_BASE
  [file-collector]=$((METRICS_BASE + 1))
  [transfer]=$((METRICS_BASE + 2))
  [cert-handler]=$((METRICS_BASE + 3))
  [failover-coordinator]=$((METRICS_BASE + 4))
)

if [ -t 1 ]; then BOLD=$'\e[1m'; RED=$'\e[31m'; RESET=$'\e[0m'; else BOLD=; RED=; RESET=; fi
say() { echo "${BOLD}ferry:${RESET} $*"; }
fail() { echo "${RED}ferry: $*${RESET}" >&2; }

# --- processes we started ---------------------------------------------------------------------
declare -A PID=()  # name -> pid
STOPPING=0

alive() {
  # A reaped or zombie process counts as gone.
  [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# stop_pids SECONDS PID...: SIGTERM, wait up to SECONDS, then SIGKILL what is left.
stop_pids() {
  local grace=$1 deadline=$((SECONDS + $1)) pid left
  shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
      fail "still running ${grace}s after SIGTERM, killing: ${left[*]}"
      for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
      break
    fi
    sleep 0.2
  done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

stop_all() {
  [ $STOPPING -eq 1 ] && return
  STOPPING=1
  trap '' INT TERM
  local services=() name
  for name in "${SERVICES[@]}"; do [ -n "${PID[$name]:-}" ] && services+=("${PID[$name]}"); done
  if [ ${#services[@]} -gt 0 ]; then
    say "stopping the services (they finish in-flight files first)"
    stop_pids 40 "${services[@]}"
  fi
  if [ -n "${PID[nats-server]:-}" ]; then
    say "stopping nats-server"
    stop_pids 15 "${PID[nats-server]}"
  fi
  say "stopped"
}

on_signal() {
  echo
  stop_all
  exit 0
}
trap on_signal INT TERM
trap stop_all EXIT

# died NAME: report a process that exited on its own, with its log tail, and stop everything.
died() {
  local name=$1 status=0 log=$LOGS/$1.log
  wait "${PID[$name]}" 2>/dev/null || status=$?
  unset "PID[$name]"
  fail "$name exited unexpectedly (exit status $status); last lines of $log:"
  tail -n 30 "$log" >&2 || true
  stop_all
  exit 1
}

check_alive() {
  local name
  for name in "${!PID[@]}"; do alive "${PID[$name]}" || died "$name"; done
}

# start NAME LOG COMMAND...: run in its own process group, so a terminal Ctrl-C reaches only this
# script, which then stops everything in order.
start() {
  local name=$1 log=$2
  shift 2
  echo "--- $(date -u +%Y-%m-%dT%H:%M:%SZ) started by scripts/run-node.sh ---" >>"$log"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  PID[$name]=$!
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status PORT PATH: the HTTP status code of GET http://127.0.0.1:PORT/PATH (bash only, no curl).
http_status() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS=' ' read -r -t 2 _ code _ <&3 || exit 1
    echo "$code"
  ) 2>/dev/null
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s while every process is alive.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    check_alive
    if [ $SECONDS -ge $deadline ]; then
      fail "timed out waiting for $what; logs are in $LOGS"
      exit 1
    fi
    sleep 0.2
  done
}

# --- preflight --------------------------------------------------------------------------------
[ -x "$NATS_BIN" ] || { fail "$NATS_BIN is missing: run \`make deps\` (make run does)"; exit 1; }
for name in "${SERVICES[@]/#/ferry-}" ferry; do
  [ -x "$BIN/$name" ] || { fail "$BIN/$name is missing: run \`cargo build --release --bins\` (make run does)"; exit 1; }
done

check_port() {
  if port_busy "$1"; then
    fail "port 127.0.0.1:$1 ($2) is already in use: is another Ferry or NATS running?"
    fail "stop it, or choose another port: $3=<port> make run"
    exit 1
  fi
}
check_port "$NATS_PORT" "NATS client port" FERRY_NATS_PORT
check_port "$NATS_HTTP_PORT" "NATS monitoring port" FERRY_NATS_HTTP_PORT
for name in "${SERVICES[@]}"; do
  check_port "${METRICS_PORT[$name]}" "metrics of ferry-$name" FERRY_METRICS_BASE_PORT
done

mkdir -p "$STATE/nats" "$LOGS" "$STATE/data" "$STATE/demo/inbox" "$STATE/demo/outbox"

# --- NATS users -------------------------------------------------------------------------------
# One nkey user per service and per operator role, each allowed only what it needs (ADR 007).
# Seeds stay in .ferry/nats-keys across restarts; the ferry CLI here uses the admin's (cli.nk).
"$BIN/ferry" nats setup --dir "$STATE/nats-keys" --nodes node1 --cli-role admin >/dev/null

# --- nats-server ------------------------------------------------------------------------------
cat >"$STATE/nats.conf" <<EOF
# Written by scripts/run-node.sh on every start.
server_name: ferry-node1
listen: "127.0.0.1:$NATS_PORT"
http: "127.0.0.1:$NATS_HTTP_PORT"
max_payload: 8MB
jetstream {
  store_dir: "$STATE/nats"
}
# Every client authenticates; anonymous connections are refused.
include "nats-keys/auth.conf"
EOF
say "starting nats-server on 127.0.0.1:$NATS_PORT (JetStream in .ferry/nats, log .ferry/logs/nats-server.log)"
start nats-server "$LOGS/nats-server.log" "$NATS_BIN" -c "$STATE/nats.conf"
nats_ready() { [ "$(http_status "$NATS_HTTP_PORT" '/healthz?js-enabled-only=true')" = 200 ]; }
wait_until 30 "nats-server (JetStream) to be ready" nats_ready

# --- the five services ------------------------------------------------------------------------
cat >"$NODE_TOML" <<EOF
# Node settings, written by scripts/run-node.sh on every start. Every service of the node and the
# ferry CLI read it (--config or FERRY_CONFIG; the CLI reads ./.ferry/node.toml without them);
# FERRY_* variables override it, e.g.
# FERRY_TRANSFER__CONCURRENCY=4. See libs/service/src/settings.rs for every field.
node_id = "node1"
nats_url = "nats://127.0.0.1:$NATS_PORT"
data_dir = "$STATE/data"

# Each service connects as its own NATS user; the ferry CLI as {service} = cli (the admin role).
[nats]
nkey_seed_file = "$STATE/nats-keys/{node}/{service}.nk"

[scheduler]
metrics_addr = "127.0.0.1:${METRICS_PORT[scheduler]}"

[file_collector]
metrics_addr = "127.0.0.1:${METRICS_PORT[file-collector]}"

[transfer]
metrics_addr = "127.0.0.1:${METRICS_PORT[transfer]}"

[cert_handler]
metrics_addr = "127.0.0.1:${METRICS_PORT[cert-handler]}"

[failover_coordinator]
metrics_addr = "127.0.0.1:${METRICS_PORT[failover-coordinator]}"
EOF

export RUST_LOG=${RUST_LOG:-info} NO_COLOR=1
for name in "${SERVICES[@]}"; do
  say "starting ferry-$name (metrics 127.0.0.1:${METRICS_PORT[$name]}, log .ferry/logs/$name.log)"
  start "$name" "$LOGS/$name.log" "$BIN/ferry-$name" --config "$NODE_TOML"
done
for name in "${SERVICES[@]}"; do
  healthy() { [ "$(http_status "${METRICS_PORT[$name]}" /healthz)" = 200 ]; }
  wait_until 60 "ferry-$name to be healthy" healthy
done

ferry() { "$BIN/ferry" --config "$NODE_TOML" "$@"; }
wait_until 60 "\`ferry failover status\` to answer" ferry failover status
wait_until 60 "\`ferry scheduler status\` to answer" ferry scheduler status

# --- the quickstart task ----------------------------------------------------------------------
# Relative folders in the file resolve against the working directory: $RUN_DIR.
quickstart=$ROOT/examples/quickstart.toml
[ "$RUN_DIR" = "$ROOT" ] && quickstart=examples/quickstart.toml
say "applying examples/quickstart.toml"
if applied=$(ferry apply -f "$quickstart" 2>&1); then
  echo "$applied"
elif grep -q -- "--prune" <<<"$applied"; then
  # A configuration applied in an earlier session holds more than the quickstart: keep it.
  echo "$applied"
  say "the stored configuration has tasks or hosts the quickstart does not: it is left as it is (\`ferry apply --prune -f examples/quickstart.toml\` replaces it)"
else
  echo "$applied" >&2
  fail "applying examples/quickstart.toml failed"
  exit 1
fi
echo
ferry failover status
echo
ferry tasks list

cli=$BIN/ferry
[ "$RUN_DIR" = "$ROOT" ] && [ "$BIN" = "$ROOT/target/release" ] && cli=target/release/ferry
[ "$NATS_PORT" != 4222 ] && cli="FERRY_CONFIG=.ferry/node.toml $cli"
cat <<EOF

${BOLD}Ferry is running: one node, five services, the quickstart task.${RESET} Try, in another terminal here:

  echo hello > .ferry/demo/inbox/hello.txt   # within a minute it moves to .ferry/demo/outbox/
  $cli tasks list                  # the task, its schedule and next run
  $cli task run quickstart --wait  # run it now instead of waiting for the schedule
  $cli runs list                   # finished runs: files delivered, skipped, failed
  $cli runs show RUN_ID            # one run, file by file
  $cli audit                       # every file movement: paths, size, SHA-256, node, epoch
  $cli failover status             # this node's role (active) and epoch
  $cli --json runs list            # every command has --json

  metrics and health:  curl 127.0.0.1:${METRICS_PORT[scheduler]}/metrics (scheduler), :${METRICS_PORT[file-collector]} (file-collector),
                       :${METRICS_PORT[transfer]} (transfer), :${METRICS_PORT[cert-handler]} (cert-handler), :${METRICS_PORT[failover-coordinator]} (failover-coordinator); /healthz on each
  NATS monitoring:     curl 127.0.0.1:$NATS_HTTP_PORT/jsz
  logs:                .ferry/logs/<service>.log

Press Ctrl-C to stop everything.
EOF

# --- wait -------------------------------------------------------------------------------------
while :; do
  sleep 1 &
  wait $! || true
  check_alive
done
