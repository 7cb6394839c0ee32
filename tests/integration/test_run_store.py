"""`feedstep run --store DIR` against the real broker starts from the store's LIVE version."""

from __future__ import annotations

import re
import subprocess

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from learner.store import ModelStore
from streaming.testing.simulate import SimulatedFeedback
from tests.integration.faultlib import run_argv

pytestmark = pytest.mark.integration


def test_run_starts_from_the_live_version(kafka_bootstrap, topic_name, tmp_path, tiny_parts):
    make, tokenizer = tiny_parts
    model = make(5)
    store = ModelStore(tmp_path / "store")
    store.publish(model, tokenizer, objective="reward", metrics={}, reason="seeded")
    store.promote(1, reason="first", actor="test")

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for payload in SimulatedFeedback(seed=1).payloads(40):
        producer.send(topic_name, value=payload)
    producer.flush()
    producer.close()

    proc = subprocess.run(
        [
            *run_argv(kafka_bootstrap, topic_name, f"g-{topic_name}"),
            "--store",
            str(store.root),
            "--model",
            "minilm",  # must not be loaded: the LIVE version wins
            "--batch-size",
            "8",
            "--max-wait-ms",
            "200",
            "--metrics-port",
            "0",
            "--stop-after-events",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"starting from LIVE version 1 of model store {store.root}" in proc.stderr
    total = int(re.search(r"parameters: \d+ trainable of (\d+)", proc.stderr).group(1))
    assert total == sum(p.numel() for p in model.parameters())  # the tiny LIVE model, not MiniLM
    fields = dict(re.findall(r"(\w+)=([\d.]+)", proc.stdout.splitlines()[-1]))
    assert fields["trained"] == "40"
    assert store.live_version() == 1 and len(store.history()) == 1  # run does not publish yet
