"""Effectively-once in the loop, without a broker: a crash between checkpoints, rebalances,
backpressure and a given-up batch all leave a ledger that covers every offset exactly once."""

from __future__ import annotations

import json
import time

import pytest

from learner.checkpoint import CheckpointManager
from learner.step import Learner, StepConfig
from monitors.metrics import Metrics
from streaming.errors import PipelineError
from streaming.ingest.offsets import check_ledgers, event_digest
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from streaming.testing.simulate import SimulatedFeedback

GEN = SimulatedFeedback(seed=3)
EVENTS = list(GEN.payloads(120))
# Redeliveries and rejects mixed in, as a real topic has them.
VALUES = [*EVENTS[:40], EVENTS[5], b"{broken", *EVENTS[40:90], EVENTS[60], b"[]", *EVENTS[90:]]
VALID_IDS = [json.loads(e)["event_id"] for e in EVENTS]


class _CrashAt:
    """Wraps a learner; its ``n``-th step raises, like a process dying mid-run."""

    def __init__(self, learner, n):
        self._learner, self._n, self._calls = learner, n, 0

    def __getattr__(self, name):
        return getattr(self._learner, name)

    def step(self, batch):
        self._calls += 1
        if self._calls == self._n:
            raise RuntimeError("simulated crash")
        return self._learner.step(batch)


class _Slow(_CrashAt):
    """Wraps a learner; every step takes at least ``seconds``."""

    def __init__(self, learner, seconds):
        super().__init__(learner, -1)
        self._seconds = seconds

    def step(self, batch):
        time.sleep(self._seconds)
        return self._learner.step(batch)


class _Endless(MemorySource):
    """A MemorySource that, like a topic, never ends (the run stops when idle)."""

    @property
    def finite(self):
        return False


def _pipe(learner, source, ckpt, **settings):
    defaults = {"batch_size": 8, "max_wait_ms": 10_000, "checkpoint_every_steps": 3}
    defaults.update(settings)
    return Pipeline(
        source, MemorySink(), learner, Metrics(), PipelineSettings(**defaults), checkpoints=ckpt
    )


def _learner(tiny_parts, objective):
    return Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))


@pytest.mark.parametrize("crash_at", [2, 5, 9])
def test_crashes_between_checkpoints_lose_nothing_and_train_nothing_twice(
    tiny_parts, objective, tmp_path, crash_at
):
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    source = MemorySource(VALUES, partitions=2)
    first = _pipe(_CrashAt(_learner(tiny_parts, objective), crash_at), source, ckpt)
    with pytest.raises(PipelineError):
        first.run()
    # The crashed process read further than its last checkpoint: the restart must re-read
    # exactly those events and must not drop them as duplicates.
    restarted = _pipe(_learner(tiny_parts, objective), MemorySource(VALUES, partitions=2), ckpt)
    restarted.restore()
    restarted.run()
    ledger = restarted.ledger
    assert check_ledgers([ledger], source.end_offsets()) == []
    assert ledger.trained == len(VALID_IDS)
    assert ledger.digest == event_digest(VALID_IDS)
    assert (ledger.rejected, ledger.duplicates) == (2, 2)
    _, _, extra = ckpt.latest_extra()
    assert extra["ledger"] == ledger.to_json()


def test_checkpoint_dedup_window_holds_only_applied_events(tiny_parts, objective, tmp_path):
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=5)
    source = MemorySource(EVENTS)
    pipe = _pipe(_learner(tiny_parts, objective), source, ckpt, checkpoint_every_steps=1)
    pipe.run()
    for path in ckpt.checkpoints():
        extra = CheckpointManager(path.parent, keep=99).latest_extra()
        assert extra is not None
    # Every checkpoint: the dedup ids are exactly the events below its offsets.
    for path in ckpt.checkpoints():
        saved = json.loads((path / "extra.json").read_text())
        ((_, _, offset),) = saved["offsets"]
        assert [i for chunk in saved["dedup"] for i in chunk] == VALID_IDS[:offset]


