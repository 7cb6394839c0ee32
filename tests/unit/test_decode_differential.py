"""The fast decoder agrees with the reference decoder on every input.

``decode_event`` first asks ``_decode_fast`` (msgspec into typed structs, then the value checks)
and hands whatever it declines to ``_decode_reference`` (the complete decoder, the only one that
explains a rejection). These tests run both on the same bytes and require the same result:
events equal field by field with the same types, rejections with the same reason and the same
detail. The inputs are valid simulated events, seeded mutations of them (the edge cases a fast
path could get wrong: limits, nulls, bools, big and odd numbers, duplicate keys, escapes, bad
UTF-8, unknown fields, nesting), the fuzz corpus, and hypothesis-drawn near-valid events. Each
test also counts which path decided, so a fast path that declined everything would fail here
instead of passing vacuously.

``to_example`` is compared with ``Example(...)`` built by its own constructor in the same way.
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learner.base import Example
from streaming.convert import plain_training_fields, to_example
from streaming.events import (
    DEFAULT_LIMITS,
    DecodeLimits,
    Feedback,
    FeedbackEvent,
    Rejection,
    _decode_fast,
    _decode_reference,
    _parse_ts,
    _parse_ts_careful,
    _validated_event,
    _validated_feedback,
    decode_event,
)
from streaming.fuzz import fuzz_cases
from streaming.simulate import SimulatedFeedback

UTC = timezone.utc
START = datetime(2026, 11, 28, 10, tzinfo=UTC)
# Small limits make truncation, the size limit and the depth limit common on ordinary events.
SMALL = DecodeLimits(max_text_chars=48, max_event_bytes=420, max_json_depth=2)
LIMITS = [pytest.param(DEFAULT_LIMITS, id="default"), pytest.param(SMALL, id="small")]


def _same_fields(got: Any, want: Any, cls: type, raw: Any) -> None:
    for f in fields(cls):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert type(a) is type(b) and a == b, (raw, f.name, a, b)


def check(raw: Any, limits: DecodeLimits) -> str:
    """Assert decode_event(raw) is what the reference gives; say which path decided.

    Returns ``"fast"`` (the fast path accepted), ``"reference"`` (the reference accepted what
    the fast path declined) or the rejection reason.
    """
    got = decode_event(raw, limits)
    want = _decode_reference(raw, limits)
    slow = decode_event(raw, limits, fast=False)
    assert type(slow) is type(want) and repr(slow) == repr(want), raw
    assert type(got) is type(want), (raw, got, want)
    if isinstance(want, Rejection):
        assert (got.reason, got.detail) == (want.reason, want.detail), raw
        return want.reason.value
    _same_fields(got, want, FeedbackEvent, raw)
    _same_fields(got.feedback, want.feedback, Feedback, raw)
    assert got.ts.tzinfo is want.ts.tzinfo, raw
    assert type(got.extra) is MappingProxyType
    assert repr(got) == repr(want), raw  # also tells 1 from 1.0 and True inside extra
    fast = type(raw) is bytes and len(raw) <= limits.max_event_bytes
    plain = plain_training_fields(raw, limits)
    if fast and _decode_fast(raw, limits.max_text_chars) is not None:
        # the pipeline's shortcut gives what the event and to_example give
        example = to_example(got)
        assert plain is not None, raw
        assert plain[:2] == (got.event_id, got.ts.timestamp()), raw
        assert repr(plain[2]) == repr(example) and plain[2] == example, raw
        assert plain[3:] == (got.prompt, got.response, got.feedback.type), raw
        return "fast"
    assert plain is None, raw
    return "reference"


# --------------------------------------------------------------------------------------------
# Seeded mutations of simulated events


class Raw(str):
    """JSON text written as it is (a key or a value), for what json.dumps cannot write."""


class Obj(list):
    """A JSON object as a list of (key, value) pairs, so that a key may repeat."""


def dump(value: Any, ascii_only: bool, space: str) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        items = (
            f"{k if isinstance(k, Raw) else json.dumps(k, ensure_ascii=ascii_only)}:{space}"
            f"{dump(v, ascii_only, space)}"
            for k, v in value
        )
        return "{" + ("," + space).join(items) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


TEXT_FIELDS = ("prompt", "response", "event_id", "text", "chosen", "rejected")
ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2, 5, 6, 1.0, -0.0, 0.5, 1e308, 2**63, 2**64, -(2**63) - 1,
    10**30, "", " ", "1", "x", [], {}, [1, {"a": []}], {"k": None},
    Raw("1e400"), Raw("-1e400"), Raw("1e-400"), Raw("NaN"), Raw("Infinity"), Raw("-0"),
    Raw("1E+2"), Raw("1.0e0"), Raw("01"), Raw("1."), Raw(".5"), Raw("+1"), Raw("9" * 400),
    Raw('"\\ud800"'), Raw('"\\udc00x"'), Raw('"a\\u0000b"'), Raw("[[[[[]]]]]"), Raw("{}"),
)  # fmt: skip
TIMESTAMPS = (
    "2026-11-28T10:00:00Z", "2026-11-28T10:00:00.5Z", "2026-11-28T10:00:00.123456+02:00",
    "2026-11-28t10:00:00z", "2026-11-28 10:00:00-05:30", "2026-11-28T23:59:60Z",
    "2026-11-28T10:00:00.1234567Z", "2026-11-28T10:00:00", "2026-02-30T00:00:00Z",
    "2026-11-28T10:00:00+02:60", "2026-11-28T10:00:00+24:00", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "2026-11-28", "", "yesterday", "2026-11-28T10:00:00ZZ",
    "２０２６-11-28T10:00:00Z", "2026-11-28T10:00Z", "2026-11-28T10:00:00,5Z",
)  # fmt: skip
JUNK_BYTES = (
    b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x00", b"\n", b"\t", b" ", b"\x0b", b"\x0c", b",", b"}",
    b"]", b'"', b"\\",
)  # fmt: skip
KEYS = ("client", "", "Event_id", "event_id ", "type", "value", "é", "\x00", "weight")


def odd_text(rng: random.Random, limits: DecodeLimits) -> Any:
    """A string near a limit, blank, exotic, or escaped."""
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.choice((limits.max_text_chars, 200)) + rng.choice((-1, 0, 1))
        return rng.choice("aé👍") * n
    if kind == 1:
        return rng.choice(("", " ", "\t\n", "\u3000", "\x85", " x "))
    if kind == 2:
        return "".join(
            chr(rng.choice((rng.randrange(32, 0x250), rng.randrange(0x10000, 0x10100))))
            for _ in range(rng.randrange(1, 12))
        )
    if kind == 3:
        return Raw(
            '"'
            + rng.choice(("\\ud83d\\ude00", "\\ud800", "\\u00e9", "\\/", "\\n", "\\u0041"))
            + '"'
        )
    if kind == 4:
        return Raw('"a' + chr(rng.randrange(0, 32)) + 'b"')  # a raw control character
    return "x" * rng.randrange(0, 3 * limits.max_text_chars)


def odd_weight(rng: random.Random) -> Any:
    kind = rng.randrange(4)
    if kind == 0:  # a float printed with more or fewer digits than it needs
        return Raw(f"{rng.uniform(1e-3, 1e3):.{rng.randrange(1, 30)}g}")
    if kind == 1:
        return Raw(f"{rng.random()}e{rng.randrange(-330, 330)}")
    if kind == 2:
        return rng.choice((1, 2, 10**18, 10**19, 10**308, 10**309, 0, -1, -0.5, 5e-324))
    return rng.choice(ODD_VALUES)


def mutate(event: Obj, rng: random.Random, limits: DecodeLimits) -> None:
    """Apply one random change to ``event`` (a pair list whose "feedback" is an Obj)."""
    feedback = next((v for k, v in event if k == "feedback" and isinstance(v, Obj)), Obj())
    target = event if rng.random() < 0.6 or not feedback else feedback
    op = rng.randrange(12)
    if op == 0 and target:  # drop a field
        del target[rng.randrange(len(target))]
    elif op == 1 and target:  # repeat a field, with its own value or another one
        key, value = rng.choice(target)
        value = value if rng.random() < 0.5 else rng.choice(ODD_VALUES)
        target.insert(rng.randrange(len(target) + 1), (key, value))
    elif op == 2 and target:  # another JSON kind or value
        i = rng.randrange(len(target))
        target[i] = (target[i][0], rng.choice(ODD_VALUES))
    elif op == 3:  # an unknown field
        target.append((rng.choice(KEYS), rng.choice(ODD_VALUES)))
    elif op == 4:  # a text near the limit, blank, exotic or escaped
        name = rng.choice(TEXT_FIELDS)
        place = feedback if name in ("text", "chosen", "rejected") else event
        place.append((name, odd_text(rng, limits)))
    elif op == 5:
        event.append(("ts", rng.choice(TIMESTAMPS)))
    elif op == 6:
        event.append(("weight", odd_weight(rng)))
    elif op == 7:
        event.append(("schema_version", rng.choice((1, 2, 0, None, True, 1.0, "1", 2**64))))
    elif op == 8:
        kind = rng.choice(("thumb", "rating", "correction", "preference", "thumbs", "", 5, None))
        feedback.append(("type", kind))
    elif op == 9:
        value = rng.choice((-1, 1, 0, 2, 3, 4, 5, 6, 1.0, True, None, "1", 2**64, Raw("-0")))
        feedback.append(("value", value))
    elif op == 10:  # nesting around the depth limit, in a field of its own
        depth = rng.randrange(1, 40)
        target.append((rng.choice(KEYS), Raw("[" * depth + "]" * depth)))
    else:  # a key spelt with a unicode escape
        if target:
            i = rng.randrange(len(target))
            key = target[i][0]
            if isinstance(key, str) and not isinstance(key, Raw) and key:
                j = rng.randrange(len(key))
                escaped = (
                    json.dumps(key[:j])[:-1]
                    + f"\\u{ord(key[j]):04x}"
                    + json.dumps(key[j + 1 :])[1:]
                )
                target[i] = (Raw(escaped), target[i][1])


def damage(raw: bytes, rng: random.Random) -> bytes:
    """A byte-level change: cut, insert, delete, wrap."""
    op = rng.randrange(5)
    i = rng.randrange(len(raw) + 1)
    if op == 0:
        return raw[:i]
    if op == 1:
        junk = rng.choice(JUNK_BYTES)
        return raw[:i] + junk + raw[i:]
    if op == 2:
        return raw[:i] + raw[i + 1 :]
    if op == 3:
        return (
            rng.choice((b"\xef\xbb\xbf", b" \n\t", b"\r\n", b"[", b""))
            + raw
            + rng.choice((b"", b" \n", b"x", b"{}", b"\x00", b"]"))
        )
    return rng.choice(
        (b"[" + raw + b"]", b'"' + raw.replace(b'"', b"'") + b'"', bytearray(raw), memoryview(raw))
    )


def mutants(seed: int, n: int, limits: DecodeLimits) -> Iterator[Any]:
    """``n`` seeded payloads, each a simulated event with one to three changes (some none)."""
    rng = random.Random(seed)
    sim = SimulatedFeedback(seed=seed, start=START, spacing_s=0.123457)
    for i in range(n):
        wire = sim.event(i)
        event = Obj((k, Obj(v.items()) if k == "feedback" else v) for k, v in wire.items())
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            mutate(event, rng, limits)
        raw = dump(event, rng.random() < 0.5, rng.choice(("", "", " ", "\n  "))).encode(
            "utf-8", "surrogatepass"
        )
        yield damage(raw, rng) if rng.random() < 0.2 else raw


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("limits", LIMITS)
def test_simulated_events_decode_the_same_and_take_the_fast_path(limits):
    paths = collections.Counter(
        check(raw, limits) for raw in SimulatedFeedback(seed=0).payloads(20_000)
    )
    if limits is DEFAULT_LIMITS:
        assert paths == {"fast": 20_000}
    else:  # texts over 48 characters are truncated by the reference; events over 420 bytes
        assert paths["fast"] > 1_000 and paths["reference"] > 1_000 and paths["too_large"] > 1_000


@pytest.mark.parametrize("limits", LIMITS)
def test_mutated_events_decode_the_same(limits):
    paths = collections.Counter(check(raw, limits) for raw in mutants(7, 20_000, limits))
    # Every way out is taken often enough to mean something.
    assert paths["fast"] > 1_000 and paths["reference"] > 1_000, paths
    reasons = set(paths) - {"fast", "reference"}
    assert {"bad_json", "wrong_type", "bad_value", "bad_timestamp", "missing_field"} <= reasons


@pytest.mark.parametrize("limits", LIMITS)
def test_fuzz_corpus_decodes_the_same(limits):
    for case in fuzz_cases(3, 2_000, limits, check=False):
        check(case.payload, limits)


_texts = st.text(max_size=12) | st.sampled_from(["", " ", "x" * 49, "é" * 49])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=6,
)
_feedback = st.one_of(
    st.fixed_dictionaries({"type": st.just("thumb"), "value": st.sampled_from([1, -1]) | _json}),
    st.fixed_dictionaries({"type": st.just("rating"), "value": st.integers(0, 6) | _json}),
    st.fixed_dictionaries({"type": st.just("correction"), "text": _texts | _json}),
    st.fixed_dictionaries(
        {"type": st.just("preference"), "chosen": _texts | _json, "rejected": _texts | _json}
    ),
    _json,
)


@st.composite
def _near_valid(draw) -> bytes:
    """An event whose every field is usually valid and sometimes any JSON value, or absent."""
    event: dict[str, Any] = {}
    fields_ = {
        "schema_version": st.just(1) | _json,
        "event_id": st.text(min_size=1, max_size=8) | _json,
        "ts": st.sampled_from(TIMESTAMPS) | _json,
        "prompt": _texts | _json,
        "response": _texts | _json,
        "feedback": _feedback,
        "model_version": _texts | _json,
        "tenant": _texts | _json,
        "weight": st.floats(allow_nan=False) | st.integers() | _json,
        draw(_texts): _json,
    }
    for name, strategy in fields_.items():
        if draw(st.integers(0, 9)):  # a field is absent one time in ten
            event[name] = draw(strategy)
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_near_valid())
def test_property_near_valid_events_decode_the_same(raw):
    check(raw, DEFAULT_LIMITS)
    check(raw, SMALL)


def test_validated_constructors_build_what_the_public_ones_build():
    for raw in SimulatedFeedback(seed=1).payloads(200):
        e = decode_event(raw)
        assert isinstance(e, FeedbackEvent)
        values = tuple(getattr(e, f.name) for f in fields(FeedbackEvent))
        built, public = _validated_event(*values), FeedbackEvent(*values)
        assert type(built) is FeedbackEvent and repr(built) == repr(public) and built == public
        fb = tuple(getattr(e.feedback, f.name) for f in fields(Feedback))
        assert repr(_validated_feedback(*fb)) == repr(Feedback(*fb)) and hash(built) == hash(public)


def _example_by_constructor(event: FeedbackEvent) -> Example | str:
    """What to_example gave before it had a fast constructor (or the error it raised)."""
    fb = event.feedback
    try:
        if fb.type == "thumb":
            target = 1.0 if fb.value == 1 else 0.0
            return Example(event.prompt, event.response, target=target, weight=event.weight)
        if fb.type == "rating":
            target = (float(fb.value or 1) - 1.0) / 4.0
            return Example(event.prompt, event.response, target=target, weight=event.weight)
        if fb.type == "preference":
            return Example(
                event.prompt, str(fb.chosen), rejected=str(fb.rejected), weight=event.weight
            )
        return Example(event.prompt, str(fb.text), rejected=event.response, weight=event.weight)
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_to_example_matches_the_example_constructor():
    events = [decode_event(raw) for raw in SimulatedFeedback(seed=2).payloads(5_000)]
    # Events the decoder never makes, built by hand: the checks must still fire the same way.
    odd_feedback = [
        Feedback("rating", value=7), Feedback("rating", value=0), Feedback("rating", value=3),
        Feedback("thumb", value=5), Feedback("correction", text="fixed"),
        Feedback("preference", chosen="a", rejected="b"),
    ]  # fmt: skip
    for fb in odd_feedback:
        for weight in (1.0, 2, 0.0, -1.0, float("nan"), float("inf"), True):
            events.append(FeedbackEvent("e", START, "p", "r", fb, weight=weight))
    events.append(FeedbackEvent("e", START, "p", None, Feedback("correction", text="t")))
    for event in events:
        assert isinstance(event, FeedbackEvent)
        want = _example_by_constructor(event)
        try:
            got: Example | str = to_example(event)
        except (ValueError, TypeError) as exc:
            got = f"{type(exc).__name__}: {exc}"
        assert type(got) is type(want) and repr(got) == repr(want) and got == want, event


@pytest.mark.parametrize("template", ["2026-11-28T23:35:32Z", "2026-11-28T23:35:32.014879Z"])
def test_timestamp_shortcut_agrees_with_the_careful_parser(template):
    """The shortcut for the two common shapes parses exactly what the regex parser does.

    Seeded mutations of 1-3 characters (digits, letters, separators, non-ASCII digits) keep the
    length, so each one reaches the shortcut's shape check; both parsers must agree, error
    message and instant and time zone alike.
    """
    rng = random.Random(7)
    alphabet = "0123456789" * 4 + "aZzT t:-.,+/\u0662\uff12"
    for _ in range(20_000):
        chars = list(template)
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        text = "".join(chars)
        fast, careful = _parse_ts(text), _parse_ts_careful(text)
        assert fast == careful, text
        if isinstance(fast, datetime):
            assert fast.tzinfo is timezone.utc and careful.tzinfo is timezone.utc, text
