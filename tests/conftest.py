"""Shared fixtures: a tiny seeded reward model; the real Kafka broker and Prometheus server."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from learner.base import Example
from learner.models import TINY_CAUSAL, ModelSpec, build_causal_lm, build_reward_model
from learner.objectives import RewardObjective


@pytest.fixture(scope="session")
def tiny_parts():
    """(model factory, tokenizer): a 2-layer BERT built from config, seeded."""
    _, tokenizer = build_reward_model(ModelSpec("tiny", seed=0))

    def make(seed: int = 0):
        model, _ = build_reward_model(ModelSpec("tiny", seed=seed))
        return model

    return make, tokenizer


@pytest.fixture(scope="session")
def tiny_causal_parts():
    """(model factory, tokenizer): a 2-layer Llama built from config, seeded, in eval mode."""
    _, tokenizer = build_causal_lm(ModelSpec(TINY_CAUSAL, seed=0))

    def make(seed: int = 0):
        model, _ = build_causal_lm(ModelSpec(TINY_CAUSAL, seed=seed))
        return model.eval()

    return make, tokenizer


@pytest.fixture()
def objective(tiny_parts):
    return RewardObjective(tiny_parts[1], max_length=48)


@pytest.fixture()
def examples():
    return [
        Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
        Example("How long do I boil an egg?", "Go away.", target=0.0),
        Example("Reverse a list?", "Use reversed(items).", target=0.75),
        Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
        Example("Warm-up before lifting?", "Light sets first.", target=0.5, weight=2.0),
        Example("Jet lag?", "Shift your sleep early.", rejected="Whatever.", weight=0.5),
    ]


def _broker_address() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:" + os.environ.get("KAFKA_PORT", "9092"))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Address of the real broker started by deploy/local/kafka.sh.

    A missing broker is a test failure, never a skip: CI must run these tests for real.
    """
    address = _broker_address()
    host, port = address.split(",")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(
            f"no Kafka broker at {address} ({exc}); start it with `deploy/local/kafka.sh start` "
            "or run the suite through scripts/test.sh, which starts it"
        )
    return address


def _prometheus_address() -> str:
    port = os.environ.get("PROM_PORT", "9090")
    return os.environ.get("PROMETHEUS_URL", f"http://127.0.0.1:{port}").rstrip("/")


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    """Base URL of the real Prometheus started by deploy/local/prometheus.sh.

    A missing server is a test failure, never a skip (scripts/test.sh starts one), as for Kafka.
    """
    url = _prometheus_address()
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=3) as resp:
            problem = "" if resp.status == 200 else f"/-/ready answered {resp.status}"
    except OSError as exc:
        problem = str(exc)
    if problem:
        message = (
            f"no Prometheus ready at {url} ({problem}); start it with "
            "`deploy/local/prometheus.sh start` (PROM_PORT picks the port)"
        )
        pytest.fail(message)
    return url


@pytest.fixture(scope="session")
def prometheus_targets_dir(prometheus_url) -> Path:
    """The file_sd directory the local Prometheus watches (PROM_TARGETS_DIR overrides)."""
    if os.environ.get("PROM_TARGETS_DIR"):
        return Path(os.environ["PROM_TARGETS_DIR"])
    script = Path(__file__).resolve().parents[1] / "deploy" / "local" / "prometheus.sh"
    out = subprocess.run(
        [str(script), "targets-dir"], check=True, capture_output=True, text=True, timeout=30
    )
    return Path(out.stdout.strip())


@pytest.fixture()
def topic_name(request) -> str:
    """A fresh topic name per test, so tests never see each other's records."""
    return f"t-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
