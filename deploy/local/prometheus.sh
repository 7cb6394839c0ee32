#!/usr/bin/env bash
# Local Prometheus server for development and CI (the gate's PromQL checks, the metrics).
#
# Usage: deploy/local/prometheus.sh start|stop|status|restart|reset|probe|logs|targets-dir
#
#   start        install Prometheus if needed (Debian package, apt-get, as root), write the
#                config, start the server in the background on 127.0.0.1:$PROM_PORT and
#                return once /-/ready answers. Harmless if it is already running.
#   stop         stop the server recorded in the pid file (SIGTERM, then SIGKILL).
#   status       "running"/"not running" with port and pid; exit 0 if running, 3 if not.
#   restart      stop, then start.
#   reset        stop, then delete the run dir (TSDB data, logs, targets).
#   probe        exit 0 if a Prometheus answers /-/ready on 127.0.0.1:$PROM_PORT.
#   logs         print the last lines of the server log.
#   targets-dir  print the file_sd directory: drop a <name>.json there (Prometheus file_sd
#                format) and the server scrapes those targets within a second or two.
#
# The Debian package ships a systemd service; it plays no part here. This script runs the
# binary itself with its own config and data under the run dir, and when it installs the
# package it blocks service starts for the duration (policy-rc.d), so nothing else listens.
#
# Environment:
#   PROM_PORT              listen port on 127.0.0.1, default 9090
#   PROM_SCRAPE_INTERVAL   global scrape and evaluation interval, default 1s
#   PROM_TARGETS           comma-separated host:port list scraped as job "feedstep"
#                          (e.g. the sidecar's metrics port 127.0.0.1:9108), default none
#   PROM_CACHE_DIR         run dirs, default <repo>/.cache/prometheus
#   PROM_START_TIMEOUT     seconds to wait for /-/ready, default 60
#   PROM_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL, default 20
#   PROM_RETENTION         TSDB retention, default 1d
#   PROMETHEUS_BIN         the prometheus binary, default: the one on PATH
#   PROM_INSTALL=0         never run apt-get; fail if the binary is missing
#
# Layout: $PROM_CACHE_DIR/run-<port>/{prometheus.yml,prometheus.pid,prometheus.log,data/,targets/}
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

HOST=127.0.0.1
PROM_PORT="${PROM_PORT:-9090}"
PROM_SCRAPE_INTERVAL="${PROM_SCRAPE_INTERVAL:-1s}"
PROM_TARGETS="${PROM_TARGETS:-}"
PROM_CACHE_DIR="${PROM_CACHE_DIR:-$REPO_ROOT/.cache/prometheus}"
PROM_START_TIMEOUT="${PROM_START_TIMEOUT:-60}"
PROM_STOP_TIMEOUT="${PROM_STOP_TIMEOUT:-20}"
PROM_RETENTION="${PROM_RETENTION:-1d}"
PROM_INSTALL="${PROM_INSTALL:-1}"

