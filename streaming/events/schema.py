"""The feedback event's schema: the event, its feedback, rejections and decode limits.

One Kafka message holds one event, a JSON object::

    {"schema_version": 1, "event_id": "e-1", "ts": "2026-11-28T10:00:00Z",
     "prompt": "...", "response": "...", "feedback": {"type": "thumb", "value": 1},
     "model_version": "m-3", "conversation_id": "c-9", "tenant": "acme", "weight": 1.0}

:mod:`streaming.events.decode` turns bytes into a :class:`FeedbackEvent` or a
:class:`Rejection`; :mod:`streaming.events.examples` turns an event into a training example.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

SCHEMA_VERSION: Final = 1
"""The only ``schema_version`` this decoder understands (and the default when absent)."""

FEEDBACK_TYPES: Final = ("thumb", "rating", "correction", "preference")
"""Every accepted ``feedback.type``."""

_EMPTY_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})
_KNOWN_FIELDS: Final = frozenset(
    {
        "schema_version",
        "event_id",
        "ts",
        "prompt",
        "response",
        "feedback",
        "model_version",
        "conversation_id",
        "tenant",
        "weight",
    }
)
_MAX_EVENT_ID_CHARS: Final = 200


class RejectReason(str, Enum):
    """Why an event was rejected; the value is a short label safe for metrics and headers.

    Example:
        >>> RejectReason.BAD_JSON.value
        'bad_json'
    """

    TOO_LARGE = "too_large"
    BAD_ENCODING = "bad_encoding"
    EMPTY = "empty"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_VALUE = "bad_value"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_FEEDBACK_TYPE = "unknown_feedback_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that could not be decoded into a :class:`FeedbackEvent`.

    Attributes:
        reason: Bounded label, fit for a metric label or a dead-letter header.
        detail: What was expected, what was found (field name and JSON kind, never user text)
            and what to do.

    Example:
        >>> Rejection(RejectReason.EMPTY, "message value is empty").reason.value
        'empty'
    """

    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Limits applied while decoding; every one is a positive int.

    Attributes:
        max_text_chars: Longer prompt/response/feedback texts are truncated to this many
            characters and named in :attr:`FeedbackEvent.truncated_fields`.
        max_event_bytes: Larger payloads are rejected as ``too_large`` before parsing.
        max_json_depth: Deeper JSON nesting is rejected as ``bad_json``; the top-level object
            is depth 1 and ``feedback`` depth 2, so at least 2.

    Example:
        >>> DecodeLimits(max_text_chars=4096).max_event_bytes
        1048576
    """

    max_text_chars: int = 8192
    max_event_bytes: int = 1_048_576
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("max_text_chars", "max_event_bytes", "max_json_depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"DecodeLimits.{name} must be a positive int, got {value!r}; "
                    "set it to a whole number >= 1"
                )
        if self.max_json_depth < 2:
            raise ValueError(
                f"DecodeLimits.max_json_depth must be >= 2 (an event nests 'feedback' "
                f"inside the top-level object), got {self.max_json_depth}"
            )


DEFAULT_LIMITS: Final = DecodeLimits()
"""The limits :func:`decode_event` uses when none are given."""


@dataclass(frozen=True, slots=True)
class Feedback:
    """The user's signal on one reply; which attributes are set depends on ``type``.

    * ``thumb``: ``value`` is 1 or -1.
    * ``rating``: ``value`` is 1..5.
    * ``correction``: ``text`` is the corrected reply (non-empty).
    * ``preference``: ``chosen`` and ``rejected`` are two replies.

    Example:
        >>> Feedback("rating", value=4)
        Feedback(type='rating', value=4, text=None, chosen=None, rejected=None)
    """

    type: str
    value: int | None = None
    text: str | None = None
    chosen: str | None = None
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One validated feedback event.

    Attributes:
        event_id: Producer-assigned unique id (1..200 characters), used for de-duplication.
        ts: When the feedback was given, aware and in UTC after decoding.
        prompt: The user's prompt (possibly truncated).
        response: The assistant's reply the feedback is about (possibly truncated).
        feedback: The signal itself.
        model_version: The model that produced ``response``, when the producer knows it.
        conversation_id: Conversation the exchange belongs to.
        tenant: Tenant of the chat service.
        weight: Positive, finite example weight.
        schema_version: Always 1 today.
        extra: Unknown top-level fields, kept read-only and written back by
            :func:`encode_event`.
        truncated_fields: Names of fields cut to ``max_text_chars`` while decoding (e.g.
            ``"prompt"``, ``"feedback.text"``); decode metadata, not written by the encoder.

    Example:
        >>> from datetime import datetime, timezone
        >>> e = FeedbackEvent("e-1", datetime(2026, 11, 28, tzinfo=timezone.utc), "hi", "hello",
        ...                   Feedback("thumb", value=1))
        >>> from streaming.events import decode_event, encode_event
        >>> decode_event(encode_event(e)) == e
        True
    """

    event_id: str
    ts: datetime
    prompt: str
    response: str
    feedback: Feedback
    model_version: str | None = None
    conversation_id: str | None = None
    tenant: str | None = None
    weight: float = 1.0
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_EXTRA, hash=False)
    truncated_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError(
                "FeedbackEvent.ts must be timezone-aware, got a naive datetime; "
                "pass tzinfo=timezone.utc"
            )
        extra = self.extra
        if type(extra) is not MappingProxyType:
            object.__setattr__(self, "extra", MappingProxyType(dict(extra)))
        if extra and not _KNOWN_FIELDS.isdisjoint(extra):
            clash = sorted(_KNOWN_FIELDS.intersection(extra))
            raise ValueError(
                f"FeedbackEvent.extra must hold only unknown fields, got schema field(s) "
                f"{clash}; pass them as constructor arguments instead"
            )

    @property
    def ts_epoch_s(self) -> float:
        """``ts`` as seconds since the Unix epoch."""
        return self.ts.timestamp()
