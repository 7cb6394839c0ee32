"""The promotion gate: error rates under peeking, power, and every check's no-data behaviour."""

import json
import math

import numpy as np
import pytest

from monitors.alarms import DriftAlarm
from monitors.decision import Check
from monitors.gate import Gate, GateConfig, HoldoutResult
from monitors.metrics import Metrics
from monitors.promql import PromQLCheck, QueryResult, evaluate
from monitors.simulate import binomial_quantile, paired_losses, promotion_events

GOOD_HOLDOUT = HoldoutResult(baseline_loss=0.50, candidate_loss=0.48, step=100)


def gate(**overrides) -> Gate:
    settings = {"min_events": 200, "min_effect": 0.0, "alpha": 0.05, "drift_quiet_events": 0}
    return Gate(GateConfig(**{**settings, **overrides}), clock=lambda: 1_700_000_000.0)


def clearly_better(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    b, c = paired_losses(np.random.default_rng(seed), 1, n, effect=0.2)
    return b[0], c[0]


# --- error rates


def test_false_promotion_rate_with_a_look_after_every_batch():
    """A/A: 200 seeded runs (seed 1), 10,000 events each, gate checked after every batch of 64
    (156 looks), min_events 64 so the sequential test is what decides.

    Bound: alpha's share plus sampling error, the 99% quantile of Binomial(200, 0.05) = 18.
    Measured: 5 promotions (2.5%).
    """
    promoted = promotion_events(1, 200, 10_000, 64, effect=0.0, min_effect=0.0, alpha=0.05)
    assert int((promoted >= 0).sum()) == 5
    assert (promoted >= 0).sum() <= binomial_quantile(200, 0.05, 0.99)


def test_candidate_better_by_less_than_min_effect_is_rarely_promoted():
    """True effect 0.01 < min_effect 0.02: H0 holds, so the same bound applies (seed 4).

    Measured: 1 promotion in 200 runs.
    """
    promoted = promotion_events(4, 200, 10_000, 64, effect=0.01, min_effect=0.02, alpha=0.05)
    assert int((promoted >= 0).sum()) == 1
    assert (promoted >= 0).sum() <= binomial_quantile(200, 0.05, 0.99)


def test_power_when_candidate_is_better_by_twice_min_effect():
    """True effect 0.04 = 2 x min_effect (0.02), per-event sd of d about 0.48: 200 seeded runs
    (seed 3), batches of 64. Stated: promoted within 12,000 events in >= 95% of runs.
    Measured: 196 of 200 by 12,000 (98%), all 200 by 18,944; median 4,032 events, 95th
    percentile 10,947.
    """
    promoted = promotion_events(3, 200, 20_000, 64, effect=0.04, min_effect=0.02, alpha=0.05)
    within = (promoted >= 0) & (promoted <= 12_000)
    assert int(within.sum()) == 196
    assert within.mean() >= 0.95
    assert np.median(promoted) == 4032


# --- no data, no promotion


def test_no_promotion_on_an_empty_stream():
    g = gate()
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.action == "hold"
    assert d.check("min_events").state == "fail"
    assert d.check("sequential_test").state == "inconclusive"
    assert d.events == 0 and math.isnan(d.mean_difference)
    g.observe([], [])
    assert g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1).action == "hold"


def test_no_promotion_on_a_stream_of_one_model_only():
    b, _ = clearly_better()
    g = gate()
    g.observe(b, np.full_like(b, np.nan))  # the candidate never scored
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.action == "hold"
    assert d.check("sequential_test").state == "inconclusive"
    assert "3000 pairs dropped" in d.check("sequential_test").detail
    assert g.events == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_are_never_evidence(bad):
    g = gate()
    g.observe(np.full(5000, bad), np.full(5000, 0.1))  # would look like a huge improvement
    g.observe(np.full(5000, 0.1), np.full(5000, bad))
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.action == "hold" and g.events == 0


def test_nan_pairs_are_dropped_but_the_rest_still_counts():
    b, c = clearly_better()
    b[::3] = np.nan
    g = gate()
    g.observe(b, c)
    assert g.events == 2000
    assert g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1).action == "promote"


def test_unpaired_batch_is_a_caller_error():
    with pytest.raises(ValueError, match="3 baseline and 2 candidate"):
        gate().observe([0.1, 0.2, 0.3], [0.1, 0.2])


def test_promotes_when_everything_passes_and_reset_restarts_the_evidence():
    b, c = clearly_better()
    g = gate()
    g.observe(b, c)
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.action == "promote", d.reason
    assert d.reason == "all checks passed"
    assert [ch.name for ch in d.checks] == [
        "min_events",
        "sequential_test",
        "holdout",
        "drift_quiet",
        "param_distance",
        "probe_kl",
    ]
    g.reset()
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.action == "hold" and d.events == 0


