"""The sidecar loop over in-memory fakes: counting, dead letters, and the commit rule."""

from __future__ import annotations

import json

import pytest

from learner.step import Learner, StepConfig
from monitors.metrics import Metrics
from streaming.errors import PipelineError
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from streaming.testing.simulate import SimulatedFeedback

BAD = [b"{nope", b'{"event_id": "a"}', b"\xff\xfe"]


def _learner(tiny_parts, objective):
    return Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))


def _stream(n: int, seed: int = 3) -> list[bytes]:
    values = list(SimulatedFeedback(seed=seed).payloads(n))
    values.insert(5, BAD[0])
    values.insert(17, BAD[1])
    values.insert(30, values[2])  # a redelivered event
    values.append(BAD[2])
    return values


class LiveMemorySource(MemorySource):
    """A MemorySource that behaves like a live topic: it never ends."""

    @property
    def finite(self) -> bool:
        return False


class SpyLearner:
    """Delegates to a real Learner; records what was committed when each step began."""

    def __init__(self, learner, source, fail_on_step: int | None = None):
        self._learner = learner
        self._source = source
        self._fail_on = fail_on_step
        self.committed_at_step: list[dict] = []
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._learner, name)

    def step(self, batch):
        self.calls += 1
        self.committed_at_step.append(dict(self._source.committed()))
        if self.calls == self._fail_on:
            raise RuntimeError("boom")
        return self._learner.step(batch)


def test_every_record_is_counted_once_and_offsets_reach_the_end(tiny_parts, objective):
    values = _stream(60)
    source, sink, metrics = MemorySource(values, partitions=3), MemorySink(), Metrics()
    pipe = Pipeline(
        source, sink, _learner(tiny_parts, objective), metrics, PipelineSettings(batch_size=8)
    )
    summary = pipe.run()
    assert summary.consumed == len(values) == 64
    assert (summary.accepted, summary.rejected, summary.duplicates) == (60, 3, 1)
    assert summary.trained_examples == 60 and summary.steps == 8  # 7 full batches + 1 partial
    assert source.committed() == source.end_offsets()
    dead = sink.by_topic("feedback.dlq")
    assert sorted(m.value for m in dead) == sorted(BAD)
    reasons = sorted(m.header("feedstep.reason").decode() for m in dead)
    assert reasons == ["bad_encoding", "bad_json", "missing_field"]
    by_origin = {(r.partition, r.offset): r.value for r in source.records()}
    for m in dead:
        origin = (
            int(m.header("feedstep.source.partition")),
            int(m.header("feedstep.source.offset")),
        )
        assert by_origin[origin] == m.value
    text = metrics.render().decode()
    assert 'feedstep_events_total{outcome="accepted"} 60.0' in text
    assert 'feedstep_dead_letter_total{reason="bad_json"} 1.0' in text
    assert "feedstep_steps_total 8.0" in text


def test_offsets_are_committed_only_after_the_step_that_consumed_them(tiny_parts, objective):
    values = list(SimulatedFeedback(seed=1).payloads(40))
    source = MemorySource(values)
    spy = SpyLearner(_learner(tiny_parts, objective), source)
    Pipeline(source, MemorySink(), spy, Metrics(), PipelineSettings(batch_size=8)).run()
    assert spy.calls == 5
    for k, committed in enumerate(spy.committed_at_step):
        # When batch k starts training, at most the first k batches (8 events each) are committed.
        assert committed.get(("feedback", 0), 0) <= 8 * k
    assert source.committed() == {("feedback", 0): 40}


def test_a_failed_step_commits_nothing_of_its_batch(tiny_parts, objective):
    values = list(SimulatedFeedback(seed=2).payloads(40))
    source = MemorySource(values)
    spy = SpyLearner(_learner(tiny_parts, objective), source, fail_on_step=3)
    pipe = Pipeline(source, MemorySink(), spy, Metrics(), PipelineSettings(batch_size=8))
    with pytest.raises(PipelineError, match="boom"):
        pipe.run()
    assert source.committed().get(("feedback", 0), 0) <= 16