log() { printf 'prometheus.sh: %s\n' "$*"; }
err() { printf 'prometheus.sh: error: %s\n' "$*" >&2; }
die() { err "$*"; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

for _var in PROM_PORT PROM_START_TIMEOUT PROM_STOP_TIMEOUT; do
    is_uint "${!_var}" || die "$_var must be a non-negative integer (got '${!_var}')"
done
((PROM_PORT >= 1 && PROM_PORT <= 65535)) || die "PROM_PORT $PROM_PORT is out of range"
[[ "$PROM_SCRAPE_INTERVAL" =~ ^[0-9]+(ms|s|m)$ ]] ||
    die "PROM_SCRAPE_INTERVAL must look like 1s, 500ms or 1m (got '$PROM_SCRAPE_INTERVAL')"
[[ "$PROM_RETENTION" =~ ^[0-9]+[smhdwy]$ ]] || die "PROM_RETENTION must look like 1d (got '$PROM_RETENTION')"

RUN_DIR="$PROM_CACHE_DIR/run-$PROM_PORT"
DATA_DIR="$RUN_DIR/data"
TARGETS_DIR="$RUN_DIR/targets"
CONFIG="$RUN_DIR/prometheus.yml"
PID_FILE="$RUN_DIR/prometheus.pid"
LOG_FILE="$RUN_DIR/prometheus.log"

# Python (stdlib) helpers: readiness probe and port check.
# shellcheck disable=SC2016
PY_HELPER='
import socket
import sys
import urllib.request

cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cmd == "ready":
    try:
        with urllib.request.urlopen("http://%s:%d/-/ready" % (host, port), timeout=3) as r:
            body = r.read(200).decode("utf-8", "replace").strip()
    except Exception as exc:  # any failure means "not ready"
        print("not ready: %s" % exc)
        sys.exit(1)
    print(body)
    sys.exit(0 if "Ready" in body else 2)
if cmd == "port-free":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
    sys.exit(0)
sys.exit("unknown helper command %r" % cmd)
'
py() { python3 -c "$PY_HELPER" "$@"; }

prometheus_bin() {
    if [[ -n "${PROMETHEUS_BIN:-}" ]]; then
        [[ -x "$PROMETHEUS_BIN" ]] || die "PROMETHEUS_BIN=$PROMETHEUS_BIN is not executable"
        printf '%s\n' "$PROMETHEUS_BIN"
        return 0
    fi
    command -v prometheus 2>/dev/null
}

install_prometheus() {
    [[ "$PROM_INSTALL" == 1 ]] || die "prometheus not found and PROM_INSTALL=0; install it or set PROMETHEUS_BIN"
    command -v apt-get >/dev/null 2>&1 || die "prometheus not found and no apt-get to install it; set PROMETHEUS_BIN"
    [[ "$(id -u)" == 0 ]] || die "prometheus not found; install it as root: apt-get install -y prometheus"
    log "installing the Debian package 'prometheus' (first run only)"
    # Keep the package's own service from starting while it installs: we run the binary.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends prometheus >"$PROM_CACHE_DIR/apt.log" 2>&1; then
        log "apt-get install failed; refreshing the package lists and retrying"
        { apt-get update && apt-get install -y --no-install-recommends prometheus; } \
            >>"$PROM_CACHE_DIR/apt.log" 2>&1 || rc=$?
    fi
    if ((created_policy)); then
        rm -f "$policy"
    fi
    if ((rc != 0)); then
        tail -n 20 "$PROM_CACHE_DIR/apt.log" >&2 || true
        die "apt-get could not install prometheus (see $PROM_CACHE_DIR/apt.log)"
    fi
    # A service manager that ran anyway must not keep a second server around.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
}

write_config() {
    mkdir -p "$DATA_DIR" "$TARGETS_DIR"
    local tmp="$CONFIG.tmp" static=""
    if [[ -n "$PROM_TARGETS" ]]; then
        local t list=()
        IFS=',' read -r -a list <<<"$PROM_TARGETS"
        for t in "${list[@]}"; do
            [[ "$t" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "PROM_TARGETS entry '$t' is not host:port"
            static+="'$t', "
        done
        static="${static%, }"
    fi
    cat >"$tmp" <<EOF
# Generated by deploy/local/prometheus.sh on every start; edits here are overwritten.
global:
  scrape_interval: $PROM_SCRAPE_INTERVAL
  scrape_timeout: $PROM_SCRAPE_INTERVAL
  evaluation_interval: $PROM_SCRAPE_INTERVAL

scrape_configs:
  - job_name: feedstep
    static_configs:
      - targets: [$static]
  # Tests and tools add targets by writing <name>.json files here (see targets-dir).
  - job_name: file_sd
    file_sd_configs:
      - files: ['$TARGETS_DIR/*.json']
        refresh_interval: 1s
EOF
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$tmp" >/dev/null 2>"$RUN_DIR/promtool.log" ||
            { cat "$RUN_DIR/promtool.log" >&2; die "generated config is invalid"; }
    fi
    mv "$tmp" "$CONFIG"
}

read_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -d '[:space:]' <"$PID_FILE")"
    is_uint "$pid" && ((pid > 0)) || return 1
    printf '%s\n' "$pid"
}

is_ours() {
    # True if $1 is a live prometheus process started with this run dir's config.
    local pid="$1" cmdline
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *prometheus* && "$cmdline" == *"--config.file=$CONFIG "* ]]
}

running_pid() {
    local pid
    pid="$(read_pid)" || return 1
    is_ours "$pid" || return 1
    printf '%s\n' "$pid"
}

show_logs() {
    local n="${1:-40}"
    if [[ -s "$LOG_FILE" ]]; then
        printf -- '----- last %s lines of %s -----\n' "$n" "$LOG_FILE" >&2
        tail -n "$n" "$LOG_FILE" >&2
    fi
}

