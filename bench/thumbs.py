"""Thumbs that teach: HH-RLHF pairs split into unpaired thumbs, through the real pipeline.

Reads ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz (not copied into the repo). Each pair
becomes two ``thumb`` events on the same prompt and ``conversation_id``: the chosen reply
thumbed up, the rejected one down. The halves go to seeded random places in the stream, up to
about ``--max-gap`` events apart (the first half of each pair chosen at random too), with
``ts`` one second apart. One pass through the same Pipeline as ``feedstep run``
(MemorySource → decode → de-duplicate → mine → batch → one step per batch). Printed, per
configuration:

* ``pairwise``: over the HH pairs, how often the chosen half's pre-training candidate score
  (taken when its own batch was scored, before the step on it) is above the rejected half's;
  ties count half. This is what a reranker needs; chance is 0.5.
* ``pair_now``: the same comparison with both replies scored by the candidate at one moment,
  just before the step on the batch that holds the pair's *first* half (``Learner.score``, no
  gradient), so before either label was trained on: what a reranker scoring two replies at once
  sees. ``pairwise`` compares scores taken at two times; unless mining ``replace`` holds the
  first half back, the model has trained on the first half's label (always the opposite of the
  second's) in between, so it also carries what that taught it about the prompt as a whole.
* ``pointwise``: the candidate's prequential accuracy on the thumbs themselves.
* after the table, ``pairwise`` per quarter of the pass (the pairs in the order their second
  half arrived): the trend, whether more data would help.
* after that, ``pairwise`` with every score standardized by the mean and spread of the 512
  pointwise scores before it: a map that changes no comparison made at one moment, so the
  difference from ``pairwise`` is what a drifting scale of the rewards costs it.
* ``mined`` and ``mined_acc``: pairs the miner formed, and how often their margin had the right
  sign when their batch was scored (with ``add`` after the first half trained, so not a
  held-out figure; with ``replace`` neither half had trained).

Configurations: ``plain`` (BCE on the reward, today's default), ``live`` and ``mean``
(``learner.reward_reference``), ``mining`` (``ingest.mining = "add"``), ``both`` (``add`` plus
``--reference``), ``replace`` (``ingest.mining = "replace"``: a thumb that can pair is scored
when it arrives but trains only as its pair, or pointwise if it leaves the buffer unpaired),
``replace_ref`` (``replace`` plus ``--reference``), and ``shuffled``: the ``--control``
configuration on a stream whose thumbs are assigned at random within each pair, watched by a
real Governor and gate (publish=False, ``--gate-min-events``): its pairwise accuracy against the
true labels should be about 0.5 and the gate should promote nothing. ``--gate`` attaches the
same governor to the other configurations.
``--center C`` sets ``learner.reward_center`` (reward centering of the pairs) and
``--ema-decay D`` ``learner.ema_decay`` (weight averaging: the average scores each arrival) for
every configuration.

    python3 bench/thumbs.py --limit 600 --max-length 128            # every configuration
    python3 bench/thumbs.py --limit 600 --max-length 128 --config replace
    python3 bench/thumbs.py --limit 600 --max-length 128 --config shuffled --control replace

Scores are taken by wrapping the objective's ``collate`` (what each batch holds, in order) and
the learner's ``step`` (its per-example pre-training scores); nothing private is read.
Last line: ``pairwise=<the best configuration's pairwise accuracy>`` (the control left out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.base import Example, TensorBatch  # noqa: E402
from learner.models import POOLINGS, ModelSpec, build_reward_model, select_device  # noqa: E402
from learner.objectives import RewardObjective  # noqa: E402
from learner.step import Learner, StepConfig, StepResult  # noqa: E402
from monitors.gate import GateConfig  # noqa: E402
from monitors.metrics import Metrics  # noqa: E402
from streaming.ingest.mining import MiningSettings  # noqa: E402
from streaming.promotion.governor import GovernanceSettings, Governor  # noqa: E402
from streaming.runtime.pipeline import Pipeline, PipelineSettings  # noqa: E402
from streaming.testing import MemorySink, MemorySource  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MARK = "\n\nAssistant:"
CONFIGS = ("plain", "live", "mean", "mining", "both", "replace", "replace_ref", "shuffled")
REFERENCE = {"plain": "none", "live": "live", "mean": "mean", "mining": "none", "replace": "none"}
ZWINDOW = 512
MINING = {"mining": "add", "both": "add", "replace": "replace", "replace_ref": "replace"}


@dataclass(frozen=True, slots=True)
class Half:
    """One thumbs event of the stream: which pair, whether it is the truly chosen reply."""

    pair: int
    chosen: bool
    up: bool
    prompt: str
    response: str


def read_pairs(path: Path, seed: int, limit: int | None) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) of the split, shuffled with ``seed``, the first ``limit``."""
    rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    pairs: list[tuple[str, str, str]] = []
    for row in rows:
        if limit is not None and len(pairs) >= limit:
            break
        prompt, chosen = _last_turn(row["chosen"])
        prompt_r, rejected = _last_turn(row["rejected"])
        if prompt == prompt_r and chosen != rejected:  # skip the rare pair that is no pair
            pairs.append((prompt, chosen, rejected))
    return pairs


