"""A seeded generator of malformed feedback payloads, every one invalid by design.

Each :class:`FuzzCase` carries the raw Kafka value (bytes, or ``None`` for a tombstone), the
family it comes from and the reasons :func:`~streaming.events.decode.decode_event` may give for it.
The families cover what a broken or hostile producer sends: bytes that are not JSON, JSON cut
short, text in the wrong encoding (UTF-16/32, latin-1, a BOM, invalid UTF-8 sequences), JSON
that is not an object, nesting 10^4 to 10^5 levels deep, fields bigger than
``max_event_bytes``, every required field missing or of every wrong type, unknown feedback
types, out-of-range values, bad timestamps, NaN/Infinity and overflowing numbers, duplicate keys
whose last value is invalid, and empty values.

:func:`fuzz_cases` checks every case against the decoder before yielding it (``check=True``),
so a case that a future decoder accepted would fail loudly instead of silently testing nothing.

Example:
    >>> cases = list(fuzz_cases(seed=1, n=3))
    >>> [c.family for c in cases] == [c.family for c in fuzz_cases(seed=1, n=3)]
    True
    >>> all(decode_event(c.payload).reason.value in c.reasons for c in cases)
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from streaming.events import DEFAULT_LIMITS, DecodeLimits, FeedbackEvent, decode_event

__all__ = ["FAMILIES", "FuzzCase", "fuzz_cases", "fuzz_payloads"]

REQUIRED: Final = ("event_id", "ts", "prompt", "response", "feedback")

_TEXTS: Final = (
    "How long should I boil an egg?",
    "Café au lait, s'il vous plaît — merci!",
    "Wie spät ist es in München?",
    "日本語で答えてください。",
    "Привет, как дела?",
    "emoji 👍🏽 and ñ",
)
_WRONG_VALUES: Final[tuple[Any, ...]] = (0, -7, 3.5, True, False, None, [], [1, "a"], {}, {"k": 1})
_BAD_TIMESTAMPS: Final = (
    "yesterday",
    "",
    "2026-11-28",
    "2026-11-28T10:00:00",
    "2026-13-01T00:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-11-28T25:00:00Z",
    "2026-11-28T10:00:00+24:00",
    "2026-11-28T10:00:00+02:60",
    "28/11/2026 10:00",
    "1764324000",
    "2026-11-28T10:00:00ZZ",
    "２０２６-11-28T10:00:00Z",
)


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One malformed payload.

    Attributes:
        payload: The Kafka message value; ``None`` is a tombstone.
        family: Which generator made it (a short label).
        reasons: The rejection reasons (``RejectReason`` values) the decoder may give.
    """

    payload: bytes | None
    family: str
    reasons: frozenset[str]


def _valid_event(rng: random.Random, i: int) -> dict[str, Any]:
    kind = rng.choice(("thumb", "rating", "preference", "correction"))
    if kind == "thumb":
        feedback: dict[str, Any] = {"type": "thumb", "value": rng.choice((1, -1))}
    elif kind == "rating":
        feedback = {"type": "rating", "value": rng.randint(1, 5)}
    elif kind == "preference":
        feedback = {"type": "preference", "chosen": rng.choice(_TEXTS), "rejected": "No."}
    else:
        feedback = {"type": "correction", "text": rng.choice(_TEXTS)}
    return {
        "schema_version": 1,
        "event_id": f"fuzz-{i}-{rng.getrandbits(32):08x}",
        "ts": "2026-11-28T10:00:00Z",
        "prompt": rng.choice(_TEXTS),
        "response": rng.choice(_TEXTS),
        "feedback": feedback,
        "conversation_id": f"c{rng.randrange(100)}",
    }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


Maker = Callable[[random.Random, int, DecodeLimits], tuple[bytes | None, tuple[str, ...]]]


def _not_json(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    alphabet = "abcxyz<>!@#%^&*()=+;:'/\\|~`? \t"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200)))
    return ("<" + text).encode(), ("bad_json",)


