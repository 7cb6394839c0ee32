"""A learnable stream through `feedstep run` leads to a promotion: a new version in the store,
LIVE pointing at it, and a model-updates message a plain kafka-python consumer reads."""

from __future__ import annotations

import json
import subprocess

import pytest
from kafka import KafkaConsumer, KafkaProducer

from learner.models import load_reward_model
from learner.store import ModelStore
from streaming.testing.simulate import SimulatedFeedback
from tests.integration.faultlib import run_argv

pytestmark = pytest.mark.integration


def test_learnable_stream_is_promoted_and_announced(kafka_bootstrap, topic_name, tmp_path):
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in SimulatedFeedback(seed=1).payloads(1200):
        producer.send(topic_name, value=value)
    producer.flush()
    producer.close()

    updates_topic = f"{topic_name}.updates"
    config = tmp_path / "feedstep.toml"
    config.write_text(
        "\n".join(
            [
                "gate_min_events = 300",
                "drift_quiet_events = 0",
                "lr = 0.001",
                "max_length = 64",
                f'updates_topic = "{updates_topic}"',
            ]
        )
    )
    store_dir = tmp_path / "store"
    proc = subprocess.run(
        [
            *run_argv(kafka_bootstrap, topic_name, f"g-{topic_name}"),
            "--config",
            str(config),
            "--model",
            "tiny",
            "--batch-size",
            "16",
            "--metrics-port",
            "0",
            "--store",
            str(store_dir),
            "--stop-after-events",
            "1200",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    store = ModelStore(store_dir, create=False)
    versions = store.versions()
    assert len(versions) >= 2, proc.stderr[-3000:]
    live = store.live()
    assert live is not None and live.version == versions[-1].version
    assert live.parent == versions[-2].version
    assert live.reason and live.reason != "initial baseline"
    assert live.metrics["events"] >= 300
    assert [s.action for s in store.history()][0] == "promote"
    assert store.verify(live.version).ok
    model, _ = load_reward_model(store.path(live.version))  # the chat service can load it

    consumer = KafkaConsumer(
        updates_topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    messages = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert [m["version"] for m in messages] == [v.version for v in versions]
    last = messages[-1]
    assert last["action"] == "promote" and last["parent"] == versions[-2].version
    assert last["path"].endswith(f"versions/{live.version}")
    assert len(last["sha256"]) == 64 and last["metrics"]["events"] >= 300
