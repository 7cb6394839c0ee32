from __future__ import annotations

import json
import zlib

import pytest

from streaming.base import Record, Sink, Source
from streaming.events import FeedbackEvent, Rejection, RejectReason, decode_event
from streaming.testing import MemorySink, MemorySource, SentMessage

TP0 = ("feedback", 0)
TP1 = ("feedback", 1)


def event(i: int) -> dict:
    return {
        "event_id": f"e-{i}",
        "ts": "2026-11-28T10:00:00Z",
        "prompt": f"prompt {i}",
        "response": f"response {i}",
        "feedback": {"type": "thumb", "value": 1 if i % 2 else -1},
    }


# -- MemorySource ------------------------------------------------------------------------------


def test_is_a_finite_source():
    src = MemorySource([b"a"])
    assert isinstance(src, Source)
    assert src.finite is True


def test_values_of_every_kind():
    src = MemorySource([b"raw", "text é", {"a": 1}, None, bytearray(b"ba")])
    values = [r.value for r in src.poll(0.0)]
    assert values == [b"raw", "text é".encode(), b'{"a":1}', None, b"ba"]
    with pytest.raises(TypeError, match="int"):
        MemorySource([42])  # type: ignore[list-item]


def test_dict_values_decode_as_events():
    src = MemorySource([event(1), event(2), b"{not json"])
    results = [decode_event(r.value) for r in src.poll(0.0)]
    assert isinstance(results[0], FeedbackEvent) and results[0].event_id == "e-1"
    assert isinstance(results[1], FeedbackEvent) and results[1].feedback.value == -1
    assert isinstance(results[2], Rejection) and results[2].reason is RejectReason.BAD_JSON


def test_records_carry_topic_partition_offset():
    src = MemorySource([b"a", b"b"], topic="fb")
    records = src.poll(0.0)
    assert [(r.topic, r.partition, r.offset, r.key) for r in records] == [
        ("fb", 0, 0, None),
        ("fb", 0, 1, None),
    ]


def test_round_robin_partitions_and_interleaved_poll():
    src = MemorySource([b"0", b"1", b"2", b"3", b"4"], partitions=2)
    assert [(r.partition, r.offset) for r in src.records()] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 2),
    ]
    # Taking one record per partition in turn gives back the original order.
    assert [r.value for r in src.poll(0.0)] == [b"0", b"1", b"2", b"3", b"4"]
    assert src.position() == {TP0: 3, TP1: 2}


def test_key_function_picks_partition_stably():
    values = [{"user": u, "i": i} for i, u in enumerate(["ann", "bob", "ann", "cy", "bob", "ann"])]
    src = MemorySource(values, partitions=3, key=lambda v: v["user"])
    by_user: dict[bytes, set[int]] = {}
    for r in src.records():
        assert r.key is not None
        by_user.setdefault(r.key, set()).add(r.partition)
    assert set(by_user) == {b"ann", b"bob", b"cy"}
    for key, partitions in by_user.items():
        assert partitions == {zlib.crc32(key) % 3}
    # Records of one key keep their relative order within the partition.
    ann = [json.loads(r.value)["i"] for r in src.poll(0.0) if r.key == b"ann"]
    assert ann == [0, 2, 5]


def test_poll_respects_max_records_and_advances_position():
    src = MemorySource([b"a", b"b", b"c", b"d", b"e"])
    assert [r.value for r in src.poll(0.0, max_records=2)] == [b"a", b"b"]
    assert src.position() == {TP0: 2}
    assert src.lag() == {TP0: 3}
    assert [r.value for r in src.poll(0.0, max_records=2)] == [b"c", b"d"]
    assert [r.value for r in src.poll(0.0, max_records=2)] == [b"e"]
    assert src.poll(0.0) == []
    assert src.at_end()
    with pytest.raises(ValueError, match="max_records"):
        src.poll(0.0, max_records=0)


def test_max_records_across_partitions():
    src = MemorySource([b"0", b"1", b"2", b"3"], partitions=2)
    assert [r.value for r in src.poll(0.0, max_records=3)] == [b"0", b"1", b"2"]
    assert src.position() == {TP0: 2, TP1: 1}
    assert [r.value for r in src.poll(0.0)] == [b"3"]


