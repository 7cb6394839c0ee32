"""The recording format (lossless bytes), time parsing, pacing and time ordering."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import cli
from streaming.base import Record
from streaming.errors import FeedstepError
from streaming.sources.recording import (
    Pacer,
    RecordingFileSource,
    decode_recorded,
    encode_record,
    file_format,
    parse_time_ms,
    read_recording,
    time_ordered,
)

RECORDS = [
    Record("fb", 0, 0, b"c1", b'{"event_id": "a", "prompt": "caf\xc3\xa9"}', 1_000, ()),
    Record("fb", 1, 7, None, b"\xff\xfe\x00garbage", 2_000, (("trace", b"\x00\x9f"),)),
    Record("fb", 2, 3, b"\x80key", b"{not json", None, (("h", b"v"), ("h", b""))),
    Record("fb", 2, 4, b"c1", None, 3_000, ()),  # a tombstone
    Record("fb", 0, 1, b"", b"", 4_000, ()),
    Record("fb", 0, 2, b"k", "line\nbreak\r\n\u2028 \U0001f600".encode(), 5, ()),
]


@pytest.mark.parametrize("record", RECORDS, ids=range(len(RECORDS)))
def test_round_trip_is_byte_for_byte(record):
    line = encode_record(record)
    assert "\n" not in line
    assert decode_recorded(line) == record


def test_utf8_values_are_readable_text_and_others_base64():
    text = json.loads(encode_record(RECORDS[0]))
    assert text["value"] == '{"event_id": "a", "prompt": "café"}'
    assert text["key"] == "c1" and "value_b64" not in text
    raw = json.loads(encode_record(RECORDS[1]))
    assert "value" not in raw and raw["value_b64"] == "//4AZ2FyYmFnZQ=="
    assert raw["key"] is None
    assert raw["headers"] == [{"key": "trace", "value_b64": "AJ8="}]
    assert raw["partition"] == 1 and raw["offset"] == 7 and raw["timestamp_ms"] == 2000


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=200) | st.text(max_size=50).map(str.encode),
    headers=st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3),
    ts=st.none() | st.integers(min_value=0, max_value=2**50),
)
def test_round_trip_any_bytes(key, value, headers, ts):
    record = Record("t", 3, 99, key, value, ts, tuple(headers))
    assert decode_recorded(encode_record(record).encode()) == record


def test_file_format_and_gzip(tmp_path):
    rec = tmp_path / "rec.jsonl.gz"
    with gzip.open(rec, "wb") as fh:
        fh.write(b"\n" + "\n".join(encode_record(r) for r in RECORDS).encode() + b"\n")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"event_id": "a", "partition": 1}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"{oops\n")
    assert file_format(rec) == "recording"
    assert file_format(events) == "events"
    assert file_format(broken) == "events"
    assert list(read_recording(rec)) == RECORDS


def test_decode_errors_say_what_is_expected():
    with pytest.raises(FeedstepError, match="line 3: expected a recorded message"):
        decode_recorded(b'{"event_id": "x"}', "f.jsonl line 3")
    with pytest.raises(FeedstepError, match="not valid base64"):
        decode_recorded(b'{"partition": 0, "offset": 0, "value_b64": "!!"}')
    with pytest.raises(FeedstepError, match="offset must be an integer >= 0"):
        decode_recorded(b'{"partition": 0, "offset": -1, "value": ""}')
    with pytest.raises(FeedstepError, match="not JSON"):
        decode_recorded(b"{")


def test_recording_file_source_polls_and_seeks(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(encode_record(r) for r in RECORDS) + "\n")
    src = RecordingFileSource(path)
    assert src.finite and not src.at_end()
    first = src.poll(0.0, max_records=2)
    assert first == RECORDS[:2]
    rest = src.poll(0.0)
    assert rest == RECORDS[2:] and src.at_end()
    assert src.position() == {("fb", 0): 3, ("fb", 1): 8, ("fb", 2): 5}
    src.seek({("fb", 0): 2})
    assert [(r.partition, r.offset) for r in src.poll(0.0)] == [
        (1, 7),
        (2, 3),
        (2, 4),
        (0, 2),
    ]


# -- times ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000000", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20z", 1_700_000_000_000),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        ("2023-11-14 22:13:20.5+00:00", 1_700_000_000_500),
        (" 0 ", 0),
    ],
)
def test_parse_time(text, expected):
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize("text", ["2023-11-14T22:13:20", "yesterday", "-5", "1.5e12", ""])
def test_parse_time_rejects_what_it_cannot_place(text):
    with pytest.raises(FeedstepError, match="--from-time .* RFC 3339 time with a timezone"):
        parse_time_ms(text, "from-time")


# -- pacing ---------------------------------------------------------------------------------------
class FakeTime:
    """A clock that only moves when slept on (or when work is simulated)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the pacer must never sleep for zero or less"
        self.sleeps.append(round(seconds, 9))
        self.now += seconds