def test_rejects_are_flushed_to_the_dead_letter_sink_before_their_offsets_commit(
    tiny_parts, objective
):
    source, sink = MemorySource(BAD * 4), MemorySink()
    summary = Pipeline(
        source, sink, _learner(tiny_parts, objective), Metrics(), PipelineSettings()
    ).run()
    assert summary.rejected == 12 and summary.steps == 0
    assert source.committed() == {("feedback", 0): 12}
    assert sink.flush_count >= 1 and len(sink.by_topic("feedback.dlq")) == 12


def test_stop_after_events_and_truncation_are_counted(tiny_parts, objective):
    event = next(SimulatedFeedback(seed=4).events(1))
    event["prompt"] = "x" * 50
    values = [json.dumps(dict(event, event_id=f"e{i}")).encode() for i in range(30)]
    from streaming.events import DecodeLimits

    metrics = Metrics()
    settings = PipelineSettings(
        batch_size=4, stop_after_events=10, limits=DecodeLimits(max_text_chars=20)
    )
    source = MemorySource(values)
    summary = Pipeline(
        source, MemorySink(), _learner(tiny_parts, objective), metrics, settings
    ).run()
    assert summary.consumed == 10 and summary.trained_examples == 10
    assert source.committed() == {("feedback", 0): 10}
    assert 'feedstep_truncated_fields_total{field="prompt"} 10.0' in metrics.render().decode()


def test_time_trigger_closes_a_partial_batch_on_a_live_stream(tiny_parts, objective):
    values = list(SimulatedFeedback(seed=5).payloads(3))
    source = LiveMemorySource(values)
    settings = PipelineSettings(batch_size=100, max_wait_ms=50, stop_when_idle_s=0.5)
    summary = Pipeline(
        source, MemorySink(), _learner(tiny_parts, objective), Metrics(), settings
    ).run()
    assert summary.steps == 1 and summary.trained_examples == 3


def test_causal_objectives_run_through_the_loop_and_dead_letter_unusable_events():
    from learner.models import ModelSpec, build_causal_lm
    from learner.objectives import KTOObjective

    model, tokenizer = build_causal_lm(ModelSpec("tiny-causal", seed=0))
    learner = Learner(model, KTOObjective(tokenizer, max_length=48), StepConfig(lr=1e-3))
    # thumbs train kto; preference pairs cannot and must be dead-lettered with the reason
    values = list(SimulatedFeedback(seed=6, mix=(0.8, 0.0, 0.2, 0.0)).payloads(40))
    source, sink = MemorySource(values), MemorySink()
    summary = Pipeline(source, sink, learner, Metrics(), PipelineSettings(batch_size=8)).run()
    dead = sink.by_topic("feedback.dlq")
    assert summary.rejected == len(dead) > 0
    assert all(m.header("feedstep.reason") == b"bad_value" for m in dead)
    assert b"kto" in dead[0].header("feedstep.detail")
    assert summary.accepted + summary.rejected == 40
    assert summary.accepted - 3 <= summary.trained_examples <= summary.accepted
    assert summary.steps >= 1


def test_a_final_batch_too_small_for_kto_is_not_committed():
    from learner.models import ModelSpec, build_causal_lm
    from learner.objectives import KTOObjective

    model, tokenizer = build_causal_lm(ModelSpec("tiny-causal", seed=0))
    learner = Learner(model, KTOObjective(tokenizer, max_length=48), StepConfig(lr=1e-3))
    values = list(SimulatedFeedback(seed=6, mix=(1.0, 0.0, 0.0, 0.0)).payloads(10))
    source = MemorySource(values)
    summary = Pipeline(
        source, MemorySink(), learner, Metrics(), PipelineSettings(batch_size=8)
    ).run()
    assert summary.trained_examples == 8
    assert source.committed() == {("feedback", 0): 8}  # the last 2 will be read again


def test_labelled_counters_exist_at_zero_before_their_first_event():
    # rate() and increase() miss a series' first increment unless the series existed before it
    from streaming.events import RejectReason
    from streaming.testing import NullLearner

    metrics = Metrics()
    Pipeline(MemorySource([]), MemorySink(), NullLearner(), metrics)  # type: ignore[arg-type]
    text = metrics.render().decode()
    for reason in RejectReason:
        assert f'feedstep_dead_letter_total{{reason="{reason.value}"}} 0.0' in text
    assert 'feedstep_skipped_steps_total{reason="non_finite_loss"} 0.0' in text
