"""An idempotent producer (acks=all) for the dead-letter and model-updates topics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streaming.base import Sink
from streaming.config import KafkaConfig
from streaming.errors import BrokerUnavailable, SinkUnavailable
from streaming.kafka.client import client_options

log = logging.getLogger(__name__)


class KafkaSink(Sink):
    """A producer that waits for all in-sync replicas on flush and never drops a message.

    A message whose send or delivery fails (a broker outage longer than the producer's own
    retries) stays queued and is sent again by the next :meth:`flush`, which raises
    :class:`~streaming.errors.SinkUnavailable` until every message is acknowledged.

    With ``ordered=True`` only one request is in flight per broker, so retries cannot reorder
    messages of one partition.

    Example:
        >>> sink = KafkaSink(config)  # doctest: +SKIP
        >>> sink.send("feedback.dlq", b"...", headers=[("h", b"v")])  # doctest: +SKIP
        >>> sink.flush()  # doctest: +SKIP
    """

    def __init__(self, config: KafkaConfig, *, ordered: bool = False) -> None:
        # ordered: one request in flight per broker, so a retry can never overtake a later
        # message (``feedstep produce`` keeps each key's order this way).
        extra: dict[str, Any] = {"max_in_flight_requests_per_connection": 1} if ordered else {}
        try:
            self._producer = KafkaProducer(
                acks="all", linger_ms=5, max_block_ms=10_000, **extra, **client_options(config)
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {config.bootstrap_servers}; start one "
                "(deploy/local/kafka.sh start) or fix --bootstrap-servers"
            ) from exc
        # (message, future or None when the send itself failed)
        self._pending: list[tuple[tuple[str, bytes, bytes | None, list[Any]], Any]] = []

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one message; its delivery is checked on :meth:`flush`."""
        message = (topic, value, key, list(headers))
        self._pending.append((message, self._send(message)))

    def _send(self, message: tuple[str, bytes, bytes | None, list[Any]]) -> Any:
        topic, value, key, headers = message
        try:
            return self._producer.send(topic, value=value, key=key, headers=headers)
        except KafkaError as exc:  # no metadata in max_block_ms: the broker is away
            log.debug("send to %s failed (%s); kept for the next flush", topic, exc)
            return None

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; failed ones are sent again.

        Raises:
            SinkUnavailable: some messages are still not acknowledged; they stay queued.
        """
        if not self._pending:
            return
        pending = [(msg, fut if fut is not None else self._send(msg)) for msg, fut in self._pending]
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.debug("producer flush: %s", exc)
        failed = []
        error: BaseException | None = None
        for msg, fut in pending:
            if fut is None or not fut.is_done:
                failed.append((msg, None if fut is None or fut.is_done else fut))
                continue
            if fut.failed():
                error = fut.exception
                failed.append((msg, None))
        self._pending = failed
        if failed:
            raise SinkUnavailable(
                f"{len(failed)} messages not acknowledged within {timeout_s:.0f} s"
                + (f" ({type(error).__name__}: {error})" if error is not None else "")
                + "; they stay queued and are sent again on the next flush"
            )

    @property
    def pending(self) -> int:
        """Messages not acknowledged yet."""
        return len(self._pending)

    def close(self) -> None:
        """Flush and close the producer."""
        try:
            self.flush()
        finally:
            self._producer.close()
