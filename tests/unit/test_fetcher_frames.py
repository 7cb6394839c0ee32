"""The fetcher's record frames: what the child encodes is exactly what the parent decodes."""

from __future__ import annotations

import random
from collections import namedtuple

import msgspec

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


def _plain_payloads(rng: random.Random) -> list[bytes]:
    from streaming.simulate import SimulatedFeedback

    good = list(SimulatedFeedback(seed=rng.randrange(1000)).payloads(30))
    bad = [b"{}", b"not json", b'{"event_id": "x"}', None, b""]
    return [rng.choice(good + bad) for _ in range(40)]


def test_predecoded_frames_carry_plain_values_under_their_generation():
    from streaming.events import DecodeLimits
    from streaming.plain import plain_values

    rng = random.Random(9)
    limits = DecodeLimits(max_text_chars=200)
    for _ in range(20):
        batches = _random_batches(rng)
        for tp, records in batches.items():
            values = _plain_payloads(rng)
            batches[tp] = [r._replace(value=values[i % len(values)]) for i, r in enumerate(records)]
        body = encode_records(6, batches, limits, decode_generation=2)
        got = decode_records(body, decode_generation=2)
        plain = [tuple(r.decoded) if r.decoded else r.decoded for r in got]  # MessagePack: lists
        assert plain == [plain_values(r.value, limits) or False for r in got]
        assert any(plain) and not all(plain)  # both kinds were in the frames
        undecoded = [msgspec.structs.replace(r, decoded=None) for r in got]
        assert undecoded == _expected(batches)
        # a frame encoded under other limits (an older predecode) is not trusted
        assert decode_records(body, decode_generation=3) == _expected(batches)
        assert decode_records(body) == _expected(batches)


def test_a_decoded_column_that_cannot_be_packed_is_left_out(monkeypatch):
    import streaming.fetcher as fetcher
    from streaming.events import DecodeLimits

    monkeypatch.setattr(
        fetcher,
        "plain_values",
        lambda value, limits: ("e", 0.0, 0, "\ud800", "r", None, 1.0, None, 1.0),
    )
    batches = _random_batches(random.Random(10))
    body = encode_records(1, batches, DecodeLimits(), decode_generation=1)
    assert decode_records(body, decode_generation=1) == _expected(batches)
