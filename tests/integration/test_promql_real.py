"""PromQL gate checks against the real Prometheus (deploy/local/prometheus.sh) scraping a real
feedstep metrics endpoint: pass, fail, no data and a PromQL error, end to end."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest

from monitors.gate import Gate, GateConfig, HoldoutResult
from monitors.metrics import Metrics
from monitors.promql import PromQLCheck, PromQLClient
from monitors.server import HealthState, MetricsServer

pytestmark = pytest.mark.integration


@pytest.fixture()
def scraped_metrics(prometheus_targets_dir):
    """A Metrics served over HTTP and registered with Prometheus under a unique run label."""
    metrics = Metrics()
    server = MetricsServer(metrics.render, HealthState(), port=0, host="127.0.0.1").start()
    run = uuid.uuid4().hex[:12]
    target = prometheus_targets_dir / f"pytest-{run}.json"
    prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
    entry = [{"targets": [f"127.0.0.1:{server.port}"], "labels": {"run": run}}]
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    tmp.rename(target)  # Prometheus must never read half a file
    try:
        yield metrics, run
    finally:
        target.unlink(missing_ok=True)
        server.stop()


def wait_for(client: PromQLClient, check: PromQLCheck, state: str, timeout_s: float = 30.0):
    """Evaluate ``check`` until it reaches ``state`` (scrapes take a second or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = client.evaluate(check)
        if result.state == state or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def test_promql_checks_against_a_real_prometheus(prometheus_url, scraped_metrics):
    metrics, run = scraped_metrics
    metrics.learning_rate.set(0.001)
    client = PromQLClient(prometheus_url, timeout_s=5)
    query = f'max(feedstep_learning_rate{{run="{run}"}})'

    below = wait_for(client, PromQLCheck("lr", query, "< 0.01"), "pass")
    assert below.state == "pass", below.detail
    assert below.value == pytest.approx(0.001)
    above = client.evaluate(PromQLCheck("lr", query, "> 0.01"))
    assert above.state == "fail" and above.value == pytest.approx(0.001)

    metrics.learning_rate.set(0.05)  # the next scrape flips the outcome
    flipped = wait_for(client, PromQLCheck("lr", query, "> 0.01"), "pass")
    assert flipped.state == "pass" and flipped.value == pytest.approx(0.05), flipped.detail

    nothing = client.evaluate(PromQLCheck("lr", 'feedstep_learning_rate{run="no-such-run"}', "< 1"))
    assert nothing.state == "inconclusive" and "no data" in nothing.detail

    broken = client.evaluate(PromQLCheck("lr", "feedstep_learning_rate{", "< 1"))
    assert broken.state == "inconclusive"
    assert broken.detail.startswith("HTTP 400 from Prometheus: bad_data"), broken.detail


def test_gate_promotes_only_when_the_real_promql_check_passes(prometheus_url, scraped_metrics):
    metrics, run = scraped_metrics
    metrics.grad_norm.set(0.5)
    config = GateConfig(
        min_events=100,
        drift_quiet_events=0,
        prometheus_url=prometheus_url,
        promql=(PromQLCheck("grad_norm", f'max(feedstep_grad_norm{{run="{run}"}})', "< 1"),),
    )
    gate = Gate(config)
    rng = np.random.default_rng(0)
    baseline = rng.gamma(2.0, 0.3, 2000)
    gate.observe(baseline, baseline - 0.2)
    wait_for(PromQLClient(prometheus_url), config.promql[0], "pass")

    decision = gate.decide(holdout=HoldoutResult(0.5, 0.45), param_distance=0.1)
    assert decision.action == "promote", decision.reason
    assert decision.check("promql_grad_norm").value == pytest.approx(0.5)

    metrics.grad_norm.set(5.0)
    wait_for(PromQLClient(prometheus_url), config.promql[0], "fail")
    held = gate.decide(holdout=HoldoutResult(0.5, 0.45), param_distance=0.1)
    assert held.action == "hold" and held.reason == "hold: promql_grad_norm failed"
