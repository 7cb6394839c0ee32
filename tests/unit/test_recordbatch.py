"""feedstep's record-batch reader against kafka-python's own, on seeded batches of every shape.

Batches are built with kafka-python's ``MemoryRecordsBuilder`` (message formats v0, v1 and v2,
none or gzip compression, keys, values and headers of every length class, ``None`` where the
format allows it) and then, for v2, edited in place: the log-append-time or the control flag
set, bytes flipped. Both readers must return equal ``ConsumerRecord`` lists, leave the same
``next_fetch_offset`` after every partial ``take``, and raise on the same corrupt batches.
"""

from __future__ import annotations

import random
import struct

import crc32c
import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from streaming import recordbatch
from streaming.recordbatch import _partition_records_class, read_batch

TP = TopicPartition("feedback", 3)
Fast = _partition_records_class(Fetcher.PartitionRecords)
Slow = Fetcher.PartitionRecords
# v2 batch header: attributes (int16) at byte 21, CRC-32C (uint32) at 17 over bytes 21..end
_ATTRS, _CRC = 21, 17


def _blob(rng: random.Random) -> bytes | None:
    kind = rng.random()
    if kind < 0.1:
        return None
    if kind < 0.2:
        return b""
    n = rng.choice([1, 5, 63, 64, 200, 8191, 8192, 20_000])
    return rng.randbytes(n)


def _headers(rng: random.Random) -> list[tuple[str, bytes | None]]:
    if rng.random() < 0.6:
        return []
    return [
        (rng.choice(["trace", "ü-name", "x" * 70, ""]), rng.choice([None, b"", b"v", b"w" * 300]))
        for _ in range(rng.randint(1, 3))
    ]


def _batch(
    rng: random.Random, magic: int, offset: int, count: int, gzip: bool
) -> tuple[bytes, int]:
    """One batch of ``count`` records at ``offset``; returns (bytes, next offset)."""
    builder = MemoryRecordsBuilder(
        magic=magic, compression_type=1 if gzip else 0, batch_size=1 << 26, offset=offset
    )
    base_ts = rng.randint(0, 2**41)
    for i in range(count):
        headers = _headers(rng) if magic == 2 else None
        ts = base_ts + rng.choice([0, 1, 63, 64, 10**3 * i, 2**35]) if magic else None
        key, value = _blob(rng), _blob(rng)
        if magic < 2 and key is None and value is None:
            value = b"v"
        builder.append(timestamp=ts, key=key, value=value, headers=headers)
    builder.close()
    return builder.buffer(), offset + count


def _edit(data: bytes, set_bits: int) -> bytes:
    """A v2 batch with attribute bits set and its CRC recomputed."""
    buf = bytearray(data)
    (attrs,) = struct.unpack_from(">h", buf, _ATTRS)
    struct.pack_into(">h", buf, _ATTRS, attrs | set_bits)
    struct.pack_into(">I", buf, _CRC, crc32c.crc32c(bytes(buf[_ATTRS:])))
    return bytes(buf)


def _fetch(rng: random.Random, magic: int) -> tuple[bytes, int]:
    """Several batches back to back, some log-append-time or control ones among v2 batches."""
    parts, offset = [], rng.randint(0, 10**6)
    first = offset
    for _ in range(rng.randint(1, 4)):
        data, offset = _batch(rng, magic, offset, rng.randint(1, 40), rng.random() < 0.3)
        if magic == 2 and rng.random() < 0.2:
            data = _edit(data, 0x08)  # log append time: every record gets max_timestamp
        if magic == 2 and rng.random() < 0.1:
            data = _edit(data, 0x20 | 0x10)  # a control batch: skipped by both readers
        parts.append(data)
    return b"".join(parts), first


def _read(cls: type, data: bytes, fetch_offset: int, chunks: list[int | None], crcs: bool = True):
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=crcs)
    out = []
    for n in chunks:
        if not part:  # drained (the consumer stops taking then, too)
            out.append("drained")
            break
        got = part.take(n)
        out.append((got, part.next_fetch_offset))
    return out, part.records_read, part.bytes_read


@pytest.mark.parametrize("magic", [0, 1, 2])
def test_fast_reader_returns_what_kafka_python_returns(magic: int) -> None:
    rng = random.Random(1000 + magic)
    for _ in range(60):
        data, first = _fetch(rng, magic)
        # start in the middle of the first batch sometimes (the broker returns whole batches)
        start = first + rng.choice([0, 0, 1, 5])
        chunks = [rng.choice([1, 3, 17, None]) for _ in range(rng.randint(1, 5))] + [None]
        fast = _read(Fast, data, start, chunks)
        slow = _read(Slow, data, start, chunks)
        assert fast[0] == slow[0]
        assert fast[1] == slow[1]  # records read
        assert fast[2] == slow[2]  # bytes read


