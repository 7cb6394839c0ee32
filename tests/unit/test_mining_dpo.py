"""Pair mining for the ``dpo`` objective: thumbs train a causal LM only in their mined pairs."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from learner.base import Example
from learner.checkpoint import CheckpointManager
from learner.objectives import DPOObjective
from learner.step import Learner, StepConfig
from monitors.metrics import Metrics
from streaming.config import load_config
from streaming.errors import ConfigError, PipelineError
from streaming.ingest.deadletter import DETAIL, REASON
from streaming.ingest.mining import MinerState, MiningSettings
from streaming.ingest.offsets import check_ledgers
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from tests.unit.test_mining import Recording, _conversation, _pairs, _pairs_stream

REPLACE = MiningSettings(mode="replace")


def _thumb(n: int, value: int, response: str, conv: str | None = "c1", **extra: str) -> bytes:
    event = {
        "event_id": f"e{n}",
        "ts": f"2026-01-01T00:00:{n:02d}Z",
        "prompt": "hi",
        "response": response,
        "feedback": {"type": "thumb", "value": value},
        **extra,
    }
    if conv is not None:
        event["conversation_id"] = conv
    return json.dumps(event).encode()


class _Live(MemorySource):
    """A source that never ends, like a Kafka topic."""

    @property
    def finite(self) -> bool:
        return False


@pytest.fixture()
def dpo_learner(tiny_causal_parts):
    make, tokenizer = tiny_causal_parts

    def build(crash_at: int | None = None) -> Recording:
        objective = DPOObjective(tokenizer, max_length=32)
        return Recording(Learner(make(0), objective, StepConfig(lr=1e-2)), crash_at)

    return build


def _pipeline(learner, source, sink=None, ckpt=None, **settings) -> Pipeline:
    defaults = {"batch_size": 2, "max_wait_ms": 60_000, "log_every_s": 3600, "mining": REPLACE}
    defaults.update(settings)
    return Pipeline(
        source,
        sink or MemorySink(),
        learner,
        Metrics(),
        PipelineSettings(**defaults),
        checkpoints=ckpt,
    )


def test_two_opposite_thumbs_train_exactly_one_dpo_pair_scored_before_its_step(dpo_learner):
    learner = dpo_learner()
    source, sink = MemorySource([_thumb(1, -1, "go away"), _thumb(2, 1, "hello!")]), MemorySink()
    pipe = _pipeline(learner, source, sink)
    summary = pipe.run()
    assert learner.trained == [[Example("hi", "hello!", rejected="go away")]]  # nothing else
    assert learner.steps == 1 and summary.accepted == 2 and sink.by_topic("feedback.dlq") == []
    (result,) = learner.results
    # Scored before its step: the candidate was still the reference, so its margin was 0.
    assert math.isclose(float(result.candidate.loss[0]), math.log(2), rel_tol=1e-5)
    assert pipe.prequential.events == 1  # evidence for the monitors and the gate
    # Both thumbs are applied and committed, the pair is in the ledger.
    assert source.committed() == {("feedback", 0): 2}
    assert (pipe.ledger.trained, pipe.ledger.skipped, pipe.ledger.pairs) == (2, 0, 1)
    assert pipe.ingestor.miner.pending == 0


@pytest.mark.parametrize(
    ("reason", "mining", "evicted"),
    [
        ("window", MiningSettings(mode="replace", window_events=2), 1),
        ("capacity", MiningSettings(mode="replace", max_pending=2), 2),
    ],
)
def test_a_thumb_evicted_unpaired_trains_nothing_and_is_counted(
    dpo_learner, reason, mining, evicted
):
    learner = dpo_learner()
    values = [
        _thumb(1, 1, "hello!"),
        _thumb(2, 1, "sure", conv="c2"),
        _thumb(3, 1, "fine", conv="c3"),
        _thumb(4, -1, "go away"),  # c1's partner, too late: e1 has left the buffer
    ]
    source = MemorySource(values)
    pipe = _pipeline(learner, source, mining=mining)
    summary = pipe.run()
    assert learner.trained == [] and learner.steps == 0 and pipe.prequential.events == 0
    assert pipe.ingestor.miner.evicted[reason] == evicted
    text = pipe.metrics.render().decode()
    assert f'feedstep_mining_evictions_total{{reason="{reason}"}} {evicted}.0' in text
    assert f"feedstep_mining_pending_events {4 - evicted}.0" in text
    # Accepted, applied and committed all the same, none of them a skipped step.
    assert summary.accepted == 4 and summary.rejected == 0
    assert source.committed() == {("feedback", 0): 4}
    assert (pipe.ledger.trained, pipe.ledger.skipped, pipe.ledger.pairs) == (4, 0, 0)


def test_a_thumb_the_miner_cannot_buffer_is_dead_lettered_saying_what_mining_needs(
    dpo_learner,
):
    learner = dpo_learner()
    sink = MemorySink()
    values = [
        _thumb(1, 1, "hello!", conv=None),
        _thumb(2, 1, "linked", conv=None, response_id="r2"),
    ]
    pipe = _pipeline(learner, MemorySource(values), sink)
    summary = pipe.run()
    assert (summary.accepted, summary.rejected) == (1, 1)  # the linked one is buffered
    (dead,) = sink.by_topic("feedback.dlq")
    assert dead.value == values[0] and dead.header(REASON) == b"bad_value"
    detail = dead.header(DETAIL).decode()
    for needed in ("mining", "replace", "conversation_id", "response_id", "regenerated_from"):
        assert needed in detail, (needed, detail)
    assert learner.trained == [] and pipe.ingestor.miner.pending == 1


def test_config_takes_dpo_with_replace_and_refuses_what_cannot_train():
    cfg = load_config(overrides={"objective": "dpo", "mining": "replace"}, environ={})
    assert (cfg.learner.objective, cfg.ingest.mining) == ("dpo", "replace")
    with pytest.raises(ConfigError, match="mining='add'.*objective='dpo'.*mining = \"replace\""):
        load_config(overrides={"objective": "dpo", "mining": "add"}, environ={})
    for objective in ("kto", "sft"):
        for mode in ("add", "replace"):
            with pytest.raises(ConfigError, match=f"mining='{mode}'.*objective='{objective}'"):
                load_config(overrides={"objective": objective, "mining": mode}, environ={})
        assert load_config(overrides={"objective": objective}, environ={}).ingest.mining == "off"
    for mode in ("add", "replace"):  # reward keeps both
        assert load_config(overrides={"mining": mode}, environ={}).ingest.mining == mode


def test_the_pipeline_refuses_mining_its_objective_cannot_train(dpo_learner):
    with pytest.raises(ValueError, match="mining='add'.*objective='dpo'"):
        _pipeline(dpo_learner(), MemorySource([]), mining=MiningSettings(mode="add"))

    with pytest.raises(ValueError, match="checkpoints.every_steps > 0, or objective = 'kto'"):
        _pipeline(dpo_learner(), _Live([]))


def test_held_thumbs_of_a_quiet_live_topic_are_checkpointed_and_pair_after_a_restart(
    dpo_learner, tmp_path
):
    values = [_thumb(1, -1, "go away"), _thumb(2, 1, "sure", conv="c2")]
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    first = dpo_learner()
    pipe = _pipeline(first, _Live(values), ckpt=ckpt, checkpoint_every_s=0.0)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            pipe.run()
        except BaseException as exc:  # seen by the test, not lost in the thread
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        # No batch ever closes: the two held thumbs' segment is applied and checkpointed while
        # the run goes on (the stream is quiet), not stranded until it stops.
        deadline = time.monotonic() + 30
        while (latest := ckpt.latest_extra()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.is_alive()
    finally:
        pipe.stop()
        runner.join(timeout=30)
    assert failures == [] and latest is not None, "nothing checkpointed while the topic was quiet"
    _, _, extra = latest
    assert extra["offsets"] == [["feedback", 0, 2]] and first.trained == []
    state = MinerState.from_json(extra["mining"])
    assert len(state.buffers[("feedback", 0)].entries) == 2 and state.held == 0  # no example
    # The restart reads only the partner, which finds its half in the restored buffer.
    second = dpo_learner()
    source = MemorySource([*values, _thumb(3, 1, "hello!")])
    pipe = _pipeline(second, source, ckpt=ckpt)
    pipe.restore()
    summary = pipe.run()
    assert summary.consumed == 1
    assert second.trained == [[Example("hi", "hello!", rejected="go away")]]
    assert (pipe.ledger.trained, pipe.ledger.pairs) == (3, 1)


# every kind of exit from the buffer: pairs, window and capacity evictions, one left waiting
_SMALL = MiningSettings(mode="replace", window_events=4, max_pending=3)


@pytest.mark.parametrize("crash_at", [4, 7])
def test_a_crash_and_restart_trains_every_mined_dpo_pair_exactly_once(
    dpo_learner, tmp_path, crash_at
):
    values = _pairs_stream(24, gap=9)

    def source():
        return MemorySource(values, partitions=2, key=_conversation)

    settings = {"mining": _SMALL, "checkpoint_every_steps": 2}
    straight = dpo_learner()
    pipe = _pipeline(straight, source(), **settings)
    pipe.run()
    expected, miner = _pairs(straight.trained), pipe.ingestor.miner
    assert all(e.pairwise for s in straight.trained for e in s)  # nothing pointwise trains
    assert max(expected.values()) == 1 and 0 < sum(expected.values()) < 24
    assert miner.evicted["window"] > 0 and miner.evicted["capacity"] > 0
    # each event is in one trained pair, evicted (teaching nothing) or still waiting
    assert 2 * sum(expected.values()) + sum(miner.evicted.values()) + miner.pending == 48
    straight_ledger = pipe.ledger
    assert straight_ledger.pairs == sum(expected.values())

    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    crashed = dpo_learner(crash_at=crash_at)
    with pytest.raises(PipelineError):
        _pipeline(crashed, source(), ckpt=ckpt, **settings).run()
    latest = ckpt.latest_extra()
    assert latest is not None, "the crash came before the first checkpoint: no test"
    _, step, extra = latest
    assert 0 < step < straight.applied[-1]
    state = MinerState.from_json(extra["mining"])
    assert state.held == 0 and sum(len(b.entries) for b in state.buffers.values()) > 0
    resumed = dpo_learner()
    pipe = _pipeline(resumed, source(), ckpt=ckpt, **settings)
    assert pipe.restore() == step
    pipe.run()
    assert _pairs(crashed.covered(step) + resumed.trained) == expected
    assert check_ledgers([pipe.ledger], source().end_offsets()) == []
    assert (pipe.ledger.pairs, pipe.ledger.pair_digest) == (
        straight_ledger.pairs,
        straight_ledger.pair_digest,
    )