stop_pid() {
    local pid="$1" waited=0
    kill -TERM "$pid" 2>/dev/null || true
    while is_ours "$pid" && ((waited < PROM_STOP_TIMEOUT * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if is_ours "$pid"; then
        log "prometheus (pid $pid) still alive after ${PROM_STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
}

cmd_start() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found (used for the readiness probe)"
    mkdir -p "$PROM_CACHE_DIR"
    local pid bin
    if pid="$(running_pid)"; then
        if py ready "$HOST" "$PROM_PORT" >/dev/null; then
            log "already running on $HOST:$PROM_PORT (pid $pid)"
            return 0
        fi
        log "prometheus $pid exists but is not ready yet; waiting"
    else
        rm -f "$PID_FILE"
        if ! bin="$(prometheus_bin)"; then
            install_prometheus
            bin="$(prometheus_bin)" || die "prometheus still not on PATH after installing"
        fi
        if ! py port-free "$HOST" "$PROM_PORT"; then
            if py ready "$HOST" "$PROM_PORT" >/dev/null; then
                die "a Prometheus not started by this script already listens on $HOST:$PROM_PORT (the Debian service? stop it, or set PROM_PORT)"
            fi
            die "port $HOST:$PROM_PORT is in use by another process (set PROM_PORT)"
        fi
        write_config
        log "starting $("$bin" --version 2>&1 | sed -n 1p) on $HOST:$PROM_PORT, run dir $RUN_DIR"
        printf '\n===== %s start (port %s) =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PROM_PORT" >>"$LOG_FILE"
        # The inner bash records its pid and execs prometheus, so the pid file holds the
        # server's pid; all fds are detached from the caller.
        # shellcheck disable=SC2016
        nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
            "$bin" "--config.file=$CONFIG" \
            "--web.listen-address=$HOST:$PROM_PORT" \
            "--storage.tsdb.path=$DATA_DIR" \
            "--storage.tsdb.retention.time=$PROM_RETENTION" \
            "--log.level=warn" \
            </dev/null >>"$LOG_FILE" 2>&1 &
        local i
        for ((i = 0; i < 50; i++)); do
            if pid="$(read_pid)" && is_ours "$pid"; then
                break
            fi
            sleep 0.1
        done
        if ! { pid="$(read_pid)" && is_ours "$pid"; }; then
            err "prometheus did not come up"
            show_logs 40
            exit 1
        fi
    fi
    local start=$SECONDS out
    until out="$(py ready "$HOST" "$PROM_PORT")"; do
        if ! is_ours "$pid"; then
            err "prometheus (pid $pid) exited during startup"
            show_logs 40
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((SECONDS - start >= PROM_START_TIMEOUT)); then
            err "prometheus not ready on $HOST:$PROM_PORT within ${PROM_START_TIMEOUT}s ($out)"
            show_logs 40
            stop_pid "$pid"
            exit 1
        fi
        sleep 0.2
    done
    log "ready on http://$HOST:$PROM_PORT (pid $pid, $((SECONDS - start))s); targets dir $TARGETS_DIR"
}

cmd_stop() {
    local pid
    if ! pid="$(read_pid)" || ! is_ours "$pid"; then
        log "not running on port $PROM_PORT${pid:+ (stale pid file for $pid removed)}"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping prometheus on $HOST:$PROM_PORT (pid $pid)"
    stop_pid "$pid"
    log "stopped"
}

cmd_status() {
    local pid out
    if pid="$(running_pid)"; then
        if out="$(py ready "$HOST" "$PROM_PORT")"; then
            log "running on http://$HOST:$PROM_PORT (pid $pid): $out"
        else
            log "running on $HOST:$PROM_PORT (pid $pid) but not ready: $out"
        fi
        return 0
    fi
    log "not running on $HOST:$PROM_PORT"
    if py ready "$HOST" "$PROM_PORT" >/dev/null; then
        log "note: a Prometheus not managed by this script answers on $HOST:$PROM_PORT"
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

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop && cmd_start ;;
    reset) cmd_reset ;;
    probe) py ready "$HOST" "$PROM_PORT" ;;
    logs) show_logs "${2:-100}" 2>&1 ;;
    targets-dir) printf '%s\n' "$TARGETS_DIR" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
