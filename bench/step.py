"""Benchmark: feedstep's full step against a bare forward + backward + AdamW step.

For each model (``--models``), on one fixed batch, this times

* ``bare``: the objective's forward on the model, mean loss, backward, ``AdamW.step()``,
  ``zero_grad`` -- what a plain training loop does;
* ``full``: :meth:`learner.step.Learner.step` (baseline scoring, candidate forward, L2-SP,
  guard, clipping, AdamW) plus the per-step monitoring the sidecar does, through the same
  object the run loop uses (:class:`streaming.runtime.telemetry.Telemetry`: ``account`` the
  step, then ``publish``, i.e. prequential windows, histograms, gauges, parameter distance);
* ``full-nobase``: the same full step with an objective that computes the baseline's values
  once and returns them from then on, to show what the step costs beyond the baseline scoring a
  bare step never does.

Models: ``minilm`` (the default reward model, :class:`learner.objectives.RewardObjective`),
``causal`` (a GPT-2 layout causal LM, 4 layers, width 256, MiniLM's tokenizer, with the ``sft``
objective: mean next-token NLL over the response), and for quick checks ``tiny`` (the 2-layer
reward model the tests use) and ``tiny-causal`` (the tests' 2-layer Llama, ``sft``). Causal
models get thumbs up (or pairs), the only examples ``sft`` trains on.

The three variants run interleaved (rotating order) so machine load hits them alike; each gets
``--warmup`` untimed and ``--iters`` timed steps. Ratios are median(full) / median(bare). Both
sides use the model in eval mode (the learner switches dropout off), the same batch, the same
objective code and AdamW (``foreach=True``, lr 2e-5, weight decay 0.01; the learner exempts
biases and norm weights from the decay), bf16 autocast on CUDA.

Peak memory per parameter: on CUDA ``torch.cuda.max_memory_allocated`` over a few steps of one
variant (minus what was allocated before it was built); on the CPU the growth of the peak
resident set (``VmHWM``) of a fresh child process from before the model is loaded to after a
few steps -- weights, baseline copy, gradients, optimizer state and activations.

Threads: on a machine shared with other work, pass ``--threads`` no larger than the idle cores
(``--threads 1`` on a busy 2-core box). With more intra-op threads than free cores, each small
kernel's OpenMP barrier waits for a scheduler time slice; MiniLM has 103 weight tensors, so the
per-parameter passes (L2-SP, clipping, AdamW) slow down 10-30x and the ratio turns into noise.

Usage::

    python3 bench/step.py --threads 2            # prints a table; last line ratio=<minilm ratio>
    python3 bench/step.py --device cuda --iters 50
    python3 bench/step.py --models tiny,tiny-causal --iters 3 --warmup 1   # seconds, for checks

The last line is ``ratio=<ratio of the first model of --models>`` (of ``minilm`` by default).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, whatever is installed

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from learner.base import Example, Objective, ObjectiveOutput, TensorBatch  # noqa: E402
from learner.models import (  # noqa: E402
    TINY_CAUSAL,
    ModelSpec,
    build_causal_lm,
    build_reward_model,
    minilm_path,
)
from learner.objectives import RewardObjective, SFTObjective  # noqa: E402
from learner.step import Learner, StepConfig  # noqa: E402

MODELS = ("minilm", "causal", "tiny", TINY_CAUSAL)
CAUSAL = ("causal", TINY_CAUSAL)
VARIANTS = ("bare", "full", "full-nobase")
LR, WEIGHT_DECAY = 2e-5, 0.01
WORDS = (
    "the a to of and in is it you that for on with as are this be at or have from not by "
    "what can how do we my your will if about when there more one all so would like just "
    "time know people make good help need want work way think use find day year question "
    "answer should could because also well any some than then them these other into out up "
    "water boil egg minutes list python reverse travel pack shoes sleep early train weights "
    "recipe bread flour oven garden soil plant light music guitar practice chord write email"
).split()


# -- models, data ------------------------------------------------------------------------------
def build(name: str, seq_len: int) -> tuple[nn.Module, Objective]:
    """The model (CPU, fp32) and the objective that scores it."""
    if name in ("minilm", "tiny"):
        model, tokenizer = build_reward_model(ModelSpec(name))
        return model, RewardObjective(tokenizer, max_length=seq_len)
    if name == TINY_CAUSAL:
        causal, tokenizer = build_causal_lm(ModelSpec(TINY_CAUSAL))
        return causal, SFTObjective(tokenizer, max_length=seq_len)
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=max(512, seq_len),
        n_embd=256,
        n_layer=4,
        n_head=4,
    )
    return GPT2LMHeadModel(config), SFTObjective(tokenizer, max_length=seq_len)


def examples(n: int, seq_len: int, pairs: int, causal: bool, seed: int = 0) -> list[Example]:
    """``n`` examples of about ``seq_len`` tokens each; the first ``pairs`` are pairs.

    Pointwise examples alternate thumbs up and down for a reward model; a causal LM (``sft``)
    gets thumbs up only.
    """
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    out = []
    for i in range(n):
        prompt, response = text(int(seq_len * 0.35)), text(int(seq_len * 0.6))
        if i < pairs:
            out.append(Example(prompt, response, rejected=text(int(seq_len * 0.6))))
        else:
            out.append(Example(prompt, response, target=1.0 if causal else float(i % 2)))
    return out


class CachedBaselineObjective(Objective):
    """``inner``, except that the values of the model ``cached`` are computed once, then reused.

    Stands in for a baseline whose scoring costs nothing: set ``cached`` to the learner's
    baseline and every step after the first reuses the first step's baseline values (the batch
    never changes).
    """

    def __init__(self, inner: Objective) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_reference = inner.needs_reference
        self.min_batch_size = inner.min_batch_size
        self.cached: nn.Module | None = None
        self.values: torch.Tensor | None = None

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        return self.inner.collate(examples)

    def model_values(self, model: nn.Module, batch: TensorBatch) -> torch.Tensor:
        if model is not self.cached:
            return self.inner.model_values(model, batch)
        if self.values is None:
            self.values = self.inner.model_values(model, batch).detach()
        return self.values

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        return self.inner.from_values(values, batch, reference)


def make_variant(
    variant: str, model: nn.Module, objective: Objective, batch: TensorBatch, device: torch.device
) -> tuple[Callable[[], None], dict[str, Any]]:
    """A no-argument function doing one step of ``variant``, and its parts (for the breakdown)."""
    if variant == "bare":
        bare = copy.deepcopy(model).to(device).eval()
        opt = torch.optim.AdamW(bare.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)
        autocast = device.type == "cuda"

        def bare_step() -> None:
            b = batch.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = objective.forward(bare, b)
            out.loss.mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return bare_step, {"model": bare, "optimizer": opt}

    from monitors.metrics import Metrics
    from streaming.runtime.pipeline import PipelineSettings
    from streaming.runtime.telemetry import Telemetry
    from streaming.testing import MemorySource

    stepped = CachedBaselineObjective(objective) if variant == "full-nobase" else objective
    learner = Learner(
        copy.deepcopy(model),
        stepped,
        StepConfig(lr=LR, weight_decay=WEIGHT_DECAY),
        device=device,
    )
    if isinstance(stepped, CachedBaselineObjective):
        stepped.cached = learner.baseline
    window = PipelineSettings().prequential_window
    telemetry = Telemetry(Metrics(), learner, MemorySource([]), window=window)
    last: dict[str, Any] = {}

    def monitor() -> None:  # what the run loop does after each step
        telemetry.account(last["result"], [time.time()] * batch.size)
        telemetry.publish()

    def full_step() -> None:
        last["result"] = learner.step(batch)
        monitor()

    return full_step, {"learner": learner, "monitor": monitor, "telemetry": telemetry}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def breakdown(parts: dict[str, Any], batch: TensorBatch, device: torch.device, reps: int) -> dict:
    """Median seconds of each piece of the full step (and of the monitors' parameter distance)."""
    learner: Learner = parts["learner"]
    b = batch.to(device)

    def base_fwd() -> None:
        with torch.no_grad():
            learner.objective.forward(learner.baseline, b)

    def cand_fwd_bwd() -> None:
        out = learner.objective.forward(learner.candidate, b)
        out.loss.mean().backward()

    def l2sp() -> None:
        learner.l2sp.penalty()
        learner.l2sp.add_grad()

    def clip() -> None:
        torch.nn.utils.clip_grad_norm_(learner.params, 1.0, foreach=True)

    def adamw() -> None:
        learner.optimizer.step()

    def distance() -> None:  # part of publish: ||candidate - baseline||, once per step
        math.sqrt(float(learner.l2sp.sq_distance()))  # the computation, not the learner's cache

    pieces: dict[str, Callable[[], Any]] = {
        "baseline fwd": base_fwd,
        "cand fwd+bwd": cand_fwd_bwd,
        "l2sp": l2sp,
        "clip": clip,
        "adamw": adamw,
        "metrics": parts["monitor"],
        "(in metrics: param distance)": distance,
    }
    # One rep is the step taken apart, in the step's order: backward creates the gradients that
    # L2-SP, clipping and AdamW then use, and they are dropped at the end as the step does.
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(reps):
        learner.optimizer.zero_grad(set_to_none=True)
        for name, fn in pieces.items():
            times[name].append(timed(fn, device))
    learner.optimizer.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


# -- memory --------------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    ``VmHWM`` belongs to the process image, so it starts afresh at exec; ``ru_maxrss`` would
    carry over the (large) parent's figure through fork/vfork + exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def the_batch(name: str, objective: Objective, args: argparse.Namespace) -> TensorBatch:
    causal = name in CAUSAL
    return objective.collate(examples(args.batch_size, args.seq_len, args.pairs, causal))


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS growth over load + a few steps of one variant, per param."""
    torch.set_num_threads(args.threads)
    name, variant = args.memory_child
    before = peak_rss_bytes()
    model, objective = build(name, args.seq_len)
    params = sum(p.numel() for p in model.parameters())
    batch = the_batch(name, objective, args)
    step, _ = make_variant(variant, model, objective, batch, torch.device("cpu"))
    del model
    for _ in range(3):
        step()
    peak = peak_rss_bytes()
    print(json.dumps({"params": params, "peak_bytes": peak - before}))


def cpu_memory(name: str, variant: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--memory-child", name, variant]
    cmd += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    cmd += ["--seq-len", str(args.seq_len), "--pairs", str(args.pairs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["peak_bytes"] / data["params"]


def cuda_memory(
    model: nn.Module, objective: Objective, batch: TensorBatch, variant: str, device: torch.device
) -> float:
    gc.collect()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step, parts = make_variant(variant, model, objective, batch, device)
    for _ in range(3):
        step()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - start
    del step, parts
    gc.collect()
    return peak / sum(p.numel() for p in model.parameters())


# -- main ----------------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, objective = build(name, args.seq_len)
    params = sum(p.numel() for p in model.parameters())
    batch = the_batch(name, objective, args)
    if device.type == "cuda":
        batch = batch.pin()
    tokens = int(batch.tensors["attention_mask"].sum())
    steps = {v: make_variant(v, model, objective, batch, device) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    say(f"{name}: {params / 1e6:.1f}M parameters, {tokens} tokens; timing {VARIANTS}")
    for i in range(args.warmup + args.iters):
        order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]  # rotate so no variant always goes first
        for v in order:
            took = timed(steps[v][0], device)
            if i >= args.warmup:
                times[v].append(took)
        if i % 5 == 4:
            say(f"{name}: round {i + 1}/{args.warmup + args.iters}")
    med = {v: statistics.median(t) for v, t in times.items()}
    paired = [f / b for f, b in zip(times["full"], times["bare"], strict=True)]
    row: dict[str, Any] = {
        "model": name,
        "params": params,
        "sequences": int(batch.tensors["input_ids"].shape[0]),
        "tokens": tokens,
        "median_s": med,
        "ratio": med["full"] / med["bare"],
        "ratio_paired": statistics.median(paired),
        "ratio_nobase": med["full-nobase"] / med["bare"],
        "breakdown": breakdown(steps["full"][1], batch, device, reps=max(5, args.iters // 2)),
    }
    say(f"{name}: ratio {row['ratio']:.3f}; breakdown done")
    if args.memory:
        say(f"{name}: measuring peak memory")
        if device.type == "cuda":
            del steps
            gc.collect()
            row["mem"] = {v: cuda_memory(model, objective, batch, v, device) for v in VARIANTS[:2]}
        else:
            row["mem"] = {v: cpu_memory(name, v, args) for v in VARIANTS[:2]}
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device) -> None:
    print(
        f"feedstep step benchmark: device={device} threads={torch.get_num_threads()} "
        f"batch={args.batch_size} examples ({args.pairs} pairs) seq_len<={args.seq_len} "
        f"warmup={args.warmup} iters={args.iters} torch={torch.__version__}"
    )
    head = (
        f"{'model':<11} {'params':>7} {'seqs':>4} {'tokens':>6} {'bare ms':>8} {'full ms':>8} "
        f"{'ratio':>6} {'paired':>6} {'nobase ms':>9} {'ratio':>6}"
    )
    if args.memory:
        head += f" {'mem B/param bare':>16} {'full':>6}"
    print(head)
    for r in rows:
        m = r["median_s"]
        line = (
            f"{r['model']:<11} {r['params'] / 1e6:6.1f}M {r['sequences']:>4} {r['tokens']:>6} "
            f"{m['bare'] * 1e3:8.1f} {m['full'] * 1e3:8.1f} {r['ratio']:6.3f} "
            f"{r['ratio_paired']:6.3f} {m['full-nobase'] * 1e3:9.1f} {r['ratio_nobase']:6.3f}"
        )
        if args.memory:
            line += f" {r['mem']['bare']:16.1f} {r['mem']['full']:6.1f}"
        print(line)
    print("breakdown: the full step taken apart, each piece timed (median ms, % of the bare step):")
    for r in rows:
        bare = r["median_s"]["bare"]
        pieces = "  ".join(
            f"{k}={v * 1e3:.1f} ({100 * v / bare:.0f}%)" for k, v in r["breakdown"].items()
        )
        print(f"  {r['model']:<11} {pieces}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument(
        "--models", default="minilm,causal", help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step")
    parser.add_argument("--pairs", type=int, default=0, help="how many of them are pairs")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (max)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds")
    parser.add_argument("--iters", type=int, default=20, help="timed rounds")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.batch_size < 1 or not 0 <= args.pairs <= args.batch_size:
        parser.error("--batch-size must be >= 1 and --pairs between 0 and --batch-size")
    if args.seq_len < 8:
        parser.error("--seq-len must be at least 8 (the objectives' minimum)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown or args.models!r}; choose from {MODELS}")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.memory_child:
        memory_child(args)
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    rows = [run_model(n, args, device) for n in names]
    print_table(rows, args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    print(f"ratio={rows[0]['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
