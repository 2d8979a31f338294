#!/usr/bin/env bash
# The exchange as it is deployed, on this machine: `ledger run ubscore`, `ledger run engine`
# and `ledger run project` (into Cassandra), each its own background process, against the
# Kafka and Cassandra of scripts/services.sh. It never starts or stops those two: run
# `bash scripts/services.sh up` first.
#
#   bash scripts/pipeline.sh up       check Kafka and Cassandra serve, start the three services
#   bash scripts/pipeline.sh status   say which of them run (exit 0 only if all three do), each
#                                     with its last summary line (position, lag per input)
#   bash scripts/pipeline.sh down     SIGTERM what `up` started, wait, SIGKILL what is left
#
# Logs and PID files live in .pipeline/ (ignored by git): .pipeline/ubscore.log,
# .pipeline/ubscore.pid, ... The services run this checkout's code (src/ first on
# PYTHONPATH). Settings from the environment:
#   PIPELINE_TOPIC_PREFIX   a prefix on every topic and writer id (default: none)
#   PIPELINE_STORE          the projection (default: cql://127.0.0.1:$CASSANDRA_PORT/ledger)
#   PIPELINE_KAFKA          the bootstrap servers (default: 127.0.0.1:$KAFKA_PORT)
#   PIPELINE_STATE          the folder for logs and PID files (default: .pipeline)
#   PIPELINE_RUN_ARGS       more options for every `ledger run` (for example "--batch 1000")
#   PIPELINE_STOP_WAIT_S    how long `down` waits after SIGTERM before SIGKILL (30)
#   PIPELINE_START_WAIT_S   how long `up` watches the services start before it reports (3)
#   KAFKA_PORT (9092), CASSANDRA_PORT (9042), PYTHON (python3); Kafka client settings
#   (LEDGER_KAFKA_*, LEDGER_KAFKA_CONFIG) reach the services as usual.
# Exit status: 0 done; 1 a service is not running (status), did not start (up), or
# Kafka or Cassandra does not serve (up); 2 bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CASSANDRA_PORT="${CASSANDRA_PORT:-9042}"
PREFIX="${PIPELINE_TOPIC_PREFIX:-}"
STORE="${PIPELINE_STORE:-cql://127.0.0.1:$CASSANDRA_PORT/ledger}"
KAFKA="${PIPELINE_KAFKA:-127.0.0.1:$KAFKA_PORT}"
STATE="${PIPELINE_STATE:-$ROOT/.pipeline}"
STOP_WAIT_S="${PIPELINE_STOP_WAIT_S:-30}"
START_WAIT_S="${PIPELINE_START_WAIT_S:-3}"
PYTHON="${PYTHON:-python3}"
SERVICES=(ubscore engine project)

log() { printf '[pipeline] %s\n' "$*" >&2; }

ours() {  # ours NAME: the PID in NAME's PID file runs this pipeline's `ledger run NAME`
    local pidfile="$STATE/$1.pid" pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null || return 1
    # A PID file left by a crash may name a PID the system has since given to another process.
    ps -o args= -p "$pid" 2>/dev/null | grep -q "ledger.app.cli run $1"
}

start() {  # start NAME
    local name="$1" args
    args=(-m ledger.app.cli run "$name" --kafka "$KAFKA")
    if [ -n "$PREFIX" ]; then args+=(--topic-prefix "$PREFIX"); fi
    if [ "$name" = project ]; then args+=(--store "$STORE"); fi
    # shellcheck disable=SC2206 # word splitting of the extra options is wanted
    args+=(${PIPELINE_RUN_ARGS:-})
    printf '\n[pipeline] %s: %s %s\n' "$(date -u +%FT%TZ)" "$PYTHON" "${args[*]}" >>"$STATE/$name.log"
    PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" nohup "$PYTHON" "${args[@]}" \
        </dev/null >>"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
    log "$name started (pid $!, log $STATE/$name.log)"
}

stop_all() {  # SIGTERM every running service, wait for them together, SIGKILL the rest
    local name pid waited=0 running=()
    for name in "${SERVICES[@]}"; do
        if ours "$name"; then
            kill -TERM "$(cat "$STATE/$name.pid")" 2>/dev/null || true
            running+=("$name")
        else
            if [ -f "$STATE/$name.pid" ]; then log "$name not running (stale PID file removed)"; fi
            rm -f "$STATE/$name.pid"
        fi
    done
    while [ "${#running[@]}" -gt 0 ]; do
        local left=()
        for name in "${running[@]}"; do
            if ours "$name"; then left+=("$name"); else
                log "$name stopped (pid $(cat "$STATE/$name.pid"))"
                rm -f "$STATE/$name.pid"
            fi
        done
        running=("${left[@]+"${left[@]}"}")
        if [ "${#running[@]}" -eq 0 ]; then break; fi
        if [ "$waited" -ge "$STOP_WAIT_S" ]; then
            for name in "${running[@]}"; do
                pid="$(cat "$STATE/$name.pid")"
                log "$name did not stop in $STOP_WAIT_S s after SIGTERM; SIGKILL (pid $pid)"
                kill -KILL "$pid" 2>/dev/null || true
                rm -f "$STATE/$name.pid"
            done
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

up() {
    mkdir -p "$STATE"
    if ! bash "$ROOT/scripts/services.sh" status >/dev/null 2>&1; then
        log "Kafka (127.0.0.1:$KAFKA_PORT) or Cassandra (127.0.0.1:$CASSANDRA_PORT) does not serve;" \
            "run bash scripts/services.sh up first"
        exit 1
    fi
    local name started=()
    for name in "${SERVICES[@]}"; do
        if ours "$name"; then log "$name already running (pid $(cat "$STATE/$name.pid"))"; continue; fi
        start "$name"
        started+=("$name")
    done
    # A service that cannot start (a bad store URL, a damaged stream) exits at once.
    sleep "$START_WAIT_S"
    for name in "${started[@]+"${started[@]}"}"; do
        if ! ours "$name"; then
            log "$name exited during start-up; last lines of $STATE/$name.log:"
            tail -n 20 "$STATE/$name.log" >&2 || true
            stop_all
            exit 1
        fi
    done
    log "running: kafka $KAFKA${PREFIX:+ (topics $PREFIX*)}, store $STORE"
}

status() {
    local name failed=0 summary
    for name in "${SERVICES[@]}"; do
        if ours "$name"; then log "$name: running (pid $(cat "$STATE/$name.pid"), log $STATE/$name.log)"
        else log "$name: not running"; failed=1; fi
        # Its last summary line: rates, position and lag per input (lag 0: caught up).
        if [ -f "$STATE/$name.log" ]; then
            summary="$(grep ': info: .*batches' "$STATE/$name.log" | tail -n 1 || true)"
            if [ -n "$summary" ]; then log "  ${summary#*info: }"; fi
        fi
    done
    return "$failed"
}

case "${1:-}" in
    up) up ;;
    status) status ;;
    down)
        stop_all
        log "down"
        ;;
    *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
