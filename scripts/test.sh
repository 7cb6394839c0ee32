#!/usr/bin/env bash
# Runs the test suite (python3 -m pytest -q) against the local Kafka broker.
#
#   scripts/test.sh [pytest args...]
#
# KAFKA_BOOTSTRAP is exported as 127.0.0.1:${KAFKA_PORT:-9092}. If no broker answers
# there, one is started with deploy/local/kafka.sh and stopped again when the tests finish;
# a broker that was already up is left running. CI (when set) is passed through to the tests,
# which treat a missing broker as a failure instead of a skip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
if [[ -n "${CI:-}" ]]; then
    export CI
fi

KAFKA_SH=deploy/local/kafka.sh
PROM_SH=deploy/local/prometheus.sh
export PROM_PORT="${PROM_PORT:-9090}"
started_broker=0
started_prom=0

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$?
    if ((started_broker)); then
        echo "test.sh: stopping the broker this script started"
        "$KAFKA_SH" stop || echo "test.sh: warning: could not stop the broker" >&2
    fi
    if ((started_prom)); then
        echo "test.sh: stopping the Prometheus server this script started"
        "$PROM_SH" stop || echo "test.sh: warning: could not stop Prometheus" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if "$KAFKA_SH" probe >/dev/null 2>&1; then
    echo "test.sh: using the Kafka broker already answering on $KAFKA_BOOTSTRAP"
elif "$KAFKA_SH" status >/dev/null 2>&1; then
    # Our broker process exists but is still starting: wait for it, leave it running afterwards.
    "$KAFKA_SH" start
else
    started_broker=1
    "$KAFKA_SH" start
fi

if "$PROM_SH" probe >/dev/null 2>&1; then
    echo "test.sh: using the Prometheus server already answering on 127.0.0.1:$PROM_PORT"
else
    started_prom=1
    "$PROM_SH" start
fi

echo "test.sh: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP PROM_PORT=$PROM_PORT CI=${CI:-}"
rc=0
python3 -m pytest -q "$@" || rc=$?
exit "$rc"