def test_a_rebalance_settles_checkpoints_and_commits_then_reads_on(tiny_parts, objective, tmp_path):
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    source = MemorySource(VALUES, partitions=3)
    source.schedule_rebalance(after_records=37)  # mid-batch: 37 is not a multiple of 8
    source.schedule_rebalance(after_records=90)
    pipe = _pipe(_learner(tiny_parts, objective), source, ckpt)
    summary = pipe.run()
    assert source.rebalances == 2
    # At each revoke everything read was applied, checkpointed and committed.
    at_revoke = [c for c in source.commit_log if sum(c.values()) in (37, 90)]
    assert len(at_revoke) == 2, source.commit_log
    assert summary.consumed == len(VALUES)  # positions came back at the committed offsets
    assert check_ledgers([pipe.ledger], source.end_offsets()) == []
    assert pipe.ledger.trained == len(VALID_IDS)


def test_a_too_small_batch_at_a_rebalance_is_given_up_and_read_again(tiny_causal_parts, tmp_path):
    from learner.objectives import OBJECTIVES

    make, tokenizer = tiny_causal_parts
    model = make(0)
    kto = OBJECTIVES["kto"](tokenizer, max_length=32)  # needs batches of >= 4
    learner = Learner(model, kto, StepConfig(lr=1e-3))
    thumbs = [e for e in GEN.payloads(200) if json.loads(e)["feedback"]["type"] == "thumb"][:30]
    assert len(thumbs) == 30
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    source = MemorySource(thumbs)
    source.schedule_rebalance(after_records=18)  # 2 left over after two batches of 8
    pipe = _pipe(learner, source, ckpt)
    summary = pipe.run()
    assert summary.given_up == 2
    assert summary.consumed == 32  # those 2 were read twice
    ledger = pipe.ledger
    assert check_ledgers([ledger], source.end_offsets()) == []
    # kto's last batch (30 - 16 - 8 = 6 events) trains; nothing is lost or doubled.
    ids = [json.loads(e)["event_id"] for e in thumbs]
    assert ledger.trained == 30 and ledger.digest == event_digest(ids)


def test_backpressure_pauses_the_source_and_memory_stays_bounded(tiny_parts, objective):
    source = _Endless(EVENTS[:40])
    learner = _Slow(_learner(tiny_parts, objective), 0.3)  # slower than the 0.2 s pump wait
    pipe = _pipe(
        learner,
        source,
        None,
        batch_size=4,
        queue_batches=1,
        pause_after_s=0.0,
        stop_when_idle_s=0.5,
    )
    seen_ready = []
    original = pipe._backpressure

    def spy():
        original()
        seen_ready.append((len(pipe.stages.ready), source.paused))

    pipe._backpressure = spy
    pipe.run()
    assert any(paused for _, paused in seen_ready)  # it did pause
    # Closed batches waiting never exceed one poll's worth (500 records / 4) and fall back to 0.
    assert max(n for n, _ in seen_ready) <= 500 // 4
    assert seen_ready[-1][0] == 0
    assert pipe.summary.trained_examples == 40


@pytest.mark.parametrize("prime", [1000, 0])
def test_a_partition_taken_over_primes_the_dedup_window_by_reading_back(
    tiny_parts, objective, prime
):
    # Another member applied offsets 0..19 and committed 20; event 5 is redelivered at 30.
    values = [*EVENTS[:30], EVENTS[5], *EVENTS[30:40]]
    source = MemorySource(values)
    source.commit({("feedback", 0): 20})
    source.schedule_rebalance(after_records=0)  # this member is assigned the partition
    pipe = _pipe(_learner(tiny_parts, objective), source, None, dedup_prime_records=prime)
    summary = pipe.run()
    assert summary.consumed == len(values) - 20
    if prime:
        assert summary.duplicates == 1 and summary.trained_examples == 20
    else:  # without priming the redelivery is trained a second time (by this member)
        assert summary.duplicates == 0 and summary.trained_examples == 21
