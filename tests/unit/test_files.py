from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from streaming.base import Source
from streaming.events import FeedbackEvent, decode_event
from streaming.sources.files import JsonlFileSource
from streaming.testing import MemorySource


def event(i: int) -> dict:
    return {
        "event_id": f"e-{i}",
        "ts": "2026-11-28T10:00:00Z",
        "prompt": f"prompt {i}",
        "response": f"response {i}",
        "feedback": {"type": "rating", "value": 1 + i % 5},
    }


def write(path: Path, lines: list[bytes], *, compress: bool = False, end: bytes = b"\n") -> Path:
    data = b"".join(line + end for line in lines)
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


LINES = [json.dumps(event(i)).encode() for i in range(5)]


@pytest.fixture(params=["plain", "gzip"])
def jsonl(request, tmp_path) -> Path:
    return write(tmp_path / "events.jsonl", LINES, compress=request.param == "gzip")


def test_reads_every_line_as_a_record(jsonl):
    with JsonlFileSource(jsonl) as src:
        assert isinstance(src, Source) and src.finite
        records = src.poll(0.0)
    assert [r.value for r in records] == LINES
    assert [(r.topic, r.partition, r.offset, r.key) for r in records] == [
        ("file:events.jsonl", 0, i, None) for i in range(5)
    ]
    decoded = [decode_event(r.value) for r in records]
    assert all(isinstance(e, FeedbackEvent) for e in decoded)


def test_gzip_is_detected_by_content_and_topic_uses_the_file_name(tmp_path):
    path = write(tmp_path / "dump.jsonl.gz", LINES[:2], compress=True)
    with JsonlFileSource(path) as src:
        assert src.topic_partition == ("file:dump.jsonl.gz", 0)
        assert [r.value for r in src.poll(0.0)] == LINES[:2]
    misleading = write(tmp_path / "not-compressed.gz", LINES[:1])
    with JsonlFileSource(misleading) as src:
        assert [r.value for r in src.poll(0.0)] == LINES[:1]


def test_topic_can_be_overridden(tmp_path):
    path = write(tmp_path / "x.jsonl", LINES[:1])
    with JsonlFileSource(path, topic="feedback") as src:
        assert src.poll(0.0)[0].topic == "feedback"
        assert src.position() == {("feedback", 0): 1}


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = write(tmp_path / "b.jsonl", [b"", LINES[0], b"   ", b"\t", LINES[1], b"", b""])
    with JsonlFileSource(path) as src:
        tp = src.topic_partition
        records = src.poll(0.0)
        assert [(r.offset, r.value) for r in records] == [(1, LINES[0]), (4, LINES[1])]
        assert src.at_end()
        assert src.position() == {tp: 7}  # past the trailing blank lines
        assert src.lag() == {tp: 0}


