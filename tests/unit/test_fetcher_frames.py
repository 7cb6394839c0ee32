"""The fetcher's record frames: what the child encodes is exactly what the parent decodes."""

from __future__ import annotations

import random
from collections import namedtuple

from streaming.base import Record
from streaming.fetcher import decode_records, encode_records

KTP = namedtuple("KTP", "topic partition")
KRecord = namedtuple("KRecord", "offset key value timestamp headers")


def _random_batches(rng: random.Random) -> dict:
    batches = {}
    for partition in rng.sample(range(8), 3):
        tp = KTP(rng.choice(["feedback", "fb.ünï"]), partition)
        records = []
        start = rng.randrange(100)
        for offset in range(start, start + rng.randrange(1, 40)):
            key = rng.choice([None, b"", rng.randbytes(rng.randrange(1, 20))])
            value = rng.choice([None, b"", rng.randbytes(rng.randrange(1, 600))])
            ts = rng.choice([None, -1, 0, rng.randrange(2**41)])
            headers = [
                (f"h{i}", rng.choice([None, b"", rng.randbytes(5)]))
                for i in range(rng.choice([0, 0, 1, 3]))
            ]
            records.append(KRecord(offset, key, value, ts, headers))
        batches[tp] = records
    return batches


def _expected(batches: dict, skip: set | None = None) -> list[Record]:
    return [
        Record(
            tp.topic,
            tp.partition,
            r.offset,
            r.key,
            r.value,
            r.timestamp,
            tuple((k, v or b"") for k, v in r.headers),
        )
        for tp, records in batches.items()
        if (tp.topic, tp.partition) not in (skip or set())
        for r in records
    ]


def test_round_trip_keeps_every_field():
    rng = random.Random(7)
    for _ in range(50):
        batches = _random_batches(rng)
        ends: dict = {}
        got = decode_records(encode_records(3, batches), ends=ends)
        assert got == _expected(batches)
        for tp, records in batches.items():
            assert ends[(tp.topic, tp.partition)] == records[-1].offset + 1


def test_partitions_sought_after_the_frame_are_dropped():
    rng = random.Random(8)
    batches = _random_batches(rng)
    first = next(iter(batches))
    sought = {(first.topic, first.partition): 5}
    body = encode_records(4, batches)

    def stale(tp, generation):
        return generation < sought.get(tp, 0)

    ends: dict = {}
    got = decode_records(body, stale, ends)
    assert got == _expected(batches, skip=set(sought))
    assert (first.topic, first.partition) not in ends
    # a frame from the seek's generation on is kept whole
    assert decode_records(encode_records(5, batches), stale) == _expected(batches)


def test_empty_poll_is_an_empty_frame():
    assert decode_records(encode_records(0, {})) == []
