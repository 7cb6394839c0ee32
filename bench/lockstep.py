"""Benchmark: events per second learned by 1 and by N lockstep ranks on the same stream.

Each rank is a process with a :class:`learner.step.Learner` and a
:class:`learner.distributed.Lockstep` (gloo over TCP on this machine); every round each rank
steps on its own micro-batch of ``--batch-size`` HH-RLHF thumbs (chosen up, rejected down, from
``../shared/data/hh-rlhf``), so N ranks learn N batches per step. The cores are shared out:
with ``--threads T`` in all, each of N ranks gets ``T // N`` intra-op threads, so the
comparison is one process using the machine against N processes using it together.

Printed per world size: median seconds per step, events learned per second, the bytes one
gradient all-reduce carries, and the share of a step spent in that all-reduce. The 1-rank row is
a plain learner without lockstep (the single-process sidecar). On a machine with as many cores
as ranks this shows the protocol's overhead; on one GPU per rank (NCCL) the scaling.

Usage::

    python3 bench/lockstep.py --model minilm --ranks 1,2 --steps 12 --threads 2
    python3 bench/lockstep.py --model tiny --steps 3 --max-length 32   # seconds, for checks

Last line: ``events_per_s=<events per second of the largest world size>``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, whatever is installed
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from learner.base import Example  # noqa: E402
from learner.distributed import Lockstep  # noqa: E402
from learner.models import ModelSpec, build_reward_model  # noqa: E402
from learner.objectives import RewardObjective  # noqa: E402
from learner.step import Learner, StepConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MARK = "\n\nAssistant:"


def thumbs(seed: int, count: int) -> list[Example]:
    """``count`` thumbs from HH-RLHF pairs: each pair's chosen reply up, its rejected one down."""
    rows = [json.loads(line) for line in gzip.open(DATA, "rt", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    out: list[Example] = []
    for row in rows:
        for key, target in (("chosen", 1.0), ("rejected", 0.0)):
            cut = row[key].rfind(MARK)
            if cut >= 0:
                out.append(Example(row[key][:cut], row[key][cut + len(MARK) :], target=target))
        if len(out) >= count:
            return out[:count]
    return out


def worker(args: argparse.Namespace) -> None:
    rank, world = args.rank, args.world
    torch.set_num_threads(max(1, args.threads // world))
    torch.manual_seed(0)
    lockstep = None
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{args.out}/rendezvous-{world}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=600),
        )
        lockstep = Lockstep(rank, world)
    model, tokenizer = build_reward_model(ModelSpec(args.model, seed=0))
    learner = Learner(
        model,
        RewardObjective(tokenizer, max_length=args.max_length),
        StepConfig(lr=2e-5),
        lockstep=lockstep,
    )
    need = (args.steps + args.warmup) * args.batch_size
    examples = thumbs(args.seed + rank, need)
    times: list[float] = []
    reduce_s: list[float] = []
    for i in range(args.steps + args.warmup):
        batch = learner.objective.collate(examples[i * args.batch_size : (i + 1) * args.batch_size])
        before = lockstep.reduce_seconds if lockstep is not None else 0.0
        if lockstep is not None:
            lockstep.round(True)
        started = time.perf_counter()
        learner.step(batch)
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
            if lockstep is not None:
                reduce_s.append(lockstep.reduce_seconds - before)
    result: dict[str, Any] = {
        "step_s": statistics.median(times),
        "reduce_s": statistics.median(reduce_s) if reduce_s else 0.0,
        "bytes": lockstep.reduced_bytes if lockstep is not None else 0,
    }
    Path(args.out, f"world{world}-rank{rank}.json").write_text(json.dumps(result))
    if lockstep is not None:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, world: int) -> dict[str, Any]:
    """Run ``world`` rank processes to the end; rank 0's numbers."""
    argv = [sys.executable, __file__, "--worker", "--model", args.model, "--steps",
            str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--threads", str(args.threads), "--seed",
            str(args.seed), "--out", args.out, "--world", str(world)]  # fmt: skip
    procs = [subprocess.Popen([*argv, "--rank", str(r)]) for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank of world {world} exited with {codes}")
    return json.loads(Path(args.out, f"world{world}-rank0.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm or tiny")
    parser.add_argument("--ranks", default="1,2", help="world sizes to measure, comma-separated")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per world size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="events per rank per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the ranks' results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.out is None:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="feedstep-lockstep-bench-")
    worlds = [int(w) for w in args.ranks.split(",")]
    print(f"model={args.model} batch/rank={args.batch_size} max_length={args.max_length} "
          f"threads={args.threads} steps={args.steps}")  # fmt: skip
    print(
        f"{'ranks':>5} {'s/step':>8} {'events/s':>9} {'allreduce MB':>13} {'allreduce share':>16}"
    )
    rate = 0.0
    single: float | None = None
    for world in worlds:
        got = measure(args, world)
        rate = world * args.batch_size / got["step_s"]
        single = got["step_s"] if world == 1 else single
        print(f"{world:>5} {got['step_s']:>8.3f} {rate:>9.1f} {got['bytes'] / 1e6:>13.2f} "
              f"{got['reduce_s'] / got['step_s']:>16.3f}")  # fmt: skip
        if single is not None and world > 1:
            print(f"      step time vs 1 rank: {got['step_s'] / single:.2f}x")
    print(f"events_per_s={rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