def test_rate_paces_on_an_absolute_schedule():
    t = FakeTime()
    pacer = Pacer(rate=4.0, clock=t.clock, sleep=t.sleep)
    sent_at = []
    for i in range(6):
        pacer.wait()
        sent_at.append(t.now)
        t.now += 0.1 if i == 2 else 0.0  # a slow send: the next wait is shorter, no drift
    assert [round(x - 100.0, 9) for x in sent_at] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert t.sleeps == [0.25, 0.25, 0.15, 0.25, 0.25]


def test_speed_divides_recorded_gaps():
    t = FakeTime()
    pacer = Pacer(speed=10.0, clock=t.clock, sleep=t.sleep)
    timestamps = [5_000, 5_000, 7_000, 6_000, 17_000]  # one earlier than the one before
    for ts in timestamps:
        pacer.wait(ts)
    assert t.sleeps == [0.2, 1.0]
    assert round(t.now - 100.0, 9) == 1.2  # (17000 - 5000) ms / 10


def test_no_pacing_never_sleeps():
    t = FakeTime()
    pacer = Pacer(clock=t.clock, sleep=t.sleep)
    for ts in (None, 1, 10**9):
        assert pacer.wait(ts) == 0.0
    assert t.sleeps == []


def test_pacer_errors():
    with pytest.raises(FeedstepError, match="exclude each other"):
        Pacer(rate=1.0, speed=1.0)
    with pytest.raises(FeedstepError, match="--rate must be a number > 0"):
        Pacer(rate=0.0)
    with pytest.raises(FeedstepError, match="--speed must be a number > 0"):
        Pacer(speed=float("nan"))
    with pytest.raises(FeedstepError, match="has no timestamp.*recording"):
        Pacer(speed=2.0).wait(None)


def test_time_ordered_keeps_each_key_in_order():
    def rec(key, ts, offset, partition=0):
        name = "None" if key is None else key.decode()
        return Record("t", partition, offset, key, f"{name}{offset}".encode(), ts)

    records = [
        rec(b"a", 10, 0),
        rec(b"a", 5, 1),  # out of time order within key a: must stay after a0
        rec(b"b", 1, 2, 1),
        rec(b"b", 8, 3, 1),
        rec(None, 3, 4, 2),
        rec(None, 2, 5, 2),
    ]
    ordered = [r.value for r in time_ordered(records)]
    assert ordered == [b"b2", b"None4", b"None5", b"b3", b"a0", b"a1"]
    for key in (b"a", b"b", None):
        want = [r.value for r in records if r.key == key]
        assert [v for v in ordered if v in want] == want
    with pytest.raises(FeedstepError, match="no timestamp"):
        list(time_ordered([rec(b"a", None, 0)]))


# -- CLI errors (no broker needed: they are raised before connecting) ------------------------------
def test_produce_speed_needs_a_recording(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id": "a"}\n')
    code = cli.main(["produce", str(events), "--topic", "t", "--speed", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "feedstep: error: --speed replays the gaps between recorded timestamps" in err
    assert "feedstep record" in err and "--rate" in err


def test_produce_rate_and_speed_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["produce", "f.jsonl", "--topic", "t", "--rate", "5", "--speed", "2"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_record_rejects_bad_partitions_and_times(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    code = cli.main(["record", "--topic", "t", "--out", out, "--partitions", "0,x"])
    assert code == 2 and "--partitions '0,x' must be a comma-separated" in capsys.readouterr().err
    code = cli.main(["record", "--topic", "t", "--out", out, "--from-time", "last tuesday"])
    assert code == 2 and "--from-time 'last tuesday' is neither" in capsys.readouterr().err
