"""The rollback watch: degraded promotions roll back, healthy ones do not."""

import json
import math

import numpy as np
import pytest

from monitors.alarms import DriftAlarm
from monitors.metrics import Metrics
from monitors.rollback import RollbackConfig, RollbackWatch
from monitors.simulate import binomial_quantile, paired_losses, rollback_events

UP = DriftAlarm("adwin", "baseline_error", 12_345, "increase")
DOWN = DriftAlarm("adwin", "baseline_error", 12_345, "decrease")


def losses(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    b, _ = paired_losses(np.random.default_rng(seed), 1, n, effect=shift)
    return b[0]


def armed_watch(**overrides) -> RollbackWatch:
    watch = RollbackWatch(RollbackConfig(**overrides), clock=lambda: 1_700_000_000.0)
    watch.observe(losses(1, 2_000))
    watch.promoted("v2", previous_version="v1")
    return watch


def test_healthy_promotions_are_not_rolled_back():
    """200 seeded runs (seed 10): reference of 2,000 log-losses, then 5,000 live events of the
    same distribution, decided after every batch of 100. alpha = 0.01; bound: the 99% quantile
    of Binomial(200, 0.01) = 6. Measured: 0 rollbacks (the reference's confidence bound makes
    the watch conservative)."""
    rolled = rollback_events(10, 200, 5_000, 100, degradation=0.0)
    assert int((rolled >= 0).sum()) == 0
    assert (rolled >= 0).sum() <= binomial_quantile(200, 0.01, 0.99)


def test_degraded_promotions_are_rolled_back():
    """200 seeded runs (seed 11): the promoted version's loss is 0.1 higher (about 0.15 of the
    per-event sd). Stated: rolled back within 10,000 events in >= 95% of runs. Measured: 198 of
    200, median 1,400 events, 95th percentile 4,500."""
    rolled = rollback_events(11, 200, 10_000, 100, degradation=0.1)
    assert int((rolled >= 0).sum()) == 198
    assert (rolled >= 0).mean() >= 0.95
    assert np.median(rolled[rolled >= 0]) == 1_400


def test_single_degraded_promotion_decision_record():
    watch = armed_watch()
    watch.observe(losses(2, 3_000, shift=0.3))
    d = watch.decide()
    assert (d.action, d.cause, d.version, d.previous_version) == (
        "rollback",
        "degradation",
        "v2",
        "v1",
    )
    record = json.loads(d.to_json())
    assert record["kind"] == "rollback" and record["reason"] == "rollback: degradation"
    assert [c["name"] for c in record["checks"]] == ["degradation", "drift"]
    assert record["checks"][0]["state"] == "fail" and record["test_statistic"] > math.log(200)


def test_an_upward_drift_alarm_on_the_live_error_stream_rolls_back():
    watch = armed_watch()
    watch.observe(losses(3, 500))
    watch.note_alarm(DOWN)  # fewer errors: no reason to roll back
    assert watch.decide().action == "keep"
    watch.note_alarm(UP)
    d = watch.decide()
    assert (d.action, d.cause) == ("rollback", "drift")
    assert "adwin alarm on baseline_error" in d.checks[1].detail


def test_drift_rollback_can_be_switched_off():
    watch = armed_watch(rollback_on_drift=False)
    watch.note_alarm(UP)
    d = watch.decide()
    assert d.action == "keep" and d.checks[1].passed is False


def test_unarmed_watch_keeps_and_ignores_alarms():
    watch = RollbackWatch(RollbackConfig())
    watch.note_alarm(UP)
    watch.observe(losses(4, 100, shift=5.0))
    d = watch.decide()
    assert d.action == "keep" and d.version is None and d.checks[0].state == "inconclusive"
    assert math.isnan(d.test_statistic)


def test_small_reference_leaves_degradation_inconclusive_but_drift_still_counts():
    watch = RollbackWatch(RollbackConfig(min_reference=500))
    watch.observe(losses(5, 100))
    watch.promoted("v2", "v1")
    watch.observe(losses(6, 2_000, shift=1.0))
    d = watch.decide()
    assert d.action == "keep" and d.checks[0].state == "inconclusive"
    assert "reference has 100 losses, 500 needed" in d.checks[0].detail
    watch.note_alarm(UP)
    assert watch.decide().cause == "drift"


def test_non_finite_live_losses_are_not_evidence():
    watch = armed_watch()
    watch.observe(np.full(5_000, np.nan))
    watch.observe(np.full(5_000, np.inf))
    d = watch.decide()
    assert d.action == "keep" and d.events == 0 and d.checks[0].state == "inconclusive"


def test_watch_settles_after_watch_events():
    watch = armed_watch(watch_events=1_000)
    watch.observe(losses(7, 999))
    assert watch.decide().action == "keep" and watch.armed
    watch.observe(losses(8, 1))
    assert watch.decide().action == "keep" and not watch.armed


def test_rolled_back_restores_the_previous_record_for_the_next_promotion():
    watch = armed_watch()
    reference = list(watch.state_dict()["reference"])
    watch.observe(losses(9, 1_000, shift=1.0))
    assert watch.decide().action == "rollback"
    watch.rolled_back()
    assert not watch.armed and watch.state_dict()["record"] == reference


def test_state_dict_round_trips_through_json():
    watch = armed_watch()
    watch.observe(losses(10, 700, shift=0.05))
    watch.note_alarm(DOWN)
    clone = RollbackWatch(RollbackConfig(), clock=lambda: 1_700_000_000.0)
    clone.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert clone.decide() == watch.decide()
    more = losses(11, 3_000, shift=0.3)
    watch.observe(more)
    clone.observe(more)
    assert clone.decide() == watch.decide()
    with pytest.raises(ValueError, match="format"):
        clone.load_state_dict({"format": 2})


def test_metrics_export_the_watch_statistic_and_live_version():
    m = Metrics()
    watch = armed_watch()
    watch.observe(losses(12, 500))
    m.record_rollback_watch(watch.decide())
    m.set_live_version("v2", previous="v1")
    m.rollbacks.labels(reason="degradation").inc()
    text = m.render().decode()
    assert 'feedstep_live_version_info{previous="v1",version="v2"} 1.0' in text
    assert 'feedstep_rollbacks_total{reason="degradation"} 1.0' in text
    assert 'feedstep_rollbacks_total{reason="manual"} 0.0' in text
    assert "feedstep_rollback_test_statistic " in text


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"max_degradation": -0.1}, "max_degradation"),
        ({"reference_size": 1}, "reference_size"),
        ({"min_reference": 3000}, r"min_reference \(3000\) cannot exceed reference_size \(2000\)"),
        ({"watch_events": True}, "watch_events"),
        ({"mixture_scale": math.inf}, "mixture_scale"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RollbackConfig(**kwargs)
