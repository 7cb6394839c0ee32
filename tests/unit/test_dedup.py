from __future__ import annotations

import random

import pytest

from streaming.ingest.dedup import Deduplicator


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


class _Reference:
    """The plainest deduplicator: an ordered dict of the remembered ids."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.ids: dict[str, None] = {}

    def check_and_add(self, event_id: str) -> bool:
        if event_id in self.ids:
            return True
        self.ids[event_id] = None
        if len(self.ids) > self.window:
            del self.ids[next(iter(self.ids))]
        return False

    def forget(self, event_ids) -> None:
        for event_id in event_ids:
            self.ids.pop(event_id, None)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 2048])
@pytest.mark.parametrize("window", [1, 2, 5, 16, 50])
def test_chunked_order_behaves_like_an_ordered_dict(chunk, window, monkeypatch):
    """Seeded random adds (with repeats), forgets (newest and oldest), snapshots, restores."""
    import streaming.ingest.dedup as dedup_module

    monkeypatch.setattr(dedup_module, "_CHUNK", chunk)
    rng = random.Random(chunk * 1000 + window)
    d, ref = Deduplicator(window), _Reference(window)
    pool = [f"id-{i}" for i in range(3 * window + 5)]
    for _ in range(3000):
        op = rng.random()
        if op < 0.75:
            event_id = rng.choice(pool)
            assert d.check_and_add(event_id) == ref.check_and_add(event_id)
        elif op < 0.85:
            live = list(ref.ids)
            some = rng.sample(live, min(len(live), rng.randint(0, 3))) if live else []
            newest = live[-rng.randint(0, min(3, len(live))) :] if live else []
            gone = some + newest + [rng.choice(pool)]
            d.forget(gone)
            ref.forget(gone)
        elif op < 0.95:
            exclude = set(rng.sample(pool, rng.randint(0, 4))) | set(list(ref.ids)[-2:])
            want = [i for i in ref.ids if i not in exclude]
            assert d.snapshot(exclude=exclude) == want
            assert [i for c in d.snapshot_chunks(exclude) for i in c] == want
        else:
            chunks = d.snapshot_chunks()
            d = Deduplicator.restore(chunks, window)
        assert d.snapshot() == list(ref.ids)
        assert len(d) == len(ref.ids) and all(i in d for i in ref.ids)


def test_snapshot_chunks_share_the_sealed_chunks_and_are_not_changed_later(monkeypatch):
    import streaming.ingest.dedup as dedup_module

    monkeypatch.setattr(dedup_module, "_CHUNK", 4)
    d = Deduplicator(window=10)
    for i in range(10):
        d.check_and_add(f"e{i}")
    chunks = d.snapshot_chunks()
    frozen = [list(c) for c in chunks]
    for i in range(10, 30):  # the window moves on: old chunks are dropped, not edited
        d.check_and_add(f"e{i}")
    d.forget(["e29", "e25"])
    assert [list(c) for c in chunks] == frozen
    assert Deduplicator.restore(frozen, 10).snapshot() == [f"e{i}" for i in range(10)]


def test_a_checkpoint_written_before_chunks_restores():
    """Checkpoints of earlier versions hold one flat list of ids."""
    flat = [f"e{i}" for i in range(5000)]
    assert Deduplicator.restore(flat, window=4000).snapshot() == flat[1000:]
