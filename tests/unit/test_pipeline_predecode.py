"""Events decoded by the source (``Source.predecode``) train exactly as events the loop decodes.

The same seeded stream — plain events of every feedback type, events that need truncation,
repeats, and fuzzed payloads of every kind — runs through the pipeline twice: once from a
source that decodes plain events itself (as the fetcher process does) and once from one that
does not. Everything observable must be equal: the examples and their order, the batches'
event times, the dead letters and their reasons, the summary, the ledger and its digest.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

import streaming.pipeline as pipeline_module
from learner.base import Example, TensorBatch
from monitors.metrics import Metrics
from streaming.events import DecodeLimits, Rejection, decode_event
from streaming.fuzz import fuzz_payloads
from streaming.offsets import event_digest
from streaming.pipeline import Pipeline, PipelineSettings
from streaming.plain import plain_values
from streaming.simulate import SimulatedFeedback
from streaming.testing import MemorySink, MemorySource, NullLearner, NullObjective

LIMITS = DecodeLimits(max_text_chars=97)  # some simulated texts are longer: truncated


class _RecordingObjective(NullObjective):
    def __init__(self) -> None:
        self.examples: list[Example] = []

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        self.examples.extend(examples)
        return super().collate(examples)


def _stream(seed: int) -> list[bytes | None]:
    rng = random.Random(seed)
    good = list(SimulatedFeedback(seed=seed, mix=(0.25, 0.25, 0.25, 0.25)).payloads(600))
    bad = list(fuzz_payloads(seed, 150, LIMITS))
    stream: list[bytes | None] = good + bad
    stream += rng.sample(good, 60)  # repeats: de-duplicated
    rng.shuffle(stream)
    return stream


def _run(stream: list[bytes | None], predecodes: bool, monkeypatch: pytest.MonkeyPatch):
    calls = {"plain_values": 0}  # decodes made by the pipeline itself

    def counted(value, limits):  # type: ignore[no-untyped-def]
        calls["plain_values"] += 1
        return plain_values(value, limits)

    monkeypatch.setattr(pipeline_module, "plain_values", counted)
    learner = NullLearner()
    learner.objective = _RecordingObjective()
    sink = MemorySink()
    source = MemorySource(stream, partitions=3, predecodes=predecodes)
    pipe = Pipeline(
        source,
        sink,
        learner,  # type: ignore[arg-type]
        Metrics(),
        PipelineSettings(batch_size=8, limits=LIMITS, stop_after_events=len(stream), max_wait_ms=0),
    )
    summary = pipe.run()
    letters = [
        (m.topic, m.value, tuple(h for h in m.headers if h[0] != "feedstep.rejected_at_ms"))
        for m in sink.messages
    ]
    return learner.objective.examples, letters, summary, pipe.ledger.to_json(), calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predecoded_events_train_as_events_decoded_in_the_loop(seed, monkeypatch) -> None:
    stream = _stream(seed)
    examples, letters, summary, ledger, calls = _run(stream, True, monkeypatch)
    examples_0, letters_0, summary_0, ledger_0, calls_0 = _run(stream, False, monkeypatch)

    assert calls["plain_values"] == 0 and calls_0["plain_values"] == len(stream)  # two paths
    assert examples == examples_0
    assert letters == letters_0
    assert ledger == ledger_0
    valid = {
        e.event_id
        for e in map(lambda v: decode_event(v, LIMITS), stream)
        if not isinstance(e, Rejection)
    }
    assert ledger["digest"] == f"{event_digest(valid):016x}"  # and it is the right one
    assert ledger["trained"] == len(valid) == summary.accepted
    for name in ("consumed", "accepted", "rejected", "duplicates", "steps", "trained_examples"):
        assert getattr(summary, name) == getattr(summary_0, name), name
    assert summary.rejected >= 100 and summary.duplicates >= 50  # the stream had both
    assert any(e.rejected is not None for e in examples)  # pairwise examples too
    cut = LIMITS.max_text_chars
    assert any(cut in (len(e.prompt), len(e.response), len(e.rejected or "")) for e in examples)


def test_a_source_that_cannot_predecode_is_decoded_in_the_loop(monkeypatch) -> None:
    stream = _stream(3)[:200]
    examples, _, summary, _, calls = _run(stream, False, monkeypatch)
    assert calls["plain_values"] == len(stream) and summary.accepted == len(examples) > 0
