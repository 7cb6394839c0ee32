from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from streaming.events import (
    DEFAULT_LIMITS,
    DecodeLimits,
    Feedback,
    FeedbackEvent,
    Rejection,
    RejectReason,
    decode_event,
    encode_event,
    event_to_dict,
    format_timestamp,
    parse_timestamp,
)

SENTINEL = "ZEBRA-SECRET-7f3a"  # stands for user text that must never reach a detail message

UTC = timezone.utc


def make(**overrides):
    """A valid event dict; ``overrides`` replace fields, a value of ``...`` removes one."""
    event = {
        "event_id": "e-1",
        "ts": "2026-11-28T10:00:00Z",
        "prompt": "How long do I boil an egg?",
        "response": "About nine minutes.",
        "feedback": {"type": "thumb", "value": 1},
    }
    for name, value in overrides.items():
        if value is ...:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def enc(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


def ok(raw: bytes | None, limits: DecodeLimits = DEFAULT_LIMITS) -> FeedbackEvent:
    result = decode_event(raw, limits)
    assert isinstance(result, FeedbackEvent), result
    return result


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


# (case id, raw payload, limits or None, expected reason, text the detail must contain)
REJECTIONS = [
    # too_large
    (
        "too_large",
        enc(make(prompt="x" * 2000)),
        DecodeLimits(max_event_bytes=1000),
        RejectReason.TOO_LARGE,
        "1000",
    ),
    (
        "too_large_even_if_not_json",
        b"x" * 1001,
        DecodeLimits(max_event_bytes=1000),
        RejectReason.TOO_LARGE,
        "max_event_bytes",
    ),
    # bad_encoding
    (
        "latin1",
        json.dumps(make(prompt="café"), ensure_ascii=False).encode("latin-1"),
        None,
        RejectReason.BAD_ENCODING,
        "UTF-8",
    ),
    ("utf16", json.dumps(make()).encode("utf-16"), None, RejectReason.BAD_ENCODING, "UTF-8"),
    ("lone_continuation_byte", b'{"event_id": "\x80"}', None, RejectReason.BAD_ENCODING, "byte"),
    # empty
    ("none", None, None, RejectReason.EMPTY, "null"),
    ("empty_bytes", b"", None, RejectReason.EMPTY, "empty"),
    ("whitespace", b" \n\t\r ", None, RejectReason.EMPTY, "whitespace"),
    # bad_json
    ("truncated", enc(make())[:-5], None, RejectReason.BAD_JSON, "line 1"),
    ("single_quotes", b"{'event_id': 'e-1'}", None, RejectReason.BAD_JSON, "JSON"),
    ("trailing_garbage", enc(make()) + b" {}", None, RejectReason.BAD_JSON, "JSON"),
    ("utf8_bom", b"\xef\xbb\xbf" + enc(make()), None, RejectReason.BAD_JSON, "JSON"),
    ("nan_literal", enc(make())[:-1] + b', "weight": NaN}', None, RejectReason.BAD_JSON, "NaN"),
    (
        "infinity_literal",
        enc(make())[:-1] + b', "weight": Infinity}',
        None,
        RejectReason.BAD_JSON,
        "Infinity",
    ),
    (
        "minus_infinity_in_extra",
        enc(make())[:-1] + b', "x": [-Infinity]}',
        None,
        RejectReason.BAD_JSON,
        "Infinity",
    ),
    (
        "float_overflow",
        enc(make())[:-1] + b', "weight": 1e400}',
        None,
        RejectReason.BAD_JSON,
        "finite",
    ),
    (
        "huge_int",
        enc(make())[:-1] + b', "x": ' + b"9" * 5000 + b"}",
        None,
        RejectReason.BAD_JSON,
        "JSON",
    ),
    ("deep_10000_lists", nested_lists(10_000).encode(), None, RejectReason.BAD_JSON, "deep"),
    (
        "deep_10000_in_object",
        enc(make())[:-1] + b', "x": ' + nested_lists(10_000).encode() + b"}",
        None,
        RejectReason.BAD_JSON,
        "deep",
    ),
    (
        "deeper_than_limit",
        enc(make(x=json.loads(nested_lists(40)))),
        None,
        RejectReason.BAD_JSON,
        "max_json_depth",
    ),
    (
        "deep_inside_feedback",
        enc(make(feedback={"type": "thumb", "value": 1, "x": [[[[1]]]]})),
        DecodeLimits(max_json_depth=4),
        RejectReason.BAD_JSON,
        "4",
    ),
    # not_an_object
    ("array", b"[1, 2]", None, RejectReason.NOT_AN_OBJECT, "array"),
    ("array_of_events", enc([make(), make()]), None, RejectReason.NOT_AN_OBJECT, "array"),
    ("string", b'"hello"', None, RejectReason.NOT_AN_OBJECT, "string"),
    ("number", b"42", None, RejectReason.NOT_AN_OBJECT, "integer"),
    ("null", b"null", None, RejectReason.NOT_AN_OBJECT, "null"),
    ("true", b"true", None, RejectReason.NOT_AN_OBJECT, "boolean"),
    # missing_field
    ("no_event_id", enc(make(event_id=...)), None, RejectReason.MISSING_FIELD, "'event_id'"),
    ("no_ts", enc(make(ts=...)), None, RejectReason.MISSING_FIELD, "'ts'"),
    ("no_prompt", enc(make(prompt=...)), None, RejectReason.MISSING_FIELD, "'prompt'"),
    ("no_response", enc(make(response=...)), None, RejectReason.MISSING_FIELD, "'response'"),
    ("no_feedback", enc(make(feedback=...)), None, RejectReason.MISSING_FIELD, "'feedback'"),
    (
        "no_feedback_type",
        enc(make(feedback={"value": 1})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.type'",
    ),
    (
        "no_thumb_value",
        enc(make(feedback={"type": "thumb"})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.value'",
    ),
    (
        "no_rating_value",
        enc(make(feedback={"type": "rating"})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.value'",
    ),
    (
        "no_correction_text",
        enc(make(feedback={"type": "correction"})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.text'",
    ),
    (
        "no_chosen",
        enc(make(feedback={"type": "preference", "rejected": "b"})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.chosen'",
    ),
    (
        "no_rejected",
        enc(make(feedback={"type": "preference", "chosen": "a"})),
        None,
        RejectReason.MISSING_FIELD,
        "'feedback.rejected'",
    ),
    # wrong_type
    ("event_id_int", enc(make(event_id=5)), None, RejectReason.WRONG_TYPE, "'event_id'"),
    ("ts_epoch_number", enc(make(ts=1764324000)), None, RejectReason.WRONG_TYPE, "'ts'"),
    ("prompt_null", enc(make(prompt=None)), None, RejectReason.WRONG_TYPE, "got null"),
    ("response_list", enc(make(response=["a"])), None, RejectReason.WRONG_TYPE, "got array"),
    ("feedback_string", enc(make(feedback="thumb")), None, RejectReason.WRONG_TYPE, "'feedback'"),
    (
        "feedback_type_int",
        enc(make(feedback={"type": 1, "value": 1})),
        None,
        RejectReason.WRONG_TYPE,
        "'feedback.type'",
    ),
    (
        "thumb_value_string",
        enc(make(feedback={"type": "thumb", "value": "1"})),
        None,
        RejectReason.WRONG_TYPE,
        "got string",
    ),
    (
        "thumb_value_bool",
        enc(make(feedback={"type": "thumb", "value": True})),
        None,
        RejectReason.WRONG_TYPE,
        "got boolean",
    ),
    (
        "rating_value_bool",
        enc(make(feedback={"type": "rating", "value": True})),
        None,
        RejectReason.WRONG_TYPE,
        "got boolean",
    ),
    (
        "rating_value_float",
        enc(make(feedback={"type": "rating", "value": 4.0})),
        None,
        RejectReason.WRONG_TYPE,
        "got number",
    ),
    (
        "correction_text_int",
        enc(make(feedback={"type": "correction", "text": 5})),
        None,
        RejectReason.WRONG_TYPE,
        "'feedback.text'",
    ),
    (
        "chosen_null",
        enc(make(feedback={"type": "preference", "chosen": None, "rejected": "b"})),
        None,
        RejectReason.WRONG_TYPE,
        "'feedback.chosen'",
    ),
    (
        "rejected_object",
        enc(make(feedback={"type": "preference", "chosen": "a", "rejected": {}})),
        None,
        RejectReason.WRONG_TYPE,
        "'feedback.rejected'",
    ),
    (
        "model_version_int",
        enc(make(model_version=3)),
        None,
        RejectReason.WRONG_TYPE,
        "'model_version'",
    ),
    (
        "conversation_id_int",
        enc(make(conversation_id=3)),
        None,
        RejectReason.WRONG_TYPE,
        "'conversation_id'",
    ),
    ("tenant_object", enc(make(tenant={})), None, RejectReason.WRONG_TYPE, "'tenant'"),
    ("weight_string", enc(make(weight="1")), None, RejectReason.WRONG_TYPE, "'weight'"),
    ("weight_bool", enc(make(weight=True)), None, RejectReason.WRONG_TYPE, "got boolean"),
    (
        "schema_version_string",
        enc(make(schema_version="1")),
        None,
        RejectReason.WRONG_TYPE,
        "'schema_version'",
    ),
    (
        "schema_version_bool",
        enc(make(schema_version=True)),
        None,
        RejectReason.WRONG_TYPE,
        "got boolean",
    ),
    # bad_value
    (
        "rating_7",
        enc(make(feedback={"type": "rating", "value": 7})),
        None,
        RejectReason.BAD_VALUE,
        "got 7",
    ),
    (
        "rating_0",
        enc(make(feedback={"type": "rating", "value": 0})),
        None,
        RejectReason.BAD_VALUE,
        "1..5",
    ),
    (
        "thumb_0",
        enc(make(feedback={"type": "thumb", "value": 0})),
        None,
        RejectReason.BAD_VALUE,
        "1 or -1",
    ),
    (
        "thumb_2",
        enc(make(feedback={"type": "thumb", "value": 2})),
        None,
        RejectReason.BAD_VALUE,
        "got 2",
    ),
    ("empty_event_id", enc(make(event_id="")), None, RejectReason.BAD_VALUE, "'event_id'"),
    ("blank_event_id", enc(make(event_id="   ")), None, RejectReason.BAD_VALUE, "blank"),
    ("long_event_id", enc(make(event_id="e" * 201)), None, RejectReason.BAD_VALUE, "201"),
    ("weight_zero", enc(make(weight=0)), None, RejectReason.BAD_VALUE, "> 0"),
    ("weight_negative", enc(make(weight=-1.5)), None, RejectReason.BAD_VALUE, "-1.5"),
    (
        "weight_int_overflows_float",
        enc(make(weight=10**400)),
        None,
        RejectReason.BAD_VALUE,
        "too large",
    ),
    (
        "empty_correction",
        enc(make(feedback={"type": "correction", "text": ""})),
        None,
        RejectReason.BAD_VALUE,
        "non-empty",
    ),
    (
        "blank_correction",
        enc(make(feedback={"type": "correction", "text": " \n "})),
        None,
        RejectReason.BAD_VALUE,
        "whitespace",
    ),
    # bad_timestamp
    ("naive_ts", enc(make(ts="2026-11-28T10:00:00")), None, RejectReason.BAD_TIMESTAMP, "offset"),
    (
        "naive_fraction_ts",
        enc(make(ts="2026-11-28T10:00:00.5")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "naive",
    ),
    ("date_only", enc(make(ts="2026-11-28")), None, RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    ("words", enc(make(ts="yesterday")), None, RejectReason.BAD_TIMESTAMP, "RFC 3339"),
    (
        "iso_basic_format",
        enc(make(ts="20261128T100000Z")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "RFC 3339",
    ),
    (
        "february_30",
        enc(make(ts="2026-02-30T10:00:00Z")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "calendar",
    ),
    ("hour_25", enc(make(ts="2026-11-28T25:00:00Z")), None, RejectReason.BAD_TIMESTAMP, "ts"),
    (
        "offset_24h",
        enc(make(ts="2026-11-28T10:00:00+24:00")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "offset",
    ),
    ("year_zero", enc(make(ts="0000-01-01T00:00:00Z")), None, RejectReason.BAD_TIMESTAMP, "ts"),
    (
        "before_year_one_in_utc",
        enc(make(ts="0001-01-01T00:30:00+01:00")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "ts",
    ),
    (
        "fullwidth_digits",
        enc(make(ts="２０２６-11-28T10:00:00Z")),
        None,
        RejectReason.BAD_TIMESTAMP,
        "RFC 3339",
    ),
    # unknown_feedback_type
    (
        "emoji_type",
        enc(make(feedback={"type": "emoji", "value": 1})),
        None,
        RejectReason.UNKNOWN_FEEDBACK_TYPE,
        "'emoji'",
    ),
    (
        "capitalised_type",
        enc(make(feedback={"type": "Thumb", "value": 1})),
        None,
        RejectReason.UNKNOWN_FEEDBACK_TYPE,
        "thumb, rating, correction, preference",
    ),
    # unsupported_schema_version
    (
        "schema_v2",
        enc(make(schema_version=2)),
        None,
        RejectReason.UNSUPPORTED_SCHEMA_VERSION,
        "got 2",
    ),
    (
        "schema_v0",
        enc(make(schema_version=0)),
        None,
        RejectReason.UNSUPPORTED_SCHEMA_VERSION,
        "upgrade",
    ),
]


@pytest.mark.parametrize(
    ("raw", "limits", "reason", "in_detail"),
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_rejections(raw, limits, reason, in_detail):
    result = decode_event(raw, limits or DEFAULT_LIMITS)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert in_detail in result.detail
    # Every detail says what to do about it.
    assert any(hint in result.detail for hint in ("fix the producer", "limit", "upgrade"))


def test_every_reject_reason_has_a_case():
    covered = {case[3] for case in REJECTIONS}
    assert covered == set(RejectReason)


def test_reject_reason_is_a_plain_label():
    assert str(RejectReason.BAD_JSON) == "bad_json"
    assert RejectReason("too_large") is RejectReason.TOO_LARGE
    assert f"{RejectReason.EMPTY.value}" == "empty"


def test_schema_version_is_checked_before_the_rest():
    # A future version may have another shape: the version is the reason, not the shape.
    result = decode_event(enc({"schema_version": 2, "totally": "different"}))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.UNSUPPORTED_SCHEMA_VERSION


def test_size_is_checked_before_parsing():
    limits = DecodeLimits(max_event_bytes=10)
    assert decode_event(b"x" * 11, limits).reason is RejectReason.TOO_LARGE
    assert decode_event(b"x" * 10, limits).reason is RejectReason.BAD_JSON


# -- details never carry user text -------------------------------------------------------------


SENTINEL_CASES = [
    make(prompt=SENTINEL, ts="not a time " + SENTINEL),
    make(prompt=SENTINEL, response=SENTINEL, feedback={"type": SENTINEL, "value": 1}),
    make(prompt=SENTINEL, feedback={"type": "thumb " + SENTINEL, "value": 1}),
    make(prompt=SENTINEL, feedback={"type": "rating", "value": 9}),
    make(response=SENTINEL, feedback={"type": "thumb", "value": SENTINEL}),
    make(prompt=SENTINEL, feedback={"type": "correction", "text": " "}),
    make(feedback={"type": "preference", "chosen": SENTINEL, "rejected": 3}),
    make(prompt=SENTINEL, event_id=SENTINEL * 20),
    make(prompt=SENTINEL, tenant=[SENTINEL]),
    make(prompt=SENTINEL, weight=SENTINEL),
    make(prompt=SENTINEL, schema_version=SENTINEL),
    make(prompt=SENTINEL, response=...),
    make(prompt=SENTINEL, x=json.loads(nested_lists(50))),
]


@pytest.mark.parametrize("event", SENTINEL_CASES)
def test_details_never_contain_user_text(event):
    result = decode_event(enc(event))
    assert isinstance(result, Rejection)
    assert SENTINEL not in result.detail
    assert SENTINEL[:8] not in result.detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "' + SENTINEL.encode() + b'", ',
        b'{"prompt": "' + SENTINEL.encode() + b'\xff"}',
        b'{"prompt": "' + SENTINEL.encode() + b'", "weight": NaN}',
        b'["' + SENTINEL.encode() + b'"]',
    ],
)
def test_parse_error_details_never_contain_user_text(raw):
    result = decode_event(raw)
    assert isinstance(result, Rejection)
    assert SENTINEL not in result.detail


# -- accepted events ---------------------------------------------------------------------------


def test_minimal_event_gets_defaults():
    event = ok(enc(make()))
    assert event.event_id == "e-1"
    assert event.ts == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert event.prompt == "How long do I boil an egg?"
    assert event.response == "About nine minutes."
    assert event.feedback == Feedback("thumb", value=1)
    assert (event.model_version, event.conversation_id, event.tenant) == (None, None, None)
    assert event.weight == 1.0 and isinstance(event.weight, float)
    assert event.schema_version == 1
    assert dict(event.extra) == {}
    assert event.truncated_fields == ()


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [
        ({"type": "thumb", "value": 1}, Feedback("thumb", value=1)),
        ({"type": "thumb", "value": -1}, Feedback("thumb", value=-1)),
        ({"type": "rating", "value": 1}, Feedback("rating", value=1)),
        ({"type": "rating", "value": 5}, Feedback("rating", value=5)),
        ({"type": "correction", "text": "Nine!"}, Feedback("correction", text="Nine!")),
        (
            {"type": "preference", "chosen": "A", "rejected": ""},
            Feedback("preference", chosen="A", rejected=""),
        ),
        # Keys that do not belong to the type are ignored.
        ({"type": "thumb", "value": -1, "text": "ignored"}, Feedback("thumb", value=-1)),
    ],
)
def test_feedback_types(feedback, expected):
    assert ok(enc(make(feedback=feedback))).feedback == expected


def test_optional_fields():
    event = ok(
        enc(
            make(
                model_version="m-3",
                conversation_id="c-9",
                tenant="acme",
                weight=2,
                schema_version=1,
            )
        )
    )
    assert (event.model_version, event.conversation_id, event.tenant) == ("m-3", "c-9", "acme")
    assert event.weight == 2.0 and isinstance(event.weight, float)


def test_null_optional_fields_mean_absent():
    event = ok(enc(make(model_version=None, tenant=None, weight=None, schema_version=None)))
    assert event.model_version is None and event.tenant is None
    assert event.weight == 1.0 and event.schema_version == 1
    assert dict(event.extra) == {}


def test_unknown_fields_are_kept_read_only():
    event = ok(enc(make(client="ios", ab={"arm": "b", "ids": [1, 2]}, score=0.25)))
    assert dict(event.extra) == {"client": "ios", "ab": {"arm": "b", "ids": [1, 2]}, "score": 0.25}
    with pytest.raises(TypeError):
        event.extra["client"] = "android"  # type: ignore[index]
    assert "prompt" not in event.extra


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-11-28T12:00:00+02:00", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-11-28T04:30:00-05:30", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-11-28T10:00:00-00:00", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-11-28T10:00:00.5Z", datetime(2026, 11, 28, 10, 0, 0, 500_000, tzinfo=UTC)),
        (
            "2026-11-28T10:00:00.123456789+00:00",
            datetime(2026, 11, 28, 10, 0, 0, 123_456, tzinfo=UTC),
        ),
        ("2026-11-28t10:00:00z", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-11-28 10:00:00Z", datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)),
        ("2026-12-31T23:59:60Z", datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("2027-01-01T01:00:00+01:00", datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)),
        ("2026-11-28T00:30:00+01:00", datetime(2026, 11, 27, 23, 30, 0, tzinfo=UTC)),
    ],
)
def test_timestamps_become_aware_utc(text, expected):
    event = ok(enc(make(ts=text)))
    assert event.ts == expected
    assert event.ts.utcoffset() == timedelta(0)
    assert event.ts.tzinfo is not None
    assert event.ts_epoch_s == pytest.approx(expected.timestamp())
    assert parse_timestamp(text) == expected


def test_ts_epoch_s():
    event = ok(enc(make(ts="1970-01-01T00:01:40.25+00:00")))
    assert event.ts_epoch_s == 100.25


def test_parse_timestamp_raises_with_a_clear_message():
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_timestamp("2026-11-28T10:00:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_timestamp("28/11/2026")


def test_format_timestamp():
    assert format_timestamp(datetime(2026, 11, 28, 12, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-11-28T10:00:00Z"
    )
    assert format_timestamp(datetime(2026, 11, 28, 10, 0, 0, 5, tzinfo=UTC)) == (
        "2026-11-28T10:00:00.000005Z"
    )
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2026, 11, 28))


# -- truncation --------------------------------------------------------------------------------


def test_long_texts_are_truncated_and_named():
    limits = DecodeLimits(max_text_chars=5)
    event = ok(enc(make(prompt="abcdefgh", response="12345")), limits)
    assert event.prompt == "abcde"
    assert event.response == "12345"  # exactly at the limit: untouched
    assert event.truncated_fields == ("prompt",)


def test_every_text_field_is_truncated():
    limits = DecodeLimits(max_text_chars=3)
    correction = ok(
        enc(make(prompt="pppp", response="rrrr", feedback={"type": "correction", "text": "tttt"})),
        limits,
    )
    texts = (correction.prompt, correction.response, correction.feedback.text)
    assert texts == ("ppp", "rrr", "ttt")
    assert correction.truncated_fields == ("prompt", "response", "feedback.text")
    preference = ok(
        enc(make(feedback={"type": "preference", "chosen": "cccc", "rejected": "rrrr"})), limits
    )
    assert (preference.feedback.chosen, preference.feedback.rejected) == ("ccc", "rrr")
    assert preference.truncated_fields == (
        "prompt",
        "response",
        "feedback.chosen",
        "feedback.rejected",
    )


def test_truncation_counts_characters_not_bytes():
    event = ok(enc(make(prompt="ééééé", response="日本語")), DecodeLimits(max_text_chars=4))
    assert event.prompt == "éééé"
    assert event.response == "日本語"
    assert event.truncated_fields == ("prompt",)


def test_default_limit_is_8192_characters():
    event = ok(enc(make(prompt="x" * 8193, response="y" * 8192)))
    assert len(event.prompt) == 8192
    assert event.truncated_fields == ("prompt",)


# -- depth -------------------------------------------------------------------------------------


def test_depth_limit_boundary():
    # top-level object = 1, "x" object = 2, "y" list = 3
    raw = enc(make(x={"y": [1]}))
    assert isinstance(decode_event(raw, DecodeLimits(max_json_depth=3)), FeedbackEvent)
    result = decode_event(raw, DecodeLimits(max_json_depth=2))
    assert isinstance(result, Rejection) and result.reason is RejectReason.BAD_JSON


def test_moderately_deep_nesting_under_recursion_limit_is_rejected_without_recursion():
    # Deep enough to need the post-parse check, shallow enough that json.loads still parses it.
    raw = enc(make())[:-1] + b', "x": ' + nested_lists(500).encode() + b"}"
    result = decode_event(raw)
    assert isinstance(result, Rejection) and result.reason is RejectReason.BAD_JSON
    deep_ok = decode_event(raw, DecodeLimits(max_json_depth=501))
    assert isinstance(deep_ok, FeedbackEvent)


# -- inputs of other kinds ---------------------------------------------------------------------


def test_bytearray_and_memoryview_are_accepted():
    raw = enc(make())
    assert ok(bytearray(raw)) == ok(raw)  # type: ignore[arg-type]
    assert ok(memoryview(raw)) == ok(raw)  # type: ignore[arg-type]


def test_str_is_rejected_not_raised():
    result = decode_event(json.dumps(make()))  # type: ignore[arg-type]
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.BAD_ENCODING
    assert "bytes" in result.detail


def test_random_corruption_never_raises():
    rng = random.Random(1234)
    base = enc(make(tenant="acme", weight=0.5, feedback={"type": "rating", "value": 4}))
    kinds = set()
    for _ in range(3000):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            pos = rng.randrange(len(raw))
            if action < 0.4:
                raw[pos] = rng.randrange(256)
            elif action < 0.7:
                del raw[pos]
            else:
                raw.insert(pos, rng.choice(b'{}[]",:0123456789-.eE \\ntrufalsNI\xff'))
        result = decode_event(bytes(raw))
        assert isinstance(result, (FeedbackEvent, Rejection))
        kinds.add(type(result))
    assert kinds == {FeedbackEvent, Rejection}


# -- encoding ----------------------------------------------------------------------------------


ROUND_TRIP_EVENTS = [
    FeedbackEvent("e-1", datetime(2026, 11, 28, 10, tzinfo=UTC), "p", "r", Feedback("thumb", -1)),
    FeedbackEvent(
        "e-2",
        datetime(2026, 11, 28, 10, 0, 0, 123_456, tzinfo=UTC),
        "Ünïcødé 日本語 🥚",
        'quotes " and \\ backslashes\nnewline',
        Feedback("rating", value=3),
        model_version="m-3",
        conversation_id="c-9",
        tenant="acme",
        weight=0.25,
        extra={"client": "ios", "nested": {"a": [1, 2.5, None, True]}},
    ),
    FeedbackEvent(
        "e-3", datetime(1999, 1, 1, tzinfo=UTC), "", "", Feedback("correction", text="fix it")
    ),
    FeedbackEvent(
        "e-4",
        datetime(2026, 1, 1, tzinfo=UTC),
        "lone surrogate \ud800 here",
        "r",
        Feedback("preference", chosen="a", rejected="b"),
    ),
]


@pytest.mark.parametrize("event", ROUND_TRIP_EVENTS, ids=lambda e: e.event_id)
def test_encode_decode_round_trip(event):
    raw = encode_event(event)
    assert isinstance(raw, bytes)
    assert decode_event(raw) == event
    assert encode_event(decode_event(raw)) == raw  # type: ignore[arg-type]


def test_encoding_is_compact_utc_and_keeps_extra_fields():
    event = ok(enc(make(ts="2026-11-28T12:00:00+02:00", client="ios", prompt="日本")))
    raw = encode_event(event)
    assert b", " not in raw and b": " not in raw
    payload = json.loads(raw)
    assert payload["ts"] == "2026-11-28T10:00:00Z"
    assert payload["client"] == "ios"
    assert payload["schema_version"] == 1
    assert "日本".encode() in raw  # UTF-8, not \u escapes
    assert "truncated_fields" not in payload


def test_truncated_event_round_trips_except_the_truncation_note():
    limits = DecodeLimits(max_text_chars=3)
    event = ok(enc(make(prompt="abcdef")), limits)
    again = ok(encode_event(event), limits)
    assert again.prompt == "abc"
    assert again.truncated_fields == ()


def test_event_to_dict():
    event = ok(enc(make(tenant="acme", feedback={"type": "correction", "text": "t"}, extra=1)))
    assert event_to_dict(event) == {
        "schema_version": 1,
        "event_id": "e-1",
        "ts": "2026-11-28T10:00:00Z",
        "prompt": "How long do I boil an egg?",
        "response": "About nine minutes.",
        "feedback": {"type": "correction", "text": "t"},
        "tenant": "acme",
        "weight": 1.0,
        "extra": 1,
    }


def test_encode_refuses_non_finite_weight():
    event = FeedbackEvent(
        "e", datetime(2026, 1, 1, tzinfo=UTC), "p", "r", Feedback("thumb", value=1), weight=math.nan
    )
    with pytest.raises(ValueError):
        encode_event(event)


# -- value objects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_text_chars": 0}, "max_text_chars"),
        ({"max_event_bytes": -1}, "max_event_bytes"),
        ({"max_json_depth": 1}, "max_json_depth"),
        ({"max_text_chars": 1.5}, "max_text_chars"),
        ({"max_event_bytes": True}, "max_event_bytes"),
    ],
)
def test_decode_limits_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DecodeLimits(**kwargs)


def test_event_requires_aware_ts():
    with pytest.raises(ValueError, match="timezone-aware"):
        FeedbackEvent("e", datetime(2026, 1, 1), "p", "r", Feedback("thumb", value=1))


def test_event_extra_is_made_read_only_and_may_not_shadow_fields():
    source = {"client": "ios"}
    event = FeedbackEvent(
        "e", datetime(2026, 1, 1, tzinfo=UTC), "p", "r", Feedback("thumb", value=1), extra=source
    )
    source["client"] = "changed"
    assert event.extra["client"] == "ios"
    with pytest.raises(TypeError):
        event.extra["x"] = 1  # type: ignore[index]
    with pytest.raises(ValueError, match="prompt"):
        FeedbackEvent(
            "e",
            datetime(2026, 1, 1, tzinfo=UTC),
            "p",
            "r",
            Feedback("thumb", value=1),
            extra={"prompt": "x"},
        )


def test_events_are_frozen_and_hashable():
    event = ok(enc(make(client="ios")))
    with pytest.raises(AttributeError):
        event.prompt = "x"  # type: ignore[misc]
    assert hash(event) == hash(ok(enc(make(client="ios"))))
