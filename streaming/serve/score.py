"""``POST /v1/score``: rewards of the LIVE model (the learner's resident baseline) for reranking.

The chat service sends a prompt and its best-of-n candidate replies and gets one reward per
reply, from the model that is LIVE at that moment, with that model's version::

    {"prompt": "...", "responses": ["...", "..."]}
        → {"version": 3, "rewards": [0.4, -1.2]}
    {"items": [{"prompt": "...", "responses": [...]}, ...]}
        → {"version": 3, "results": [{"rewards": [...]}, ...]}

The HTTP side (body size, JSON parsing, status codes, threads) is
:class:`monitors.server.MetricsServer`; this module validates the request, tokenizes it with
the objective's own collate (off the lock), and runs the LIVE model once, under no-grad, while
holding the lock of whoever switches it. In the trainer that is the learner lock: the governor
holds it while it switches weights at promotion and rollback, and sets its ``live_version``
inside it. In a follower (``feedstep serve``, :mod:`.follower`) it is the follower's lock, held
while a fully loaded and verified version replaces the old one. Either way the version read
under the lock is the one that scored the request: a response never names a version its
rewards did not come from.

Only the ``reward`` objective has a scalar reward; with a causal-LM objective (``kto``, ``dpo``,
``sft``) every request is answered 409 with the reason. Error messages name fields, JSON kinds,
counts and limits, never the request's text; nothing here logs user text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from learner.base import Example, Objective
from streaming.errors import json_kind

log = logging.getLogger(__name__)

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ScoreLimits:
    """What one request may ask for (the ``score`` config section)."""

    max_responses: int = 64
    max_text_chars: int = 8192
    max_body_bytes: int = 1_048_576


class BadRequest(ValueError):
    """A request the endpoint refuses; the message is safe to return (no user text)."""


class LiveModel(Protocol):
    """What :class:`Scorer` scores with: the LIVE model, its objective and its device.

    The trainer's :class:`learner.step.Learner` is one (its resident ``baseline``, whose weights
    the governor switches in place); a follower (:class:`streaming.serve.follower.Follower`) is
    another (a version loaded from the store, swapped whole). The scorer reads all three under
    its lock, so the owner must change them only while holding that lock.
    """

    @property
    def objective(self) -> Objective:
        """Tokenizes requests (``collate``) and computes rewards (``model_values``)."""
        ...

    @property
    def baseline(self) -> nn.Module:
        """The LIVE model."""
        ...

    @property
    def device(self) -> torch.device:
        """Where :attr:`baseline` lives."""
        ...


class Scorer:
    """The ``/v1/score`` handler: parsed JSON in, ``(status, body)`` out.

    The one scoring path, shared by the trainer (``feedstep run``, ``demo``) and the follower
    (``feedstep serve``), so both answer the same contract with the same limits and errors.

    Args:
        learner: the LIVE model (:class:`LiveModel`): the trainer's learner, whose ``baseline``
            is LIVE, or a follower.
        lock: held while scoring and while the LIVE model switches (``Governor.lock``, or the
            follower's lock).
        version: returns the LIVE version number (``lambda: governor.live_version``); called
            under ``lock``. None when there is no version yet (a store-less dry run).
        limits: the request limits.

    Example:
        >>> scorer = Scorer(learner, governor.lock, lambda: governor.live_version)  # doctest: +SKIP
        >>> scorer({"prompt": "hi", "responses": ["hello!", "go away"]})  # doctest: +SKIP
        (200, {'version': 1, 'rewards': [0.83, -1.4]})
    """

    def __init__(
        self,
        learner: LiveModel,
        lock: threading.Lock,
        version: Callable[[], int | None],
        limits: ScoreLimits | None = None,
    ) -> None:
        self.learner = learner
        self.lock = lock
        self.version = version
        self.limits = limits or ScoreLimits()

    def __call__(self, request: Any) -> Answer:
        """Answer one parsed request: 200 with rewards, 400 with the reason, or 409."""
        objective = self.learner.objective
        if objective.name != "reward":
            return 409, {
                "error": f"the {objective.name!r} objective has no scalar reward; /v1/score "
                "serves the 'reward' objective only"
            }
        try:
            items, batched = self._parse(request)
        except BadRequest as exc:
            return 400, {"error": str(exc)}
        started = time.perf_counter()
        version, rewards = self.rewards(items)
        log.debug(
            "scored %d responses in %d items with version %s in %.3fs",
            sum(len(r) for _, r in items),
            len(items),
            version,
            time.perf_counter() - started,
        )
        if batched:
            return 200, {"version": version, "results": [{"rewards": r} for r in rewards]}
        return 200, {"version": version, "rewards": rewards[0]}

    def rewards(
        self, items: Sequence[tuple[str, Sequence[str]]]
    ) -> tuple[int | None, list[list[float]]]:
        """The LIVE version and each item's rewards, scored by that version in one forward."""
        examples = [Example(p, r, target=1.0) for p, responses in items for r in responses]
        live = self.learner
        objective = live.objective
        batch = objective.collate(examples)  # CPU tokenizing, before the lock
        with self.lock:
            version = self.version()
            if live.objective is not objective:  # a follower switched versions meanwhile:
                batch = live.objective.collate(examples)  # tokenize as the new version does
            device = live.device
            on_device = batch.to(device)
            with (
                torch.no_grad(),
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"),
            ):
                values = live.objective.model_values(live.baseline, on_device)
            flat = values.float().cpu().tolist()
        out: list[list[float]] = []
        start = 0
        for _, responses in items:
            out.append(flat[start : start + len(responses)])
            start += len(responses)
        return version, out

    # -- validation -------------------------------------------------------------------------------
    def _parse(self, request: Any) -> tuple[list[tuple[str, list[str]]], bool]:
        if not isinstance(request, dict):
            raise BadRequest(f"the body must be a JSON object, got {json_kind(request)}")
        if "items" in request:
            if "prompt" in request or "responses" in request:
                raise BadRequest("send either 'items' or 'prompt' with 'responses', not both")
            raw_items = request["items"]
            if not isinstance(raw_items, list) or not raw_items:
                raise BadRequest(
                    f"'items' must be a non-empty array of objects, got {_describe(raw_items)}"
                )
            items = [self._item(raw, f"items[{i}].") for i, raw in enumerate(raw_items)]
            batched = True
        else:
            items, batched = [self._item(request, "")], False
        total = sum(len(responses) for _, responses in items)
        if total > self.limits.max_responses:
            raise BadRequest(
                f"{total} responses in the request; the limit is {self.limits.max_responses} "
                "(score_max_responses)"
            )
        return items, batched

    def _item(self, raw: Any, where: str) -> tuple[str, list[str]]:
        if not isinstance(raw, dict):
            name = where.rstrip(".")  # only items[i] can be a non-object here
            raise BadRequest(f"'{name}' must be an object, got {json_kind(raw)}")
        for field in ("prompt", "responses"):
            if field not in raw:
                raise BadRequest(f"'{where}{field}' is missing")
        prompt, responses = raw["prompt"], raw["responses"]
        if not isinstance(prompt, str):
            raise BadRequest(f"'{where}prompt' must be a string, got {json_kind(prompt)}")
        if not isinstance(responses, list) or not responses:
            raise BadRequest(
                f"'{where}responses' must be a non-empty array of strings, got "
                f"{_describe(responses)}"
            )
        if len(responses) > self.limits.max_responses:  # before each one is looked at
            raise BadRequest(
                f"{len(responses)} responses in '{where}responses'; the limit is "
                f"{self.limits.max_responses} (score_max_responses)"
            )
        self._check_length(prompt, f"{where}prompt")
        for j, response in enumerate(responses):
            if not isinstance(response, str):
                raise BadRequest(
                    f"'{where}responses[{j}]' must be a string, got {json_kind(response)}"
                )
            self._check_length(response, f"{where}responses[{j}]")
        return prompt, responses

    def _check_length(self, text: str, where: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise BadRequest(
                f"'{where}' is {len(text)} characters; the limit is {self.limits.max_text_chars} "
                "(score_max_text_chars)"
            )


def _describe(value: object) -> str:
    if isinstance(value, list):
        return "an empty array" if not value else "an array"
    return json_kind(value)


def score_limits(config: Any) -> ScoreLimits:
    """The request limits of the ``score`` section of a :class:`streaming.config.FeedstepConfig`."""
    section = config.score
    return ScoreLimits(section.max_responses, section.max_text_chars, section.max_body_bytes)


def attach_scorer(
    server: Any, config: Any, learner: LiveModel, governor: Any, metrics: Any
) -> Scorer:
    """Serve ``POST /v1/score`` on ``server`` (a :class:`monitors.server.MetricsServer`).

    ``config`` is the :class:`streaming.config.FeedstepConfig` (its ``score`` section), the lock
    and the LIVE version are the governor's, and every request is counted in ``metrics``.
    """
    limits = score_limits(config)
    scorer = Scorer(learner, governor.lock, lambda: governor.live_version, limits)
    server.set_score(scorer, max_body_bytes=limits.max_body_bytes, observe=metrics.observe_score)
    log.info(
        "POST /v1/score on port %d: rewards of the LIVE model (%d responses, %d chars at most)",
        server.port,
        limits.max_responses,
        limits.max_text_chars,
    )
    return scorer
