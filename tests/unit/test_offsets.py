"""The applied-offset ledger: ranges merge, overlaps are recorded, JSON round trip, union check."""

from __future__ import annotations

import json
import random
import zlib

import crc32c

from streaming.base import Record
from streaming.ingest.offsets import (
    DIGEST_KIND,
    Ledger,
    Segment,
    check_ledgers,
    event_digest,
    pair_digest,
    pair_id,
    parse_tp_key,
    tp_key,
)

T0, T1 = ("feedback", 0), ("feedback", 1)


def test_adjacent_ranges_merge_and_counters_add_up():
    ledger = Ledger()
    ledger.apply({T0: (0, 10), T1: (0, 4)}, trained_ids=["a", "b"], rejected=3, duplicates=1)
    ledger.apply({T0: (10, 25)}, trained_ids=["c"], skipped=0)
    assert ledger.ranges == {T0: [[0, 25]], T1: [[0, 4]]}
    assert (ledger.trained, ledger.rejected, ledger.duplicates) == (3, 3, 1)
    assert ledger.digest == event_digest(["c", "b", "a"])
    assert ledger.violations == [] and ledger.covered(T0) == 25


def test_an_overlap_is_recorded_and_a_gap_kept_as_a_separate_range():
    ledger = Ledger()
    ledger.apply({T0: (0, 10)})
    ledger.apply({T0: (8, 12)})  # 8 and 9 applied twice
    ledger.apply({T0: (20, 30)})  # 12..19 never applied by this ledger
    assert [v.to_json() for v in ledger.violations] == [["overlap", "feedback:0", 8, 10]]
    assert ledger.ranges[T0] == [[0, 12], [20, 30]]


def test_json_round_trip_keeps_everything():
    ledger = Ledger()
    ledger.apply({("a:b", 3): (5, 9)}, trained_ids=["x"], skipped=2, rejected=1)
    ledger.apply({("a:b", 3): (7, 8)})
    again = Ledger.from_json(ledger.to_json())
    assert again.to_json() == ledger.to_json()
    assert parse_tp_key(tp_key(("a:b", 3))) == ("a:b", 3)
    assert Ledger.from_json(None).to_json() == Ledger().to_json()


def test_mined_pairs_are_counted_digested_round_trip_and_unite():
    a, b = Ledger(), Ledger()
    a.apply({T0: (0, 4)}, trained_ids=["e1", "e2"], pairs=[("e2", "e1")])
    a.apply({T0: (4, 6)}, trained_ids=["e3"], skipped=1, pairs=[("e0", "e3")], pairs_skipped=1)
    b.apply({T1: (0, 2)}, trained_ids=["f1"], pairs=iter([("f1", "f0")]))  # any iterable
    assert (a.pairs, a.pairs_skipped) == (2, 1)  # a skipped step's pair counts in both
    assert a.pair_digest == pair_digest([("e0", "e3"), ("e2", "e1")])
    assert a.pair_digest != pair_digest([("e1", "e2"), ("e0", "e3")])  # chosen comes first
    assert pair_id("ab", "c") != pair_id("a", "bc")
    data = json.loads(json.dumps(a.to_json()))
    assert data["pairs"] == 2 and Ledger.from_json(data).to_json() == a.to_json()
    both = Ledger.union([a, b])
    assert (both.pairs, both.pairs_skipped) == (3, 1)
    assert both.pair_digest == pair_digest([("e2", "e1"), ("e0", "e3"), ("f1", "f0")])
    assert a.share([T0], counters=True).pair_digest == a.pair_digest
    assert a.share([T0], counters=False).pairs == 0


def test_a_ledger_from_before_pairs_were_counted_loads_with_none_and_counts_on():
    ledger = Ledger()
    ledger.apply({T0: (0, 3)}, trained_ids=["a", "b"], rejected=1)
    data = ledger.to_json()
    for key in ("pairs", "pairs_skipped", "pair_digest"):
        del data[key]
    old = Ledger.from_json(data)
    assert (old.pairs, old.pairs_skipped, old.pair_digest) == (0, 0, 0)
    assert old.trained == 2 and old.digest == event_digest(["a", "b"])
    old.apply({T0: (3, 5)}, trained_ids=["c"], pairs=[("c", "a")])
    assert old.pairs == 1 and old.pair_digest == pair_digest([("c", "a")])


def test_digest_changes_when_an_event_is_missing_or_doubled():
    ids = [f"e{i}" for i in range(100)]
    assert event_digest(reversed(ids)) == event_digest(ids)
    assert event_digest(ids[:-1]) != event_digest(ids)
    assert event_digest([*ids, "e7"]) != event_digest(ids)


def test_digest_is_the_sum_of_two_crcs_per_id_mod_2_64():
    ids = ["a", "é-\udcff", "e" * 300]  # non-ASCII, a lone surrogate, a long id
    want = 0
    for event_id in ids:
        data = event_id.encode("utf-8", "surrogatepass")
        want += crc32c.crc32c(data) * 2**32 + zlib.crc32(data)
    assert event_digest(ids) == want % 2**64
    assert event_digest([]) == 0


def test_a_ledger_from_before_the_digest_kind_keeps_counting_but_is_marked_mixed(caplog):
    ledger = Ledger()
    ledger.apply({T0: (0, 2)}, trained_ids=["a", "b"])
    data = ledger.to_json()
    assert data["digest_kind"] == DIGEST_KIND
    assert Ledger.from_json(data).digest_kind == DIGEST_KIND
    del data["digest_kind"]  # written by an older feedstep, with another hash
    old = Ledger.from_json(data)
    assert old.digest_kind == "mixed" and old.trained == 2
    assert "can no longer be compared" in caplog.text
    assert Ledger.from_json(old.to_json()).digest_kind == "mixed"


def test_check_ledgers_finds_gaps_overlaps_between_ledgers_and_overruns():
    a, b = Ledger(), Ledger()
    a.apply({T0: (0, 50)})
    b.apply({T0: (50, 100), T1: (0, 10)})
    assert check_ledgers([a, b], {T0: 100, T1: 10}) == []
    assert check_ledgers([a, b], {T0: 100, T1: 12}) == [
        "feedback:1: offsets [10, 12) applied by no ledger"
    ]
    c = Ledger()
    c.apply({T0: (40, 60)})
    problems = check_ledgers([a, b, c], {T0: 100, T1: 10})
    assert any("applied twice" in p for p in problems)
    assert check_ledgers([a], {T0: 40}) == ["feedback:0: ledger reaches 50, past the end 40"]


def test_segment_tracks_first_read_and_next_offset_per_partition():
    seg = Segment()
    assert seg.empty
    seg.read(T0, 7)
    seg.read(T1, 3)
    seg.read(T0, 9)  # a gap inside a partition (compaction) stays inside the range
    assert seg.ranges() == {T0: (7, 10), T1: (3, 4)}


def test_read_all_is_read_on_each_record_for_runs_and_interleavings():
    rng = random.Random(3)
    tps = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    for _ in range(200):
        next_offset = {tp: rng.randrange(50) for tp in tps}
        records = []
        for _ in range(rng.randrange(0, 60)):
            tp = rng.choice(tps) if rng.random() < 0.3 or not records else records[-1].tp
            records.append(Record(tp[0], tp[1], next_offset[tp], None, b"x"))
            next_offset[tp] += rng.choice([1, 1, 2])
        one, many = Segment(), Segment()
        for record in records:
            one.read(record.tp, record.offset)
        cut = rng.randrange(len(records) + 1)
        many.read_all(records[:cut])
        many.read_all(records[cut:])
        assert (many.start, many.end) == (one.start, one.end)