def test_crlf_and_missing_final_newline(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(LINES[0] + b"\r\n" + LINES[1])
    with JsonlFileSource(path) as src:
        assert [r.value for r in src.poll(0.0)] == [LINES[0], LINES[1]]
        assert src.line_count() == 2
        assert src.at_end()


def test_poll_in_chunks_and_position(jsonl):
    with JsonlFileSource(jsonl) as src:
        tp = src.topic_partition
        assert src.position() == {tp: 0}
        assert [r.offset for r in src.poll(0.0, max_records=2)] == [0, 1]
        assert src.position() == {tp: 2}
        assert src.lag() == {tp: 3}
        assert not src.at_end()
        assert [r.offset for r in src.poll(0.0, max_records=2)] == [2, 3]
        assert [r.offset for r in src.poll(0.0, max_records=2)] == [4]
        assert src.poll(0.0) == []
        assert src.at_end()
        assert src.lag() == {tp: 0}
        with pytest.raises(ValueError, match="max_records"):
            src.poll(0.0, max_records=0)


def test_at_end_peek_does_not_lose_or_move_records(tmp_path):
    path = write(tmp_path / "p.jsonl", [LINES[0], b"", LINES[1]])
    with JsonlFileSource(path) as src:
        tp = src.topic_partition
        src.poll(0.0, max_records=1)
        assert src.position() == {tp: 1}
        assert not src.at_end()  # reads ahead to line 2 ...
        assert src.position() == {tp: 1}  # ... without moving the position
        assert [(r.offset, r.value) for r in src.poll(0.0)] == [(2, LINES[1])]


def test_seek_backward_and_forward(jsonl):
    with JsonlFileSource(jsonl) as src:
        tp = src.topic_partition
        src.poll(0.0)
        src.seek({tp: 1})
        assert src.position() == {tp: 1}
        assert [r.offset for r in src.poll(0.0, max_records=2)] == [1, 2]
        src.seek({tp: 4})
        assert [r.value for r in src.poll(0.0)] == [LINES[4]]
        src.seek({tp: 5})  # the line count is the end: valid, nothing left
        assert src.at_end() and src.poll(0.0) == []
        src.seek({tp: 0})
        assert len(src.poll(0.0)) == 5


def test_seek_after_peek_discards_the_peeked_line(tmp_path):
    path = write(tmp_path / "s.jsonl", LINES[:3])
    with JsonlFileSource(path) as src:
        tp = src.topic_partition
        assert not src.at_end()  # peeks line 0
        src.seek({tp: 2})
        assert [r.offset for r in src.poll(0.0)] == [2]


@pytest.mark.parametrize(
    ("offset", "match"),
    [(6, "only 5 lines"), (-1, ">= 0"), (1.5, "line numbers")],
)
def test_bad_seek_keeps_the_position(jsonl, offset, match):
    with JsonlFileSource(jsonl) as src:
        tp = src.topic_partition
        src.poll(0.0, max_records=2)
        with pytest.raises(ValueError, match=match):
            src.seek({tp: offset})
        assert src.position() == {tp: 2}
        assert [r.offset for r in src.poll(0.0)] == [2, 3, 4]


def test_other_topic_partitions_are_refused(jsonl):
    with JsonlFileSource(jsonl) as src:
        with pytest.raises(ValueError, match="has only"):
            src.seek({("feedback", 0): 0})
        with pytest.raises(ValueError, match="has only"):
            src.commit({("file:events.jsonl", 1): 0})


def test_commit_only_remembers(jsonl):
    with JsonlFileSource(jsonl) as src:
        tp = src.topic_partition
        assert src.committed() == {}
        src.poll(0.0, max_records=3)
        src.commit({tp: 3})
        assert src.committed() == {tp: 3}
        assert src.position() == {tp: 3}


def test_line_count_and_lag_include_blank_lines(tmp_path):
    path = write(tmp_path / "c.jsonl", [LINES[0], b"", LINES[1]], compress=True)
    with JsonlFileSource(path) as src:
        assert src.line_count() == 3
        assert src.lag() == {src.topic_partition: 3}


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with JsonlFileSource(path) as src:
        assert src.poll(0.0) == []
        assert src.at_end()
        assert src.line_count() == 0
        assert src.position() == {src.topic_partition: 0}


def test_missing_file_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        JsonlFileSource(tmp_path / "nope.jsonl")


def test_close_is_idempotent_and_stops_polling(jsonl):
    src = JsonlFileSource(jsonl)
    src.close()
    src.close()
    with pytest.raises(RuntimeError, match="close"):
        src.poll(0.0)


# -- one contract, every finite source ---------------------------------------------------------


@pytest.fixture(params=["memory", "jsonl", "jsonl.gz"])
def any_source(request, tmp_path):
    if request.param == "memory":
        source: Source = MemorySource(LINES)
    else:
        path = write(tmp_path / "c.jsonl", LINES, compress=request.param == "jsonl.gz")
        source = JsonlFileSource(path)
    yield source
    source.close()


def test_source_contract(any_source):
    src = any_source
    (tp,) = src.position()
    assert src.position() == {tp: 0}
    first = src.poll(0.0, max_records=2)
    assert [r.value for r in first] == LINES[:2]
    assert src.position() == {tp: first[-1].next_offset}
    assert src.lag() == {tp: 3}
    snapshot = src.position()
    rest = src.poll(0.0)
    assert [r.value for r in rest] == LINES[2:]
    assert src.at_end() and src.lag() == {tp: 0} and src.poll(0.0) == []
    src.commit(snapshot)
    assert src.committed() == snapshot
    src.seek(snapshot)  # replay from a checkpoint
    assert [r.value for r in src.poll(0.0)] == LINES[2:]
