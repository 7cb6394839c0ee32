"""`feedstep run` against the real broker: every valid event trained once, rejects dead-lettered,
offsets committed to the end, lag back to 0, SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
import urllib.request

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from streaming.testing.simulate import SimulatedFeedback
from tests.integration.faultlib import run_argv, scrape_metrics

pytestmark = pytest.mark.integration

MALFORMED = [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    json.dumps(
        {
            "ts": "2026-11-28T10:00:00Z",
            "prompt": "p",
            "response": "r",
            "feedback": {"type": "thumb", "value": 1},
        }
    ).encode(),  # missing event_id
    json.dumps(
        {
            "event_id": "x",
            "ts": "2026-11-28T10:00:00Z",
            "prompt": 5,
            "response": "r",
            "feedback": {"type": "thumb", "value": 1},
        }
    ).encode(),  # wrong type
    json.dumps(
        {
            "event_id": "y",
            "ts": "2026-11-28T10:00:00Z",
            "prompt": "p",
            "response": "r",
            "feedback": {"type": "emoji", "value": ":)"},
        }
    ).encode(),  # unknown feedback type
    json.dumps(
        {
            "event_id": "z",
            "ts": "yesterday",
            "prompt": "p",
            "response": "r",
            "feedback": {"type": "rating", "value": 3},
        }
    ).encode(),  # bad timestamp
    json.dumps(
        {
            "event_id": "w",
            "ts": "2026-11-28T10:00:00Z",
            "prompt": "p",
            "response": "r",
            "feedback": {"type": "rating", "value": 9},
        }
    ).encode(),  # bad value
]


K8S_SERVICE_LINKS = {
    "FEEDSTEP_SERVICE_HOST": "10.96.0.12",
    "FEEDSTEP_SERVICE_PORT": "9108",
    "FEEDSTEP_SERVICE_PORT_METRICS": "9108",
    "FEEDSTEP_PORT": "tcp://10.96.0.12:9108",
    "FEEDSTEP_PORT_9108_TCP": "tcp://10.96.0.12:9108",
    "FEEDSTEP_PORT_9108_TCP_PROTO": "tcp",
    "FEEDSTEP_PORT_9108_TCP_PORT": "9108",
    "FEEDSTEP_PORT_9108_TCP_ADDR": "10.96.0.12",
    "FEEDSTEP_TRAINER_SERVICE_HOST": "10.96.0.13",
    "FEEDSTEP_TRAINER_PORT_9108_TCP": "tcp://10.96.0.13:9108",
}


def test_run_consumes_everything_dead_letters_rejects_and_commits(
    kafka_bootstrap, topic_name, tmp_path
):
    partitions = 3
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=partitions, replication_factor=1)])

    rng = random.Random(7)
    valid = list(SimulatedFeedback(seed=7).payloads(2000))
    records = [(v, True) for v in valid]
    for i in range(50):
        records.insert(rng.randrange(len(records)), (MALFORMED[i % len(MALFORMED)], False))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    futures = [
        (producer.send(topic_name, value=v, partition=i % partitions), ok)
        for i, (v, ok) in enumerate(records)
    ]
    producer.flush()
    bad_positions = {
        (md.partition, md.offset)
        for md, ok in ((f.get(timeout=30), ok) for f, ok in futures)
        if not ok
    }
    producer.close()
    assert len(bad_positions) == 50

    group = f"g-{topic_name}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(K8S_SERVICE_LINKS)  # as in a namespace with Services "feedstep", "feedstep-trainer"
    proc = subprocess.Popen(
        [
            *run_argv(kafka_bootstrap, topic_name, group),
            "--model",
            "tiny",
            "--batch-size",
            "32",
            "--max-wait-ms",
            "200",
            "--metrics-port",
            "0",
            "--seed",
            "3",
            "--store",
            str(tmp_path / "store"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 120
        log_lines = []
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log_lines.append(line)
            found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", line)
            if found:
                port = int(found.group(1))
        assert port, "".join(log_lines)
        # Keep draining stderr so the child never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: log_lines.extend(proc.stderr), daemon=True).start()

        metrics: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(log_lines)
            metrics = scrape_metrics(port)
            lags = [
                v for k, v in metrics.items() if k.startswith("feedstep_consumer_lag_messages{")
            ]
            if (
                metrics.get('feedstep_events_total{outcome="accepted"}') == 2000
                and metrics.get('feedstep_events_total{outcome="rejected"}') == 50
                and len(lags) == partitions
                and all(v == 0 for v in lags)
                and metrics.get("feedstep_steps_total", 0) > 0
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"did not drain in time: {metrics}\n{''.join(log_lines[-20:])}")
        assert metrics['feedstep_events_total{outcome="duplicate"}'] == 0
        assert (
            sum(v for k, v in metrics.items() if k.startswith("feedstep_dead_letter_total{")) == 50
        )
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(log_lines[-30:])
    summary = dict(re.findall(r"(\w+)=([\d.]+)", out.splitlines()[-1]))
    assert summary["events"] == "2050" and summary["accepted"] == "2000"
    assert summary["dead_lettered"] == "50" and summary["trained"] == "2000"

    # Committed offsets equal the end offsets, for every partition.
    probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    tps = [TopicPartition(topic_name, p) for p in range(partitions)]
    ends = probe.end_offsets(tps)
    group_view = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    assert {tp: group_view.committed(tp) for tp in tps} == ends
    group_view.close()
    assert sum(ends.values()) == 2050

    # The 50 rejects are in the dead-letter topic, bytes untouched, with reason and origin.
    dlq = KafkaConsumer(
        f"{topic_name}.dlq",
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    dead = list(dlq)
    dlq.close()
    probe.close()
    admin.close()
    assert len(dead) == 50
    origins = set()
    for msg in dead:
        headers = {k: v.decode() for k, v in msg.headers}
        assert headers["feedstep.reason"] in {
            "bad_json",
            "bad_encoding",
            "not_an_object",
            "missing_field",
            "wrong_type",
            "unknown_feedback_type",
            "bad_timestamp",
            "bad_value",
        }
        assert headers["feedstep.detail"]
        assert headers["feedstep.source.topic"] == topic_name
        origins.add(
            (int(headers["feedstep.source.partition"]), int(headers["feedstep.source.offset"]))
        )
        assert msg.value in MALFORMED
    assert origins == bad_positions
