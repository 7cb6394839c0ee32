"""Interfaces of the learner: examples in, per-example losses and scores out.

The learner knows nothing of Kafka or of the event schema. The streaming side turns each
feedback event into an :class:`Example`; an :class:`Objective` turns a list of examples into a
:class:`TensorBatch` (on the CPU, off the training thread) and, given a model and that batch,
into per-example losses, scores and correctness flags (:class:`ObjectiveOutput`).

An objective works in two halves so that one model call serves two purposes:
:meth:`Objective.model_values` is the only place a model is called (one value per sequence of
the batch: a reward, or a response log-probability), and :meth:`Objective.from_values` turns
those values into per-example outputs. Objectives that compare the model with a frozen reference
(``needs_reference``: KTO, DPO) take the reference's values of the same batch, so the learner's
one no-grad baseline pass is both the baseline's test score and the reference for the loss.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class Example:
    """One training example in the learner's terms.

    Pointwise examples carry a ``target`` in [0, 1] (thumb up = 1, thumb down = 0, a rating
    of 1..5 mapped to 0, .25, .5, .75, 1). Pairwise examples carry ``rejected``: ``response`` is
    the preferred reply and ``rejected`` the other one.

    Example:
        >>> Example(prompt="hi", response="hello!", target=1.0).pairwise
        False
        >>> Example(prompt="hi", response="hello!", rejected="go away").pairwise
        True
    """

    prompt: str
    response: str
    target: float | None = None
    rejected: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (self.target is None) == (self.rejected is None):
            raise ValueError(
                "an Example needs exactly one of 'target' (pointwise) or 'rejected' (pairwise); "
                f"got target={self.target!r} and rejected={'set' if self.rejected else None}"
            )
        if self.target is not None and not 0.0 <= self.target <= 1.0:
            raise ValueError(f"Example.target must lie in [0, 1], got {self.target!r}")
        if not self.weight >= 0.0:  # 0: scored, not trained (a thumb held back by mining)
            raise ValueError(f"Example.weight must be >= 0, got {self.weight!r}")

    @property
    def pairwise(self) -> bool:
        """True for a preference pair."""
        return self.rejected is not None


@dataclass(slots=True)
class TensorBatch:
    """Tensors for one micro-batch, plus its size in examples.

    ``tensors`` holds everything the objective needs (token ids, masks, targets, index maps).
    The batch is built on the CPU; :meth:`pin` and :meth:`to` move it to the device.
    """

    tensors: dict[str, torch.Tensor]
    size: int
    weights: torch.Tensor = field(default_factory=lambda: torch.ones(0))

    def pin(self) -> TensorBatch:
        """Return a copy whose tensors sit in page-locked memory (no-op without CUDA)."""
        if not _cuda_available():
            return self
        return TensorBatch(
            {k: v.pin_memory() for k, v in self.tensors.items()},
            self.size,
            self.weights.pin_memory(),
        )

    def to(self, device: torch.device) -> TensorBatch:
        """Move every tensor to ``device`` with non-blocking copies."""
        if all(v.device == device for v in self.tensors.values()):
            return self
        return TensorBatch(
            {k: v.to(device, non_blocking=True) for k, v in self.tensors.items()},
            self.size,
            self.weights.to(device, non_blocking=True),
        )


@functools.cache
def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, asked once: it cannot change within a process.

    :meth:`TensorBatch.pin` runs once per micro-batch, and asking torch costs more than a
    no-op pin on a CPU-only host.
    """
    return torch.cuda.is_available()


@dataclass(frozen=True, slots=True)
class ObjectiveOutput:
    """Per-example results of one forward pass, each a tensor of shape ``[batch]``.

    ``correct`` is 1.0 / 0.0 where correctness is defined and NaN where it is not (a rating
    of 3 is neither good nor bad).
    """

    loss: torch.Tensor
    score: torch.Tensor
    correct: torch.Tensor


class Objective(abc.ABC):
    """Turns examples into tensors, and a model plus tensors into per-example losses.

    Attributes:
        name: the config name of the objective (``reward``, ``kto``, ``dpo``, ``sft``).
        needs_reference: True when the loss compares the model with a frozen reference model
            (the learner passes its baseline's values).
        min_batch_size: the smallest batch :meth:`collate` accepts (KTO needs 4).
    """

    name: str = "objective"
    needs_reference: bool = False
    min_batch_size: int = 1

    def check(self, example: Example) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise ``ValueError`` saying why this objective cannot train on ``example``.

        The streaming side calls it per event, so an unusable event is dead-lettered on its
        own instead of failing a whole batch in :meth:`collate` (which calls it too).
        """

    def state_dict(self) -> dict[str, Any]:
        """What the objective learns besides the weights (JSON-ready), for the checkpoint.

        Empty for most objectives; the reward objective's ``mean`` reference keeps its running
        means here.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`; an empty dict (an older checkpoint) changes nothing."""

    @abc.abstractmethod
    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """Tokenize ``examples`` into a CPU batch. Called off the training thread."""

    @abc.abstractmethod
    def model_values(self, model: nn.Module, batch: TensorBatch) -> torch.Tensor:
        """Call ``model`` once on ``batch``: one value per sequence, shape ``[sequences]``."""

    @abc.abstractmethod
    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Per-example outputs from a model's values and, if needed, the reference's values."""

    def forward(
        self, model: nn.Module, batch: TensorBatch, reference: nn.Module | None = None
    ) -> ObjectiveOutput:
        """Per-example loss, score and correctness of ``model`` on ``batch``.

        Args:
            model: the model being evaluated or trained.
            batch: a batch from :meth:`collate`, on the model's device.
            reference: the frozen reference model; required when ``needs_reference``.
        """
        ref_values: torch.Tensor | None = None
        if self.needs_reference:
            if reference is None:
                raise ValueError(
                    f"the {self.name!r} objective compares the model with a frozen reference "
                    "model; pass reference=<the baseline>"
                )
            with torch.no_grad():
                ref_values = self.model_values(reference, batch).detach()
        return self.from_values(self.model_values(model, batch), batch, ref_values)
