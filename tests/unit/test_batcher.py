from __future__ import annotations

import math

import pytest

from streaming.ingest.batcher import MicroBatcher


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_size_trigger_releases_full_batches_in_order():
    b: MicroBatcher[int] = MicroBatcher(batch_size=3, max_wait_ms=1e6, clock=FakeClock())
    assert b.add(1) is None
    assert b.add(2) is None
    assert b.pending == 2
    assert b.add(3) == [1, 2, 3]
    assert b.pending == 0
    assert [b.add(i) for i in range(4, 10)] == [None, None, [4, 5, 6], None, None, [7, 8, 9]]


def test_batch_size_one_releases_every_item():
    b: MicroBatcher[str] = MicroBatcher(batch_size=1, max_wait_ms=50, clock=FakeClock())
    assert b.add("a") == ["a"]
    assert b.add("b") == ["b"]
    assert b.time_left_s() is None


def test_time_trigger_fires_exactly_at_max_wait():
    clock = FakeClock()
    b: MicroBatcher[str] = MicroBatcher(batch_size=10, max_wait_ms=250, clock=clock)
    b.add("a")
    clock.advance(0.2)
    b.add("b")
    assert b.due() is None
    clock.advance(0.049)
    assert b.due() is None
    clock.advance(0.001)
    assert b.due() == ["a", "b"]
    assert b.due() is None
    assert b.pending == 0


def test_timer_starts_at_first_item_of_each_batch():
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(batch_size=2, max_wait_ms=100, clock=clock)
    clock.advance(5.0)  # idle time before the first item does not count
    b.add(1)
    assert b.due() is None
    assert b.add(2) == [1, 2]
    clock.advance(0.09)
    b.add(3)  # a new batch: its timer starts now, not at the previous batch's start
    clock.advance(0.09)
    assert b.due() is None
    assert b.time_left_s() == pytest.approx(0.01)
    clock.advance(0.01)
    assert b.due() == [3]


def test_deadline_is_exact_despite_float_rounding():
    clock = FakeClock(10.0)
    b: MicroBatcher[int] = MicroBatcher(batch_size=5, max_wait_ms=100, clock=clock)
    b.add(1)
    clock.now = 10.1  # 10.1 - 10.0 < 0.1 in binary floating point
    assert b.due() == [1]


def test_time_left_s():
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(batch_size=5, max_wait_ms=500, clock=clock)
    assert b.time_left_s() is None
    b.add(1)
    assert b.time_left_s() == pytest.approx(0.5)
    clock.advance(0.3)
    assert b.time_left_s() == pytest.approx(0.2)
    clock.advance(1.0)
    assert b.time_left_s() == 0.0  # overdue, never negative


def test_explicit_now_overrides_the_clock():
    clock = FakeClock(0.0)
    b: MicroBatcher[int] = MicroBatcher(batch_size=5, max_wait_ms=100, clock=clock)
    b.add(1)
    assert b.time_left_s(now=0.04) == pytest.approx(0.06)
    assert b.due(now=0.05) is None
    assert b.due(now=0.1) == [1]


def test_zero_wait_makes_every_partial_batch_due_at_once():
    b: MicroBatcher[int] = MicroBatcher(batch_size=5, max_wait_ms=0, clock=FakeClock())
    b.add(1)
    b.add(2)
    assert b.time_left_s() == 0.0
    assert b.due() == [1, 2]


def test_flush_returns_pending_or_none():
    b: MicroBatcher[int] = MicroBatcher(batch_size=5, max_wait_ms=1000, clock=FakeClock())
    assert b.flush() is None
    b.add(1)
    b.add(2)
    assert b.flush() == [1, 2]
    assert b.flush() is None
    assert b.pending == 0


def test_released_batches_are_independent_lists():
    b: MicroBatcher[int] = MicroBatcher(batch_size=2, max_wait_ms=1000, clock=FakeClock())
    first = b.add(1) or b.add(2)
    assert first == [1, 2]
    b.add(3)
    assert first == [1, 2]


def test_uses_monotonic_clock_by_default():
    b: MicroBatcher[int] = MicroBatcher(batch_size=2, max_wait_ms=60_000)
    b.add(1)
    left = b.time_left_s()
    assert left is not None and 0.0 < left <= 60.0
    assert b.due() is None


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8", True, None])
def test_batch_size_is_validated(batch_size):
    with pytest.raises(ValueError, match=r"batch_size.*" + repr(batch_size).replace(".", r"\.")):
        MicroBatcher(batch_size=batch_size, max_wait_ms=10)


@pytest.mark.parametrize("max_wait_ms", [-1, -0.5, math.nan, math.inf, "10", True, None])
def test_max_wait_ms_is_validated(max_wait_ms):
    with pytest.raises(ValueError, match=r"max_wait_ms"):
        MicroBatcher(batch_size=4, max_wait_ms=max_wait_ms)


def test_properties():
    b: MicroBatcher[int] = MicroBatcher(batch_size=4, max_wait_ms=25)
    assert (b.batch_size, b.max_wait_ms, b.pending) == (4, 25.0, 0)
