"""A faster reader of Kafka record batches (message format v2) for kafka-python's consumer.

kafka-python turns every record of a fetched batch into two objects through a chain of
generators and properties, decoding each of its seven varints with a function call: about
three quarters of a bare consumer loop's CPU goes there (cProfile of ``bench/ingest.py``'s bare
side). :func:`read_batch` reads the records of one batch in a single loop instead, decoding
the one-byte varints inline, and builds kafka-python's own ``ConsumerRecord`` for each, so
nothing downstream can tell the difference.

:func:`install` plugs it into one ``KafkaConsumer`` (its fetcher's ``PartitionRecords``, an
instance attribute: other consumers in the process are untouched). Only the plain case takes
the fast path: message format v2, no key or value deserializer, ``read_uncommitted``. Control
batches are skipped as kafka-python skips them; older formats and ``read_committed`` consumers
go through kafka-python's own reader. Every batch's CRC-32C is still checked (``check_crcs``),
and a record whose structure does not add up raises kafka-python's ``CorruptRecordError``, as
kafka-python's reader does.

The record layout follows the Kafka protocol documentation ("Record" in "Message Format"):
``length: varint, attributes: int8, timestampDelta: varlong, offsetDelta: varint,
keyLength: varint, key, valueLength: varint, value, headers: [headerKeyLength: varint,
headerKey, headerValueLength: varint, headerValue]``, all varints zig-zag encoded.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# kafka-python versions whose consumer internals install() relies on (checked by the tests)
TESTED_KAFKA_PYTHON = ("3.0.",)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of any length at ``pos``: (value, next position)."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _raw_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A varint at ``pos`` before zig-zag decoding: (raw value, next position)."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def read_batch(
    buf: bytes,
    pos: int,
    count: int,
    topic: str,
    partition: int,
    leader_epoch: int,
    base_offset: int,
    first_timestamp: int,
    timestamp_type: int,
    max_timestamp: int,
    make: Any,
) -> tuple[list[Any], list[int]]:
    """The ``count`` records of an uncompressed v2 batch body starting at ``buf[pos]``.

    Args:
        buf: The batch's records (decompressed), as bytes.
        pos: Where the first record starts.
        count: How many records the batch header says it holds.
        topic: Copied into every record.
        partition: Copied into every record.
        leader_epoch: Copied into every record.
        base_offset: The batch header's; each record's offset delta adds to it.
        first_timestamp: The batch header's; each record's timestamp delta adds to it.
        timestamp_type: 1 (log append time: every record gets ``max_timestamp``) or 0.
        max_timestamp: The batch header's.
        make: Builds one record from its 13 fields (``ConsumerRecord``'s order).

    Returns:
        The records, and each record's size in bytes (its length field).

    Raises:
        ValueError: the bytes do not hold ``count`` well-formed records, exactly.
    """
    out: list[Any] = []
    sizes: list[int] = []
    append, note = out.append, sizes.append
    end_all = len(buf)
    log_append = timestamp_type == 1
    for _ in range(count):
        b = buf[pos]
        if b < 0x80:
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                b = (b & 0x7F) | (c << 7)
                pos += 2
            else:
                b, pos = _raw_varint(buf, pos)
        length = (b >> 1) ^ -(b & 1)
        if length < 0 or pos + length > end_all:
            raise ValueError(f"record length {length} runs past the batch")
        end = pos + length
        pos += 1  # attributes: int8, unused
        b = buf[pos]
        if b < 0x80:
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                b = (b & 0x7F) | (c << 7)
                pos += 2
            else:
                b, pos = _raw_varint(buf, pos)
        ts_delta = (b >> 1) ^ -(b & 1)
        b = buf[pos]
        if b < 0x80:
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                b = (b & 0x7F) | (c << 7)
                pos += 2
            else:
                b, pos = _raw_varint(buf, pos)
        offset_delta = (b >> 1) ^ -(b & 1)
        b = buf[pos]
        if b < 0x80:
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                b = (b & 0x7F) | (c << 7)
                pos += 2
            else:
                b, pos = _raw_varint(buf, pos)
        n = (b >> 1) ^ -(b & 1)
        if n >= 0:
            key = buf[pos : pos + n]
            pos += n
            key_size = n
        else:
            key = None
            key_size = -1
        b = buf[pos]
        if b < 0x80:
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                b = (b & 0x7F) | (c << 7)
                pos += 2
            else:
                b, pos = _raw_varint(buf, pos)
        n = (b >> 1) ^ -(b & 1)
        if n >= 0:
            value = buf[pos : pos + n]
            pos += n
            value_size = n
        else:
            value = None
            value_size = -1
        b = buf[pos]
        if b == 0:
            headers: list[tuple[str, bytes | None]] = []
            header_size = -1
            pos += 1
        else:
            headers, header_size, pos = _headers(buf, pos)
        if pos != end:
            raise ValueError(
                f"record of {length} bytes at offset {base_offset + offset_delta} holds "
                f"{length + pos - end} bytes of fields"
            )
        append(
            make(
                (
                    topic,
                    partition,
                    leader_epoch,
                    base_offset + offset_delta,
                    max_timestamp if log_append else first_timestamp + ts_delta,
                    timestamp_type,
                    key,
                    value,
                    headers,
                    None,
                    key_size,
                    value_size,
                    header_size,
                )
            )
        )
        note(length)
    if pos != end_all:
        raise ValueError(f"{end_all - pos} bytes left after the batch's {count} records")
    return out, sizes


def _headers(buf: bytes, pos: int) -> tuple[list[tuple[str, bytes | None]], int, int]:
    """A record's headers at ``pos``: (headers, their serialized size, next position)."""
    count, pos = _varint(buf, pos)
    if count < 0:
        raise ValueError(f"negative header count {count}")
    headers: list[tuple[str, bytes | None]] = []
    size = 0
    for _ in range(count):
        n, pos = _varint(buf, pos)
        if n < 0:
            raise ValueError(f"negative header key length {n}")
        name = buf[pos : pos + n].decode("utf-8")
        pos += n
        size += n
        n, pos = _varint(buf, pos)
        if n >= 0:
            value: bytes | None = buf[pos : pos + n]
            pos += n
            size += n
        else:
            value = None
        headers.append((name, value))
    return headers, size if headers else -1, pos


def _partition_records_class(base: type) -> type:
    """A subclass of kafka-python's ``Fetcher.PartitionRecords`` reading with :func:`read_batch`.

    It changes how records are read, nothing else: the same records, in the same order, with
    ``next_fetch_offset``, ``records_read`` and ``bytes_read`` kept as kafka-python keeps them
    (the tests compare the two readers on seeded batches). One difference: a batch is read
    whole before its first record is handed out, so a malformed record refuses its whole batch
    where kafka-python first hands out the records before it; with ``check_crcs`` (feedstep
    never turns it off) the CRC refuses such a batch before either reader looks inside.
    """
    from kafka.consumer.fetcher import ConsumerRecord
    from kafka.errors import CorruptRecordError
    from kafka.record.default_records import DefaultRecordBatch

    make = tuple.__new__
    plain_isolation = None
    try:
        from kafka.consumer.fetcher import IsolationLevel

        plain_isolation = IsolationLevel.READ_UNCOMMITTED
    except ImportError:  # pragma: no cover - checked by TESTED_KAFKA_PYTHON
        pass

    def build(fields: tuple[Any, ...]) -> Any:
        return make(ConsumerRecord, fields)

    class FastPartitionRecords(base):  # type: ignore[misc, valid-type]
        def _unpack_records(self, tp, records, key_deserializer, value_deserializer):  # type: ignore[no-untyped-def]
            if (
                key_deserializer is not None
                or value_deserializer is not None
                or self.isolation_level != plain_isolation
            ):
                yield from super()._unpack_records(
                    tp, records, key_deserializer, value_deserializer
                )
                return
            topic, partition = tp.topic, tp.partition
            batch = records.next_batch()
            last = None
            while batch is not None:
                last = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {tp} at offset {batch.base_offset} "
                        "failed crc check"
                    )
                if type(batch) is not DefaultRecordBatch:  # message format v0/v1
                    for record in batch:
                        if self.check_crcs and not record.validate_crc():
                            raise CorruptRecordError(
                                f"Record for partition {tp} at offset {record.offset} "
                                "failed crc check"
                            )
                        key, value, headers = record.key, record.value, record.headers
                        self.records_read += 1
                        self.bytes_read += record.size_in_bytes
                        self.next_fetch_offset = record.offset + 1
                        yield build(
                            (
                                topic,
                                partition,
                                self.leader_epoch,
                                record.offset,
                                record.timestamp,
                                record.timestamp_type,
                                key,
                                value,
                                headers,
                                record.checksum,
                                -1 if key is None else len(key),
                                -1 if value is None else len(value),
                                -1,
                            )
                        )
                    batch = records.next_batch()
                    continue
                self.leader_epoch = batch.leader_epoch
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                iter(batch)  # decompresses
                try:
                    out, sizes = read_batch(
                        bytes(batch._buffer),
                        batch._pos,
                        batch.records_count,
                        topic,
                        partition,
                        self.leader_epoch,
                        batch.base_offset,
                        batch.first_timestamp,
                        batch.timestamp_type,
                        batch.max_timestamp,
                        build,
                    )
                except (ValueError, IndexError) as exc:
                    raise CorruptRecordError(
                        f"Found invalid record structure in partition {tp} batch at offset "
                        f"{batch.base_offset}: {exc}"
                    ) from None
                for record, size in zip(out, sizes, strict=True):
                    self.records_read += 1
                    self.bytes_read += size
                    self.next_fetch_offset = record[3] + 1
                    yield record
                batch = records.next_batch()
            if last is not None and type(last) is DefaultRecordBatch:
                self.next_fetch_offset = last.next_offset
            self.drain()

    return FastPartitionRecords


def install(consumer: Any) -> bool:
    """Read ``consumer``'s fetched batches with :func:`read_batch` from now on.

    Only this consumer changes. Returns False, leaving kafka-python's reader in place, when the
    installed kafka-python is not one whose internals this was tested against.
    """
    import kafka

    fetcher: Any = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    if not kafka.__version__.startswith(TESTED_KAFKA_PYTHON) or not isinstance(base, type):
        log.info(
            "kafka-python %s: its own record reader is used (feedstep's is tested with %s)",
            kafka.__version__,
            ", ".join(v + "x" for v in TESTED_KAFKA_PYTHON),
        )
        return False
    fetcher.PartitionRecords = _partition_records_class(base)
    return True
