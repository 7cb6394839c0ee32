"""Lockstep (learner/distributed.py): two gloo ranks stay bit-identical, equal to one learner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.base import Example
from learner.distributed import Lockstep, partitions_of
from tests.unit import lockstep_worker as worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lockstep")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.unit.lockstep_worker", "train", str(r), "2", str(folder)],
            cwd=ROOT,
        )
        for r in range(2)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0]
    return folder


def test_the_ranks_candidates_are_bit_identical(two_ranks):
    a = load_file(str(two_ranks / "rank0.safetensors"))
    b = load_file(str(two_ranks / "rank1.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ja, jb = (json.loads((two_ranks / f"rank{r}.json").read_text()) for r in range(2))
    # round 4: neither rank holds a batch, so no step: 7 of 8 rounds step
    assert ja["steps"] == jb["steps"] == 7
    assert ja["lrs"] == jb["lrs"]  # rank 0's boost reached rank 1 ...
    assert max(ja["lrs"]) == pytest.approx(3 * min(ja["lrs"]))  # ... and was applied
    assert ja["losses"] == jb["losses"]  # the gathered evidence is the same on both


def test_lockstep_equals_one_learner_on_the_union_of_the_batches(two_ranks):
    alone = worker.learner()
    saved: dict[str, torch.Tensor] = {}
    for step in range(worker.ROUNDS):
        union = worker.examples(0, step) + worker.examples(1, step)
        if union:
            alone.step(alone.objective.collate(union))
        worker.switch(alone, step, saved)  # a promotion with a boost, later a rollback
    ranked = load_file(str(two_ranks / "rank0.safetensors"))
    moved = False
    for name, param in alone.candidate.named_parameters():
        assert torch.allclose(ranked[name], param.detach(), atol=2e-6, rtol=1e-5), name
    start = worker.learner()
    for name, param in start.candidate.named_parameters():
        moved = moved or not torch.allclose(ranked[name], param.detach())
    assert moved, "the lockstep run never changed the weights"


def test_the_all_reduce_carries_the_gradient_and_a_few_flags(two_ranks):
    stats = json.loads((two_ranks / "rank0.json").read_text())
    learner = worker.learner()
    # the gradient, the weight, the finite flag, and one "reached" flag per tensor
    assert stats["bytes"] == (learner.trainable_parameters + 2 + len(learner.params)) * 4


def test_partitions_are_shared_out_by_rank():
    assert partitions_of(0, 2, [3, 1, 0, 2]) == [0, 2]
    assert partitions_of(1, 2, [0, 1, 2, 3]) == [1, 3]
    assert partitions_of(0, 1, [0, 1]) == [0, 1]
    shares = [partitions_of(r, 3, list(range(8))) for r in range(3)]
    assert sorted(p for s in shares for p in s) == list(range(8))


def test_from_env_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node"):
        Lockstep.from_env()


def test_an_empty_round_needs_a_lockstep(tiny_parts, objective):
    from learner.step import Learner

    with pytest.raises(ValueError, match="lockstep"):
        Learner(tiny_parts[0](0), objective).step(None)


def test_a_lockstep_rank_exports_its_all_reduce_time_and_bytes():
    from types import SimpleNamespace

    from monitors.metrics import Metrics
    from streaming.runtime.telemetry import Telemetry
    from streaming.testing import MemorySource, NullLearner

    learner = NullLearner()
    learner.lockstep = SimpleNamespace(world=2, reduce_seconds=0.0, reduced_bytes_total=0)
    metrics = Metrics()
    telemetry = Telemetry(metrics, learner, MemorySource([]), window=10)
    batch = learner.objective.collate([Example("p", "r", target=1.0)])
    for seconds, sent in ((0.25, 1000), (0.75, 3000)):
        learner.lockstep.reduce_seconds, learner.lockstep.reduced_bytes_total = seconds, sent
        telemetry.account(learner.step(batch), [0.0])
        telemetry.publish()
    text = metrics.render().decode()
    assert "feedstep_lockstep_world_size 2.0" in text
    assert "feedstep_allreduce_seconds_total 0.75" in text
    assert "feedstep_allreduce_bytes_total 3000.0" in text


def test_every_rank_restores_the_newest_checkpoint_of_any_rank(tmp_path):
    # Only rank 1's directory holds a checkpoint (a restart made another pod rank 0).
    from learner.checkpoint import CheckpointManager
    from streaming.ingest.offsets import Ledger

    saved = worker.learner()
    batch = saved.objective.collate(worker.examples(0, 0))
    saved.step(batch)
    saved.step(batch)
    extra = {"offsets": [["feedback", 0, 0]], "ledger": Ledger().to_json(), "dedup": []}
    CheckpointManager(tmp_path / "rank1").save(saved, {**extra, "world": 2, "governor": None})
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.unit.lockstep_worker",
                "restore",
                str(r),
                "2",
                str(tmp_path),
            ],
            cwd=ROOT,
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for r in range(2):
        assert json.loads((tmp_path / f"restored{r}.json").read_text())["step"] == 2
        restored = load_file(str(tmp_path / f"restored{r}.safetensors"))
        for name, param in saved.candidate.named_parameters():
            assert torch.equal(restored[name], param.detach()), (r, name)
