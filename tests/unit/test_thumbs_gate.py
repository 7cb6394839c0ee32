"""Evidence the gate can trust: with mining and a reference point, shuffled thumbs promote nothing.

A real Governor and gate (publish=False) watch a short run of a tiny reward model on a thumbs
stream. When the thumbs say something the text carries (replies that start with "good" are
thumbed up), the gate promotes: the setup can promote. When the same thumbs are dealt at random
within each pair, the paired loss differences the sequential test sees have no edge to find,
for mined pairs and for every reference point alike, and the gate promotes nothing. With
``replace`` the mined pairs are part of that evidence (neither half trained before the pair is
scored); with ``add`` they are kept out (the first half trained before).
"""

from __future__ import annotations

import json
import random

import pytest

from learner.objectives import RewardObjective
from learner.step import Learner, StepConfig
from monitors.gate import GateConfig
from monitors.metrics import Metrics
from streaming.ingest.mining import MiningSettings
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource


def _stream(n_pairs: int, shuffled: bool, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    keyed = []
    for i in range(n_pairs):
        good_up = rng.random() < 0.5 if shuffled else True
        halves = [(f"good answer {i % 7}", good_up), (f"bad answer {i % 7}", not good_up)]
        rng.shuffle(halves)
        keyed.append((2 * i, 0, i, *halves[0]))
        keyed.append((2 * i + rng.randint(1, 12), 1, i, *halves[1]))
    keyed.sort()
    return [
        json.dumps(
            {
                "event_id": f"t{i}-{half}",
                "ts": "2026-01-01T00:00:00Z",
                "prompt": f"question {i % 11}",
                "response": reply,
                "conversation_id": f"c{i}",
                "feedback": {"type": "thumb", "value": 1 if up else -1},
            }
        ).encode()
        for _, half, i, reply, up in keyed
    ]


def _promotions(tiny_parts, reference: str, shuffled: bool, mining: str = "add") -> int:
    obj = RewardObjective(tiny_parts[1], max_length=24, reference=reference)
    learner = Learner(tiny_parts[0](0), obj, StepConfig(lr=2e-3, l2sp_weight=0.0))
    metrics = Metrics()
    governor = Governor(
        learner,
        None,
        None,
        metrics,
        GovernanceSettings(
            gate=GateConfig(min_events=100, holdout_required=False, drift_quiet_events=0),
            publish=False,
            input_drift=False,
        ),
    )
    pipe = Pipeline(
        MemorySource(_stream(200, shuffled)),
        MemorySink(),
        learner,
        metrics,
        PipelineSettings(
            batch_size=8, max_wait_ms=60_000, log_every_s=1e9, mining=MiningSettings(mode=mining)
        ),
        governor=governor,
    )
    pipe.run()
    assert pipe.ingestor.miner is not None and pipe.ingestor.miner.mined > 150
    mined_evidence = pipe.prequential.events - 400  # 400 thumbs, each scored as it arrived
    assert mined_evidence == (pipe.ingestor.miner.mined if mining == "replace" else 0)
    return sum(1 for e in governor.history if e.kind == "promote")


@pytest.mark.parametrize("mining", ["add", "replace"])
def test_the_gate_promotes_when_thumbs_carry_a_signal(tiny_parts, mining):
    assert _promotions(tiny_parts, "live", shuffled=False, mining=mining) >= 1


@pytest.mark.parametrize("mining", ["add", "replace"])
@pytest.mark.parametrize("reference", ["none", "live", "mean"])
def test_the_gate_promotes_nothing_on_shuffled_thumbs(tiny_parts, reference, mining):
    assert _promotions(tiny_parts, reference, shuffled=True, mining=mining) == 0
