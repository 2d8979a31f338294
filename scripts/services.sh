#!/usr/bin/env bash
# Real Apache Kafka (KRaft, one combined broker+controller) and Apache Cassandra 5.0 for
# the integration tests, from their jars on Maven Central, run with `java -cp`, bound to
# 127.0.0.1 only. No Docker.
#
#   bash scripts/services.sh up [kafka|cassandra]    fetch jars once, start, wait until serving
#   bash scripts/services.sh status                  exit 0 only if every service serves
#   bash scripts/services.sh down [kafka|cassandra]  stop what this script started (by PID)
#   bash scripts/services.sh clean                   down, then delete data and logs (not jars)
#
# Everything lives in .services/ (ignored by git). Ports and timeouts come from the
# environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), CASSANDRA_PORT (9042),
# CASSANDRA_STORAGE_PORT (7000), KAFKA_READY_S (120), CASSANDRA_READY_S (240).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/scripts/services"
STATE="$ROOT/.services"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
CASSANDRA_PORT="${CASSANDRA_PORT:-9042}"
CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-7000}"
KAFKA_READY_S="${KAFKA_READY_S:-120}"
CASSANDRA_READY_S="${CASSANDRA_READY_S:-240}"
# How long `down` waits after SIGTERM before SIGKILL.
STOP_WAIT_S=30
PYTHON="${PYTHON:-python3}"

log() { printf '[services] %s\n' "$*" >&2; }

fetch() {  # fetch NAME: resolve the server's jars into .services/NAME/lib (once)
    local name="$1" lib="$STATE/$1/lib"
    if [ -f "$lib/.complete" ]; then return 0; fi
    log "fetching $name jars from Maven Central (once)"
    rm -rf "$lib"
    mkdir -p "$lib"
    if ! mvn -q -B -f "$HERE/$name-pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$lib" -DincludeScope=runtime >"$STATE/$name/mvn.log" 2>&1; then
        tail -n 40 "$STATE/$name/mvn.log" >&2
        log "fetching $name jars failed"
        return 1
    fi
    touch "$lib/.complete"
}

pid_alive() {  # pid_alive FILE: the PID recorded in FILE is a running process
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

kafka_serves() {
    "$PYTHON" - "$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}", "socket.timeout.ms": 3000})
metadata = admin.list_topics(timeout=5)
sys.exit(0 if metadata.brokers else 1)
EOF
}

cassandra_serves() {
    "$PYTHON" - "$CASSANDRA_PORT" <<'EOF' >/dev/null 2>&1
import sys
from cassandra.cluster import Cluster
cluster = Cluster(["127.0.0.1"], port=int(sys.argv[1]), protocol_version=4, connect_timeout=5)
try:
    session = cluster.connect()
    session.execute("SELECT release_version FROM system.local", timeout=5).one()
finally:
    cluster.shutdown()
EOF
}

wait_ready() {  # wait_ready NAME CHECK TIMEOUT_S
    local name="$1" check="$2" timeout_s="$3" started now
    started=$(date +%s)
    while true; do
        if ! pid_alive "$STATE/$name.pid"; then
            log "$name exited during start-up; last lines of $STATE/$name.log:"
            tail -n 40 "$STATE/$name.log" >&2 || true
            return 1
        fi
        if "$check"; then
            now=$(date +%s)
            log "$name serves (ready after $((now - started)) s, pid $(cat "$STATE/$name.pid"))"
            return 0
        fi
        now=$(date +%s)
        if [ $((now - started)) -ge "$timeout_s" ]; then
            log "$name not serving after $timeout_s s; last lines of $STATE/$name.log:"
            tail -n 40 "$STATE/$name.log" >&2 || true
            return 1
        fi
        sleep 2
    done
}