def test_seek_rereads_and_skips():
    src = MemorySource([b"a", b"b", b"c"])
    src.poll(0.0)
    src.seek({TP0: 1})
    assert src.position() == {TP0: 1}
    assert not src.at_end()
    assert [r.value for r in src.poll(0.0)] == [b"b", b"c"]
    src.seek({TP0: 3})  # the end is a valid position
    assert src.at_end() and src.poll(0.0) == []


def test_seek_only_touches_given_partitions():
    src = MemorySource([b"0", b"1", b"2", b"3"], partitions=2)
    src.poll(0.0)
    src.seek({TP1: 0})
    assert src.position() == {TP0: 2, TP1: 0}
    assert [r.value for r in src.poll(0.0)] == [b"1", b"3"]


@pytest.mark.parametrize(
    ("offsets", "match"),
    [
        ({("feedback", 5): 0}, "has only"),
        ({("other", 0): 0}, "has only"),
        ({TP0: -1}, ">= 0"),
        ({TP0: 4}, "past the end"),
        ({TP0: 1.0}, "ints"),
    ],
)
def test_seek_and_commit_validate_offsets(offsets, match):
    src = MemorySource([b"a", b"b", b"c"])
    with pytest.raises(ValueError, match=match):
        src.seek(offsets)
    with pytest.raises(ValueError, match=match):
        src.commit(offsets)
    assert src.position() == {TP0: 0}
    assert src.committed() == {}


def test_commit_is_recorded_and_inspectable():
    src = MemorySource([b"a", b"b", b"c"], partitions=2)
    assert src.committed() == {}
    src.commit({TP0: 1})
    src.commit({TP0: 2, TP1: 1})
    assert src.committed() == {TP0: 2, TP1: 1}
    assert src.commit_log == [{TP0: 1}, {TP0: 2, TP1: 1}]
    # committed() is a copy, and committing does not move the read position
    src.committed()[TP0] = 99
    assert src.committed()[TP0] == 2
    assert src.position() == {TP0: 0, TP1: 0}


def test_lag_and_end_offsets():
    src = MemorySource([b"a", b"b", b"c"], partitions=2)
    assert src.end_offsets() == {TP0: 2, TP1: 1}
    assert src.lag() == {TP0: 2, TP1: 1}
    src.poll(0.0, max_records=1)
    assert src.lag() == {TP0: 1, TP1: 1}
    src.poll(0.0)
    assert src.lag() == {TP0: 0, TP1: 0}


def test_empty_source():
    src = MemorySource(partitions=2)
    assert src.poll(0.0) == []
    assert src.at_end()
    assert src.position() == {TP0: 0, TP1: 0}
    assert src.lag() == {TP0: 0, TP1: 0}


def test_append_grows_a_live_stream():
    src = MemorySource([b"a"])
    assert [r.value for r in src.poll(0.0)] == [b"a"]
    assert src.at_end()
    added = src.append([b"b", {"c": 3}])
    assert [r.offset for r in added] == [1, 2]
    assert not src.at_end()
    assert src.lag() == {TP0: 2}
    assert [r.value for r in src.poll(0.0)] == [b"b", b'{"c":3}']


def test_round_robin_continues_across_appends():
    src = MemorySource([b"0"], partitions=2)
    src.append([b"1", b"2"])
    assert [r.partition for r in src.records()] == [0, 1, 0]


def test_records_keep_their_coordinates_and_gaps():
    src = MemorySource(
        [
            Record("feedback", 0, 10, b"k", b"x", timestamp_ms=5, headers=(("h", b"1"),)),
            Record("feedback", 0, 13, None, b"y"),
            Record("other", 2, 0, None, b"z"),
        ]
    )
    assert src.end_offsets() == {TP0: 14, ("other", 2): 1}
    first = src.poll(0.0, max_records=1)[0]
    assert (first.offset, first.key, first.timestamp_ms) == (10, b"k", 5)
    assert first.headers == (("h", b"1"),)
    assert src.position()[TP0] == 11
    # The gap between 10 and 13 is skipped; seeking into it resumes at the next record.
    src.seek({TP0: 12})
    assert [r.offset for r in src.poll(0.0) if r.topic == "feedback"] == [13]
    # Plain values appended later continue after the last offset.
    assert src.append([b"w"])[0].offset == 14


