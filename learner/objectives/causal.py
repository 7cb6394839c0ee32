r"""What the causal-LM objectives share: tokenizing (prompt, response) and response log-probs.

Every sequence is laid out as ``[start] prompt [sep] response [end]``, with whichever of those
special tokens the tokenizer has (``cls``/``sep``/``sep`` for a BERT-style vocabulary such as
the tiny test model's, ``bos``/-/``eos`` for a GPT- or Llama-style one). A tokenizer with a chat
template (an instruct model such as SmolLM2) frames the prompt as the user's turn instead:
``[start]`` and ``[sep]`` are the text the template puts before the user's message and between
it and the assistant's reply (for SmolLM2 its default system turn, ``<|im_start|>user\n`` and
``<|im_end|>\n<|im_start|>assistant\n``), so the model is trained on the sequences it is
served with; the end token is ``eos`` (``<|im_end|>``, SmolLM2's end of turn). The *response
tokens* are the response and the end token: the model is scored on what it says and on stopping.

The value an objective reads off a causal LM is the sequence log-probability of the response,
``log π(y | x) = Σ_t log softmax(logits[t-1])[y_t]`` over response tokens only. Padding goes on
the right or on the left (``padding_side``); the attention mask hides it, position ids count
real tokens only (``cumsum(mask) - 1``), and the response mask selects the scored tokens, so an
example's log-prob is the same in any batch, with any padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learner.base import Example, Objective, TensorBatch

PADDING_SIDES = ("right", "left")


_SLOT = "<<feedstep-prompt>>"  # stands for the prompt while the chat template renders


def chat_frame(tokenizer: object) -> tuple[list[int], list[int]] | None:
    """Token ids the tokenizer's chat template puts before and after a user's prompt.

    The template is rendered for one user message with the generation prompt (the assistant's
    turn opened); what comes before the message is the head, what follows it the separator
    before the reply. None when the tokenizer has no chat template.

    Raises:
        ValueError: when the template does not render the message exactly once.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": _SLOT}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(text, str) or text.count(_SLOT) != 1:
        raise ValueError(
            f"the chat template of {type(tokenizer).__name__} does not render a user message "
            "exactly once; pass chat_template=False to lay sequences out without it"
        )
    before, after = text.split(_SLOT)
    encode = tokenizer  # type: ignore[operator]
    return (
        list(encode(before, add_special_tokens=False)["input_ids"]),  # type: ignore[operator]
        list(encode(after, add_special_tokens=False)["input_ids"]),  # type: ignore[operator]
    )


def _token(tokenizer: object, *names: str) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


