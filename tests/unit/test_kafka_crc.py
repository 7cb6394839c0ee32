"""The consumer checks CRCs in C: feedstep depends on ``crc32c`` and says when it is missing."""

from __future__ import annotations

import logging

import pytest
from kafka.record import util

import streaming.kafka.client as kafka_mod


def test_crc32c_c_extension_is_what_kafka_python_uses() -> None:
    # A dependency of feedstep: without it the consumer spends most of its CPU in a Python loop.
    assert util.crc32c_c is not None
    assert kafka_mod.warn_if_slow_crc() is True
    # Same checksum as the pure-Python fallback (RFC 3720's check value for "123456789").
    assert util.calc_crc32c(b"123456789") == 0xE3069283
    assert util.crc32c_py(b"123456789") == 0xE3069283


def test_missing_extension_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(util, "crc32c_c", None)
    monkeypatch.setattr(kafka_mod, "_crc_checked", False)
    with caplog.at_level(logging.WARNING, logger="streaming.kafka.client"):
        assert kafka_mod.warn_if_slow_crc() is False
        assert kafka_mod.warn_if_slow_crc() is False
    warnings = [r.getMessage() for r in caplog.records if "pure Python" in r.getMessage()]
    assert len(warnings) == 1
    assert "pip install 'crc32c" in warnings[0]
