"""`feedstep run` on a real topic of fuzzed payloads: every one dead-lettered with its reason and
origin, the valid events among them trained, a clean exit, and a bounded peak RSS."""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from streaming.events import DecodeLimits
from streaming.testing.fuzz import fuzz_cases
from streaming.testing.simulate import SimulatedFeedback
from tests.integration.faultlib import run_argv

pytestmark = pytest.mark.integration

# Small enough that oversized events still fit the broker's 1 MiB message limit; the deep
# nesting family then goes 10^4..3x10^4 levels deep within it.
LIMITS = DecodeLimits(max_event_bytes=65_536)
FUZZED, VALID, PARTITIONS = 2_000, 40, 3


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_fuzzed_topic_is_dead_lettered_and_the_sidecar_stays_up(
    kafka_bootstrap, topic_name, tmp_path
):
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()

    cases = list(fuzz_cases(seed=21, n=FUZZED, limits=LIMITS))
    records: list[tuple[bytes | None, frozenset[str] | None]] = [
        (c.payload, c.reasons) for c in cases
    ]
    rng = random.Random(21)
    for payload in SimulatedFeedback(seed=21).payloads(VALID):
        records.insert(rng.randrange(len(records) + 1), (payload, None))
    # Every record has a key: a tombstone (value None) needs one.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=10)
    futures = [
        (producer.send(topic_name, value=v, key=b"k%d" % i, partition=i % PARTITIONS), v, why)
        for i, (v, why) in enumerate(records)
    ]
    producer.flush()
    expected = {}
    for fut, value, why in futures:
        md = fut.get(timeout=30)
        if why is not None:
            expected[(md.partition, md.offset)] = (value or b"", why)
    producer.close()
    assert len(expected) == FUZZED

    env = dict(os.environ, PYTHONUNBUFFERED="1", FEEDSTEP_MAX_EVENT_BYTES=str(65_536))
    proc = subprocess.Popen(
        [
            *run_argv(kafka_bootstrap, topic_name, f"g-{topic_name}"),
            "--model",
            "tiny",
            "--batch-size",
            "8",
            "--max-wait-ms",
            "200",
            "--stop-when-idle-s",
            "3",
            "--metrics-port",
            "0",
            "--store",
            str(tmp_path / "store"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    log_lines: list[str] = []
    rss_ready: list[int] = []  # VmRSS once the model is loaded and the consumer created

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log_lines.append(line)
            if not rss_ready and "consuming " in line:
                rss_ready.append(_status_kib(proc.pid, "VmRSS") or 0)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    hwm_kib = 0
    deadline = time.monotonic() + 150
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            hwm_kib = max(hwm_kib, _status_kib(proc.pid, "VmHWM") or 0)  # monotonic anyway
            time.sleep(0.1)
        assert proc.poll() is not None, "feedstep run did not stop when idle"
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert proc.returncode == 0, "".join(log_lines[-30:])
    summary = dict(re.findall(r"(\w+)=([\d.]+)", out.strip().splitlines()[-1]))
    assert summary["events"] == str(FUZZED + VALID)
    assert summary["dead_lettered"] == str(FUZZED)
    assert summary["accepted"] == summary["trained"] == str(VALID)

    dlq = KafkaConsumer(
        f"{topic_name}.dlq",
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    seen = {}
    for msg in dlq:
        headers = {k: v for k, v in msg.headers}
        origin = (
            int(headers["feedstep.source.partition"]),
            int(headers["feedstep.source.offset"]),
        )
        assert headers["feedstep.source.topic"].decode() == topic_name
        assert headers["feedstep.detail"]
        seen[origin] = (msg.value, headers["feedstep.reason"].decode())
        if len(seen) == FUZZED:
            break
    dlq.close()
    assert set(seen) == set(expected)
    for origin, (value, reason) in seen.items():
        original, reasons = expected[origin]
        assert value == original, origin
        assert reason in reasons, (origin, reason, sorted(reasons))

    # Peak RSS: the fuzzed stream may cost a few copies of the largest record while it is
    # decoded (64 KiB here) and the consumer's fetch buffers (at most the topic, ~10 MB here),
    # on top of the first steps' allocations (gradients and AdamW state of the tiny model).
    # 256 MiB over the resident size at the start of consumption leaves room for all that;
    # a loop that kept every record, or blew up on deep nesting, would not fit.
    assert rss_ready, "".join(log_lines[-30:])
    growth_mib = (hwm_kib - rss_ready[0]) / 1024
    print(
        f"VmRSS when consuming began {rss_ready[0] / 1024:.0f} MiB, VmHWM {hwm_kib / 1024:.0f} MiB"
    )
    assert growth_mib < 256, f"peak RSS grew {growth_mib:.0f} MiB during consumption"