start_kafka() {
    local dir="$STATE/kafka"
    if pid_alive "$STATE/kafka.pid" && kafka_serves; then log "kafka already serves"; return 0; fi
    fetch kafka
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
    cat >"$dir/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $STATE/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d %p %c{1} %m%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
EOF
    if [ ! -f "$dir/data/meta.properties" ]; then
        local cluster_id
        cluster_id=$("$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
        java -cp "$dir/lib/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
            kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >>"$STATE/kafka.log" 2>&1 \
            || { tail -n 40 "$STATE/kafka.log" >&2; log "kafka storage format failed"; return 1; }
    fi
    log "starting kafka on 127.0.0.1:$KAFKA_PORT"
    nohup java -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        -cp "$dir/lib/*" kafka.Kafka "$dir/server.properties" >>"$STATE/kafka.log" 2>&1 &
    echo $! >"$STATE/kafka.pid"
    wait_ready kafka kafka_serves "$KAFKA_READY_S"
}

CASSANDRA_JVM_FLAGS=(
    -Xms1G -Xmx1G -Xmn256M -XX:+UseG1GC -Xss512k
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
)

start_cassandra() {
    local dir="$STATE/cassandra"
    if pid_alive "$STATE/cassandra.pid" && cassandra_serves; then log "cassandra already serves"; return 0; fi
    fetch cassandra
    mkdir -p "$dir/data" "$dir/tmp" "$dir/conf"
    cat >"$dir/conf/cassandra.yaml" <<EOF
cluster_name: ledger-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CASSANDRA_PORT
start_native_transport: true
commitlog_sync: periodic
commitlog_sync_period: 10000ms
data_file_directories: [$dir/data/data]
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 16
concurrent_compactors: 1
auto_snapshot: false
# The projector sends unlogged batches of up to 100 rows (about 30 KiB at most).
batch_size_warn_threshold: 64KiB
EOF
    cat >"$dir/conf/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$STATE/cassandra.log</file>
    <encoder><pattern>%d %-5level [%thread] %logger{20} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
    log "starting cassandra on 127.0.0.1:$CASSANDRA_PORT"
    nohup java "${CASSANDRA_JVM_FLAGS[@]}" \
        -Dcassandra-foreground=yes \
        -Dcassandra.config="file://$dir/conf/cassandra.yaml" \
        -Dcassandra.storagedir="$dir/data" \
        -Dlogback.configurationFile="$dir/conf/logback.xml" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -Dcassandra.ring_delay_ms=100 \
        -Dcassandra.jmx.local.port=7199 \
        -Djava.io.tmpdir="$dir/tmp" -Djna.tmpdir="$dir/tmp" \
        -cp "$dir/conf:$dir/lib/*" org.apache.cassandra.service.CassandraDaemon >>"$STATE/cassandra.log" 2>&1 &
    echo $! >"$STATE/cassandra.pid"
    wait_ready cassandra cassandra_serves "$CASSANDRA_READY_S"
}

stop() {  # stop NAME: SIGTERM the recorded PID, wait, then SIGKILL
    local name="$1" pidfile="$STATE/$1.pid" pid waited=0
    if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$name not running"; return 0; fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$STOP_WAIT_S" ]; do sleep 1; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in $STOP_WAIT_S s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
    log "$name stopped (pid $pid)"
}

status() {
    local failed=0
    # A server another checkout started serves as well as ours (its PID file is there).
    local where
    if kafka_serves; then
        where=""; pid_alive "$STATE/kafka.pid" || where=" (not started by this checkout)"
        log "kafka: serving on 127.0.0.1:$KAFKA_PORT$where"
    else log "kafka: DOWN"; failed=1; fi
    if cassandra_serves; then
        where=""; pid_alive "$STATE/cassandra.pid" || where=" (not started by this checkout)"
        log "cassandra: serving on 127.0.0.1:$CASSANDRA_PORT$where"
    else log "cassandra: DOWN"; failed=1; fi
    return "$failed"
}

mkdir -p "$STATE/kafka" "$STATE/cassandra"
command="${1:-}"
which="${2:-all}"
case "$command" in
    up)
        if [ "$which" = all ] || [ "$which" = kafka ]; then start_kafka; fi
        if [ "$which" = all ] || [ "$which" = cassandra ]; then start_cassandra; fi
        ;;
    down)
        if [ "$which" = all ] || [ "$which" = cassandra ]; then stop cassandra; fi
        if [ "$which" = all ] || [ "$which" = kafka ]; then stop kafka; fi
        ;;
    status) status ;;
    clean)
        stop cassandra; stop kafka
        rm -rf "$STATE/kafka/data" "$STATE/cassandra/data" "$STATE/kafka.log" "$STATE/cassandra.log"
        log "data and logs removed (jars kept)"
        ;;
    *) echo "usage: $0 up|down|status|clean [kafka|cassandra]" >&2; exit 2 ;;
esac
