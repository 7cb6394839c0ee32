"""WindowedMean.update_many is the batched form of update: same window, same mean."""

from __future__ import annotations

import math
import random

import pytest

from monitors.prequential import PairedPrequential, WindowedMean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_many_equals_one_by_one_including_nan_and_window_overflow(seed):
    rng = random.Random(seed)
    one, many = WindowedMean(50), WindowedMean(50)
    for _ in range(300):
        chunk = [
            rng.random() if rng.random() > 0.1 else math.nan for _ in range(rng.randint(0, 40))
        ]
        for v in chunk:
            one.update(v)
        many.update_many(chunk)
        assert many.count == one.count
        assert many.value == pytest.approx(one.value, rel=1e-12, nan_ok=True)


def test_paired_update_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        PairedPrequential(10).update([1.0], [1.0, 2.0], [1.0], [1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_many_matches_the_last_window_values_even_when_a_chunk_exceeds_the_window(seed):
    rng = random.Random(seed)
    for _ in range(50):
        window = rng.randint(1, 20)
        mean, kept = WindowedMean(window), []
        for _ in range(30):
            chunk = [
                rng.random() if rng.random() > 0.1 else math.nan for _ in range(rng.randint(0, 45))
            ]
            mean.update_many(chunk)
            kept = (kept + [v for v in chunk if v == v])[-window:]
            assert mean.count == len(kept)
            want = math.fsum(kept) / len(kept) if kept else math.nan
            assert mean.value == pytest.approx(want, rel=1e-12, nan_ok=True)
