"""What every Kafka client feedstep makes shares: connection settings, records, the CRC check."""

from __future__ import annotations

import logging
from typing import Any

from kafka.structs import TopicPartition

from streaming.base import Record
from streaming.config import KafkaConfig

log = logging.getLogger(__name__)


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by consumers, producers and admin clients."""
    opts: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": config.reconnect_backoff_max_ms,
        "bootstrap_timeout_ms": config.bootstrap_timeout_ms,
    }
    if config.sasl_mechanism:
        opts["sasl_mechanism"] = config.sasl_mechanism
        opts["sasl_plain_username"] = config.sasl_plain_username
        if config.sasl_plain_password is not None:
            opts["sasl_plain_password"] = config.sasl_plain_password.get_secret_value()
    if config.ssl_cafile:
        opts["ssl_cafile"] = config.ssl_cafile
    return opts


_crc_checked = False


def warn_if_slow_crc() -> bool:
    """Log once per process when kafka-python checks record CRCs in pure Python.

    kafka-python verifies the CRC-32C of every record batch it reads. Without the ``crc32c`` C
    package (a feedstep dependency) it falls back to a Python loop that takes about three
    quarters of the consumer's CPU on small events. Returns True when the fast one is in use.
    """
    global _crc_checked
    from kafka.record import util

    fast = getattr(util, "crc32c_c", None) is not None
    if not fast and not _crc_checked:
        log.warning(
            "kafka-python is checking record CRCs in pure Python (the crc32c package is "
            "missing), which costs most of the consumer's CPU; pip install 'crc32c>=2.3,<3'"
        )
    _crc_checked = True
    return fast


def to_record(tp: TopicPartition, r: Any) -> Record:
    """A kafka-python ``ConsumerRecord`` of ``tp`` as feedstep's :class:`Record`."""
    return Record(
        topic=tp.topic,
        partition=tp.partition,
        offset=r.offset,
        key=r.key,
        value=r.value,
        timestamp_ms=r.timestamp,
        headers=tuple((k, v or b"") for k, v in (r.headers or ())),
    )
