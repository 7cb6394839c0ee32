"""The feedback event: its JSON schema, the one validating decoder, and the encoder.

One Kafka message holds one event, a JSON object::

    {"schema_version": 1, "event_id": "e-1", "ts": "2026-11-28T10:00:00Z",
     "prompt": "...", "response": "...", "feedback": {"type": "thumb", "value": 1},
     "model_version": "m-3", "conversation_id": "c-9", "tenant": "acme", "weight": 1.0}

:func:`decode_event` never raises on bad input: it returns either a :class:`FeedbackEvent` or a
:class:`Rejection` whose :class:`RejectReason` is a short, bounded label (fit for a metric label
or a dead-letter header) and whose ``detail`` says what was expected, what was found and what to
do. Details name fields and JSON kinds, never the user's text, so they are safe to log.

Decisions worth knowing:

* Unknown top-level fields are kept in :attr:`FeedbackEvent.extra`; unknown keys inside
  ``feedback`` are ignored.
* Text longer than :attr:`DecodeLimits.max_text_chars` is cut to the limit and the field is named
  in :attr:`FeedbackEvent.truncated_fields` (counted by the caller, never rejected).
* JSON ``null`` for an optional field means "absent"; for a required field it is ``wrong_type``.
* Every number in an accepted event is finite: ``NaN``/``Infinity`` literals and numbers that
  overflow a float (``1e400``) are ``bad_json``.
* Timestamps must carry a UTC offset (``Z`` or ``+02:00``); they are converted to aware UTC.
  A leap second (``23:59:60``) is read as ``23:59:59.999999``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "DEFAULT_LIMITS",
    "FEEDBACK_TYPES",
    "SCHEMA_VERSION",
    "DecodeLimits",
    "Feedback",
    "FeedbackEvent",
    "RejectReason",
    "Rejection",
    "decode_event",
    "encode_event",
    "event_to_dict",
    "format_timestamp",
    "parse_timestamp",
]

SCHEMA_VERSION: Final = 1
"""The only ``schema_version`` this decoder understands (and the default when absent)."""

FEEDBACK_TYPES: Final = ("thumb", "rating", "correction", "preference")
"""Every accepted ``feedback.type``."""

_UTC: Final = timezone.utc
_FIX: Final = "fix the producer that writes feedback events"
_MISSING: Final = object()
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
        >>> r = decode_event(b"[]")
        >>> r.reason is RejectReason.NOT_AN_OBJECT
        True
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


# --------------------------------------------------------------------------------------------
# JSON parsing helpers


class _NonFiniteNumber(ValueError):
    """Raised from inside the JSON parser for NaN, Infinity and float overflow."""


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(f"literal {name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(f"a {len(text)}-digit number overflows a 64-bit float")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def _too_deep(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests containers more than ``limit`` levels (iterative, no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


_JSON_KINDS: Final = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _kind(value: Any) -> str:
    """The JSON kind of a parsed value, for messages (never the value itself)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


# Feedback types are schema identifiers; one shaped like an identifier is echoed to help the
# operator (a typo such as 'thumbs'), anything else is described only by its length.
_IDENTIFIER: Final = re.compile(r"[a-z][a-z0-9_]{0,23}", re.ASCII)


def _describe_label(value: str) -> str:
    """Echo a short lowercase identifier; describe anything else only by its length."""
    if _IDENTIFIER.fullmatch(value):
        return repr(value)
    return f"a {len(value)}-character string"


# --------------------------------------------------------------------------------------------
# Timestamps

# Everything RFC 3339 allows (lowercase t/z, a space separator, any fraction length), plus a
# missing offset so that a naive time gets its own message.
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)


