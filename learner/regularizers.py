"""Regularizers that keep the candidate close to the baseline.

L2-SP (Li et al., 2018) pulls each trainable weight toward its value in the starting point,
here the live baseline: ``penalty = λ/2 · Σ‖θ - θ₀‖²``. Its gradient, ``λ(θ - θ₀)``, is added to
the task gradient directly with fused multi-tensor (``torch._foreach_*``) ops, so there is no
Python loop per parameter and no autograd graph for the penalty on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class L2SP:
    """L2-SP pull toward fixed anchor tensors (the baseline's weights).

    Args:
        params: the candidate's trainable parameters.
        anchors: tensors of the same shapes (the baseline's weights; not copied).
        weight: λ; 0 turns the regularizer off.

    Example:
        >>> p = [torch.nn.Parameter(torch.ones(3))]
        >>> reg = L2SP(p, [torch.zeros(3)], weight=0.5)
        >>> round(reg.penalty().item(), 4)
        0.75
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        anchors: Sequence[torch.Tensor],
        weight: float,
    ) -> None:
        if weight < 0:
            raise ValueError(f"the L2-SP weight must be >= 0, got {weight}")
        if len(params) != len(anchors):
            raise ValueError(f"{len(params)} parameters but {len(anchors)} anchors")
        for p, a in zip(params, anchors, strict=True):
            if p.shape != a.shape:
                raise ValueError(f"anchor shape {tuple(a.shape)} != parameter {tuple(p.shape)}")
        self.params = list(params)
        self.anchors = list(anchors)
        self.weight = float(weight)

    @torch.no_grad()
    def distances(self) -> list[torch.Tensor]:
        """``θ - θ₀`` per parameter (fused)."""
        return list(torch._foreach_sub([p.detach() for p in self.params], self.anchors))

    @torch.no_grad()
    def sq_distance(self) -> torch.Tensor:
        """``Σ‖θ - θ₀‖²`` as a 0-dim tensor on the parameters' device."""
        if not self.params:
            return torch.zeros(())
        norms = torch._foreach_norm(self.distances())
        return torch.stack([n.float() for n in norms]).pow(2).sum()

    def penalty(self) -> torch.Tensor:
        """``λ/2 · Σ‖θ - θ₀‖²`` (no grad; the gradient is applied by :meth:`add_grad`)."""
        return 0.5 * self.weight * self.sq_distance()

    @torch.no_grad()
    def add_grad(self) -> None:
        """Add ``λ(θ - θ₀)`` to each parameter's ``.grad`` (creating it when missing)."""
        if self.weight == 0.0 or not self.params:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params]
        torch._foreach_add_(grads, self.distances(), alpha=self.weight)  # type: ignore[arg-type]
