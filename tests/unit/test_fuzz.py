"""A fuzzed stream goes 100% to the dead-letter topic, with reasons; the loop ends; memory stays
bounded by the size of one event, not by the number of events."""

from __future__ import annotations

import collections
import hashlib
import json
import tracemalloc
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitors.metrics import Metrics
from streaming.base import Sink
from streaming.events import DEFAULT_LIMITS, FEEDBACK_TYPES, FeedbackEvent, decode_event
from streaming.ingest.deadletter import DETAIL, REASON, SOURCE_OFFSET, SOURCE_PARTITION
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullLearner
from streaming.testing.fuzz import FAMILIES, fuzz_cases

DLQ = "feedback.dlq"


class CheckingSink(Sink):
    """Checks each dead letter as it is sent and keeps only counts (O(partitions) memory).

    Every record of a fully fuzzed partition is rejected, so its dead letters must carry the
    source offsets 0, 1, 2, ... in order; the reason must be one the generator expected.
    """

    def __init__(self, expected: dict[tuple[int, int], frozenset[str]]) -> None:
        self.expected = expected
        self.next_offset: dict[int, int] = collections.defaultdict(int)
        self.reasons: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.problems: list[str] = []

    def send(self, topic: str, value: bytes, key=None, headers: Sequence = ()) -> None:
        self.sent += 1
        h = dict(headers)
        partition, offset = int(h[SOURCE_PARTITION]), int(h[SOURCE_OFFSET])
        reason = h[REASON].decode()
        if topic != DLQ or not h.get(DETAIL):
            self.problems.append(f"{topic} {partition}@{offset}: no detail or wrong topic")
        if offset != self.next_offset[partition]:
            self.problems.append(f"{partition}@{offset}: expected offset {self.next_offset}")
        self.next_offset[partition] = offset + 1
        if reason not in self.expected[(partition, offset)]:
            self.problems.append(f"{partition}@{offset}: reason {reason}")
        self.reasons[reason] += 1

    def flush(self, timeout_s: float = 30.0) -> None:
        pass


def _fuzz_run(seed: int, n: int) -> tuple[int, int, CheckingSink, object]:
    """Run the loop over n fuzzed records: (traced peak, traced memory still held at the end,
    the sink, the summary)."""
    cases = list(fuzz_cases(seed, n))
    source = MemorySource([c.payload for c in cases], partitions=3)
    expected = {
        (r.partition, r.offset): c.reasons for r, c in zip(source.records(), cases, strict=True)
    }
    del cases
    sink = CheckingSink(expected)
    learner = NullLearner()
    pipe = Pipeline(source, sink, learner, Metrics(), PipelineSettings(batch_size=8))
    tracemalloc.start()
    try:
        summary = pipe.run()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert learner.steps == 0
    assert source.committed() == source.end_offsets()  # rejects are committed, nothing pends
    return peak, held, sink, summary


def test_generator_is_seeded_covers_every_family_and_every_case_is_rejected():
    def digest(seed: int) -> str:
        h = hashlib.sha256()
        for case in fuzz_cases(seed, 400):
            h.update(case.family.encode() + b"\0" + (case.payload or b"<none>"))
        return h.hexdigest()

    assert digest(5) == digest(5) != digest(6)
    families = collections.Counter(c.family for c in fuzz_cases(5, 2000))
    assert set(families) == set(FAMILIES)
    for case in fuzz_cases(5, 2000, check=False):  # checked here again, independently
        result = decode_event(case.payload)
        assert not isinstance(result, FeedbackEvent), case.family
        assert result.reason.value in case.reasons, (case.family, result)


def test_deep_nesting_of_a_hundred_thousand_levels_is_a_reason_not_a_crash():
    for payload in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000, b"[" * 500_000):
        assert decode_event(payload).reason.value == "bad_json"


def test_fuzzed_stream_goes_entirely_to_the_dead_letter_topic_in_bounded_memory():
    _, held_small, _, _ = _fuzz_run(seed=11, n=1_000)
    peak, held, sink, summary = _fuzz_run(seed=12, n=5_000)

    assert sink.problems == []
    assert (summary.consumed, summary.rejected, summary.accepted) == (5_000, 5_000, 0)
    assert sink.sent == 5_000 and sum(sink.next_offset.values()) == 5_000
    assert sink.reasons["bad_json"] and sink.reasons["too_large"] and sink.reasons["empty"]
    assert len(sink.reasons) >= 10

    # Bounded by one event, not by the count: the biggest single record costs a few copies of
    # max_event_bytes while it is decoded (bytes, text, parser state), plus a fixed overhead
    # (metrics, the loop's state). A loop that kept a reference to every payload would hold
    # about 5,000 x 1.5 KiB on average plus every 1 MiB oversized record (~50 of them here),
    # far over this bound.
    bound = 4 * DEFAULT_LIMITS.max_event_bytes + 4 * 2**20
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB over {bound / 2**20:.1f} MiB"
    # And what the loop still holds once done does not grow with the count: 5x the records,
    # about the same (a per-record leak of even 100 bytes would add 400 KB here).
    assert held < held_small + 200_000, (held, held_small)


_REQUIRED = ("event_id", "ts", "prompt", "response", "feedback")
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _broken_event(draw) -> bytes:
    """A valid event with one mutation that makes it invalid by construction."""
    event = {
        "event_id": draw(st.text(min_size=1, max_size=20).filter(lambda s: not s.isspace())),
        "ts": "2026-11-28T10:00:00Z",
        "prompt": draw(st.text(max_size=30)),
        "response": draw(st.text(max_size=30)),
        "feedback": {"type": "thumb", "value": 1},
    }
    mutation = draw(st.sampled_from(["drop", "retype", "feedback_type", "value", "ts"]))
    name = draw(st.sampled_from(_REQUIRED))
    if mutation == "drop":
        del event[name]
    elif mutation == "retype":  # a required field with a value of the wrong JSON kind
        kind = dict if name == "feedback" else str
        event[name] = draw(_json_values.filter(lambda v: not isinstance(v, kind)))
    elif mutation == "feedback_type":
        event["feedback"]["type"] = draw(st.text().filter(lambda t: t not in FEEDBACK_TYPES))
    elif mutation == "value":
        event["feedback"]["value"] = draw(_json_values.filter(lambda v: v not in (1, -1)))
    else:
        event["ts"] = draw(st.text(alphabet="0123456789-:TZ+. ", max_size=30))
        if not isinstance(decode_event(json.dumps(event).encode()), FeedbackEvent):
            return json.dumps(event).encode()
        event["ts"] = "not a time"
    return json.dumps(event).encode()


# Random bytes that do not start (after whitespace) with "{" can never be an event object.
_not_an_object_bytes = st.binary(max_size=200).filter(lambda b: not b.lstrip().startswith(b"{"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_not_an_object_bytes | _broken_event(), min_size=1, max_size=30))
def test_property_random_bad_records_all_dead_lettered(payloads):
    source, sink = MemorySource(payloads, partitions=2), MemorySink()
    summary = Pipeline(source, sink, NullLearner(), Metrics(), PipelineSettings()).run()
    dead = sink.by_topic(DLQ)
    assert summary.accepted == 0 and summary.rejected == len(payloads) == len(dead)
    assert all(m.header(REASON) and m.header(DETAIL) for m in dead)
    assert sorted(m.value for m in dead) == sorted(p or b"" for p in payloads)
    assert source.committed() == {tp: end for tp, end in source.end_offsets().items() if end}