def _parse_ts(text: str) -> datetime | str:
    """Parse an RFC 3339 timestamp to aware UTC; on failure return what was wrong."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return "is not an RFC 3339 timestamp"
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if zulu is None and sign is None:
        return "has no UTC offset (a naive time is ambiguous)"
    sec = int(second)
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    if sec == 60:  # leap second: keep it inside the same minute
        sec, micro = 59, 999_999
    if zulu is not None:
        tz = _UTC
    else:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            return "has a UTC offset out of range (hours 00..23, minutes 00..59)"
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if sign == "-" else delta)
    try:
        dt = datetime(
            int(year), int(month), int(day), int(hour), int(minute), sec, micro, tzinfo=tz
        )
        return dt.astimezone(_UTC)
    except (ValueError, OverflowError):
        return "is not a valid calendar date and time in UTC"


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with a UTC offset into an aware UTC datetime.

    Args:
        text: For example ``"2026-11-28T10:00:00Z"`` or ``"2026-11-28T12:00:00.5+02:00"``.

    Returns:
        The same instant as an aware datetime in UTC.

    Raises:
        ValueError: The text is not RFC 3339, has no offset, or is not a real date.

    Example:
        >>> parse_timestamp("2026-11-28T12:00:00+02:00").isoformat()
        '2026-11-28T10:00:00+00:00'
    """
    result = _parse_ts(text)
    if isinstance(result, str):
        raise ValueError(
            f"timestamp {result}; expected RFC 3339 with an offset, e.g. '2026-11-28T10:00:00Z'"
        )
    return result


