"""LoRA adapters (peft) and the adapters-off view that serves as the baseline.

With ``trainable="lora"`` the candidate is the model with low-rank adapters on its attention
projections, and the baseline is *the same model with the adapters disabled* (peft's
``disable_adapter()``): the base weights exist once in memory. A task head (the reward model's
``head``) is always trained too; peft keeps a trainable copy of it beside the frozen original,
which is a few hundred numbers, not a second model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

# Default targets by architecture: the attention projections, whichever names the model uses.
_DEFAULT_TARGETS: tuple[tuple[str, ...], ...] = (
    ("query", "key", "value"),  # BERT / MiniLM encoders
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen, OPT
    ("c_attn",),  # GPT-2
)


def default_lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention projections of ``model`` by their module names.

    Raises:
        ValueError: when none of the known layouts matches; the message says what to set.
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for targets in _DEFAULT_TARGETS:
        if set(targets) <= names:
            return targets
    raise ValueError(
        f"cannot guess LoRA target modules for {type(model).__name__}; set "
        "lora_target_modules to the names of its attention projections"
    )


def apply_lora(
    model: nn.Module, r: int, alpha: int, target_modules: Sequence[str] = ()
) -> nn.Module:
    """Wrap ``model`` in place with LoRA adapters; return the peft model.

    Args:
        model: the base model; its weights are reused, not copied.
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is ``alpha / r · B A``).
        target_modules: module names to adapt; empty picks :func:`default_lora_targets`.

    Example:
        >>> peft_model = apply_lora(model, r=8, alpha=16)  # doctest: +SKIP
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) or list(default_lora_targets(model))
    heads = ["head"] if isinstance(getattr(model, "head", None), nn.Module) else None
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, modules_to_save=heads
    )
    return get_peft_model(model, config)  # type: ignore[arg-type]


class AdaptersDisabled(nn.Module):
    """A peft model seen with its adapters off: the LoRA learner's baseline.

    It holds no weights of its own: the peft model is kept outside the module tree, so
    ``parameters()`` is empty and nothing here can freeze or move the candidate.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self._target: tuple[nn.Module] = (peft_model,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the peft model inside ``disable_adapter()``."""
        model = self._target[0]
        with model.disable_adapter():  # type: ignore[operator]
            return model(*args, **kwargs)