def _last_turn(dialogue: str) -> tuple[str, str]:
    cut = dialogue.rfind(MARK)
    if cut < 0:
        raise ValueError("an HH-RLHF dialogue without an assistant turn")
    return dialogue[:cut].strip(), dialogue[cut + len(MARK) :].strip()


def thumbs_stream(
    pairs: list[tuple[str, str, str]], seed: int, max_gap: int, shuffle_labels: bool
) -> list[Half]:
    """Both halves of every pair, the second placed up to ~``max_gap`` events after the first.

    Pair ``i``'s first half sits at position ``2i`` and its second at ``2i + gap`` (gap uniform
    in 1..max_gap) of a sort key; with two events per pair per two positions, the key is about
    the event index, so the halves end up about ``gap`` events apart.
    """
    rng = random.Random(seed + 1)
    keyed: list[tuple[int, float, Half]] = []
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        chosen_up = rng.random() < 0.5 if shuffle_labels else True
        halves = [
            Half(i, True, chosen_up, prompt, chosen),
            Half(i, False, not chosen_up, prompt, rejected),
        ]
        rng.shuffle(halves)
        gap = rng.randint(1, max_gap)
        keyed.append((2 * i, rng.random(), halves[0]))
        keyed.append((2 * i + gap, rng.random(), halves[1]))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [half for _, _, half in keyed]


def payloads(stream: list[Half]) -> list[bytes]:
    """The thumbs events as the chat service would send them (JSON, one per message)."""
    out = []
    for n, h in enumerate(stream):
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_767_225_600 + n))
        out.append(
            json.dumps(
                {
                    "event_id": f"hh-{h.pair}-{'c' if h.chosen else 'r'}",
                    "ts": ts,
                    "prompt": h.prompt,
                    "response": h.response,
                    "conversation_id": f"hh-{h.pair}",
                    "response_id": f"hh-{h.pair}-{'c' if h.chosen else 'r'}",
                    "feedback": {"type": "thumb", "value": 1 if h.up else -1},
                }
            ).encode()
        )
    return out


