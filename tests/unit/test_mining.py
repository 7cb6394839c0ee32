"""Pairs mined from unpaired thumbs and ratings: matching, windows, bounds, state, batches."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from learner.base import Example
from monitors.metrics import Metrics
from streaming.events import Feedback, FeedbackEvent, decode_event
from streaming.ingest.ingestor import Ingestor
from streaming.ingest.mining import MinerState, MiningSettings, PairMiner
from streaming.runtime.telemetry import RunSummary
from streaming.testing import MemorySink, MemorySource, NullObjective

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
P0 = ("feedback", 0)


def _event(
    n: int,
    value: int,
    response: str,
    *,
    conv: str | None = "c1",
    prompt: str = "hi",
    kind: str = "thumb",
    s: float | None = None,
    weight: float = 1.0,
    **extra: object,
) -> FeedbackEvent:
    return FeedbackEvent(
        f"e{n}",
        T0 + timedelta(seconds=n if s is None else s),
        prompt,
        response,
        Feedback(kind, value=value),
        conversation_id=conv,
        weight=weight,
        extra=extra,
    )


def _miner(**settings: object) -> PairMiner:
    return PairMiner(MiningSettings(mode="add", **settings))  # type: ignore[arg-type]


def test_opposite_thumbs_on_one_conversation_and_prompt_make_a_pair():
    m = _miner()
    assert m.feed(P0, _event(1, 1, "hello!", weight=2.0)).pair is None
    pair = m.feed(P0, _event(2, -1, "go away", weight=0.5)).pair
    assert pair == Example("hi", "hello!", rejected="go away", weight=0.5)  # the better chosen
    assert (m.mined, m.pending) == (1, 0)


def test_another_prompt_conversation_or_partition_does_not_pair():
    m = _miner()
    m.feed(P0, _event(1, 1, "hello!"))
    assert m.feed(P0, _event(2, -1, "go away", prompt="bye")).pair is None  # same conversation
    assert m.feed(P0, _event(3, -1, "go away", conv="c2")).pair is None  # same prompt
    assert m.feed(P0, _event(4, -1, "go away", conv=None)).pair is None  # no key at all
    assert m.feed(("feedback", 1), _event(5, -1, "go away")).pair is None  # other partition
    assert m.feed(P0, _event(6, 1, "hello again")).pair is None  # same signal
    assert m.mined == 0
    same = _miner()
    same.feed(P0, _event(1, 1, "hello!"))
    assert same.feed(P0, _event(2, -1, "hello!")).pair is None  # one reply twice is no pair


def test_a_regenerate_link_pairs_across_conversations_and_prompts():
    m = _miner()
    m.feed(P0, _event(1, -1, "first try", conv=None, response_id="r1"))
    pair = m.feed(P0, _event(2, 1, "second try", conv=None, prompt="x", regenerated_from="r1")).pair
    assert (pair.response, pair.rejected, pair.prompt) == ("second try", "first try", "x")
    # Two regenerations of one reply find each other through the reply they both link to.
    m.feed(P0, _event(3, 1, "take b", conv=None, regenerated_from="r9"))
    pair = m.feed(P0, _event(4, -1, "take c", conv=None, regenerated_from="r9")).pair
    assert (pair.response, pair.rejected) == ("take b", "take c")


def test_each_event_pairs_once_with_its_newest_partner():
    m = _miner()
    m.feed(P0, _event(1, -1, "a"))
    m.feed(P0, _event(2, -1, "b"))
    assert m.feed(P0, _event(3, 1, "c")).pair.rejected == "b"
    assert m.feed(P0, _event(4, 1, "d")).pair.rejected == "a"
    assert m.feed(P0, _event(5, 1, "e")).pair is None
    assert m.pending == 1  # e waits


def test_rating_gap_decides_which_ratings_pair():
    m = _miner(min_rating_gap=2)
    m.feed(P0, _event(1, 4, "fine", kind="rating"))
    assert m.feed(P0, _event(2, 3, "meh", kind="rating")).pair is None  # 4 vs 3: too close
    pair = m.feed(P0, _event(3, 1, "awful", kind="rating")).pair  # 3 vs 1 (newest first): pairs
    assert (pair.response, pair.rejected) == ("meh", "awful")
    pair = m.feed(P0, _event(4, 1, "great")).pair  # a thumb up counts as 5: 5 vs 4
    assert pair is None
    m3 = _miner(min_rating_gap=3)
    m3.feed(P0, _event(1, 2, "poor", kind="rating"))
    assert m3.feed(P0, _event(2, 4, "good", kind="rating")).pair is None
    pair = m3.feed(P0, _event(3, -1, "x", kind="thumb")).pair  # a thumb down is 1: 3 below "good"
    assert (pair.response, pair.rejected) == ("good", "x") and m3.pending == 1  # "poor" waits


def test_the_window_in_events_and_in_seconds():
    m = _miner(window_events=3)
    m.feed(P0, _event(1, 1, "a"))
    for n in (2, 3):
        m.feed(P0, _event(n, 1, f"other {n}", conv="other"))
    assert m.feed(P0, _event(4, -1, "b")).pair is not None  # 3 events after: inside
    m.feed(P0, _event(5, 1, "a"))
    for n in (6, 7, 8):
        m.feed(P0, _event(n, 1, f"other {n}", conv="other"))
    assert m.feed(P0, _event(9, -1, "b")).pair is None  # 4 events after: too far
    assert m.evicted["window"] >= 1

    m = _miner(window_s=10.0)
    m.feed(P0, _event(1, 1, "a", s=0.0))
    assert m.feed(P0, _event(2, -1, "b", s=10.0)).pair is not None
    m.feed(P0, _event(3, 1, "a", s=20.0))
    assert m.feed(P0, _event(4, -1, "b", s=30.5)).pair is None
    assert m.evicted["window"] == 1 and m.pending == 1  # the old one expired, b waits


def test_memory_is_bounded_and_evictions_are_counted():
    m = _miner(max_pending=5)
    for n in range(20):
        m.feed(P0, _event(n, 1, f"reply {n}", conv=f"c{n}"))
        assert m.pending <= 5
    assert m.evicted == {"window": 0, "capacity": 15, "rebalance": 0}
    assert m.feed(P0, _event(30, -1, "no", conv="c0")).pair is None  # evicted: no partner any more
    assert m.feed(P0, _event(31, -1, "no", conv="c19")).pair is not None


def test_state_round_trips_through_json_and_mines_the_same_pairs():
    stream = [
        _event(1, 1, "a", conv="c1"),
        _event(2, -1, "x", conv="c2", response_id="r2"),
        _event(3, 4, "b", conv="c3", kind="rating"),
        _event(4, 1, "y", conv=None, regenerated_from="r2"),
        _event(5, -1, "c", conv="c1"),
        _event(6, 1, "d", conv="c3", kind="rating"),
        _event(7, 2, "e", conv="c3", kind="rating"),
    ]
    straight, first = _miner(), _miner()
    expected = [straight.feed(P0, e) for e in stream]
    for e in stream[:3]:
        first.feed(P0, e)
    saved = json.loads(json.dumps(first.snapshot().to_json()))  # through real JSON text
    resumed = _miner()
    resumed.load(MinerState.from_json(saved))
    assert [resumed.feed(P0, e) for e in stream[3:]] == expected[3:]
    assert sum(p.pair is not None for p in expected) == 3
    with pytest.raises(ValueError, match="format 2"):
        MinerState.from_json({"format": 99})


def test_a_snapshot_does_not_change_with_later_feeds():
    m = _miner()
    m.feed(P0, _event(1, 1, "a"))
    snap = m.snapshot()
    m.feed(P0, _event(2, -1, "b"))
    m.load(snap)
    assert m.pending == 1 and m.feed(P0, _event(3, -1, "b")).pair is not None


# -- in the ingestor ------------------------------------------------------------------------------
def _payload(n: int, value: int, response: str, conv: str = "c1") -> bytes:
    return json.dumps(
        {
            "event_id": f"e{n}",
            "ts": f"2026-01-01T00:00:{n:02d}Z",
            "prompt": "hi",
            "response": response,
            "conversation_id": conv,
            "feedback": {"type": "thumb", "value": value},
        }
    ).encode()


def _ingestor(mode: str, batch_size: int, metrics: Metrics | None = None) -> Ingestor:
    return Ingestor(
        NullObjective(),
        RunSummary(),
        metrics or Metrics(),
        MemorySink(),
        "dlq",
        batch_size=batch_size,
        max_wait_ms=60_000,
        mining=MiningSettings(mode=mode),
    )


def test_the_pair_joins_the_batch_of_the_event_that_completes_it():
    values = [_payload(1, -1, "no"), _payload(2, 1, "x", "c9"), _payload(3, 1, "yes")]
    completed = [Example("hi", "yes", target=1.0), Example("hi", "yes", rejected="no")]
    ing = _ingestor("add", batch_size=2)
    batches = ing.ingest(MemorySource(values).poll(0))
    assert [b.segment.event_ids for b in batches] == [["e1", "e2"], ["e3"]]
    assert batches[1].examples == completed  # tied to e3's offset
    # e3 fills its batch: the pair rides along, one longer, rather than wait for the next.
    ing = _ingestor("add", batch_size=3)
    (batch,) = ing.ingest(MemorySource(values).poll(0))
    assert batch.segment.event_ids == ["e1", "e2", "e3"]
    assert batch.examples[2:] == completed and len(batch.ts) == len(batch.features) == 4
    assert batch.mined == [False, False, False, True]


def test_replace_scores_pairable_thumbs_and_trains_the_pair_instead():
    metrics = Metrics()
    ing = _ingestor("replace", batch_size=5, metrics=metrics)
    no_key = json.loads(_payload(4, 1, "sure"))
    del no_key["conversation_id"]  # cannot pair: it trains at once, as without mining
    values = [
        _payload(1, -1, "no"),
        _payload(2, 1, "x", "c9"),
        _payload(3, 1, "yes"),
        json.dumps(no_key).encode(),
    ]
    (batch,) = ing.ingest(MemorySource(values).poll(0))
    assert batch.segment.event_ids == ["e1", "e2", "e3", "e4"]
    assert batch.examples == [
        Example("hi", "no", target=0.0, weight=0.0),  # scored, held back, then replaced
        Example("hi", "x", target=1.0, weight=0.0),  # scored, waits for a partner
        Example("hi", "yes", target=1.0, weight=0.0),  # completes the pair: replaced by it
        Example("hi", "yes", rejected="no"),
        Example("hi", "sure", target=1.0),
    ]
    assert batch.mined == [False] * 5  # every one is evidence: no label trained before it
    text = metrics.render().decode()
    assert "feedstep_mining_pairs_total 1.0" in text
    assert "feedstep_mining_pending_events 1.0" in text  # e2 waits
    assert 'feedstep_mining_evictions_total{reason="capacity"} 0.0' in text


def test_replace_releases_a_held_example_when_its_event_leaves_unpaired():
    # By the window in events: e1 is 3 events old when e5 arrives, so e5 evicts it.
    m = PairMiner(MiningSettings(mode="replace", window_events=3))
    fed = m.feed(P0, _event(1, 1, "a", weight=2.0))
    assert (fed.pair, fed.held, fed.released) == (None, True, ())
    for n in (2, 3, 4):
        assert m.feed(P0, _event(n, -1, f"other {n}", conv=f"o{n}")).held
    fed = m.feed(P0, _event(5, -1, "b"))
    assert fed.released == (Example("hi", "a", target=1.0, weight=2.0),) and fed.pair is None
    assert fed.held and m.evicted["window"] == 1  # e5 waits in turn: its pair partner is gone
    # By capacity: the oldest goes, its example with it; a rating keeps its target.
    m = PairMiner(MiningSettings(mode="replace", max_pending=2))
    m.feed(P0, _event(1, 4, "good", kind="rating", conv="r1"))
    m.feed(P0, _event(2, 1, "x", conv="r2"))
    fed = m.feed(P0, _event(3, 1, "y", conv="r3"))
    assert fed.released == (Example("hi", "good", target=0.75),) and m.pending == 2
    assert m.evicted == {"window": 0, "capacity": 1, "rebalance": 0}
    # Paired, a held example is not released: the pair replaces it.
    fed = m.feed(P0, _event(4, -1, "z", conv="r3"))
    assert fed.pair == Example("hi", "y", rejected="z") and fed.released == ()
    # Events that cannot pair are not held.
    assert not m.feed(P0, _event(5, 1, "n", conv=None)).held
    assert not m.feed(P0, _event(6, 1, "c", kind="comment")).held


def test_add_never_holds_back_but_trains_a_held_example_it_finds():
    m = _miner()
    assert not m.feed(P0, _event(1, 1, "a")).held
    # A buffer saved by replace (a restart that switched modes): e1 has not trained yet.
    replace = PairMiner(MiningSettings(mode="replace"))
    replace.feed(P0, _event(1, 1, "a"))
    m.load(replace.snapshot())
    fed = m.feed(P0, _event(2, -1, "b"))
    assert fed.pair == Example("hi", "a", rejected="b") and not fed.held
    assert fed.released == (Example("hi", "a", target=1.0),)


def test_held_examples_round_trip_through_json_and_format_1_still_loads():
    m = PairMiner(MiningSettings(mode="replace", window_events=1))
    m.feed(P0, _event(1, 1, "a", prompt="p1", weight=0.5))
    m.feed(P0, _event(2, 3, "b", kind="rating", conv="c2"))
    saved = json.loads(json.dumps(m.snapshot().to_json()))
    assert saved["format"] == 2 and MinerState.from_json(saved).held == 2
    resumed = PairMiner(MiningSettings(mode="replace", window_events=1))
    resumed.load(MinerState.from_json(saved))
    fed = resumed.feed(P0, _event(3, 1, "c", conv="c3"))
    assert fed.released == (Example("p1", "a", target=1.0, weight=0.5),)
    # Format 1 (before held examples): its events trained on arrival, nothing to release.
    old = {
        "format": 1,
        "partitions": [[t, p, n, [e[:6] for e in es]] for t, p, n, es in saved["partitions"]],
    }
    state = MinerState.from_json(old)
    assert state.held == 0 and len(state.buffers[P0].entries) == 2


def test_a_pair_names_its_halves_and_a_state_saved_without_ids_still_pairs():
    m = _miner()
    m.feed(P0, _event(1, 1, "a"))
    assert m.feed(P0, _event(2, -1, "b")).pair_ids == ("e1", "e2")  # chosen, then rejected
    m.feed(P0, _event(3, -1, "c", conv="c2"))
    saved = json.loads(json.dumps(m.snapshot().to_json()))
    assert saved["partitions"][0][3][0][7] == "e3"
    for entries in (e for *_, e in saved["partitions"]):  # format 2 before ids: 7 fields
        entries[:] = [entry[:7] for entry in entries]
    resumed = _miner()
    resumed.load(MinerState.from_json(saved))
    fed = resumed.feed(P0, _event(4, 1, "d", conv="c2"))
    assert fed.pair == Example("hi", "d", rejected="c") and fed.pair_ids == ("e4", "")


def test_mining_off_leaves_batches_as_they_were():
    ing = _ingestor("off", batch_size=8)
    assert ing.miner is None and ing.mining_snapshot() is None
    values = [_payload(1, -1, "no"), _payload(3, 1, "yes")]
    ing.ingest(MemorySource(values).poll(0))
    assert [e.pairwise for e in ing.due(final=True).examples] == [False, False]


def test_a_given_up_open_segment_rewinds_the_miner():
    ing = _ingestor("add", batch_size=8)
    ing.ingest(MemorySource([_payload(1, -1, "no")]).poll(0))
    ing.give_up_open()
    assert ing.miner.pending == 0  # e1 will be read again: it must not be in the buffer twice
    (batch,) = ing.ingest(
        MemorySource([_payload(1, -1, "no")] + [_payload(n, 1, "yes") for n in range(2, 9)]).poll(0)
    )
    assert sum(e.pairwise for e in batch.examples) == 1


# -- through the pipeline and its checkpoints -----------------------------------------------------
def _pairs_stream(n_pairs: int, gap: int, seed: int = 0) -> list[bytes]:
    """``n_pairs`` conversations, each thumbed up and down ``gap`` events apart, seeded."""
    import random

    rng = random.Random(seed)
    keyed = []
    for i in range(n_pairs):
        up_first = rng.random() < 0.5
        keyed.append((2 * i, 0, i, up_first))
        keyed.append((2 * i + rng.randint(1, gap), 1, i, not up_first))
    keyed.sort()
    return [
        json.dumps(
            {
                "event_id": f"p{i}-{half}",
                "ts": f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
                "prompt": f"question {i}",
                "response": f"{'good' if up else 'bad'} answer {i}",
                "conversation_id": f"c{i}",
                "feedback": {"type": "thumb", "value": 1 if up else -1},
            }
        ).encode()
        for n, (_, half, i, up) in enumerate(keyed)
    ]


def _conversation(value: bytes) -> bytes:
    return json.loads(value)["conversation_id"].encode()


class Recording:
    """Wraps a learner: records the examples of every step, in step order (via collate)."""

    def __init__(self, learner, crash_at: int | None = None):
        self._learner, self._crash_at = learner, crash_at
        self.trained: list[list[Example]] = []  # not .steps: that is the learner's
        self.applied: list[int] = []  # per step call: the learner's step count, 0 if skipped
        self.results: list = []  # per step call: its StepResult
        self._collated: list[list[Example]] = []
        objective = learner.objective
        collate = objective.collate

        def remember(examples):
            self._collated.append(list(examples))
            return collate(examples)

        objective.collate = remember

    def __getattr__(self, name):
        return getattr(self._learner, name)

    def step(self, batch):
        if self._crash_at is not None and len(self.trained) + 1 == self._crash_at:
            raise RuntimeError("simulated crash")
        result = self._learner.step(batch)
        self.trained.append(self._collated.pop(0))
        self.results.append(result)
        self.applied.append(result.step if result.applied else 0)
        return result

    def covered(self, step: int) -> list[list[Example]]:
        """The applied steps a checkpoint at learner step ``step`` holds."""
        return [ex for ex, n in zip(self.trained, self.applied, strict=True) if 0 < n <= step]


def _pipeline(learner, values, ckpt, **settings):
    from streaming.runtime.pipeline import Pipeline, PipelineSettings

    defaults = {
        "batch_size": 6,
        "max_wait_ms": 60_000,
        "checkpoint_every_steps": 2,
        "mining": MiningSettings(mode="add"),
    }
    defaults.update(settings)
    source = MemorySource(values, partitions=2, key=_conversation)
    return Pipeline(
        source, MemorySink(), learner, Metrics(), PipelineSettings(**defaults), checkpoints=ckpt
    )


def _pairs(steps: list[list[Example]]) -> Counter:
    return Counter((e.prompt, e.response, e.rejected) for s in steps for e in s if e.pairwise)


def _trained(steps: list[list[Example]]) -> Counter:
    """Every example that carried weight (was trained on), pairs and pointwise."""
    return Counter(
        (e.prompt, e.response, e.rejected, e.target) for s in steps for e in s if e.weight > 0
    )


# replace: windows small enough that many halves leave the buffer unpaired, by either eviction
_REPLACE = MiningSettings(mode="replace", window_events=4, max_pending=3)


@pytest.mark.parametrize(
    ("crash_at", "mining"),
    [
        (5, MiningSettings(mode="add")),
        (8, MiningSettings(mode="add")),
        (5, _REPLACE),
        (9, _REPLACE),
    ],
)
def test_a_crash_and_restart_trains_every_mined_pair_exactly_once(
    tiny_parts, objective, tmp_path, crash_at, mining
):
    from learner.checkpoint import CheckpointManager
    from learner.step import Learner, StepConfig
    from streaming.errors import PipelineError
    from streaming.ingest.offsets import check_ledgers

    values = _pairs_stream(24, gap=9)

    def learner():
        return Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))

    straight = Recording(learner())
    pipe = _pipeline(straight, values, None, mining=mining)
    pipe.run()
    expected, trained = _pairs(straight.trained), _trained(straight.trained)
    straight_ledger = pipe.ledger
    assert straight_ledger.pairs == sum(expected.values())
    assert max(trained.values()) == 1
    if mining.mode == "add":
        assert sum(expected.values()) == 24
    else:  # each event trains once: in its pair, or released; those still waiting are held
        miner = pipe.ingestor.miner
        released = sum(n for (*_, target), n in trained.items() if target is not None)
        assert 0 < sum(expected.values()) < 24 and released > 0
        assert miner.evicted["window"] > 0 and miner.evicted["capacity"] > 0
        assert 2 * sum(expected.values()) + released + miner.pending == 48

    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    crashed = Recording(learner(), crash_at=crash_at)
    with pytest.raises(PipelineError):
        _pipeline(crashed, values, ckpt, mining=mining).run()
    latest = ckpt.latest_extra()
    assert latest is not None, "the crash came before the first checkpoint: no test"
    _, step, extra = latest
    assert extra["mining"]["format"] == 2 and 0 < step < straight.applied[-1]
    if mining.mode == "replace":
        assert MinerState.from_json(extra["mining"]).held > 0  # held examples cross the crash
    resumed = Recording(learner())
    pipe = _pipeline(resumed, values, ckpt, mining=mining)
    assert pipe.restore() == step
    pipe.run()
    # The steps the checkpoint covers, then the restarted run: every pair once, and every
    # example released from the buffer once, none lost.
    assert _pairs(crashed.covered(step) + resumed.trained) == expected
    assert _trained(crashed.covered(step) + resumed.trained) == trained
    assert check_ledgers([pipe.ledger], MemorySource(values, partitions=2).end_offsets()) == []
    # ... and the ledger the restart resumed and extended counts each pair once, by its ids
    assert (pipe.ledger.pairs, pipe.ledger.pair_digest) == (
        straight_ledger.pairs,
        straight_ledger.pair_digest,
    )


def test_mined_pairs_train_but_are_no_evidence_for_the_monitors_and_gate(tiny_parts, objective):
    from learner.step import Learner, StepConfig

    values = _pairs_stream(10, gap=5)
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    pipe = _pipeline(learner, values, None)
    summary = pipe.run()
    assert pipe.ingestor.miner.mined == 10
    assert summary.trained_examples == 20 + 10  # both thumbs of each pair, and the pair
    # A pair is scored after its first half trained: not test-then-train, so not counted.
    assert summary.scored == 20 and pipe.prequential.events == 20


def test_with_replace_pairs_are_evidence_and_held_thumbs_train_only_in_them(tiny_parts, objective):
    from learner.step import Learner, StepConfig

    values = _pairs_stream(10, gap=5)
    learner = Recording(Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3)))
    pipe = _pipeline(learner, values, None, mining=MiningSettings(mode="replace"))
    summary = pipe.run()
    assert pipe.ingestor.miner.mined == 10 and pipe.ingestor.miner.pending == 0
    steps = learner.trained
    assert sum(e.pairwise for s in steps for e in s) == 10
    assert all(e.weight == 0 for s in steps for e in s if not e.pairwise)  # scored only
    # Neither half of a pair trained before the pair was scored: all 30 are evidence.
    assert summary.scored == 30 and pipe.prequential.events == 30


def test_a_batch_of_held_thumbs_only_is_scored_but_changes_no_weight(tiny_parts, objective):
    import torch

    from learner.step import Learner, StepConfig

    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-2))
    before = [t.detach().clone() for t in learner.candidate.parameters()]
    values = [_payload(n, 1, f"reply {n}", conv=f"c{n}") for n in range(1, 7)]  # none pairs
    pipe = _pipeline(learner, values, None, mining=MiningSettings(mode="replace"))
    summary = pipe.run()
    # the batch is done (nothing skipped, every event accounted for) without any update
    assert learner.steps == 0 and summary.skipped_steps == 0 and summary.accounted
    assert pipe.prequential.events == 6 and pipe.ingestor.miner.pending == 6
    after = list(learner.candidate.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_each_checkpoint_holds_the_buffer_of_exactly_its_applied_events(
    tiny_parts, objective, tmp_path, mode
):
    from learner.checkpoint import CheckpointManager
    from learner.step import Learner, StepConfig

    values = _pairs_stream(12, gap=7, seed=1)
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=99)
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    mining = MiningSettings(mode=mode)
    _pipeline(learner, values, ckpt, checkpoint_every_steps=1, batch_size=5, mining=mining).run()
    checked = 0
    for path in ckpt.checkpoints():
        saved = json.loads((path / "extra.json").read_text())
        offsets = {(t, p): o for t, p, o in saved["offsets"]}
        replay = PairMiner(mining)
        # The same events a restart would have read before these offsets, partition by partition.
        source = MemorySource(values, partitions=2, key=_conversation)
        for record in source.poll(0):
            if record.offset < offsets.get((record.topic, record.partition), 0):
                replay.feed((record.topic, record.partition), decode_event(record.value))
        assert saved["mining"] == replay.snapshot().to_json()
        checked += 1
    assert checked >= 3


def test_replace_on_a_live_topic_needs_checkpoints(tiny_parts, objective):
    from learner.step import Learner
    from streaming.runtime.pipeline import Pipeline, PipelineSettings

    class Endless(MemorySource):
        @property
        def finite(self) -> bool:
            return False

    learner = Learner(tiny_parts[0](0), objective)
    settings = PipelineSettings(mining=MiningSettings(mode="replace"))
    with pytest.raises(ValueError, match="checkpoints.every_steps > 0"):
        Pipeline(Endless([]), MemorySink(), learner, Metrics(), settings)
