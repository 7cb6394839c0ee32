#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft: broker + controller in one JVM) for development and CI.
#
# Usage: deploy/local/kafka.sh start|stop|status|restart|reset|probe|logs
#
#   start    fetch the jars if needed (Maven), format storage if needed, start the broker in the
#            background and return once it answers Kafka Metadata requests. Harmless if running.
#   stop     stop the broker recorded in the pid file (SIGTERM, then SIGKILL after the timeout).
#   status   "running"/"not running" with port and pid; exit 0 if running, 3 if not.
#   restart  stop, then start.
#   reset    stop, then delete the run dir (data + logs) so the next start is a fresh broker.
#   probe    exit 0 if any Kafka broker answers Metadata on 127.0.0.1:$KAFKA_PORT, else non-zero.
#   logs     print the last lines of the broker logs.
#
# Environment:
#   KAFKA_PORT             client (PLAINTEXT) port, default 9092
#   KAFKA_CONTROLLER_PORT  controller port, default KAFKA_PORT+1
#   KAFKA_VERSION          Kafka release fetched from Maven Central, default 4.1.1
#   KAFKA_HEAP             max JVM heap, default 768m
#   KAFKA_RESET=1          with start: wipe the run dir first (fresh cluster, no topics)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer, default 90
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL, default 30
#   KAFKA_CACHE_DIR        jars and run dirs, default <repo>/.cache/kafka
#   KAFKA_JVM_OPTS         extra JVM options (word-split)
#   KAFKA_EXTRA_PROPERTIES extra lines appended to the generated server.properties
#
# Layout:
#   $KAFKA_CACHE_DIR/<version>/lib/      broker classpath (written once, marker file .complete)
#   $KAFKA_CACHE_DIR/run-<port>/         server.properties, kafka.pid, data/, logs/
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

HOST=127.0.0.1
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_HEAP="${KAFKA_HEAP:-768m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_CACHE_DIR="${KAFKA_CACHE_DIR:-$REPO_ROOT/.cache/kafka}"

POM_FILE="$SCRIPT_DIR/kafka-pom.xml"
LOG4J_FILE="$SCRIPT_DIR/log4j2.properties"

