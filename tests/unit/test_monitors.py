import math
import urllib.error
import urllib.request

from monitors.metrics import Metrics
from monitors.prequential import PairedPrequential, WindowedMean
from monitors.server import HealthState, MetricsServer

REQUIRED = [
    "feedstep_events_total",
    "feedstep_dead_letter_total",
    "feedstep_steps_total",
    "feedstep_skipped_steps_total",
    "feedstep_batch_size_events_bucket",
    "feedstep_step_duration_seconds_bucket",
    "feedstep_prequential_loss",
    "feedstep_prequential_accuracy_ratio",
    "feedstep_consumer_lag_messages",
    "feedstep_feedback_to_update_seconds_bucket",
]


def test_required_metric_names_are_exported():
    m = Metrics()
    m.dead_letter.labels(reason="bad_json").inc()
    m.skipped_steps.labels(reason="non_finite_loss").inc()
    m.consumer_lag.labels(topic="feedback", partition="0").set(3)
    m.batch_size.observe(4)
    m.step_duration.observe(0.1)
    m.feedback_to_update.observe(2.0)
    text = m.render().decode()
    for name in REQUIRED:
        assert f"\n{name}" in text, name
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("feedstep_"), line


def test_windowed_mean_forgets_and_skips_nan():
    m = WindowedMean(window=3)
    assert math.isnan(m.value)
    for x in (10.0, float("nan"), 1.0, 2.0, 3.0):
        m.update(x)
    assert m.value == 2.0 and m.count == 3


def test_paired_prequential_difference_sign():
    p = PairedPrequential(window=10)
    p.update([1.0, 1.0], [0.25, 0.75], [0.0, float("nan")], [1.0, 1.0])
    snap = p.snapshot()
    assert snap.mean_loss_difference == 0.5
    assert snap.baseline_accuracy == 0.0 and snap.candidate_accuracy == 1.0


def test_server_endpoints():
    m = Metrics()
    health = HealthState()
    server = MetricsServer(m.render, health, port=0, host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "feedstep_events_total" in body
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        try:
            urllib.request.urlopen(base + "/readyz", timeout=5)
            raise AssertionError("readyz must be 503 before ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        health.set_ready(True)
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    finally:
        server.stop()


def test_health_goes_stale_without_beats():
    now = [0.0]
    health = HealthState(stall_after_s=5, clock=lambda: now[0])
    health.set_ready(True)
    assert health.live and health.ready
    now[0] = 6.0
    assert not health.live and not health.ready
