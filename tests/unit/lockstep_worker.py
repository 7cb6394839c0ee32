"""One rank of tests/unit/test_distributed.py (started as a subprocess by the test)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from learner.base import Example
from learner.distributed import Lockstep
from learner.models import ModelSpec, build_reward_model
from learner.objectives import RewardObjective
from learner.step import Learner, StepConfig

# A large eps keeps AdamW from turning rounding noise in tiny gradients into whole steps, so
# the sum-then-divide of the ranks can be compared with one learner's mean.
CONFIG = StepConfig(lr=5e-3, l2sp_weight=0.1, max_grad_norm=0.5, eps=1e-3)


def examples(rank: int, step: int) -> list[Example]:
    """A rank's batch of one round: None-like (empty) on some rounds, sizes differ by rank."""
    if (rank, step) in ((1, 1), (0, 3), (0, 4), (1, 4)):
        return []
    n = 2 + rank + step % 2
    return [
        Example(f"prompt {rank}-{step}-{i}", f"reply {i} of {step}", target=float((i + rank) % 2))
        for i in range(n)
    ]


def learner(lockstep: Lockstep | None = None) -> Learner:
    model, tokenizer = build_reward_model(ModelSpec("tiny", seed=0))
    return Learner(model, RewardObjective(tokenizer, max_length=32), CONFIG, lockstep=lockstep)


def join(rank: int, world: int, rendezvous: Path) -> None:
    """A gloo group of ``world`` processes on this machine, met through a file."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )


ROUNDS = 8
PROMOTE_AFTER = 2  # rank 0 promotes (and boosts) after this round
ROLLBACK_AFTER = 4  # and rolls back to the weights after round 1 after this one


def switch(model: Learner, step: int, saved: dict[str, torch.Tensor]) -> None:
    """What rank 0's governor does between rounds (alone: the same learner calls)."""
    if step == 1:
        saved.update({k: v.clone() for k, v in model.candidate.state_dict().items()})
    if step == PROMOTE_AFTER:
        model.rebase()
        model.boost(3.0, steps=2)
    if step == ROLLBACK_AFTER:
        model.reset_to(saved)


def run_rank(rank: int, world: int, folder: str) -> None:
    join(rank, world, Path(folder) / "rendezvous")
    torch.manual_seed(rank)  # the ranks' RNGs differ: sameness must come from the protocol
    lockstep = Lockstep(rank, world)
    model = learner(lockstep)
    obj = model.objective
    synced = model.changes
    saved: dict[str, torch.Tensor] = {}
    losses = []
    lrs: list[float] = []
    for step in range(ROUNDS):
        batch = examples(rank, step)
        agreed = lockstep.round(
            bool(batch), switched=model.changes != synced, reset=model.reset_pending
        )
        if agreed.switch:
            model.sync_from_leader(agreed.reset)
        synced = model.changes
        if agreed.batches:
            result = model.step(obj.collate(batch) if batch else None)
            cand, base, _ = lockstep.gather_outputs(
                result.candidate, result.baseline, [0.0] * len(batch)
            )
            losses.append(cand.loss.tolist())
            lrs.append(result.lr)
        if rank == 0:
            switch(model, step, saved)
    save_file(
        {n: p.detach().contiguous() for n, p in model.candidate.named_parameters()},
        str(Path(folder) / f"rank{rank}.safetensors"),
    )
    (Path(folder) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "steps": model.steps,
                "lrs": lrs,
                "losses": losses,
                "bytes": lockstep.reduced_bytes,
            }
        )
    )
    dist.destroy_process_group()


def restore_rank(rank: int, world: int, folder: str) -> None:
    """Restore through the pipeline from this rank's own checkpoint directory, then save."""
    from learner.checkpoint import CheckpointManager
    from monitors.metrics import Metrics
    from streaming.runtime.pipeline import Pipeline
    from streaming.testing import MemorySink, MemorySource

    join(rank, world, Path(folder) / "rendezvous-restore")
    model = learner(Lockstep(rank, world))
    checkpoints = CheckpointManager(Path(folder) / f"rank{rank}")
    pipe = Pipeline(MemorySource([]), MemorySink(), model, Metrics(), checkpoints=checkpoints)
    step = pipe.restore()
    save_file(
        {n: p.detach().contiguous() for n, p in model.candidate.named_parameters()},
        str(Path(folder) / f"restored{rank}.safetensors"),
    )
    (Path(folder) / f"restored{rank}.json").write_text(json.dumps({"step": step}))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    run = {"train": run_rank, "restore": restore_rank}[mode]
    run(int(rest[0]), int(rest[1]), rest[2])
