"""The one decoder: a Kafka message value to a FeedbackEvent or a Rejection; and the encoder.

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
from types import MappingProxyType
from typing import Any, Final

from streaming.events.schema import (
    _EMPTY_EXTRA,
    _KNOWN_FIELDS,
    _MAX_EVENT_ID_CHARS,
    DEFAULT_LIMITS,
    FEEDBACK_TYPES,
    SCHEMA_VERSION,
    DecodeLimits,
    Feedback,
    FeedbackEvent,
    Rejection,
    RejectReason,
)
from streaming.events.timestamps import _parse_ts, format_timestamp

_FIX: Final = "fix the producer that writes feedback events"
_MISSING: Final = object()

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
# Decoding


def _wrong_type(name: str, expected: str, value: Any) -> Rejection:
    return Rejection(
        RejectReason.WRONG_TYPE, f"field '{name}' must be {expected}, got {_kind(value)}; {_FIX}"
    )


def _missing(name: str, context: str) -> Rejection:
    return Rejection(
        RejectReason.MISSING_FIELD, f"required field '{name}' is missing{context}; {_FIX}"
    )


def _required_text(
    obj: dict[str, Any], name: str, max_chars: int, truncated: list[str]
) -> str | Rejection:
    """A required string field, cut to ``max_chars`` (its name then goes in ``truncated``)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        return _missing(name, "")
    if type(value) is not str:
        return _wrong_type(name, "a string", value)
    if len(value) > max_chars:
        truncated.append(name)
        return value[:max_chars]
    return value


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
    prompt = _required_text(obj, "prompt", max_chars, truncated)
    if isinstance(prompt, Rejection):
        return prompt
    response = _required_text(obj, "response", max_chars, truncated)
    if isinstance(response, Rejection):
        return response

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
