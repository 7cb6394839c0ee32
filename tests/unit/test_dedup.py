from __future__ import annotations

import pytest

from streaming.dedup import Deduplicator


def test_first_sight_is_new_repeat_is_duplicate():
    d = Deduplicator(window=10)
    assert d.check_and_add("a") is False
    assert d.check_and_add("b") is False
    assert d.check_and_add("a") is True
    assert d.check_and_add("b") is True
    assert len(d) == 2
    assert "a" in d and "c" not in d


def test_window_forgets_oldest_first():
    d = Deduplicator(window=3)
    for event_id in ["a", "b", "c", "d"]:
        assert d.check_and_add(event_id) is False
    assert len(d) == 3
    assert "a" not in d
    assert d.snapshot() == ["b", "c", "d"]
    # "a" fell out of the window, so it counts as new again (and pushes "b" out).
    assert d.check_and_add("a") is False
    assert d.snapshot() == ["c", "d", "a"]
    assert d.check_and_add("b") is False


def test_duplicate_does_not_refresh_its_place():
    d = Deduplicator(window=2)
    d.check_and_add("a")
    d.check_and_add("b")
    assert d.check_and_add("a") is True  # seen, but "a" stays the oldest
    d.check_and_add("c")
    assert d.snapshot() == ["b", "c"]
    assert "a" not in d


def test_window_of_one():
    d = Deduplicator(window=1)
    assert d.check_and_add("a") is False
    assert d.check_and_add("a") is True
    assert d.check_and_add("b") is False
    assert d.check_and_add("a") is False


def test_memory_stays_bounded():
    d = Deduplicator(window=100)
    for i in range(10_000):
        d.check_and_add(f"e-{i}")
    assert len(d) == 100
    assert d.snapshot()[0] == "e-9900" and d.snapshot()[-1] == "e-9999"


def test_snapshot_restore_round_trip():
    d = Deduplicator(window=4)
    for event_id in ["a", "b", "c", "d", "e"]:
        d.check_and_add(event_id)
    restored = Deduplicator.restore(d.snapshot(), window=4)
    assert restored.snapshot() == d.snapshot() == ["b", "c", "d", "e"]
    assert restored.window == 4
    for event_id in ["f", "b", "a", "e"]:
        assert restored.check_and_add(event_id) == d.check_and_add(event_id)


def test_restore_into_smaller_window_keeps_newest():
    restored = Deduplicator.restore(["a", "b", "c", "d"], window=2)
    assert restored.snapshot() == ["c", "d"]
    assert restored.check_and_add("b") is False


def test_restore_ignores_repeated_ids():
    assert Deduplicator.restore(["a", "b", "a"], window=5).snapshot() == ["a", "b"]


def test_snapshot_is_a_copy():
    d = Deduplicator(window=3)
    d.check_and_add("a")
    snap = d.snapshot()
    snap.append("zzz")
    assert "zzz" not in d


@pytest.mark.parametrize("window", [0, -1, 1.5, "10", None, True])
def test_window_is_validated(window):
    with pytest.raises(ValueError, match=r"window"):
        Deduplicator(window=window)


def test_default_window():
    assert Deduplicator().window == 100_000


def test_snapshot_excluding_ids_keeps_the_order_of_the_others():
    d = Deduplicator(window=6)
    for event_id in "abcdefgh":
        d.check_and_add(event_id)
    every = d.snapshot()
    for exclude in (set(), {"h"}, {"c", "h"}, {"c"}, {"a", "x"}, {"x"}, set("cdefgh"), set("abc")):
        assert d.snapshot(exclude=exclude) == [i for i in every if i not in exclude]