def format_timestamp(ts: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` suffix.

    Example:
        >>> format_timestamp(parse_timestamp("2026-11-28T12:00:00.25+02:00"))
        '2026-11-28T10:00:00.250000Z'
    """
    if ts.tzinfo is None:
        raise ValueError("format_timestamp needs an aware datetime, got a naive one")
    return ts.astimezone(_UTC).isoformat()[:-6] + "Z"


# --------------------------------------------------------------------------------------------
# Decoding


def _wrong_type(name: str, expected: str, value: Any) -> Rejection:
    return Rejection(
        RejectReason.WRONG_TYPE, f"field '{name}' must be {expected}, got {_kind(value)}; {_FIX}"
    )


def _missing(name: str, context: str) -> Rejection:
    return Rejection(
        RejectReason.MISSING_FIELD, f"required field '{name}' is missing{context}; {_FIX}"
    )


_THUMBS: Final = {1: Feedback("thumb", value=1), -1: Feedback("thumb", value=-1)}
_RATINGS: Final = {v: Feedback("rating", value=v) for v in range(1, 6)}


def _decode_feedback(fb: Any, max_chars: int, truncated: list[str]) -> Feedback | Rejection:
    if type(fb) is not dict:
        return _wrong_type("feedback", 'an object like {"type": "thumb", "value": 1}', fb)
    ftype = fb.get("type", _MISSING)
    if ftype is _MISSING:
        return _missing("feedback.type", f" (one of {', '.join(FEEDBACK_TYPES)})")
    if type(ftype) is not str:
        return _wrong_type("feedback.type", f"a string, one of {', '.join(FEEDBACK_TYPES)}", ftype)

    if ftype == "thumb" or ftype == "rating":
        value = fb.get("value", _MISSING)
        allowed = "1 or -1 for a thumb" if ftype == "thumb" else "an integer 1..5 for a rating"
        if value is _MISSING:
            return _missing("feedback.value", f" (expected {allowed})")
        if type(value) is not int:
            return _wrong_type("feedback.value", allowed, value)
        found = (_THUMBS if ftype == "thumb" else _RATINGS).get(value)
        if found is None:
            return Rejection(
                RejectReason.BAD_VALUE,
                f"field 'feedback.value' must be {allowed}, got {value}; {_FIX}",
            )
        return found

    if ftype == "correction":
        text = fb.get("text", _MISSING)
        if text is _MISSING:
            return _missing("feedback.text", " (the corrected reply, for a correction)")
        if type(text) is not str:
            return _wrong_type("feedback.text", "a non-empty string for a correction", text)
        if not text or text.isspace():
            return Rejection(
                RejectReason.BAD_VALUE,
                f"field 'feedback.text' must be a non-empty string for a correction, got "
                f"{'an empty' if not text else 'a whitespace-only'} string; {_FIX}",
            )
        if len(text) > max_chars:
            text = text[:max_chars]
            truncated.append("feedback.text")
        return Feedback("correction", text=text)

    if ftype == "preference":
        chosen = fb.get("chosen", _MISSING)
        rejected = fb.get("rejected", _MISSING)
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if value is _MISSING:
                return _missing(f"feedback.{name}", " (a preference needs chosen and rejected)")
            if type(value) is not str:
                return _wrong_type(f"feedback.{name}", "a string for a preference", value)
        if len(chosen) > max_chars:
            chosen = chosen[:max_chars]
            truncated.append("feedback.chosen")
        if len(rejected) > max_chars:
            rejected = rejected[:max_chars]
            truncated.append("feedback.rejected")
        return Feedback("preference", chosen=chosen, rejected=rejected)

    return Rejection(
        RejectReason.UNKNOWN_FEEDBACK_TYPE,
        f"field 'feedback.type' must be one of {', '.join(FEEDBACK_TYPES)}, got "
        f"{_describe_label(ftype)}; {_FIX}, or upgrade feedstep if this is a new type",
    )


def _decode_object(obj: dict[str, Any], limits: DecodeLimits) -> FeedbackEvent | Rejection:
    get = obj.get
    max_chars = limits.max_text_chars

    version = get("schema_version")
    if version is None:
        version = SCHEMA_VERSION
    elif type(version) is not int:
        return _wrong_type("schema_version", "an integer (1) or absent", version)
    elif version != SCHEMA_VERSION:
        return Rejection(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"field 'schema_version' must be {SCHEMA_VERSION}, got {version}; this feedstep "
            "only reads version 1, so upgrade feedstep or have the producer write version 1",
        )

    event_id = get("event_id", _MISSING)
    if event_id is _MISSING:
        return _missing("event_id", "")
    if type(event_id) is not str:
        return _wrong_type("event_id", "a non-empty string", event_id)
    if not event_id or event_id.isspace() or len(event_id) > _MAX_EVENT_ID_CHARS:
        return Rejection(
            RejectReason.BAD_VALUE,
            f"field 'event_id' must be 1..{_MAX_EVENT_ID_CHARS} characters and not blank, got "
            f"{'a blank' if not event_id or event_id.isspace() else 'a'} "
            f"{len(event_id)}-character string; {_FIX}",
        )

    ts_text = get("ts", _MISSING)
    if ts_text is _MISSING:
        return _missing("ts", " (an RFC 3339 time such as '2026-11-28T10:00:00Z')")
    if type(ts_text) is not str:
        return _wrong_type("ts", "an RFC 3339 string such as '2026-11-28T10:00:00Z'", ts_text)
    ts = _parse_ts(ts_text)
    if isinstance(ts, str):
        return Rejection(
            RejectReason.BAD_TIMESTAMP,
            f"field 'ts' {ts}; expected RFC 3339 with an offset, e.g. "
            f"'2026-11-28T10:00:00Z' or '2026-11-28T12:00:00+02:00'; {_FIX}",
        )

    truncated: list[str] = []
    prompt = get("prompt", _MISSING)
    if prompt is _MISSING:
        return _missing("prompt", "")
    if type(prompt) is not str:
        return _wrong_type("prompt", "a string", prompt)
    if len(prompt) > max_chars:
        prompt = prompt[:max_chars]
        truncated.append("prompt")

    response = get("response", _MISSING)
    if response is _MISSING:
        return _missing("response", "")
    if type(response) is not str:
        return _wrong_type("response", "a string", response)
    if len(response) > max_chars:
        response = response[:max_chars]
        truncated.append("response")

    fb = get("feedback", _MISSING)
    if fb is _MISSING:
        return _missing(
            "feedback", f" (an object whose type is one of {', '.join(FEEDBACK_TYPES)})"
        )
    feedback = _decode_feedback(fb, max_chars, truncated)
    if isinstance(feedback, Rejection):
        return feedback

    model_version = get("model_version")
    if model_version is not None and type(model_version) is not str:
        return _wrong_type("model_version", "a string or absent", model_version)
    conversation_id = get("conversation_id")
    if conversation_id is not None and type(conversation_id) is not str:
        return _wrong_type("conversation_id", "a string or absent", conversation_id)
    tenant = get("tenant")
    if tenant is not None and type(tenant) is not str:
        return _wrong_type("tenant", "a string or absent", tenant)

    weight = get("weight")
    if weight is None:
        weight = 1.0
    elif type(weight) is float or type(weight) is int:
        try:
            weight = float(weight)
        except OverflowError:
            weight = math.inf
        if not (weight > 0.0 and weight != math.inf):
            shown = "a number too large for a float" if weight == math.inf else repr(weight)
            return Rejection(
                RejectReason.BAD_VALUE,
                f"field 'weight' must be a finite number > 0, got {shown}; {_FIX}",
            )
    else:
        return _wrong_type("weight", "a finite number > 0 or absent", weight)

    # All five required fields are present by now, so more keys than that means extras.
    extra = _EMPTY_EXTRA
    if len(obj) > 5 and not _KNOWN_FIELDS.issuperset(obj):
        extra = MappingProxyType({k: v for k, v in obj.items() if k not in _KNOWN_FIELDS})

    return FeedbackEvent(
        event_id,
        ts,
        prompt,
        response,
        feedback,
        model_version,
        conversation_id,
        tenant,
        weight,
        version,
        extra,
        tuple(truncated),
    )


def decode_event(
    raw: bytes | None, limits: DecodeLimits = DEFAULT_LIMITS
) -> FeedbackEvent | Rejection:
    """Decode and validate one Kafka message value; never raises on bad input.

    Args:
        raw: The message value (UTF-8 JSON), or ``None`` for a tombstone.
        limits: Size, depth and text limits.

    Returns:
        The event, or a :class:`Rejection` saying why the payload was refused.

    Example:
        >>> e = decode_event(b'{"event_id": "e-1", "ts": "2026-11-28T10:00:00Z", '
        ...                  b'"prompt": "p", "response": "r", '
        ...                  b'"feedback": {"type": "rating", "value": 5}}')
        >>> e.feedback.value, e.ts.isoformat()
        (5, '2026-11-28T10:00:00+00:00')
        >>> decode_event(b'{"event_id": "e-1"}').reason.value
        'missing_field'
    """
    if raw is None:
        return Rejection(
            RejectReason.EMPTY,
            "message value is null (a tombstone?); expected one JSON feedback event; " + _FIX,
        )
    if type(raw) is not bytes:
        if not isinstance(raw, (bytearray, memoryview)):
            return Rejection(
                RejectReason.BAD_ENCODING,
                f"message value must be bytes, got {type(raw).__name__}; "
                "pass the raw Kafka value to decode_event",
            )
        raw = bytes(raw)
    size = len(raw)
    if size > limits.max_event_bytes:
        return Rejection(
            RejectReason.TOO_LARGE,
            f"event is {size} bytes, over the {limits.max_event_bytes}-byte limit "
            "(max_event_bytes); shorten the event at the producer or raise the limit",
        )
    if size == 0 or raw.isspace():
        return Rejection(
            RejectReason.EMPTY,
            f"message value is {'empty' if size == 0 else 'only whitespace'}; "
            f"expected one JSON feedback event; {_FIX}",
        )
    return _parse(raw, limits)


def _parse(raw: bytes, limits: DecodeLimits) -> FeedbackEvent | Rejection:
    """UTF-8, then the stdlib parser with strict numbers, then the depth limit, then the schema."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(
            RejectReason.BAD_ENCODING,
            f"message value is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            f"feedback events must be UTF-8 JSON; {_FIX}",
        )
    max_depth = limits.max_json_depth
    try:
        obj = _DECODER.decode(text)
    except _NonFiniteNumber as exc:
        return Rejection(
            RejectReason.BAD_JSON,
            f"message value is not strict JSON ({exc}); numbers must be finite; {_FIX}",
        )
    except json.JSONDecodeError as exc:
        return Rejection(
            RejectReason.BAD_JSON,
            f"message value is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); expected one JSON object per message; {_FIX}",
        )
    except RecursionError:
        return Rejection(
            RejectReason.BAD_JSON,
            f"message value nests JSON far deeper than the limit of {max_depth} "
            f"(max_json_depth); {_FIX}",
        )
    except ValueError as exc:  # e.g. an integer literal with more than 4300 digits
        return Rejection(
            RejectReason.BAD_JSON,
            f"message value could not be parsed as JSON ({type(exc).__name__}: a literal is "
            f"out of range); {_FIX}",
        )
    if type(obj) is not dict:
        return Rejection(
            RejectReason.NOT_AN_OBJECT,
            f"message value must be a JSON object, got {_kind(obj)}; send one event object "
            f"per message, not a list or a bare value; {_FIX}",
        )
    if _too_deep(obj, max_depth):
        return Rejection(
            RejectReason.BAD_JSON,
            f"message value nests JSON deeper than the limit of {max_depth} "
            f"(max_json_depth); flatten the event or raise the limit",
        )
    return _decode_object(obj, limits)


# --------------------------------------------------------------------------------------------
# Encoding


def _feedback_to_dict(fb: Feedback) -> dict[str, Any]:
    out: dict[str, Any] = {"type": fb.type}
    if fb.value is not None:
        out["value"] = fb.value
    if fb.text is not None:
        out["text"] = fb.text
    if fb.chosen is not None:
        out["chosen"] = fb.chosen
    if fb.rejected is not None:
        out["rejected"] = fb.rejected
    return out


def event_to_dict(event: FeedbackEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict in the wire schema (``ts`` as an RFC 3339 string).

    Optional fields that are ``None`` are left out, ``extra`` fields are merged in at the top
    level, and ``truncated_fields`` (decode metadata) is not included.

    Example:
        >>> from datetime import datetime, timezone
        >>> e = FeedbackEvent("e-1", datetime(2026, 11, 28, tzinfo=timezone.utc), "p", "r",
        ...                   Feedback("thumb", value=-1), extra={"client": "ios"})
        >>> d = event_to_dict(e)
        >>> d["ts"], d["feedback"], d["client"]
        ('2026-11-28T00:00:00Z', {'type': 'thumb', 'value': -1}, 'ios')
    """
    out: dict[str, Any] = {
        "schema_version": event.schema_version,
        "event_id": event.event_id,
        "ts": format_timestamp(event.ts),
        "prompt": event.prompt,
        "response": event.response,
        "feedback": _feedback_to_dict(event.feedback),
    }
    if event.model_version is not None:
        out["model_version"] = event.model_version
    if event.conversation_id is not None:
        out["conversation_id"] = event.conversation_id
    if event.tenant is not None:
        out["tenant"] = event.tenant
    out["weight"] = event.weight
    out.update(event.extra)
    return out


def encode_event(event: FeedbackEvent) -> bytes:
    """Encode an event as compact UTF-8 JSON that :func:`decode_event` reads back.

    ``decode_event(encode_event(e)) == e`` holds for every valid event, except that
    ``truncated_fields`` is not carried (the re-decoded text already fits the limit).
    Text holding lone surrogates (which UTF-8 cannot carry) is written with ASCII escapes.

    Raises:
        TypeError: ``extra`` holds a value JSON cannot represent.
        ValueError: ``weight`` or a number in ``extra`` is not finite.

    Example:
        >>> from datetime import datetime, timezone
        >>> e = FeedbackEvent("e-1", datetime(2026, 11, 28, tzinfo=timezone.utc), "p", "r",
        ...                   Feedback("rating", value=3))
        >>> encode_event(e)[:40]
        b'{"schema_version":1,"event_id":"e-1","ts'
    """
    payload = event_to_dict(event)
    text = _ENCODER.encode(payload)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(payload).encode("ascii")
