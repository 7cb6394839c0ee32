"""Kafka source and sink on kafka-python.

:class:`KafkaSource` is a consumer-group member with auto-commit off: offsets are committed
only by the pipeline, after the step that consumed them. :class:`KafkaSink` is an idempotent
producer (acks=all) for the dead-letter and model-updates topics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streaming.base import Record, Sink, Source
from streaming.base import TopicPartition as TP
from streaming.config import FeedstepConfig
from streaming.errors import BrokerUnavailable

log = logging.getLogger(__name__)


def client_options(config: FeedstepConfig) -> dict[str, Any]:
    """Connection and security settings shared by consumers, producers and admin clients."""
    opts: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
    }
    if config.sasl_mechanism:
        opts["sasl_mechanism"] = config.sasl_mechanism
        opts["sasl_plain_username"] = config.sasl_plain_username
        if config.sasl_plain_password is not None:
            opts["sasl_plain_password"] = config.sasl_plain_password.get_secret_value()
    if config.ssl_cafile:
        opts["ssl_cafile"] = config.ssl_cafile
    return opts


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in revoked]
        log.info("partitions revoked: %s", tps)
        if self._source.on_revoke is not None and tps:
            self._source.on_revoke(tps)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in assigned]
        log.info("partitions assigned: %s", tps)
        self._source._apply_pending_seeks(assigned)
        if self._source.on_assign is not None and tps:
            self._source.on_assign(tps)


class KafkaSource(Source):
    """A feedback topic read by a consumer-group member with manual commits.

    Example:
        >>> source = KafkaSource(load_config(overrides={"topic": "feedback"}))  # doctest: +SKIP
        >>> records = source.poll(timeout_s=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: FeedstepConfig,
        on_revoke: Callable[[list[TP]], None] | None = None,
        on_assign: Callable[[list[TP]], None] | None = None,
    ) -> None:
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        try:
            self._consumer = KafkaConsumer(
                group_id=config.group_id,
                enable_auto_commit=False,
                auto_offset_reset=config.auto_offset_reset,
                max_poll_records=config.max_poll_records,
                session_timeout_ms=config.session_timeout_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                **client_options(config),
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {config.bootstrap_servers}; start one "
                "(deploy/local/kafka.sh start) or fix --bootstrap-servers"
            ) from exc
        self._consumer.subscribe([config.topic], listener=_Listener(self))
        self._committed: dict[TP, int] = {}
        self._pending_seeks: dict[TP, int] = {}
        self._end_cache: dict[TP, int] = {}
        self._end_checked = 0.0

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Records from the assigned partitions, in offset order per partition."""
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        for tp, records in batches.items():
            for r in records:
                out.append(
                    Record(
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=r.offset,
                        key=r.key,
                        value=r.value,
                        timestamp_ms=r.timestamp,
                        headers=tuple((k, v or b"") for k, v in (r.headers or ())),
                    )
                )
        return out

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit next-offsets synchronously (raises on failure; nothing is assumed done)."""
        todo = {tp: off for tp, off in offsets.items() if self._committed.get(tp) != off}
        if not todo:
            return
        self._consumer.commit(
            {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in todo.items()}
        )
        self._committed.update(todo)

    def position(self) -> dict[TP, int]:
        """Next offset to read per assigned partition."""
        return {
            (tp.topic, tp.partition): self._consumer.position(tp)
            for tp in self._consumer.assignment()
        }

    def seek(self, offsets: Mapping[TP, int]) -> None:
        """Continue each partition from the given next offset.

        Partitions not assigned yet (before the first rebalance) are sought as soon as the
        group assigns them; the checkpoint's offsets win over the group's committed ones.
        """
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        for (topic, partition), off in offsets.items():
            if (topic, partition) in assigned:
                self._consumer.seek(TopicPartition(topic, partition), off)
            else:
                self._pending_seeks[(topic, partition)] = off

    def _apply_pending_seeks(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            off = self._pending_seeks.pop((tp.topic, tp.partition), None)
            if off is not None:
                log.info("%s[%d]: seeking to %d from the checkpoint", tp.topic, tp.partition, off)
                self._consumer.seek(tp, off)
            else:
                log.info(
                    "%s[%d]: no checkpoint covers it; starting from the group's committed offset",
                    tp.topic,
                    tp.partition,
                )

    def committed(self) -> dict[TP, int]:
        """Offsets this member committed in this process."""
        return dict(self._committed)

    def lag(self) -> dict[TP, int]:
        """End offset minus position per assigned partition.

        Uses the high-water mark from the last fetch; when a partition has not been fetched
        yet it asks the broker for end offsets, at most once every 5 seconds.
        """
        assignment = self._consumer.assignment()
        out: dict[TP, int] = {}
        missing = []
        for tp in assignment:
            high = self._consumer.highwater(tp)
            if high is None:
                missing.append(tp)
                continue
            out[(tp.topic, tp.partition)] = max(0, high - self._consumer.position(tp))
        if missing and time.monotonic() - self._end_checked > 5.0:
            self._end_checked = time.monotonic()
            try:
                ends = self._consumer.end_offsets(missing)
                self._end_cache.update({(tp.topic, tp.partition): e for tp, e in ends.items()})
            except KafkaError as exc:
                log.warning("could not read end offsets: %s", exc)
        for tp in missing:
            key = (tp.topic, tp.partition)
            if key in self._end_cache:
                out[key] = max(0, self._end_cache[key] - self._consumer.position(tp))
        return out

    def close(self) -> None:
        """Leave the group (no auto-commit: offsets are only what the pipeline committed)."""
        self._consumer.close(autocommit=False)


class KafkaSink(Sink):
    """A producer that waits for all in-sync replicas on flush.

    With ``ordered=True`` only one request is in flight per broker, so retries cannot reorder
    messages of one partition.

    Example:
        >>> sink = KafkaSink(config)  # doctest: +SKIP
        >>> sink.send("feedback.dlq", b"...", headers=[("h", b"v")])  # doctest: +SKIP
        >>> sink.flush()  # doctest: +SKIP
    """

    def __init__(self, config: FeedstepConfig, *, ordered: bool = False) -> None:
        # ordered: one request in flight per broker, so a retry can never overtake a later
        # message (``feedstep produce`` keeps each key's order this way).
        extra: dict[str, Any] = {"max_in_flight_requests_per_connection": 1} if ordered else {}
        try:
            self._producer = KafkaProducer(
                acks="all", linger_ms=5, retries=5, **extra, **client_options(config)
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {config.bootstrap_servers}; start one "
                "(deploy/local/kafka.sh start) or fix --bootstrap-servers"
            ) from exc
        self._futures: list[Any] = []

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one message; its delivery is checked on :meth:`flush`."""
        self._futures.append(
            self._producer.send(topic, value=value, key=key, headers=list(headers))
        )

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; raise if one failed."""
        if not self._futures:
            return
        self._producer.flush(timeout=timeout_s)
        futures, self._futures = self._futures, []
        for fut in futures:
            fut.get(timeout=timeout_s)  # raises the delivery error, if any

    def close(self) -> None:
        """Flush and close the producer."""
        self.flush()
        self._producer.close()