def test_min_events_holds_even_with_overwhelming_evidence():
    b, c = clearly_better(3000)
    g = gate(min_events=5000)
    g.observe(b, c)
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.check("sequential_test").passed is True
    assert d.action == "hold" and d.reason == "hold: min_events failed"


# --- holdout, drift, distance


def test_holdout_regression_blocks_promotion_even_when_the_live_test_says_better():
    b, c = clearly_better()
    g = gate(holdout_tolerance=0.01)
    g.observe(b, c)
    d = g.decide(holdout=HoldoutResult(baseline_loss=0.40, candidate_loss=0.45), param_distance=0.1)
    assert d.check("sequential_test").passed is True
    assert d.check("holdout").passed is False
    assert d.check("holdout").value == pytest.approx(0.05)
    assert d.action == "hold" and d.reason == "hold: holdout failed"
    within = g.decide(holdout=HoldoutResult(0.40, 0.405), param_distance=0.1)
    assert within.action == "promote"


@pytest.mark.parametrize(
    "holdout", [None, HoldoutResult(math.nan, 0.4), HoldoutResult(0.4, math.inf)]
)
def test_missing_or_broken_holdout_is_inconclusive(holdout):
    b, c = clearly_better()
    g = gate()
    g.observe(b, c)
    d = g.decide(holdout=holdout, param_distance=0.1)
    assert d.check("holdout").state == "inconclusive" and d.action == "hold"


def test_a_recent_drift_alarm_on_the_candidate_blocks_until_quiet():
    b, c = clearly_better(6000)
    g = gate(drift_quiet_events=1000)
    g.observe(b[:500], c[:500])
    first = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1).check("drift_quiet")
    assert first.state == "inconclusive"  # only 500 events watched: quiet is not known yet
    g.note_alarm(DriftAlarm("adwin", "candidate_error", 480, "increase"))
    g.observe(b[500:1000], c[500:1000])
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.check("drift_quiet").passed is False and d.check("drift_quiet").value == 500
    assert "adwin on candidate_error" in d.check("drift_quiet").detail
    assert d.action == "hold"
    g.observe(b[1000:1500], c[1000:1500])
    assert g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1).action == "promote"


def test_drift_memory_survives_a_promotion_reset():
    g = gate(drift_quiet_events=100)
    g.observe(np.ones(200), np.ones(200))
    g.note_alarm(DriftAlarm("adwin", "candidate_error", 150, "decrease"))
    g.reset()
    assert g.decide().check("drift_quiet").passed is False


def test_parameter_distance_cap():
    b, c = clearly_better()
    g = gate(max_param_distance=2.0)
    g.observe(b, c)
    assert g.decide(holdout=GOOD_HOLDOUT, param_distance=1.99).action == "promote"
    far = g.decide(holdout=GOOD_HOLDOUT, param_distance=2.0)
    assert far.action == "hold" and far.check("param_distance").passed is False
    for missing in (None, math.nan):
        d = g.decide(holdout=GOOD_HOLDOUT, param_distance=missing)
        assert d.check("param_distance").state == "inconclusive" and d.action == "hold"
    with pytest.raises(ValueError, match="distance"):
        g.decide(holdout=GOOD_HOLDOUT, param_distance=-1.0)


# --- PromQL inside the gate


class FakePromQL:
    def __init__(self, answers: dict[str, QueryResult]):
        self.answers = answers
        self.queries: list[str] = []

    def evaluate(self, check: PromQLCheck) -> Check:
        self.queries.append(check.query)
        return evaluate(check, self.answers.get(check.query, QueryResult(())))


def promql_gate(client: FakePromQL) -> Gate:
    cfg = GateConfig(
        min_events=200,
        drift_quiet_events=0,
        prometheus_url="http://prometheus.invalid:9090",
        promql=(
            PromQLCheck("errors", "rate(chat_errors_total[5m])", "< 0.05"),
            PromQLCheck("latency", "chat_p99_seconds", "<= 2"),
        ),
    )
    return Gate(cfg, promql_client=client, clock=lambda: 0.0)  # type: ignore[arg-type]


def test_promql_checks_are_queried_only_once_the_rest_pass():
    client = FakePromQL(
        {
            "rate(chat_errors_total[5m])": QueryResult((0.01,)),
            "chat_p99_seconds": QueryResult((1.5,)),
        }
    )
    g = promql_gate(client)
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert client.queries == []
    assert d.check("promql_errors").state == "inconclusive"
    b, c = clearly_better()
    g.observe(b, c)
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert client.queries == ["rate(chat_errors_total[5m])", "chat_p99_seconds"]
    assert d.action == "promote", d.reason