def _binary(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    cut = rng.randint(0, len(body))
    return body[:cut] + b"\xff" + body[cut:], ("bad_encoding",)  # 0xff never occurs in UTF-8


def _truncated(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    return raw[: rng.randint(1, len(raw) - 1)], ("bad_json", "bad_encoding")


def _trailing(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    tail = rng.choice((b"x", b",", b"}", b" []", raw, b"\x00", b"// comment"))
    return raw + tail, ("bad_json",)


def _wrong_encoding(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    codec = rng.choice(("utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252"))
    if codec in ("latin-1", "cp1252"):
        event["prompt"] = "Café crème, à bientôt"  # encodable, and never valid UTF-8 there
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return text.encode(codec, errors="replace"), ("bad_json", "bad_encoding")


def _bom(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    bom = rng.choice((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))
    return bom + raw, ("bad_json", "bad_encoding")


def _bad_utf8(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    bad = rng.choice((b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"))
    at = raw.index(b'"prompt":"') + len(b'"prompt":"')
    return raw[:at] + bad + raw[at:], ("bad_encoding",)


def _control_char(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    at = raw.index(b'"response":"') + len(b'"response":"')
    return raw[:at] + bytes([rng.randrange(0, 32)]) + raw[at:], ("bad_json",)


def _not_object(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    value = rng.choice(
        ([_valid_event(rng, i)], "event", 42, -1.5, True, False, None, [], [1, 2, 3], "")
    )
    return _dumps(value), ("not_an_object",)


def _deep(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    # 10^4..10^5 levels, but always within max_event_bytes, so it is the depth that is refused.
    style = rng.choice(("array", "object", "in_event", "unclosed"))
    unit = 5 if style in ("object", "in_event") else 1
    most = max(limits.max_json_depth + 1, (limits.max_event_bytes - 400) // (unit + 1))
    depth = min(rng.randint(10_000, 100_000), most)
    if style == "array":
        raw = b"[" * depth + b"]" * depth
    elif style == "unclosed":
        raw = b"[" * depth
    elif style == "object":
        raw = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        body = _dumps(_valid_event(rng, i))
        raw = body[:-1] + b',"extra":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    return raw, ("bad_json",)


def _just_too_deep(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    nested: Any = 1
    for _ in range(limits.max_json_depth):  # the top-level object adds one more level
        nested = [nested]
    event["context"] = nested
    return _dumps(event), ("bad_json",)


def _huge(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    field = rng.choice(("prompt", "response", "event_id", "blob"))
    event[field] = "x" * (limits.max_event_bytes + rng.randint(1, 4096))
    return _dumps(event), ("too_large",)


def _wrong_type(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    name = rng.choice((*REQUIRED, "schema_version", "model_version", "tenant", "weight", "fb"))
    wrong = rng.choice(_WRONG_VALUES)
    if name == "fb":
        key = "type" if rng.random() < 0.5 else _fb_key(event["feedback"]["type"])
        value = rng.choice((5, None, True, [], {"x": 1}) if key == "type" else _WRONG_VALUES)
        if key == "value" and type(value) is int:
            value = str(value)
        event["feedback"][key] = value
        return _dumps(event), ("wrong_type", "missing_field")
    if name in ("event_id", "ts", "prompt", "response"):
        if type(wrong) is str:
            wrong = 1
    elif name in ("model_version", "tenant"):
        if type(wrong) is str or wrong is None:  # null means absent for an optional field
            wrong = 1
    elif name == "feedback":
        if type(wrong) is dict:
            wrong = "thumb up"
    elif name == "schema_version":
        if type(wrong) is int or wrong is None:
            wrong = "1"
    elif name == "weight":
        if type(wrong) in (int, float) or wrong is None:
            wrong = "1.0"
    event[name] = wrong
    return _dumps(event), ("wrong_type",)


def _fb_key(ftype: str) -> str:
    return {"thumb": "value", "rating": "value", "correction": "text"}.get(ftype, "chosen")


def _missing(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    if rng.random() < 0.3:
        fb = event["feedback"]
        del fb[rng.choice(["type", *[k for k in fb if k != "type"]])]
    else:
        for name in rng.sample(REQUIRED, rng.randint(1, len(REQUIRED))):
            del event[name]
    return _dumps(event), ("missing_field",)


def _unknown_type(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    event["feedback"]["type"] = rng.choice(
        ("thumbs", "Thumb", "THUMB", "emoji", "", " thumb", "like", "ratings", "👍", "x" * 300)
    )
    return _dumps(event), ("unknown_feedback_type",)


def _out_of_range(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    choice = rng.randrange(7)
    if choice == 0:
        event["feedback"] = {"type": "thumb", "value": rng.choice((0, 2, -2, 10**30))}
    elif choice == 1:
        event["feedback"] = {"type": "rating", "value": rng.choice((0, 6, -1, 100, 10**25))}
    elif choice == 2:
        event["weight"] = rng.choice((0, 0.0, -1, -0.5, -1e300))
    elif choice == 3:
        event["event_id"] = rng.choice(("", "   ", "\t\n", "e" * 201))
    elif choice == 4:
        event["feedback"] = {"type": "correction", "text": rng.choice(("", "  ", "\n"))}
    elif choice == 5:
        event["schema_version"] = rng.choice((0, 2, -1, 99))
        return _dumps(event), ("unsupported_schema_version",)
    else:
        event["weight"] = 10**400  # an int too large for a float
    return _dumps(event), ("bad_value",)


def _bad_ts(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    event = _valid_event(rng, i)
    event["ts"] = rng.choice(_BAD_TIMESTAMPS)
    return _dumps(event), ("bad_timestamp",)


def _non_finite(rng: random.Random, i: int, limits: DecodeLimits) -> tuple[bytes, tuple[str, ...]]:
    raw = _dumps(_valid_event(rng, i))
    literal = rng.choice(
        (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 5000)
    )
    key = rng.choice((b"weight", b"score", b"value"))
    return raw[:-1] + b',"' + key + b'":' + literal + b"}", ("bad_json",)


def _duplicate_keys(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes, tuple[str, ...]]:
    # The first value is valid, the last (the one a JSON parser keeps) is not.
    raw = _dumps(_valid_event(rng, i))
    name, value, reason = rng.choice(
        (
            (b"event_id", b"5", "wrong_type"),
            (b"ts", b'"not a time"', "bad_timestamp"),
            (b"feedback", b'{"type":"thumb","value":0}', "bad_value"),
            (b"prompt", b"null", "wrong_type"),
            (b"schema_version", b"7", "unsupported_schema_version"),
        )
    )
    return raw[:-1] + b',"' + name + b'":' + value + b"}", (reason,)


def _empty(
    rng: random.Random, i: int, limits: DecodeLimits
) -> tuple[bytes | None, tuple[str, ...]]:
    return rng.choice((None, b"", b" ", b"\n\t  \r\n", b" " * 1000)), ("empty",)


FAMILIES: Final[dict[str, Maker]] = {
    "not_json": _not_json,
    "binary": _binary,
    "truncated": _truncated,
    "trailing_data": _trailing,
    "wrong_encoding": _wrong_encoding,
    "bom": _bom,
    "bad_utf8": _bad_utf8,
    "control_char": _control_char,
    "not_an_object": _not_object,
    "deep_nesting": _deep,
    "just_too_deep": _just_too_deep,
    "huge_field": _huge,
    "wrong_type": _wrong_type,
    "missing_field": _missing,
    "unknown_feedback_type": _unknown_type,
    "out_of_range": _out_of_range,
    "bad_timestamp": _bad_ts,
    "non_finite": _non_finite,
    "duplicate_keys": _duplicate_keys,
    "empty": _empty,
}
"""Every family of malformed payload, by name."""

_WEIGHTS: Final = {"deep_nesting": 0.25, "huge_field": 0.25}
"""The big families (up to ``max_event_bytes`` each) come a quarter as often as the others."""


def fuzz_cases(
    seed: int,
    n: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    families: tuple[str, ...] | None = None,
    check: bool = True,
) -> Iterator[FuzzCase]:
    """Yield ``n`` malformed payloads, reproducibly for a given ``seed``.

    Args:
        seed: Seeds the generator; the same seed, ``n``, ``limits`` and ``families`` give the
            same cases.
        n: How many cases.
        limits: The decoder's limits the cases are made to break (sizes, depth).
        families: Restrict to these families (names in :data:`FAMILIES`); default all.
        check: Decode each case and raise ``AssertionError`` unless it is rejected for one of
            its expected reasons.

    Yields:
        :class:`FuzzCase` objects; they are built lazily, so memory stays bounded by the
        biggest case (about ``max_event_bytes``), not by ``n``.
    """
    names = families or tuple(FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown fuzz families {unknown}; choose from {sorted(FAMILIES)}")
    weights = [_WEIGHTS.get(name, 1.0) for name in names]
    rng = random.Random(seed)
    for i in range(n):
        family = rng.choices(names, weights=weights)[0]
        payload, reasons = FAMILIES[family](rng, i, limits)
        case = FuzzCase(payload, family, frozenset(reasons))
        if check:
            result = decode_event(payload, limits)
            if isinstance(result, FeedbackEvent) or result.reason.value not in case.reasons:
                found = "accepted" if isinstance(result, FeedbackEvent) else result.reason.value
                raise AssertionError(
                    f"fuzz case {i} (seed {seed}, family {family}) should be rejected as one "
                    f"of {sorted(case.reasons)}, but the decoder said {found}"
                )
        yield case


def fuzz_payloads(
    seed: int, n: int, limits: DecodeLimits = DEFAULT_LIMITS
) -> Iterator[bytes | None]:
    """The payloads of :func:`fuzz_cases` alone (checked), for producers and sources."""
    for case in fuzz_cases(seed, n, limits):
        yield case.payload