def run_config(name: str, args: argparse.Namespace, pairs: list[tuple[str, str, str]]) -> dict:
    """One pass of one configuration; its figures."""
    shuffled = name == "shuffled"
    stream = thumbs_stream(pairs, args.seed, args.max_gap, shuffle_labels=shuffled)
    like = args.control if shuffled else name  # the control runs as its configuration
    reference = REFERENCE.get(like, args.reference)
    mining = MINING.get(like, "off")
    model, tokenizer = build_reward_model(
        ModelSpec(args.model, seed=args.seed, pooling=args.pooling)
    )
    objective = RewardObjective(
        tokenizer, max_length=args.max_length, reference=reference, center=args.center
    )
    learner = Learner(
        model,
        objective,
        StepConfig(
            lr=args.lr,
            l2sp_weight=args.l2sp_weight,
            weight_decay=0.0,
            ema_decay=args.ema_decay,
        ),
        device=select_device(args.device),
    )
    # What each batch holds, in order: the tokenize stage collates batches in the order the
    # train stage steps them, one thread each.
    batches: deque[list[Example]] = deque()
    scored: list[tuple[Example, float, float]] = []  # (example, candidate score, correct)
    collate, step = objective.collate, learner.step
    first_halves = _first_halves(stream)  # stream index of a pair's first half -> its texts
    now: list[float] = []  # per pair: 1 chosen above rejected, 0.5 a tie, 0 below
    seen = [0]  # pointwise examples stepped so far = their index in the stream

    def collate_and_remember(examples: Any) -> TensorBatch:
        batches.append(list(examples))
        return collate(examples)

    def step_and_record(batch: Any) -> StepResult:  # learner.step, whatever it takes
        examples = batches[0]
        first = seen[0]
        due = [
            first_halves[k] for k in range(first, first + _points(examples)) if k in first_halves
        ]
        if due:  # both halves of these pairs, scored at once before this step
            both = [Example(p, r, target=1.0) for p, c, w in due for r in (c, w)]
            _, cand_now = learner.score(collate(both))
            for i in range(len(due)):
                c, w = float(cand_now.score[2 * i]), float(cand_now.score[2 * i + 1])
                now.append(1.0 if c > w else 0.5 if c == w else 0.0)
        seen[0] += _points(examples)
        result = step(batch)
        examples = batches.popleft()
        cand = result.candidate
        scored.extend(zip(examples, cand.score.tolist(), cand.correct.tolist(), strict=True))
        return result

    objective.collate = collate_and_remember  # type: ignore[method-assign]
    learner.step = step_and_record  # type: ignore[method-assign]
    metrics = Metrics()
    governor = None
    if shuffled or args.gate:
        governor = Governor(
            learner,
            None,
            None,
            metrics,
            GovernanceSettings(
                gate=GateConfig(min_events=args.gate_min_events, holdout_required=False),
                publish=False,
            ),
        )
    settings = PipelineSettings(
        batch_size=args.batch_size,
        max_wait_ms=60_000,
        log_every_s=1e9,
        gc_freeze=False,
        mining=MiningSettings(mode=mining, window_events=2 * args.max_gap + 16),
    )
    pipe = Pipeline(
        MemorySource(payloads(stream), topic="thumbs"),
        MemorySink(),
        learner,
        metrics,
        settings,
        governor=governor,
    )
    started = time.perf_counter()
    summary = pipe.run()
    elapsed = time.perf_counter() - started

    # Pointwise examples come out in stream order, one per event: mining keeps every event's
    # own example in its batch ("replace" with weight 0). An example released unpaired from
    # the miner's buffer would be one more (the window is set so that none is).
    points = [(ex, s, c) for ex, s, c in scored if not ex.pairwise]
    mined = [(ex, s) for ex, s, _ in scored if ex.pairwise]
    if len(points) != len(stream):
        raise RuntimeError(f"{len(points)} pointwise scores for {len(stream)} events")
    by_pair: dict[int, dict[bool, float]] = {}
    for half, (ex, s, _) in zip(stream, points, strict=True):
        if (ex.prompt, ex.response) != (half.prompt, half.response):
            raise RuntimeError("a batch's examples are not in stream order")
        by_pair.setdefault(half.pair, {})[half.chosen] = s
    outcome = {
        i: 1.0 if d[True] > d[False] else 0.5 if d[True] == d[False] else 0.0
        for i, d in by_pair.items()
    }
    wins = sum(outcome.values())
    # Scale drift: the same comparison with each score standardized by the mean and spread of
    # the ZWINDOW pointwise scores before it, a per-moment monotone map that changes no
    # comparison made at one moment, only those across moments.
    values = [s for _, s, _ in points]
    by_pair_z: dict[int, dict[bool, float]] = {}
    for k, half in enumerate(stream):
        recent = values[max(0, k - ZWINDOW) : k]
        if len(recent) < 2:
            z = 0.0
        else:
            mean = sum(recent) / len(recent)
            spread = (sum((v - mean) ** 2 for v in recent) / len(recent)) ** 0.5
            z = (values[k] - mean) / spread if spread > 0 else 0.0
        by_pair_z.setdefault(half.pair, {})[half.chosen] = z
    wins_z = sum(
        1.0 if d[True] > d[False] else 0.5 if d[True] == d[False] else 0.0
        for d in by_pair_z.values()
    )
    # The trend over the pass: pairs in the order their second half arrived, in quarters.
    done = list(dict.fromkeys(h.pair for h in reversed(stream)))[::-1]
    quarters = [done[len(done) * q // 4 : len(done) * (q + 1) // 4] for q in range(4)]
    defined = [c for _, _, c in points if c == c]
    promotions = (
        sum(1 for e in governor.history if e.kind == "promote") if governor is not None else None
    )
    return {
        "config": name,
        "reference": reference,
        "mining": mining,
        "pairwise": wins / len(by_pair),
        "pairwise_z": wins_z / len(by_pair_z),
        "quarters": [sum(outcome[i] for i in q) / len(q) if q else float("nan") for q in quarters],
        "pair_now": sum(now) / len(now) if now else float("nan"),
        "pointwise": sum(defined) / len(defined) if defined else float("nan"),
        "mined": len(mined),
        "mined_acc": (sum(s > 0 for _, s in mined) / len(mined)) if mined else float("nan"),
        "promotions": promotions,
        "steps": summary.steps,
        "events": len(stream),
        "elapsed_s": elapsed,
    }


def _first_halves(stream: list[Half]) -> dict[int, tuple[str, str, str]]:
    """Stream index of each pair's first half -> (prompt, chosen reply, rejected reply)."""
    first: dict[int, int] = {}
    out = {}
    for k, half in enumerate(stream):
        if half.pair not in first:
            first[half.pair] = k
            continue
        other = stream[first[half.pair]]
        chosen, rejected = (half, other) if half.chosen else (other, half)
        out[first[half.pair]] = (half.prompt, chosen.response, rejected.response)
    return out


def _points(examples: list[Example]) -> int:
    return sum(not e.pairwise for e in examples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--config", choices=CONFIGS, action="append", help="repeatable; default all")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    ap.add_argument("--batch-size", type=int, default=16, help="events per step")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--l2sp-weight", type=float, default=0.0)
    ap.add_argument(
        "--center", type=float, default=0.0, help="learner.reward_center of the pairs (0: off)"
    )
    ap.add_argument(
        "--ema-decay", type=float, default=0.0, help="learner.ema_decay, weight averaging (0: off)"
    )
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-gap", type=int, default=1000, help="events between a pair's halves")
    ap.add_argument(
        "--reference", choices=("live", "mean"), default="live", help="of both, replace_ref"
    )
    ap.add_argument(
        "--control",
        choices=[c for c in CONFIGS if c != "shuffled"],
        default="replace",
        help="the configuration the shuffled control runs",
    )
    ap.add_argument("--gate", action="store_true", help="a governor on every configuration")
    ap.add_argument("--gate-min-events", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pooling", choices=POOLINGS, default=None, help="of the reward model (default: its own)"
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = read_pairs(args.data, args.seed, args.limit)
    rows = []
    print(
        f"{'config':<11} {'reference':<9} {'mining':<7} {'pairwise':>8} {'pair_now':>8} "
        f"{'pointwise':>9} "
        f"{'mined':>6} {'mined_acc':>9} {'promotions':>10} {'steps':>5} {'s':>6}"
    )
    for name in args.config or CONFIGS:
        row = run_config(name, args, pairs)
        rows.append(row)
        promotions = "-" if row["promotions"] is None else str(row["promotions"])
        print(
            f"{row['config']:<11} {row['reference']:<9} {row['mining']:<7} "
            f"{row['pairwise']:>8.3f} {row['pair_now']:>8.3f} "
            f"{row['pointwise']:>9.3f} {row['mined']:>6d} "
            f"{row['mined_acc']:>9.3f} {promotions:>10} {row['steps']:>5d} "
            f"{row['elapsed_s']:>6.0f}",
            flush=True,
        )
    for row in rows:
        trend = " ".join(f"{v:.3f}" for v in row["quarters"])
        print(f"{row['config']}: pairwise by quarter of the pass (second halves' order): {trend}")
        print(
            f"{row['config']}: pairwise with scores standardized by the {ZWINDOW} before each "
            f"(scale drift): {row['pairwise_z']:.3f}"
        )
    real = [r for r in rows if r["config"] != "shuffled"] or rows
    print(
        f"pairs={len(pairs)} events={rows[0]['events']} model={args.model} "
        f"lr={args.lr} center={args.center}"
    )
    print(f"pairwise={max(r['pairwise'] for r in real):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
