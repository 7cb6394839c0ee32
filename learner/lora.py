"""LoRA adapters (peft): one base model, a ``live`` and a ``candidate`` adapter.

With ``trainable="lora"`` the learner holds one peft model with two named adapters over one copy
of the base weights. The baseline is that model with the ``live`` adapter active
(:class:`AdapterView`), the candidate the same model with the ``candidate`` adapter active, which
is the only one that trains. A promotion copies the candidate adapter into the live one; a
rollback loads the previous version's adapter into both. A task head (the reward model's
``head``) is part of each adapter (peft's ``modules_to_save``): a few hundred numbers per adapter,
not a second model.

Which adapter a peft model runs is state of the model (``set_adapter``), so every forward of
either role must run under the learner's lock, as steps, holdout scoring and ``/v1/score`` do.

An adapter is published as :class:`Adapter`: its weights in peft's file layout
(``adapter_model.safetensors`` + ``adapter_config.json``, what ``PeftModel.from_pretrained(base,
folder)`` and vLLM's ``/v1/load_lora_adapter`` read) and a reference to its base: the base's name,
seed, and :func:`tensor_digest` of its weights, so a reader can check it holds the same base.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LIVE = "live"
CANDIDATE = "candidate"
AVERAGE = "average"  # the weight average of the candidate adapter (``ema_decay``)
DIGEST = "feedstep-tensors-sha256/1"  # names the recipe of tensor_digest, recorded beside it

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


def tensor_digest(model: nn.Module) -> str:
    """sha256 over ``model``'s state dict: each tensor's name, dtype, shape and bytes, by name.

    It names the weights themselves, whatever file they came from (a GGUF, safetensors, or a
    seed), so a reader can check an adapter meets the base it was trained on.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def attach_adapters(
    model: nn.Module, r: int, alpha: int, target_modules: Sequence[str] = ()
) -> nn.Module:
    """Wrap ``model`` in place with a ``candidate`` and a ``live`` adapter; return the peft model.

    Both adapters start equal (the candidate's initial values are copied into the live one), so
    the two roles start as the same function. The ``candidate`` adapter is active and the only
    one whose weights require gradients.

    Args:
        model: the base model; its weights are reused, not copied.
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is ``alpha / r · B A``).
        target_modules: module names to adapt; empty picks :func:`default_lora_targets`.

    Example:
        >>> peft_model = attach_adapters(model, r=8, alpha=16)  # doctest: +SKIP
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) or list(default_lora_targets(model))
    heads = ["head"] if isinstance(getattr(model, "head", None), nn.Module) else None
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, modules_to_save=heads
    )
    peft_model = get_peft_model(model, config, adapter_name=CANDIDATE)  # type: ignore[arg-type]
    add_adapter_copy(peft_model, LIVE, CANDIDATE)
    return peft_model


def add_adapter_copy(peft_model: nn.Module, name: str, source: str = CANDIDATE) -> None:
    """Add adapter ``name`` to ``peft_model`` as a copy of ``source``, which stays active."""
    peft_model.add_adapter(name, peft_model.peft_config[source])  # type: ignore[operator,index]
    load_adapter_state(peft_model, name, adapter_state(peft_model, source))
    peft_model.set_adapter(source)  # type: ignore[operator]


def adapter_state(peft_model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """A copy of ``adapter``'s weights in peft's file layout (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, adapter_name=adapter, save_embedding_layers=False)
    return {key: value.detach().to("cpu").clone() for key, value in state.items()}


@torch.no_grad()
def load_adapter_state(
    peft_model: nn.Module, adapter: str, state: Mapping[str, torch.Tensor]
) -> None:
    """Load adapter weights in peft's file layout into ``adapter``; every weight must be given.

    Raises:
        ValueError: when ``state`` lacks a weight of the adapter, has one it does not know, or a
            shape differs; nothing is loaded then.
    """
    from peft import set_peft_model_state_dict

    want = adapter_state(peft_model, adapter)
    missing = sorted(set(want) - set(state))
    unknown = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if want[k].shape != state[k].shape)
    if missing or unknown or wrong:
        raise ValueError(
            f"the adapter weights do not fit this model's {adapter!r} adapter (missing "
            f"{missing[:3]}, unknown {unknown[:3]}, other shapes {wrong[:3]}); it was trained "
            "with another model, rank or lora_target_modules: use the same step.lora_* settings"
        )
    set_peft_model_state_dict(peft_model, dict(state), adapter_name=adapter)


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter as the model store writes it (kind ``lora``).

    Attributes:
        state: the weights in peft's file layout (``adapter_model.safetensors``).
        config: the peft ``LoraConfig`` (``adapter_config.json``).
        base: the base model: ``name`` (as ``--model`` takes it), ``seed``, ``sha256``
            (:func:`tensor_digest`) and ``digest`` (the recipe's name).
        model_type: the base's type in the store's terms, ``reward_model`` or ``pretrained``.
    """

    state: dict[str, torch.Tensor]
    config: Any
    base: dict[str, Any]
    model_type: str


class AdapterView(nn.Module):
    """A peft model seen with one named adapter active: the LoRA learner's baseline.

    It holds no weights of its own: the peft model is kept outside the module tree, so
    ``parameters()`` is empty and nothing here can freeze or move the candidate. A forward
    activates ``adapter`` and afterwards ``restore`` again (the caller holds the learner lock).
    """

    def __init__(
        self, peft_model: nn.Module, adapter: str = LIVE, restore: str = CANDIDATE
    ) -> None:
        super().__init__()
        self._target: tuple[nn.Module] = (peft_model,)
        self.adapter = adapter
        self.restore = restore

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the peft model with :attr:`adapter` active."""
        model = self._target[0]
        model.set_adapter(self.adapter)  # type: ignore[operator]
        try:
            return model(*args, **kwargs)
        finally:
            model.set_adapter(self.restore)  # type: ignore[operator]
