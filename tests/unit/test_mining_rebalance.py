"""Pair mining across consumer-group rebalances: kept partitions keep their pending pairs,
moved ones release what they held so that it trains here, once."""

from __future__ import annotations

import json
from collections import Counter

from learner.base import Example
from monitors.metrics import Metrics
from streaming.base import Record
from streaming.ingest.ingestor import Ingestor
from streaming.ingest.mining import MinerState, MiningSettings
from streaming.runtime.telemetry import RunSummary
from streaming.testing import MemorySink, MemorySource, NullObjective
from tests.unit.test_mining import _payload

P0, P1 = ("feedback", 0), ("feedback", 1)


def _record(partition: int, offset: int, n: int, value: int, response: str, conv: str) -> Record:
    return Record("feedback", partition, offset, conv.encode(), _payload(n, value, response, conv))


def _ingestor(metrics: Metrics) -> Ingestor:
    return Ingestor(
        NullObjective(),
        RunSummary(),
        metrics,
        MemorySink(),
        "dlq",
        batch_size=8,
        max_wait_ms=60_000,
        mining=MiningSettings(mode="replace"),
    )


def test_a_moved_partitions_held_thumbs_train_with_the_next_batch_and_leave_the_buffer():
    metrics = Metrics()
    ing = _ingestor(metrics)
    assert ing.ingest([_record(0, 0, 1, -1, "no", "c1"), _record(1, 0, 2, 1, "x", "c2")]) == []
    ing.keep_mining({P0})  # the rebalance gave partition 1 to another member
    text = metrics.render().decode()
    assert 'feedstep_mining_evictions_total{reason="rebalance"} 1.0' in text
    assert "feedstep_mining_pending_events 1.0" in text
    batch = ing.due(final=True)
    assert batch.examples == [
        Example("hi", "no", target=0.0, weight=0.0),  # held: its partner may still come
        Example("hi", "x", target=1.0, weight=0.0),  # held when it arrived ...
        Example("hi", "x", target=1.0),  # ... and released: it trains now, pointwise
    ]
    assert batch.mined == [False, False, True]  # scored before: the release is no evidence
    ing.applied(batch.segment)
    saved = MinerState.from_json(ing.mining_snapshot())
    assert set(saved.buffers) == {P0} and saved.held == 1  # checkpoints no longer hold e2
    # The partition kept still pairs: e1's partner arrives after the rebalance.
    ing.ingest([_record(0, 1, 3, 1, "yes", "c1")])
    assert Example("hi", "yes", rejected="no") in ing.due(final=True).examples


def test_keeping_every_partition_releases_nothing():
    ing = _ingestor(Metrics())
    ing.ingest([_record(0, 0, 1, -1, "no", "c1"), _record(1, 0, 2, 1, "x", "c2")])
    before = ing.miner.snapshot().to_json()
    ing.keep_mining({P0, P1})
    assert ing.miner.snapshot().to_json() == before and ing.miner.evicted["rebalance"] == 0
    assert [e.weight for e in ing.due(final=True).examples] == [0.0, 0.0]


def _stream(n_pairs: int) -> list[bytes]:
    """``n_pairs`` conversations, thumbed down then up three events later."""
    order = sorted(
        [(2 * i, i, -1) for i in range(n_pairs)] + [(2 * i + 3, i, 1) for i in range(n_pairs)]
    )
    return [
        json.dumps(
            {
                "event_id": f"p{i}{'+' if v > 0 else '-'}",
                "ts": f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
                "prompt": f"question {i}",
                "response": f"{'good' if v > 0 else 'bad'} answer {i}",
                "conversation_id": f"c{i}",
                "feedback": {"type": "thumb", "value": v},
            }
        ).encode()
        for n, (_, i, v) in enumerate(order)
    ]


def test_an_eager_rebalance_that_gives_the_partitions_back_loses_no_pending_pair(
    tiny_parts, objective
):
    from learner.step import Learner, StepConfig
    from streaming.runtime.pipeline import Pipeline, PipelineSettings

    trained: Counter = Counter()

    def run(rebalance_after: int | None) -> Pipeline:
        learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
        collate = objective.collate

        def remember(examples):
            trained.update(
                (e.prompt, e.response, e.rejected, e.target) for e in examples if e.weight > 0
            )
            return collate(examples)

        objective.collate = remember
        source = MemorySource(
            _stream(12), partitions=2, key=lambda v: json.loads(v)["conversation_id"].encode()
        )
        if rebalance_after is not None:
            source.schedule_rebalance(rebalance_after)
        settings = PipelineSettings(
            batch_size=4, max_wait_ms=60_000, mining=MiningSettings(mode="replace")
        )
        try:
            pipe = Pipeline(source, MemorySink(), learner, Metrics(), settings)
            pipe.run()
        finally:
            objective.collate = collate
        assert source.rebalances == (rebalance_after is not None)
        return pipe

    straight = run(None)
    expected, trained = dict(trained), Counter()
    rebalanced = run(rebalance_after=9)  # mid-stream: halves of several pairs are held
    assert dict(trained) == expected and len(expected) == 12  # every pair, once; no pointwise
    assert all(rejected is not None for _, _, rejected, _ in expected)
    assert rebalanced.ingestor.miner.evicted == straight.ingestor.miner.evicted
    assert rebalanced.ledger.pairs == straight.ledger.pairs == 12