class CausalLMObjective(Objective):
    """Base of ``kto``, ``dpo`` and ``sft``: collation and response log-probabilities.

    Args:
        tokenizer: a Hugging Face tokenizer; it needs an end token (``eos`` or ``sep``) and a
            pad token (``pad``, else ``eos`` is used for padding).
        max_length: tokens per sequence. When too long, the prompt keeps its end and the
            response its beginning; the response always keeps at least half the budget.
        padding_side: ``right`` or ``left``; the log-probs do not depend on it.
        pad_to_multiple_of: round the padded width up to a multiple of this (fewer distinct
            shapes for ``torch.compile``); None pads to the longest sequence.
        chat_template: frame the prompt with the tokenizer's chat template (see the module
            docstring); None uses it when the tokenizer has one.
    """

    def __init__(
        self,
        tokenizer: object,
        max_length: int = 256,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        chat_template: bool | None = None,
    ) -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self._start = _token(tokenizer, "bos_token_id", "cls_token_id")
        end = _token(tokenizer, "eos_token_id", "sep_token_id")
        if end is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has neither an eos nor a sep token; a causal-LM "
                "objective needs one to mark the end of a response"
            )
        self._end = end
        # A separator between prompt and response only for BERT-style vocabularies (cls/sep).
        bert_style = _token(tokenizer, "bos_token_id") is None and self._start is not None
        self._sep = _token(tokenizer, "sep_token_id") if bert_style else None
        pad = _token(tokenizer, "pad_token_id", "eos_token_id")
        self._pad = pad if pad is not None else end
        self._head = [self._start] if self._start is not None else []
        self._between = [self._sep] if self._sep is not None else []
        frame = chat_frame(tokenizer) if chat_template is not False else None
        if chat_template and frame is None:
            raise ValueError(f"chat_template=True, but {type(tokenizer).__name__} has none")
        if frame is not None:
            self._head, self._between = frame
        framing = len(self._head) + len(self._between) + 1
        if max_length - framing < 2:
            raise ValueError(
                f"max_length {max_length} leaves no room for prompt and response: the chat "
                f"template and end token take {framing} tokens; raise max_length"
            )

    # -- collate (CPU) --------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and masks of (prompt, response) sequences, padded to one width.

        Returns ``input_ids``, ``attention_mask``, ``position_ids`` (counting real tokens
        only) and ``response_mask`` (True on the tokens whose log-prob is scored), all of
        shape ``[sequences, width]``; ``response_tokens`` of shape ``[sequences]``; and
        ``score_rows``/``score_cols``, the coordinates of the scored tokens.
        """
        enc = self.tokenizer
        p_ids = enc(list(prompts), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        r_ids = enc(list(responses), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        head, sep = self._head, self._between
        budget = self.max_length - len(head) - len(sep) - 1
        rows: list[tuple[list[int], int]] = []  # (token ids, number of response tokens)
        for p, r in zip(p_ids, r_ids, strict=True):
            r_keep = min(len(r), max(budget - len(p), budget // 2))
            p_keep = min(len(p), budget - r_keep)
            prefix = [*head, *(p[len(p) - p_keep :] if p_keep else []), *sep]
            if not prefix:
                raise ValueError(
                    "a response needs at least one token before it to be scored; the prompt is "
                    "empty and the tokenizer has no bos/cls token"
                )
            rows.append(([*prefix, *r[:r_keep], self._end], r_keep + 1))
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        ids = torch.full((n, width), self._pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        response = torch.zeros((n, width), dtype=torch.bool)
        for i, (row, n_resp) in enumerate(rows):
            start = 0 if self.padding_side == "right" else width - len(row)
            stop = start + len(row)
            ids[i, start:stop] = torch.tensor(row)
            mask[i, start:stop] = 1
            response[i, stop - n_resp : stop] = True
        score_rows, score_cols = response.nonzero(as_tuple=True)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response,
            "response_tokens": response.sum(-1),
            "score_rows": score_rows,
            "score_cols": score_cols,
        }

    @staticmethod
    def _batch(
        tensors: dict[str, torch.Tensor], examples: Sequence[Example], **extra: torch.Tensor
    ) -> TensorBatch:
        return TensorBatch(
            tensors={**tensors, **extra},
            size=len(examples),
            weights=torch.tensor([ex.weight for ex in examples], dtype=torch.float32),
        )

    # -- forward (device) -----------------------------------------------------------------------
    def model_values(self, model: nn.Module, batch: TensorBatch) -> torch.Tensor:
        """``log π(response | prompt)`` of every sequence, summed over response tokens.

        Only the logits that predict a response token go through the log-softmax (prompt
        positions are skipped), gathered by index tensors built in :meth:`encode`, so there is
        no data-dependent shape and no device sync.
        """
        t = batch.tensors
        out = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            position_ids=t["position_ids"],
        )
        logits = getattr(out, "logits", out)
        rows, cols = t["score_rows"], t["score_cols"]
        picked = logits[rows, cols - 1].float()  # the logits that predict each response token
        targets = t["input_ids"][rows, cols]
        token_logp = picked.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
        per_position = token_logp.new_zeros(t["input_ids"].shape)
        return per_position.index_put((rows, cols), token_logp).sum(-1)