def test_promql_no_data_is_inconclusive_and_holds():
    client = FakePromQL({"rate(chat_errors_total[5m])": QueryResult((0.01,))})  # latency: no data
    g = promql_gate(client)
    b, c = clearly_better()
    g.observe(b, c)
    d = g.decide(holdout=GOOD_HOLDOUT, param_distance=0.1)
    assert d.check("promql_errors").passed is True
    assert d.check("promql_latency").state == "inconclusive"
    assert d.action == "hold" and d.reason == "hold: promql_latency inconclusive"


# --- record, state, metrics


def test_decision_record_is_strict_json_with_every_check():
    g = gate(max_param_distance=math.inf)
    g.observe([0.5, 0.6], [0.4, math.nan])
    record = json.loads(g.decide(holdout=None, param_distance=0.2).to_json())
    assert record["kind"] == "gate" and record["action"] == "hold"
    assert record["decided_at"] == 1_700_000_000.0
    assert {c["name"]: c["state"] for c in record["checks"]} == {
        "min_events": "fail",
        "sequential_test": "inconclusive",
        "holdout": "inconclusive",
        "drift_quiet": "pass",
        "param_distance": "pass",
        "probe_kl": "pass",  # no probe set: switched off
    }
    by_name = {c["name"]: c for c in record["checks"]}
    assert by_name["param_distance"]["threshold"] is None  # inf is not JSON: written as null
    assert by_name["min_events"]["value"] == 1.0
    assert record["test_statistic"] == 0.0


def test_state_dict_round_trips_through_json():
    b, c = clearly_better(1000)
    g = gate(drift_quiet_events=300)
    g.observe(b[:600], c[:600])
    g.note_alarm(DriftAlarm("page_hinkley", "candidate_error", 590, "increase"))
    g.observe(b[600:], c[600:])
    clone = gate(drift_quiet_events=300)
    clone.load_state_dict(json.loads(json.dumps(g.state_dict())))
    assert clone.decide(holdout=GOOD_HOLDOUT, param_distance=0.1) == g.decide(
        holdout=GOOD_HOLDOUT, param_distance=0.1
    )
    with pytest.raises(ValueError, match="alpha"):
        gate(alpha=0.01).load_state_dict(g.state_dict())


def test_metrics_export_every_check_with_a_one_hot_state():
    m = Metrics()
    b, c = clearly_better()
    g = gate()
    g.observe(b, c)
    m.record_gate(g.decide(holdout=None, param_distance=0.1))
    text = m.render().decode()
    assert 'feedstep_gate_check_state{check="holdout",state="inconclusive"} 1.0' in text
    assert 'feedstep_gate_check_state{check="holdout",state="pass"} 0.0' in text
    assert 'feedstep_gate_check_state{check="sequential_test",state="pass"} 1.0' in text
    assert 'feedstep_gate_check{check="min_events"} 3000.0' in text
    assert 'feedstep_gate_decisions_total{action="hold"} 1.0' in text
    assert "feedstep_gate_paired_events 3000.0" in text
    assert "feedstep_gate_test_statistic " in text


# --- config validation


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\)"),
        ({"alpha": "0.05"}, "alpha must be a finite number"),
        ({"min_events": 0}, "min_events must be an integer >= 1"),
        ({"min_events": True}, "min_events must be an integer"),
        ({"min_effect": -0.1}, "min_effect must be >= 0"),
        ({"holdout_tolerance": math.nan}, "holdout_tolerance must be a finite number"),
        ({"drift_quiet_events": -1}, "drift_quiet_events must be an integer >= 0"),
        ({"max_param_distance": 0.0}, "max_param_distance must be a number > 0"),
        ({"mixture_scale": 0.0}, "mixture_scale must be > 0"),
        ({"prometheus_url": "ftp://x"}, "http"),
        (
            {"promql": (PromQLCheck("errors", "up", "< 1"),)},
            r"1 PromQL check\(s\) configured but prometheus_url is None",
        ),
        (
            {
                "prometheus_url": "http://p:9090",
                "promql": (PromQLCheck("a", "up", "< 1"), PromQLCheck("a", "up", "> 0")),
            },
            "unique",
        ),
    ],
)
def test_config_is_validated_with_clear_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GateConfig(**kwargs)


def test_config_from_mapping_names_unknown_keys_and_builds_promql_checks():
    with pytest.raises(ValueError, match=r"unknown gate setting\(s\) \['min_event'\]"):
        GateConfig.from_mapping({"min_event": 10})
    with pytest.raises(ValueError, match=r"promql\[0\] must have exactly the keys"):
        GateConfig.from_mapping({"prometheus_url": "http://p:9090", "promql": [{"query": "up"}]})
    cfg = GateConfig.from_mapping(
        {
            "min_events": 10,
            "prometheus_url": "http://p:9090",
            "promql": [{"name": "up", "query": "up", "condition": ">= 1"}],
        }
    )
    assert cfg.min_events == 10 and cfg.promql[0].op == ">=" and cfg.promql[0].threshold == 1.0
