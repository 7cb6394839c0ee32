"""Histogram.observe_many is the batched form of observe: same buckets, same sum, bit for bit."""

from __future__ import annotations

import math
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from monitors.metrics import Metrics, _BatchHistogram

_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _samples(hist: Histogram) -> list[tuple[str, dict[str, str], float]]:
    """Every sample except ``_created`` (a timestamp that differs between two histograms)."""
    return [
        (s.name, s.labels, s.value)
        for metric in hist.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def _pair() -> tuple[Histogram, _BatchHistogram]:
    return (
        Histogram("one", "h", buckets=_BOUNDS, registry=CollectorRegistry()),
        _BatchHistogram("one", "h", buckets=_BOUNDS, registry=CollectorRegistry()),
    )


def _amount(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.2:
        return float(rng.choice(_BOUNDS))  # exactly on a bound: counted in that bucket
    if pick < 0.25:
        return rng.choice([0.0, -1.5, math.inf, 1e9])
    return rng.expovariate(0.2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_observe_many_equals_observe_one_by_one(seed):
    rng = random.Random(seed)
    one, many = _pair()
    for _ in range(200):
        chunk = [_amount(rng) for _ in range(rng.randint(0, 40))]
        for amount in chunk:
            one.observe(amount)
        many.observe_many(chunk)
        assert _samples(many) == _samples(one)  # exact: sum compared with ==, not approx


def test_observe_many_takes_any_iterable_and_nan_like_observe():
    one, many = _pair()
    for amount in (0.3, math.nan, 7.0):
        one.observe(amount)
    many.observe_many(iter([0.3, math.nan, 7.0]))
    bucket_counts = [(n, lab, v) for n, lab, v in _samples(many) if n.endswith("_bucket")]
    assert bucket_counts == [(n, lab, v) for n, lab, v in _samples(one) if n.endswith("_bucket")]
    assert [v for n, _, v in _samples(many) if n.endswith("_count")] == [2.0]
    assert math.isnan(next(v for n, _, v in _samples(many) if n.endswith("_sum")))


def test_observe_many_of_nothing_changes_nothing():
    _, many = _pair()
    before = _samples(many)
    many.observe_many([])
    assert _samples(many) == before


def test_observe_many_on_labelled_children_and_refused_on_the_parent():
    hist = _BatchHistogram("lab", "h", ["model"], buckets=_BOUNDS, registry=CollectorRegistry())
    hist.labels(model="a").observe_many([0.2, 3.0])
    hist.labels(model="b").observe_many([100.0])
    counts = {
        s.labels["model"]: s.value for s in hist.collect()[0].samples if s.name.endswith("_count")
    }
    assert counts == {"a": 2.0, "b": 1.0}
    with pytest.raises(ValueError):
        hist.observe_many([1.0])


def test_feedback_to_update_is_a_batch_histogram():
    assert isinstance(Metrics().feedback_to_update, _BatchHistogram)
