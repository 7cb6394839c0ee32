"""HH-RLHF harmless-base through feedstep: does the reward learner learn a real preference stream?

Reads ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz (not copied into the repo), turns each
line into one ``preference`` event (the dialogue before the last assistant turn is the prompt,
the two last replies are chosen/rejected), shuffles with a seed, and runs the events through the
same Pipeline as ``feedstep run`` (MemorySource → decode → batch → one step per batch). Every
pair is scored by the candidate *before* the step that trains on it; the figure is the
candidate's pairwise accuracy over the pass and per quarter: the reward model's chosen reward
above the rejected one's, or, with ``--objective dpo``, DPO's implicit reward margin
``β·(log π/π_ref(chosen) − log π/π_ref(rejected))`` above zero.

    python3 bench/hh_rlhf.py                       # full pass, MiniLM, 8 pairs/step, lr 2e-5
    python3 bench/hh_rlhf.py --limit 400 --device cuda
    python3 bench/hh_rlhf.py --model smollm2 --lr 1e-5 --max-length 256   # SmolLM2 reward model
    python3 bench/hh_rlhf.py --objective dpo --model smollm2 --trainable lora --lr 5e-4 \
        --pairs-per-step 4 --time-budget-s 1800   # DPO + LoRA: as many pairs as fit in 30 min

Last line: ``pairwise_accuracy=<candidate accuracy over the pass>``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.models import (  # noqa: E402
    ModelSpec,
    build_causal_lm,
    build_reward_model,
    select_device,
)
from learner.objectives import DPOObjective, RewardObjective  # noqa: E402
from learner.step import Learner, StepConfig  # noqa: E402
from monitors.metrics import Metrics  # noqa: E402
from streaming.runtime.pipeline import Pipeline, PipelineSettings  # noqa: E402
from streaming.testing import MemorySink, MemorySource  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MARK = "\n\nAssistant:"


def split_last_turn(dialogue: str) -> tuple[str, str]:
    """(everything before the last assistant turn, the last assistant reply)."""
    cut = dialogue.rfind(MARK)
    if cut < 0:
        raise ValueError("dialogue has no assistant turn")
    return dialogue[:cut].strip(), dialogue[cut + len(MARK) :].strip()


def preference_events(path: Path, seed: int, limit: int | None) -> list[bytes]:
    rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    events = []
    for i, row in enumerate(rows[:limit] if limit else rows):
        prompt, chosen = split_last_turn(row["chosen"])
        prompt_r, rejected = split_last_turn(row["rejected"])
        if prompt_r != prompt:  # the pair must share the dialogue; skip the rare mismatch
            continue
        events.append(
            json.dumps(
                {
                    "event_id": f"hh-{i}",
                    "ts": "2026-01-01T00:00:00Z",
                    "prompt": prompt,
                    "response": chosen,
                    "feedback": {"type": "preference", "chosen": chosen, "rejected": rejected},
                }
            ).encode()
        )
    return events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pairs-per-step", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--l2sp-weight", type=float, default=0.0)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--objective", choices=("reward", "dpo"), default="reward")
    ap.add_argument("--trainable", choices=("full", "head", "bias", "lora"), default="full")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    ap.add_argument(
        "--time-budget-s", type=float, default=None, help="stop after the step that passes it"
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    events = preference_events(args.data, args.seed, args.limit)
    spec = ModelSpec(args.model, seed=args.seed)
    if args.objective == "dpo":
        model, tokenizer = build_causal_lm(spec)
        objective: object = DPOObjective(tokenizer, beta=args.beta, max_length=args.max_length)
    else:
        model, tokenizer = build_reward_model(spec)
        objective = RewardObjective(tokenizer, max_length=args.max_length)
    learner = Learner(
        model,
        objective,  # type: ignore[arg-type]
        StepConfig(
            lr=args.lr,
            l2sp_weight=args.l2sp_weight,
            weight_decay=0.0,
            trainable=args.trainable,
        ),
        device=select_device(args.device),
    )
    pipe: Pipeline | None = None
    started = time.perf_counter()
    curve: list[tuple[int, float, float]] = []  # (scored, candidate correct, baseline correct)

    def progress(s) -> None:  # cumulative counts after every step
        curve.append((s.scored, s.candidate_correct, s.baseline_correct))
        budget = args.time_budget_s
        if budget is not None and pipe is not None and time.perf_counter() - started > budget:
            pipe.stop()
        if len(curve) % 25 == 0:
            print(
                f"step {len(curve)}: pairs {s.scored}, candidate acc so far "
                f"{s.candidate_accuracy:.3f}",
                file=sys.stderr,
            )

    pipe = Pipeline(
        MemorySource(events, topic="hh-rlhf"),
        MemorySink(),
        learner,
        Metrics(),
        PipelineSettings(
            batch_size=args.pairs_per_step,
            max_wait_ms=60_000,
            log_every_s=1e9,
            shutdown_timeout_s=0.1,  # at the time budget, batches not yet started are left
        ),
        on_progress=progress,
    )
    summary = pipe.run()
    elapsed = time.perf_counter() - started

    n = summary.scored
    quarters = []
    prev = (0, 0.0, 0.0)
    for q in range(1, 5):
        target = n * q // 4
        point = next(c for c in curve if c[0] >= target)
        quarters.append((point[1] - prev[1]) / max(1, point[0] - prev[0]))
        prev = point
    print(
        f"device={learner.device} objective={args.objective} trainable={args.trainable} "
        f"pairs={n} steps={summary.steps} elapsed_s={elapsed:.0f} "
        f"s_per_step={elapsed / max(1, summary.steps):.2f}"
    )
    print(f"baseline (frozen start) pairwise accuracy: {summary.baseline_accuracy:.3f}")
    print("candidate pairwise accuracy by quarter: " + " ".join(f"{a:.3f}" for a in quarters))
    print(f"pairwise_accuracy={summary.candidate_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
