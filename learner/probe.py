r"""Forgetting, measured: how far the candidate's predictions moved from the live model's.

Online steps on feedback can make a model forget what no feedback mentions. A *probe* is a
fixed file of prompts the operator cares about (capabilities, policies, a sample of ordinary
traffic); :meth:`Probe.measure` compares the candidate's predictive distributions on them with
the live model's, as ``KL(candidate ‖ live)``:

* causal LMs (a :class:`~learner.objectives.causal.CausalLMObjective`): each probe line is laid
  out exactly as the objective lays out a training sequence (its chat template included); a line
  without a response is its prompt with the assistant's turn opened. At every real position but
  the last one (the end token, after which nothing is scored) the two models' next-token
  distributions are compared; the result is the mean over all those positions of the probe set,
  in nats per token. A prompt-only line so contributes the distribution of the reply's first
  token, a line with a response the whole reply as the model would be scored on it.
* reward models (a :class:`~learner.objectives.reward.RewardObjective`): a reward is the logit of
  P(good | prompt, response), so each (prompt, response) line compares Bernoulli(σ(r_candidate))
  with Bernoulli(σ(r_live)); the result is the mean over lines, in nats. The mean absolute
  reward change ``|r_candidate - r_live|`` comes with it as ``score_drift``.

Why this direction: ``KL(candidate ‖ live)`` is the expected log-ratio under what the candidate
would say, the quantity that KL-regularized fine-tuning bounds, and it is large where the
candidate puts mass the live model did not. Both models run in float32 and eval mode (dropout
off), so a measurement is deterministic and is exactly 0 when the two models are the same.

The probe file is JSON Lines, one object a line: ``{"prompt": "...", "response": "..."}``
(``response`` optional for causal LMs, required for reward models; other keys are ignored, so
a file of feedback events works too). It is read and tokenized once; the batches stay on the
learner's device.

Example:
    >>> probe = Probe.from_file("probe.jsonl", learner.objective)  # doctest: +SKIP
    >>> probe.measure(learner).kl  # the caller holds the learner lock  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from learner.base import Example, Objective, TensorBatch
from learner.objectives.causal import CausalLMObjective
from learner.objectives.reward import RewardObjective

if TYPE_CHECKING:
    from learner.step import Learner

log = logging.getLogger(__name__)

MAX_PROBE_EXAMPLES = 256
"""Lines read from a probe file; the rest are ignored, and a log line says so."""
LINE_FORMAT = '{"prompt": "...", "response": "..."}'


class ProbeError(ValueError):
    """A probe file that cannot be used; the message names the file, the line and what to do."""


@dataclass(frozen=True, slots=True)
class ProbeLine:
    """One probe: a prompt and, optionally, a response (required for reward models)."""

    prompt: str
    response: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One measurement of the probe set.

    Attributes:
        kl: mean ``KL(candidate ‖ live)`` in nats: per token (causal LMs) or per line of
            P(good) (reward models). >= 0; 0 when the models are the same.
        score_drift: reward models: mean ``|r_candidate - r_live|``; None for causal LMs.
        per_example: each line's KL (causal LMs: its mean over its positions), in file order.
        positions: what ``kl`` averages over: token positions (causal LMs) or lines.
        seconds: wall time of the measurement (both models' forwards over the probe set).
    """

    kl: float
    score_drift: float | None
    per_example: tuple[float, ...]
    positions: int
    seconds: float