log() { printf 'kafka.sh: %s\n' "$*"; }
err() { printf 'kafka.sh: error: %s\n' "$*" >&2; }
die() { err "$*"; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

for _var in KAFKA_PORT KAFKA_START_TIMEOUT KAFKA_STOP_TIMEOUT; do
    is_uint "${!_var}" || die "$_var must be a non-negative integer (got '${!_var}')"
done
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
is_uint "$KAFKA_CONTROLLER_PORT" || die "KAFKA_CONTROLLER_PORT must be an integer"
for _p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    ((_p >= 1 && _p <= 65535)) || die "port $_p is out of range"
done
[[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] ||
    die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both $KAFKA_PORT)"
[[ "$KAFKA_VERSION" =~ ^[0-9A-Za-z._-]+$ ]] || die "bad KAFKA_VERSION '$KAFKA_VERSION'"

VERSION_DIR="$KAFKA_CACHE_DIR/$KAFKA_VERSION"
LIB_DIR="$VERSION_DIR/lib"
LIB_MARKER="$LIB_DIR/.complete"
RUN_DIR="$KAFKA_CACHE_DIR/run-$KAFKA_PORT"
DATA_DIR="$RUN_DIR/data"
LOG_DIR="$RUN_DIR/logs"
PID_FILE="$RUN_DIR/kafka.pid"
SERVER_PROPS="$RUN_DIR/server.properties"
SERVER_LOG="$LOG_DIR/server.log"
STDOUT_LOG="$LOG_DIR/stdout.log"

# ---------------------------------------------------------------------------------------------
# Python (stdlib only) helpers: Kafka wire-protocol probe, port check, cluster id generation.
# ---------------------------------------------------------------------------------------------
# shellcheck disable=SC2016
PY_HELPER='
import base64
import socket
import struct
import sys
import uuid


class ProbeError(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        try:
            vals = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error as exc:
            raise ProbeError("truncated response") from exc
        self.pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def nullable_string(self):
        n = self.take(">h")
        if n < 0:
            return None
        raw = self.data[self.pos:self.pos + n]
        if len(raw) != n:
            raise ProbeError("truncated string")
        self.pos += n
        return raw.decode("utf-8", "replace")


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError("connection closed by the server")
        buf += chunk
    return bytes(buf)


def call(sock, api_key, version, corr_id, body):
    # Request header v1: api_key, api_version, correlation_id, client_id (string).
    client_id = b"feedstep-kafka.sh"
    header = struct.pack(">hhih", api_key, version, corr_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    if size < 4 or size > 64 * 1024 * 1024:
        raise ProbeError("implausible response size %d" % size)
    reader = Reader(recv_exact(sock, size))
    # Response header v0 (non-flexible versions): correlation_id only.
    if reader.take(">i") != corr_id:
        raise ProbeError("correlation id mismatch")
    return reader


def probe(host, port, expect_cluster_id):
    try:
        sock = socket.create_connection((host, port), timeout=3)
    except OSError as exc:
        print("no connection to %s:%d (%s)" % (host, port, exc))
        return 1
    try:
        sock.settimeout(5)
        # ApiVersions v0 (api key 18): empty body.
        r = call(sock, 18, 0, 1, b"")
        error_code = r.take(">h")
        ranges = {}
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            ranges[key] = (lo, hi)
        if error_code != 0:
            raise ProbeError("ApiVersions error code %d" % error_code)
        if 3 not in ranges:
            raise ProbeError("broker does not list the Metadata API")
        lo, hi = ranges[3]
        version = min(hi, 8)  # 9+ are flexible (tagged fields); 2..8 share the layout used here
        if version < max(lo, 2):
            raise ProbeError("no Metadata version in 2..8 (broker supports %d..%d)" % (lo, hi))
        # Metadata (api key 3): empty topic list = brokers and cluster info only.
        body = struct.pack(">i", 0)
        if version >= 4:
            body += b"\x00"  # allow_auto_topic_creation
        if version >= 8:
            body += b"\x00\x00"  # include cluster / topic authorized operations
        r = call(sock, 3, version, 2, body)
        if version >= 3:
            r.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            bhost = r.nullable_string()
            bport = r.take(">i")
            r.nullable_string()  # rack
            brokers.append((node_id, bhost, bport))
        cluster_id = r.nullable_string()
        controller_id = r.take(">i")
    except (OSError, ProbeError) as exc:
        print("%s:%d did not answer like a ready Kafka broker: %s" % (host, port, exc))
        return 2
    finally:
        sock.close()
    desc = " ".join("%d@%s:%d" % b for b in brokers) or "-"
    if not any(b[2] == port for b in brokers):
        print("metadata lists no broker on port %d yet (brokers: %s)" % (port, desc))
        return 2
    if expect_cluster_id and cluster_id != expect_cluster_id:
        print("cluster id %s != expected %s: another Kafka answers on %s:%d"
              % (cluster_id, expect_cluster_id, host, port))
        return 4
    print("cluster_id=%s brokers=%s controller=%d metadata_v%d"
          % (cluster_id, desc, controller_id, version))
    return 0


def port_free(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Same as the JVM server socket, so TIME_WAIT leftovers do not count as "in use".
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError:
        return 1
    finally:
        s.close()
    return 0


def cluster_id():
    # 22-char url-safe base64 of a random uuid; avoid a leading "-" (parsed as an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            print(cid)
            return 0


cmd = sys.argv[1]
if cmd == "probe":
    sys.exit(probe(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
elif cmd == "port-free":
    sys.exit(port_free(sys.argv[2], int(sys.argv[3])))
elif cmd == "cluster-id":
    sys.exit(cluster_id())
sys.exit("unknown helper command %r" % cmd)
'

py() { python3 -c "$PY_HELPER" "$@"; }

# ---------------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------------
read_pid() {
    # Prints the pid from the pid file if it holds a number; returns 1 otherwise.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -d '[:space:]' <"$PID_FILE")"
    is_uint "$pid" && ((pid > 0)) || return 1
    printf '%s\n' "$pid"
}

is_our_broker() {
    # True if $1 is a live java kafka.Kafka process started with this run dir's server.properties.
    local pid="$1" cmdline
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *java* && "$cmdline" == *" kafka.Kafka $SERVER_PROPS"* ]]
}

running_pid() {
    # Prints the broker pid if the pid file points at our live broker.
    local pid
    pid="$(read_pid)" || return 1
    is_our_broker "$pid" || return 1
    printf '%s\n' "$pid"
}

cluster_id_on_disk() {
    [[ -f "$DATA_DIR/meta.properties" ]] || return 1
    sed -n '/^cluster\.id=/{s///p;q;}' "$DATA_DIR/meta.properties"
}

show_logs() {
    local n="${1:-40}" f
    for f in "$SERVER_LOG" "$STDOUT_LOG"; do
        if [[ -s "$f" ]]; then
            printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
            tail -n "$n" "$f" >&2
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# Jars
# ---------------------------------------------------------------------------------------------
pom_hash() { sha256sum "$POM_FILE" | cut -d' ' -f1; }

jars_ready() {
    [[ -f "$LIB_MARKER" ]] && grep -qx "pom_sha256=$(pom_hash)" "$LIB_MARKER"
}

fetch_jars() {
    # Runs in a subshell holding a lock, so parallel starts on two ports fetch only once.
    mkdir -p "$VERSION_DIR"
    (
        if command -v flock >/dev/null 2>&1; then
            flock -w 900 9 || die "timed out waiting for the jar-download lock $VERSION_DIR/.lock"
        fi
        jars_ready && exit 0
        command -v mvn >/dev/null 2>&1 || die "mvn not found; it is needed once to fetch the Kafka jars"
        log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIB_DIR (first run only)"
        cp "$POM_FILE" "$VERSION_DIR/pom.xml"
        tmp="$(mktemp -d "$VERSION_DIR/lib.tmp.XXXXXX")"
        if ! mvn -B -q -Dstyle.color=never -f "$VERSION_DIR/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
            >"$VERSION_DIR/mvn.log" 2>&1; then
            rm -rf "$tmp"
            tail -n 40 "$VERSION_DIR/mvn.log" >&2 || true
            die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (network? version?); see $VERSION_DIR/mvn.log"
        fi
        if [[ ! -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]]; then
            rm -rf "$tmp"
            die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
        fi
        {
            printf 'kafka_version=%s\n' "$KAFKA_VERSION"
            printf 'pom_sha256=%s\n' "$(pom_hash)"
            printf 'fetched=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        } >"$tmp/.complete"
        chmod 755 "$tmp"
        rm -rf "$LIB_DIR"
        mv "$tmp" "$LIB_DIR"
        log "fetched $(find "$LIB_DIR" -maxdepth 1 -name '*.jar' | wc -l) jars"
    ) 9>"$VERSION_DIR/.lock"
}

# ---------------------------------------------------------------------------------------------
# Config and storage
# ---------------------------------------------------------------------------------------------
check_java() {
    command -v java >/dev/null 2>&1 || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
    local line major
    line="$(java -version 2>&1 | sed -n 1p)"
    major="$(sed -E -n 's/.*version "([0-9]+)(\.[0-9]+)?.*/\1/p' <<<"$line")"
    if [[ "$major" == 1 ]]; then
        major="$(sed -E -n 's/.*version "1\.([0-9]+).*/\1/p' <<<"$line")"
    fi
    if [[ -n "$major" && "$KAFKA_VERSION" == 4.* ]] && ((major < 17)); then
        die "Kafka $KAFKA_VERSION needs Java 17+, found: $line"
    fi
}

write_config() {
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    local tmp="$SERVER_PROPS.tmp"
    cat >"$tmp" <<EOF
# Generated by deploy/local/kafka.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR

# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Fast, test-friendly defaults.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
log.retention.hours=24
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
EOF
    if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
        printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$tmp"
    fi
    mv "$tmp" "$SERVER_PROPS"
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    local cid
    cid="$(py cluster-id)"
    log "formatting storage in $DATA_DIR (cluster id $cid)"
    if ! java -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$LOG_DIR" \
        -cp "$LIB_DIR/*" kafka.tools.StorageTool format -t "$cid" -c "$SERVER_PROPS" \
        >>"$LOG_DIR/format.log" 2>&1; then
        tail -n 30 "$LOG_DIR/format.log" >&2 || true
        die "storage format failed (see $LOG_DIR/format.log)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
wait_ready() {
    local pid="$1" cid="$2" start=$SECONDS out rc
    while :; do
        if ! is_our_broker "$pid"; then
            err "the broker (pid $pid) exited during startup"
            show_logs 60
            rm -f "$PID_FILE"
            exit 1
        fi
        rc=0
        out="$(py probe "$HOST" "$KAFKA_PORT" "$cid")" || rc=$?
        if ((rc == 0)); then
            log "broker ready on $HOST:$KAFKA_PORT (pid $pid, $((SECONDS - start))s): $out"
            return 0
        fi
        if ((rc == 4)); then
            err "$out"
            exit 1
        fi
        if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
            err "broker did not answer Metadata on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s (last probe: $out)"
            show_logs 60
            log "stopping the unresponsive broker (pid $pid)"
            stop_pid "$pid"
            exit 1
        fi
        sleep 0.5
    done
}

cmd_start() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found (used for the readiness probe)"
    if [[ "${KAFKA_RESET:-0}" == 1 ]]; then
        cmd_reset
    fi

    local pid cid
    if pid="$(running_pid)"; then
        cid="$(cluster_id_on_disk || true)"
        if py probe "$HOST" "$KAFKA_PORT" "$cid" >/dev/null; then
            log "already running on $HOST:$KAFKA_PORT (pid $pid)"
            return 0
        fi
        log "broker process $pid exists but is not answering yet; waiting"
        wait_ready "$pid" "$cid"
        return 0
    fi
    if [[ -f "$PID_FILE" ]]; then
        log "removing stale pid file $PID_FILE"
        rm -f "$PID_FILE"
    fi

    check_java
    jars_ready || fetch_jars

    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if ! py port-free "$HOST" "$port"; then
            if py probe "$HOST" "$port" >/dev/null; then
                die "a Kafka broker not started by this script already listens on $HOST:$port"
            fi
            die "port $HOST:$port is in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
        fi
    done

    write_config
    format_storage
    cid="$(cluster_id_on_disk)" || die "no cluster.id in $DATA_DIR/meta.properties"

    local -a jvm_opts=(
        "-Xms256m" "-Xmx$KAFKA_HEAP"
        "-XX:+UseG1GC" "-XX:MaxGCPauseMillis=20" "-XX:+ExitOnOutOfMemoryError"
        "-Djava.awt.headless=true"
        "-Dlog4j2.configurationFile=$LOG4J_FILE"
        "-Dkafka.logs.dir=$LOG_DIR"
    )
    if [[ -n "${KAFKA_JVM_OPTS:-}" ]]; then
        local -a extra
        read -r -a extra <<<"$KAFKA_JVM_OPTS"
        jvm_opts+=("${extra[@]}")
    fi

    log "starting Kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT), run dir $RUN_DIR"
    printf '\n===== %s start (Kafka %s, port %s) =====\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$KAFKA_VERSION" "$KAFKA_PORT" >>"$STDOUT_LOG"
    rm -f "$PID_FILE"
    # The inner bash writes its own pid and execs java, so the pid file holds the JVM's pid
    # whether or not setsid had to fork. All fds are detached from the caller (pipes stay free).
    # shellcheck disable=SC2016
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        java "${jvm_opts[@]}" -cp "$LIB_DIR/*" kafka.Kafka "$SERVER_PROPS" \
        </dev/null >>"$STDOUT_LOG" 2>&1 &

    local i
    for ((i = 0; i < 100; i++)); do
        if pid="$(read_pid)" && is_our_broker "$pid"; then
            break
        fi
        sleep 0.1
    done
    if ! { pid="$(read_pid)" && is_our_broker "$pid"; }; then
        err "the broker process did not come up"
        show_logs 60
        exit 1
    fi
    wait_ready "$pid" "$cid"
}

stop_pid() {
    local pid="$1" waited=0
    kill -TERM "$pid" 2>/dev/null || true
    while is_our_broker "$pid" && ((waited < KAFKA_STOP_TIMEOUT * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if is_our_broker "$pid"; then
        log "broker (pid $pid) still alive after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((waited = 0; waited < 50; waited++)); do
            is_our_broker "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$PID_FILE"
}

cmd_stop() {
    local pid
    if ! pid="$(read_pid)"; then
        log "not running on port $KAFKA_PORT (no pid file)"
        rm -f "$PID_FILE"
        return 0
    fi
    if ! is_our_broker "$pid"; then
        log "not running on port $KAFKA_PORT (stale pid file for pid $pid; removed)"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping broker on $HOST:$KAFKA_PORT (pid $pid)"
    local start=$SECONDS
    stop_pid "$pid"
    log "stopped ($((SECONDS - start))s)"
}

cmd_status() {
    local pid out
    if pid="$(running_pid)"; then
        if out="$(py probe "$HOST" "$KAFKA_PORT" "$(cluster_id_on_disk || true)")"; then
            log "running on $HOST:$KAFKA_PORT (pid $pid, Kafka $KAFKA_VERSION): $out"
        else
            log "running on $HOST:$KAFKA_PORT (pid $pid) but not answering Metadata yet: $out"
        fi
        return 0
    fi
    pid="$(read_pid || true)"
    log "not running on $HOST:$KAFKA_PORT${pid:+ (stale pid file: $pid)}"
    if py probe "$HOST" "$KAFKA_PORT" >/dev/null; then
        log "note: a Kafka broker not managed by this script answers on $HOST:$KAFKA_PORT"
    fi
    return 3
}

cmd_reset() {
    cmd_stop
    case "$RUN_DIR" in
        */run-[0-9]*) ;;
        *) die "refusing to delete unexpected path '$RUN_DIR'" ;;
    esac
    if [[ -d "$RUN_DIR" ]]; then
        log "deleting $RUN_DIR"
        rm -rf "$RUN_DIR"
    fi
}

cmd_probe() {
    py probe "$HOST" "$KAFKA_PORT"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop && cmd_start ;;
    reset) cmd_reset ;;
    probe) cmd_probe ;;
    logs) show_logs "${2:-100}" 2>&1 ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
