"""Per-token values and sequence scores from a value model's scalar head.

Read with a forward hook on the head: HF's own pooling is wrong when pad equals EOS and gives no per-token values.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor, nn

from lightning_rlhf.models.loading import unwrap_peft, value_head_name


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them. Shape ``(B, T)``."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.clamp_(min=0)


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def forward_accepts(model: nn.Module, argument: str) -> bool:
    """Whether the forward of ``model`` (inside a peft wrapper) takes ``argument``; cached per model class."""
    return argument in _forward_parameters(type(unwrap_peft(model)))


def token_values(value_model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The head's scalar output at every token, ``(B, T)`` float32 (padding positions unmasked)."""
    head = getattr(unwrap_peft(value_model), value_head_name(value_model))
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: captured.append(out))
    kwargs = {}
    if forward_accepts(value_model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    try:
        value_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"value head ran {len(captured)} times in one forward; expected once")
    values = captured[0]
    if values.shape[-1] != 1:
        raise ValueError(f"value head must output one value per token, got shape {tuple(values.shape)}")
    return values.squeeze(-1).float()


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row (works for right and left padding). Shape ``(B,)``."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def gather_last(values: Tensor, attention_mask: Tensor) -> Tensor:
    """``values[b, last real token of b]``: shape ``(B, T) -> (B,)``."""
    return values.gather(-1, last_token_index(attention_mask).unsqueeze(-1)).squeeze(-1)


def sequence_scores(value_model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The value at the last non-padding token of each sequence (the reward model's score), ``(B,)`` float32."""
    return gather_last(token_values(value_model, input_ids, attention_mask), attention_mask)
