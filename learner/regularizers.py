"""Regularizers that keep the candidate close to the baseline.

L2-SP (Li et al., 2018) pulls each trainable weight toward its value in the starting point,
here the live baseline: ``penalty = λ/2 · Σ‖θ - θ₀‖²``. Online EWC (Kirkpatrick et al., 2017;
Schwarz et al., 2018) weights that pull per coordinate by a diagonal Fisher estimate ``F``:
``penalty = λ/2 · Σ F ⊙ (θ - θ₀)²``, so the weights the stream has shown to matter move least.
Their gradients (``λ(θ - θ₀)`` and ``λ F ⊙ (θ - θ₀)``) are added to the task gradient directly
with fused multi-tensor (``torch._foreach_*``) ops, so there is no Python loop per parameter and
no autograd graph for a penalty on the hot path.
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
        # grad += λθ - λθ₀, in place: no θ - θ₀ temporaries on the hot path
        params = [p.detach() for p in self.params]
        torch._foreach_add_(grads, params, alpha=self.weight)  # type: ignore[arg-type]
        torch._foreach_add_(grads, self.anchors, alpha=-self.weight)  # type: ignore[arg-type]


class OnlineEWC:
    """Online EWC: a pull toward the anchors weighted by a running diagonal Fisher estimate.

    The Fisher estimate is an exponential moving average of squared task gradients,
    ``F ← γ·F + (1 - γ)·g²``, updated once per applied step from the batch-mean gradient (the
    empirical Fisher of the micro-batch; per-example gradients would cost a backward pass
    each). It starts at zero without bias correction, so the pull grows with evidence. Squared
    gradients are small, so useful weights λ are large (often 1e2 to 1e6).

    Args:
        params: the candidate's trainable parameters.
        anchors: tensors of the same shapes (the baseline's weights; not copied).
        weight: λ; 0 turns the regularizer off (and allocates no Fisher).
        decay: γ in [0, 1).

    Example:
        >>> p = [torch.nn.Parameter(torch.ones(2))]
        >>> ewc = OnlineEWC(p, [torch.zeros(2)], weight=2.0, decay=0.5)
        >>> p[0].grad = torch.tensor([2.0, 0.0])
        >>> ewc.update_fisher()
        >>> ewc.fisher[0].tolist(), round(ewc.penalty().item(), 4)
        ([2.0, 0.0], 2.0)
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        anchors: Sequence[torch.Tensor],
        weight: float,
        decay: float,
    ) -> None:
        if weight < 0:
            raise ValueError(f"the EWC weight must be >= 0, got {weight}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the EWC decay must lie in [0, 1), got {decay}")
        if len(params) != len(anchors):
            raise ValueError(f"{len(params)} parameters but {len(anchors)} anchors")
        self.params = list(params)
        self.anchors = list(anchors)
        self.weight = float(weight)
        self.decay = float(decay)
        on = self.weight > 0
        self.fisher: list[torch.Tensor] = (
            [torch.zeros_like(p, dtype=torch.float32) for p in self.params] if on else []
        )

    @property
    def enabled(self) -> bool:
        """True when λ > 0."""
        return bool(self.fisher)

    @torch.no_grad()
    def update_fisher(self) -> None:
        """Fold the current ``.grad`` of every parameter into the running Fisher estimate."""
        if not self.enabled:
            return
        grads = [
            p.grad.float() if p.grad is not None else torch.zeros_like(f)
            for p, f in zip(self.params, self.fisher, strict=True)
        ]
        torch._foreach_mul_(self.fisher, self.decay)
        torch._foreach_addcmul_(self.fisher, grads, grads, value=1.0 - self.decay)

    @torch.no_grad()
    def penalty(self) -> torch.Tensor:
        """``λ/2 · Σ F ⊙ (θ - θ₀)²`` as a 0-dim tensor (no grad)."""
        if not self.enabled or not self.params:
            return torch.zeros(())
        scaled = torch._foreach_sub([p.detach().float() for p in self.params], self.anchors)
        torch._foreach_mul_(scaled, torch._foreach_sqrt(self.fisher))
        norms = torch._foreach_norm(scaled)
        return 0.5 * self.weight * torch.stack(norms).pow(2).sum()

    @torch.no_grad()
    def add_grad(self) -> None:
        """Add ``λ F ⊙ (θ - θ₀)`` to each parameter's ``.grad`` (creating it when missing)."""
        if not self.enabled or not self.params:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        distances = torch._foreach_sub([p.detach() for p in self.params], self.anchors)
        grads = [p.grad for p in self.params]
        fisher = [f.to(p.dtype) for f, p in zip(self.fisher, self.params, strict=True)]
        torch._foreach_addcmul_(grads, fisher, distances, value=self.weight)  # type: ignore[arg-type]
