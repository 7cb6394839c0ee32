"""`feedstep serve` against the real broker: a model-updates message makes the follower switch to
the new LIVE version at once, long before its next read of the LIVE file."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import urllib.request

import pytest
import torch
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from learner.store import ModelStore
from streaming.config import KafkaConfig
from streaming.kafka import KafkaSink
from tests.integration.faultlib import Sidecar, http_status, wait_until, write_config

pytestmark = pytest.mark.integration

POLL_S = 60.0  # only the topic can make it switch within the test


def _score(port: int) -> tuple[int, dict]:
    body = json.dumps({"prompt": "Boil an egg?", "responses": ["Nine minutes.", "No."]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/score", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def _metric(port: int, sample: str) -> float:
    _, text = http_status(f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {sample} in /metrics")


def test_a_model_updates_message_switches_the_follower_at_once(
    kafka_bootstrap, topic_name, tmp_path, tiny_parts
):
    make, tokenizer = tiny_parts
    v1 = make(7).eval()
    v2 = copy.deepcopy(v1)
    with torch.no_grad():
        v2.head.bias.add_(5.0)
    store = ModelStore(tmp_path / "store")
    store.publish(v1, tokenizer, objective="reward", metrics={}, reason="first")
    store.promote(1, reason="first", actor="test")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)])
    admin.close()
    config = write_config(
        tmp_path / "serve.toml",
        store=str(store.root),
        bootstrap_servers=kafka_bootstrap,
        updates_topic=topic_name,
        follow_poll_s=POLL_S,
        metrics_port=0,
        metrics_host="127.0.0.1",
        max_length=32,
        device="cpu",
    )
    serve = Sidecar(config, "serve", verb="serve")
    try:
        port = int(serve.wait_for(r"metrics on http://[^:]+:(\d+)/metrics").group(1))
        serve.wait_for(rf"following model updates on {re.escape(topic_name)} \(2 partitions\)")
        serve.wait_for(r"serving version 1 of ")
        assert http_status(f"http://127.0.0.1:{port}/readyz") == (200, "ok\n")
        status, before = _score(port)
        assert status == 200 and before["version"] == 1

        store.publish(v2, tokenizer, objective="reward", metrics={}, reason="better", parent=1)
        switch = store.promote(2, reason="better", actor="test")
        folder = store.path(2)
        manifest_sha = hashlib.sha256((folder / "manifest.json").read_bytes())
        message = {  # what Governor._announce sends
            "action": "promote",
            "version": 2,
            "parent": 1,
            "path": str(folder.resolve()),
            "sha256": manifest_sha.hexdigest(),
            "objective": "reward",
            "metrics": {},
            "reason": "better",
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "switch": switch.to_json(),
        }
        sink = KafkaSink(KafkaConfig(bootstrap_servers=kafka_bootstrap))
        sent = time.monotonic()
        sink.send(topic_name, json.dumps(message, sort_keys=True).encode(), key=b"2")
        sink.close()

        def served_by_version_2():
            status, answer = _score(port)
            assert status == 200, answer  # a request never fails during the switch
            return answer if answer["version"] == 2 else None

        after = wait_until("version 2 served", served_by_version_2, timeout=20, every=0.05)
        took = time.monotonic() - sent
        assert took < POLL_S / 3, took
        assert after["rewards"] == pytest.approx([r + 5.0 for r in before["rewards"]], abs=1e-4)
        assert _metric(port, 'feedstep_follower_switches_total{trigger="update"}') == 1.0
        assert _metric(port, 'feedstep_follower_switches_total{trigger="poll"}') == 0.0
        assert _metric(port, "feedstep_follower_update_messages_total") == 1.0
        assert _metric(port, "feedstep_follower_live_version") == 2.0
    finally:
        serve.terminate()
        code = serve.wait(timeout=30)
    assert code == 0, serve.tail()
    assert "served_version=2 switches=2 refused=0" in serve.stdout