def test_the_fields_are_right_not_only_equal() -> None:
    """Spot check against what was written, so a shared mistake cannot hide."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=70)
    builder.append(timestamp=1_700_000_000_000, key=b"k", value=b"v" * 300, headers=[("h", None)])
    builder.append(timestamp=1_700_000_009_000, key=None, value=b"", headers=[])
    builder.close()
    first, second = Fast(70, TP, MemoryRecords(builder.buffer())).take(None)
    assert (first.offset, first.timestamp, first.key, first.value) == (
        70,
        1_700_000_000_000,
        b"k",
        b"v" * 300,
    )
    assert first.headers == [("h", None)] and first.serialized_header_size == 1
    assert (second.offset, second.timestamp, second.key, second.value) == (
        71,
        1_700_000_009_000,
        None,
        b"",
    )
    assert (second.serialized_key_size, second.serialized_value_size) == (-1, 0)
    assert (first.topic, first.partition) == ("feedback", 3)


def _read_until_error(cls: type, data: bytes, fetch_offset: int, crcs: bool):
    """Every record handed out before the reader raised, and what it raised (or None)."""
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=crcs)
    out: list = []
    try:
        while part:
            out += part.take(None)  # a mid-batch error is raised by the next take
    except Exception as exc:  # noqa: BLE001 - compared between the readers, not hidden
        return out, "corrupt" if isinstance(exc, CorruptRecordError) else type(exc).__name__
    return out, None


def test_corrupt_batches_are_refused_like_kafka_python_refuses_them() -> None:
    """Same error, or none, on the same bytes; before it, the same records or fewer.

    kafka-python hands out the records of a batch that precede a malformed one; feedstep's
    reader reads a batch whole before handing any out, so it hands out none of that batch.
    With ``check_crcs`` (always on in feedstep) the CRC refuses such a batch first anyway.
    """
    rng = random.Random(7)
    refused = 0
    for _ in range(400):
        data, first = _fetch(rng, 2)
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):  # flip bits after the first batch header
            at = rng.randrange(61, len(buf)) if len(buf) > 61 else rng.randrange(len(buf))
            buf[at] ^= 1 << rng.randrange(8)
        for crcs in (True, False):
            fast, fast_error = _read_until_error(Fast, bytes(buf), first, crcs)
            slow, slow_error = _read_until_error(Slow, bytes(buf), first, crcs)
            assert fast_error == slow_error
            if slow_error is None:
                assert fast == slow
            else:
                refused += 1
                assert fast == slow[: len(fast)]
                if crcs:
                    assert fast == slow  # the CRC refuses the batch before either reads it
    assert refused > 100  # the flips did reach the readers' checks


def test_read_batch_rejects_a_record_that_does_not_add_up() -> None:
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=0)
    builder.append(timestamp=5, key=b"key", value=b"value", headers=[])
    builder.close()
    body = bytearray(builder.buffer()[61:])
    args = ("t", 0, -1, 0, 5, 0, 5, tuple)
    assert read_batch(bytes(body), 0, 1, *args)[0][0][7] == b"value"
    with pytest.raises(ValueError, match="bytes left"):
        read_batch(bytes(body) + b"\x00", 0, 1, *args)
    body[0] += 2  # the length says one byte more than the fields hold
    with pytest.raises(ValueError, match="holds|runs past"):
        read_batch(bytes(body) + b"\x00", 0, 1, *args)


def test_install_changes_only_the_consumer_it_is_given() -> None:
    class _Consumer:
        def __init__(self) -> None:
            self._fetcher = type("F", (), {"PartitionRecords": Fetcher.PartitionRecords})()

    one, other = _Consumer(), _Consumer()
    assert recordbatch.install(one) is True
    assert issubclass(one._fetcher.PartitionRecords, Fetcher.PartitionRecords)
    assert one._fetcher.PartitionRecords is not Fetcher.PartitionRecords
    assert other._fetcher.PartitionRecords is Fetcher.PartitionRecords
    assert Fetcher.PartitionRecords is Slow


def test_install_keeps_kafka_pythons_reader_on_an_untested_version(monkeypatch) -> None:
    import kafka

    monkeypatch.setattr(kafka, "__version__", "9.9.9")
    consumer = type("C", (), {})()
    consumer._fetcher = type("F", (), {"PartitionRecords": Fetcher.PartitionRecords})()
    assert recordbatch.install(consumer) is False
    assert consumer._fetcher.PartitionRecords is Fetcher.PartitionRecords
