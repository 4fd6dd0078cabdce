"""One-token attention for the CPU decode loop: three batched products on the grouped heads, where ``sdpa``'s CPU
flash kernel spends most of a one-query call setting up. Prompts, soft-capping, sinks, position biases keep ``sdpa``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "lightning_rlhf_decode"

_SDPA_ONLY = ("softcap", "s_aux", "position_bias")


def decode_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' attention-function contract (``query`` ``(B, H, Q, D)``, ``key``/``value`` ``(B, K, L, D)``;
    returns ``(B, Q, H, D)``), for ``Q == 1`` without ``sdpa``'s kernel."""
    if query.shape[2] != 1 or dropout or kwargs.get("output_attentions") or any(
            kwargs.get(name) is not None for name in _SDPA_ONLY):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # head h reads key/value head h // group
    scores = torch.matmul(grouped, key.transpose(-1, -2)).mul_(scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, : key.shape[-2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(-1), value)
    return out.reshape(rows, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, decode_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def one_token_attention(model: nn.Module) -> Iterator[bool]:
    """Within the block a CPU model that attends with ``sdpa`` uses :func:`decode_attention_forward`; yields whether."""
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    if config is None or param is None or param.device.type != "cpu" or config._attn_implementation != "sdpa":
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
