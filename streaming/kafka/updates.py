"""Tail the model-updates topic from its end, without a consumer group, for followers.

A follower (``feedstep serve``) only needs to know that LIVE changed *now*; what came before is
in the store. So :class:`UpdatesListener` joins no group and commits nothing: it ``assign()``s
every partition of the topic, ``seek_to_end()``s them and hands each new message's value to a
callback. N followers reading the same topic never rebalance each other, and none of them
leaves offsets behind for anyone to clean up.

The listener runs on its own thread (kafka-python's consumer is used from that thread only)
and never stops the follower: a missing topic or an unreachable broker is logged, retried with
capped backoff, and meanwhile the follower keeps polling the store's LIVE file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import KafkaConsumer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import TopicPartition

from streaming.config import KafkaConfig
from streaming.kafka.client import client_options

log = logging.getLogger(__name__)

__all__ = ["UpdatesListener"]

_POLL_MS = 500
_POSITION_TIMEOUT_MS = 10_000
_BOOTSTRAP_TIMEOUT_MS = 5_000
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0


class UpdatesListener:
    """Calls ``on_message(value)`` for every message sent to ``topic`` after it started following.

    Args:
        config: connection settings (bootstrap servers, security, client id).
        topic: the model-updates topic (``updates_topic``).
        on_message: called on the listener's thread with each message's value (bytes or None);
            it must be quick (the follower only sets an event).

    Attributes:
        following: set once every partition is assigned and positioned at its end; messages
            sent after that are seen.

    Example:
        >>> listener = UpdatesListener(config.kafka, "model-updates", print)  # doctest: +SKIP
        >>> listener.start().following.wait(30)  # doctest: +SKIP
        True
        >>> listener.stop()  # doctest: +SKIP
    """

    def __init__(
        self, config: KafkaConfig, topic: str, on_message: Callable[[bytes | None], None]
    ) -> None:
        self._config = config
        self.topic = topic
        self._on_message = on_message
        self._stop = threading.Event()
        self.following = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedstep-updates", daemon=True)

    def start(self) -> UpdatesListener:
        """Follow the topic on a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 6.0) -> None:
        """Stop following and close the consumer (waits at most ``timeout_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        delay = _RETRY_MIN_S
        said: str | None = None  # the last problem logged at WARNING/INFO: each is said once
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._connect()
                tps = self._assign(consumer)
                if tps:
                    log.info(
                        "following model updates on %s (%d partitions) from their end, "
                        "without a group",
                        self.topic,
                        len(tps),
                    )
                    delay, said = _RETRY_MIN_S, None
                    self._follow(consumer)
                elif said != "missing":
                    log.info("topic %s does not exist yet; polling LIVE until it does", self.topic)
                    said = "missing"
            except KafkaError as exc:  # broker away, metadata timeout: the LIVE poll covers it
                problem = type(exc).__name__
                log.log(
                    logging.DEBUG if said == problem else logging.WARNING,
                    "cannot follow %s on %s (%s: %s); retrying in %.0f s, polling LIVE meanwhile",
                    self.topic,
                    self._config.bootstrap_servers,
                    problem,
                    exc,
                    delay,
                )
                said = problem
            except Exception:  # a bug: say so loudly, keep trying (the poll still follows LIVE)
                log.exception("following %s failed; retrying in %.0f s", self.topic, delay)
            finally:
                self.following.clear()
                if consumer is not None:
                    _close(consumer)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, _RETRY_MAX_S)

    def _connect(self) -> KafkaConsumer:
        return KafkaConsumer(
            group_id=None,  # no group: nothing to join, rebalance or commit
            enable_auto_commit=False,
            allow_auto_create_topics=False,  # the trainer's producer creates it, not followers
            auto_offset_reset="latest",
            **{
                **client_options(self._config),
                # Give up on an unreachable broker soon (and retry with backoff) rather than
                # block in the constructor, so stop() is never held up for long.
                "bootstrap_timeout_ms": min(
                    self._config.bootstrap_timeout_ms, _BOOTSTRAP_TIMEOUT_MS
                ),
            },
        )

    def _assign(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        """Every partition of the topic, positioned at its end (none while the topic is missing)."""
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            return []
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end now, so a message sent once "following" is logged is seen
            if consumer.position(tp, timeout_ms=_POSITION_TIMEOUT_MS) is None:
                raise KafkaTimeoutError(
                    f"no end offset of {tp.topic}[{tp.partition}] within {_POSITION_TIMEOUT_MS} ms"
                )
        return tps

    def _follow(self, consumer: KafkaConsumer) -> None:
        self.following.set()
        while not self._stop.is_set():
            batches = consumer.poll(timeout_ms=_POLL_MS)
            for records in batches.values():
                for record in records:
                    self._on_message(record.value)


def _close(consumer: KafkaConsumer) -> None:
    try:
        consumer.close(autocommit=False, timeout_ms=2000)
    except KafkaError as exc:  # closing the consumer of an unreachable broker
        log.debug("closing the model-updates consumer: %s", exc)