def read_probe_file(
    path: str | os.PathLike[str],
    *,
    needs_response: bool,
    max_examples: int = MAX_PROBE_EXAMPLES,
) -> list[ProbeLine]:
    """The first ``max_examples`` probe lines of a JSONL file (blank lines skipped).

    Raises:
        ProbeError: the file is missing, unreadable or empty, or a line is not a JSON object
            with a non-empty string ``prompt`` (and a string ``response`` when
            ``needs_response``); the message gives the line number.
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    p = Path(path)
    where = f"probe file {str(p)!r}"
    if not p.is_file():
        raise ProbeError(
            f"{where} does not exist; pass a JSONL file with one {LINE_FORMAT} per line, "
            "or unset probe_file to switch the probe_kl check off"
        )
    lines: list[ProbeLine] = []
    ignored = 0
    try:
        with p.open(encoding="utf-8") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                if len(lines) >= max_examples:
                    ignored += 1
                    continue
                lines.append(_parse_line(text, number, where, needs_response))
    except UnicodeDecodeError as exc:
        raise ProbeError(f"{where} is not UTF-8 text ({exc}); write it as UTF-8 JSONL") from None
    except OSError as exc:
        raise ProbeError(f"{where} cannot be read: {exc}") from None
    if not lines:
        raise ProbeError(
            f"{where} holds no probe lines; write one {LINE_FORMAT} per line, or unset "
            "probe_file to switch the probe_kl check off"
        )
    if ignored:
        log.warning(
            "%s: only the first %d probe lines are used, %d more ignored",
            where,
            len(lines),
            ignored,
        )
    return lines


def _parse_line(text: str, number: int, where: str, needs_response: bool) -> ProbeLine:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(
            f"{where} line {number} is not JSON ({exc.msg}); expected {LINE_FORMAT}"
        ) from None
    if not isinstance(data, dict):
        raise ProbeError(
            f"{where} line {number} is a JSON {type(data).__name__}, expected an object "
            f"{LINE_FORMAT}"
        )
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProbeError(
            f"{where} line {number}: 'prompt' must be a non-empty string, got {_kind(prompt)}"
        )
    response = data.get("response")
    if response is not None and not isinstance(response, str):
        raise ProbeError(
            f"{where} line {number}: 'response' must be a string when given, got {_kind(response)}"
        )
    if needs_response and response is None:
        raise ProbeError(
            f"{where} line {number} has no 'response': a reward model scores (prompt, response) "
            f"pairs, so every line needs both, {LINE_FORMAT}"
        )
    return ProbeLine(prompt, response)


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


class Probe:
    """A fixed probe set, tokenized once, and the KL(candidate ‖ live) over it.

    Args:
        objective: the learner's objective: a causal-LM objective or the reward objective;
            it lays out and tokenizes the probe lines as it does training examples.
        lines: the probes (for reward models each needs a response).
        batch_size: probe lines per forward; bounds the memory of the causal-LM logits
            (``batch_size x width x vocabulary`` floats per model).

    Example:
        >>> from learner.models import TINY_CAUSAL, ModelSpec, build_causal_lm
        >>> from learner.objectives import SFTObjective
        >>> from learner.step import Learner
        >>> model, tokenizer = build_causal_lm(ModelSpec(TINY_CAUSAL))
        >>> learner = Learner(model, SFTObjective(tokenizer, max_length=32))
        >>> probe = Probe(learner.objective, [ProbeLine("Hi there"), ProbeLine("Why?", "Because.")])
        >>> result = probe.measure(learner)  # candidate == live: nothing forgotten yet
        >>> result.kl, result.score_drift, len(result.per_example)
        (0.0, None, 2)
    """

    def __init__(
        self, objective: Objective, lines: Sequence[ProbeLine], batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not lines:
            raise ProbeError("a probe needs at least one line")
        if isinstance(objective, CausalLMObjective):
            self.kind = "causal"
        elif isinstance(objective, RewardObjective):
            self.kind = "reward"
            missing = [i for i, line in enumerate(lines) if line.response is None]
            if missing:
                raise ProbeError(
                    f"probe line {missing[0] + 1} has no response: a reward model scores "
                    "(prompt, response) pairs"
                )
        else:
            raise ProbeError(
                f"a probe measures causal LMs (kto, dpo, sft) and reward models, not the "
                f"{getattr(objective, 'name', type(objective).__name__)!r} objective; unset "
                "probe_file"
            )
        self.objective = objective
        self.size = len(lines)
        chunks = [lines[i : i + batch_size] for i in range(0, len(lines), batch_size)]
        collate = self._causal_batch if self.kind == "causal" else self._reward_batch
        self._batches = [collate(chunk) for chunk in chunks]
        self._device: torch.device | None = None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        objective: Objective,
        max_examples: int = MAX_PROBE_EXAMPLES,
        batch_size: int = 8,
    ) -> Probe:
        """Read a probe JSONL file (see the module docstring) and tokenize it once.

        Raises:
            ProbeError: see :func:`read_probe_file`, and an objective a probe cannot measure.
        """
        lines = read_probe_file(
            path,
            needs_response=isinstance(objective, RewardObjective),
            max_examples=max_examples,
        )
        return cls(objective, lines, batch_size=batch_size)

    def __len__(self) -> int:
        return self.size

    # -- collate (CPU, once) --------------------------------------------------------------------
    def _causal_batch(self, lines: Sequence[ProbeLine]) -> TensorBatch:
        assert isinstance(self.objective, CausalLMObjective)
        # An empty response lays the line out as prompt + opened assistant turn + end token;
        # the end token's own position is left out below, so it changes nothing (causal).
        t = self.objective.encode(
            [line.prompt for line in lines], [line.response or "" for line in lines]
        )
        real = t["attention_mask"].bool()
        followed = torch.zeros_like(real)
        followed[:, :-1] = real[:, 1:]
        # Positions whose next token is in the sequence: every real one but the last, on either
        # padding side.
        rows, cols = (real & followed).nonzero(as_tuple=True)
        return TensorBatch(
            tensors={
                "input_ids": t["input_ids"],
                "attention_mask": t["attention_mask"],
                "position_ids": t["position_ids"],
                "kl_rows": rows,
                "kl_cols": cols,
                "kl_count": (real & followed).sum(-1),
            },
            size=len(lines),
        )

    def _reward_batch(self, lines: Sequence[ProbeLine]) -> TensorBatch:
        # The target is a placeholder: only the rewards (model_values) are read, never a loss.
        examples = [Example(line.prompt, line.response or "", target=1.0) for line in lines]
        return self.objective.collate(examples)

    def _on(self, device: torch.device) -> list[TensorBatch]:
        if self._device != device:
            self._batches = [b.to(device) for b in self._batches]
            self._device = device
        return self._batches

    # -- measure (device) -----------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, learner: Learner) -> ProbeResult:
        """``KL(candidate ‖ live)`` over the probe set: two forwards of it, no grad.

        The caller holds the learner lock (the governor does), so no step or switch changes
        the weights in between. Models run without autocast: a small KL is a difference of
        close log-probabilities, and bf16 rounding of the logits would be of the same size.
        """
        started = time.perf_counter()
        batches = self._on(learner.device)
        candidate, live = learner.judged, learner.baseline
        per_example: list[float] = []
        total = 0.0
        positions = 0
        drift = 0.0
        for batch in batches:
            if self.kind == "causal":
                sums, counts = self._causal_kl(candidate, live, batch)
                total += float(sums.sum())
                positions += int(counts.sum())
                per_example += (sums / counts.clamp(min=1)).tolist()
            else:
                kl, gap = self._reward_kl(candidate, live, batch)
                total += float(kl.sum())
                drift += float(gap.sum())
                positions += batch.size
                per_example += kl.tolist()
        return ProbeResult(
            kl=total / positions if positions else math.nan,
            score_drift=None if self.kind == "causal" else drift / self.size,
            per_example=tuple(per_example),
            positions=positions,
            seconds=time.perf_counter() - started,
        )

    @staticmethod
    def _causal_kl(
        candidate: torch.nn.Module, live: torch.nn.Module, batch: TensorBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sequence: the sum of the KL over its positions, and how many there are (CPU)."""
        t = batch.tensors
        rows, cols = t["kl_rows"], t["kl_cols"]
        log_p = {}
        for role, model in (("candidate", candidate), ("live", live)):
            out = model(
                input_ids=t["input_ids"],
                attention_mask=t["attention_mask"],
                position_ids=t["position_ids"],
            )
            logits = getattr(out, "logits", out)
            log_p[role] = logits[rows, cols].float().log_softmax(-1)
        c, lv = log_p["candidate"], log_p["live"]
        # Σ_v p_c(v) (log p_c(v) - log p_l(v)); float error can make a near-0 value negative.
        kl = (c.exp() * (c - lv)).sum(-1).clamp(min=0.0)
        sums = kl.new_zeros(batch.size).index_add_(0, rows, kl)
        return sums.double().cpu(), t["kl_count"].cpu()

    def _reward_kl(
        self, candidate: torch.nn.Module, live: torch.nn.Module, batch: TensorBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per line: KL(Bernoulli(σ(r_c)) ‖ Bernoulli(σ(r_l))) and |r_c - r_l| (CPU)."""
        r_c = self.objective.model_values(candidate, batch).double()
        r_l = self.objective.model_values(live, batch).double()
        kl = bernoulli_kl(r_c, r_l).clamp(min=0.0)
        return kl.cpu(), (r_c - r_l).abs().cpu()


def bernoulli_kl(logit_p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """``KL(Bernoulli(σ(logit_p)) ‖ Bernoulli(σ(logit_q)))``, elementwise, in nats.

    Computed from log-sigmoids, so it stays finite for large rewards.

    Example:
        >>> round(float(bernoulli_kl(torch.tensor(0.0), torch.tensor(0.0))), 6)
        0.0
        >>> p, q = 0.7, 0.4  # against the textbook formula
        >>> textbook = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        >>> logit = lambda x: math.log(x / (1 - x))
        >>> kl = bernoulli_kl(torch.tensor(logit(p)), torch.tensor(logit(q)))
        >>> abs(float(kl) - textbook) < 1e-6
        True
    """
    log_p, log_not_p = F.logsigmoid(logit_p), F.logsigmoid(-logit_p)
    log_q, log_not_q = F.logsigmoid(logit_q), F.logsigmoid(-logit_q)
    return log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)