def test_records_must_increase_within_a_partition():
    with pytest.raises(ValueError, match="offset 3"):
        MemorySource([Record("feedback", 0, 5, None, b"a"), Record("feedback", 0, 3, None, b"b")])


def test_closed_source_refuses_to_poll():
    src = MemorySource([b"a"])
    src.close()
    assert src.closed
    with pytest.raises(RuntimeError, match="close"):
        src.poll(0.0)


@pytest.mark.parametrize("partitions", [0, -1, 1.5, True])
def test_partitions_validated(partitions):
    with pytest.raises(ValueError, match="partitions"):
        MemorySource([], partitions=partitions)


def test_resume_from_committed_offsets():
    """The checkpoint/restart story: commit, rebuild the source, seek to the commit."""
    values = [event(i) for i in range(6)]
    src = MemorySource(values, partitions=2)
    seen = [json.loads(r.value)["event_id"] for r in src.poll(0.0, max_records=4)]
    src.commit(src.position())
    restarted = MemorySource(values, partitions=2)
    restarted.seek(src.committed())
    rest = [json.loads(r.value)["event_id"] for r in restarted.poll(0.0)]
    assert seen + rest == [f"e-{i}" for i in range(6)]


# -- MemorySink --------------------------------------------------------------------------------


def test_sink_keeps_messages_in_order():
    sink = MemorySink()
    assert isinstance(sink, Sink)
    sink.send("dlq", b"bad", key=b"k", headers=[("reason", b"bad_json"), ("n", b"1")])
    sink.send("updates", bytearray(b"v2"))
    sink.send("dlq", b"worse")
    assert sink.messages == [
        SentMessage("dlq", b"bad", b"k", (("reason", b"bad_json"), ("n", b"1"))),
        SentMessage("updates", b"v2", None, ()),
        SentMessage("dlq", b"worse", None, ()),
    ]
    assert [m.value for m in sink.by_topic("dlq")] == [b"bad", b"worse"]
    assert sink.by_topic("nothing") == []
    assert sink.messages[0].header("reason") == b"bad_json"
    assert sink.messages[0].header("absent") is None
    assert isinstance(sink.messages[1].value, bytes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topic": "", "value": b"v"}, "topic"),
        ({"topic": "t", "value": "text"}, "value must be bytes"),
        ({"topic": "t", "value": None}, "value must be bytes"),
        ({"topic": "t", "value": b"v", "key": "k"}, "key"),
        ({"topic": "t", "value": b"v", "headers": [("h", "text")]}, "headers"),
        ({"topic": "t", "value": b"v", "headers": [(1, b"x")]}, "headers"),
    ],
)
def test_sink_checks_types_like_a_producer(kwargs, match):
    sink = MemorySink()
    with pytest.raises(TypeError, match=match):
        sink.send(**kwargs)
    assert sink.messages == []


def test_sink_flush_and_close():
    sink = MemorySink()
    sink.flush()
    sink.flush(timeout_s=1.0)
    assert sink.flush_count == 2
    sink.close()
    assert sink.closed and sink.flush_count == 3
    with pytest.raises(RuntimeError, match="close"):
        sink.send("t", b"v")


def test_sent_message_is_frozen():
    message = SentMessage("t", b"v")
    with pytest.raises(AttributeError):
        message.topic = "u"  # type: ignore[misc]


def test_null_objective_keeps_the_weights_of_a_batch():
    from learner.base import Example
    from streaming.testing import NullObjective

    objective = NullObjective()
    plain = objective.collate([Example("p", "r", target=1.0), Example("p", "s", target=0.0)])
    weighted = objective.collate(
        [Example("p", "r", target=1.0, weight=2.5), Example("p", "s", target=0.0)]
    )
    assert plain.size == 2 and plain.weights.tolist() == [1.0, 1.0]
    assert weighted.size == 2 and weighted.weights.tolist() == [2.5, 1.0]
    assert objective.collate([Example("p", "r", target=1.0)] * 3).weights.tolist() == [1.0] * 3
