"""Each distinct prompt's forward pass, computed once and shared by all the answers sampled for it.

Group estimators (GRPO) repeat each prompt, so with short answers the prompt dominates; see docs/grpo.md.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from lightning_rlhf.models.sampling import generating_model
from lightning_rlhf.models.values import forward_accepts, position_ids_from_mask
from lightning_rlhf.models.zero3 import is_partitioned


def cache_argument(model: Any) -> str | None:
    """The forward's KV-cache argument name, or None where it cannot be shared (encoder-decoder, recurrent,
    activation checkpointing: transformers drops the cache under it)."""
    inner = generating_model(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or getattr(inner, "_is_stateful", False):
        return None
    flag = next((f for f in ("is_activation_checkpointing", "is_gradient_checkpointing") if hasattr(type(inner), f)),
                None)  # the first name since transformers 5.x, the second (deprecated there) before
    if inner.training and flag is not None and getattr(inner, flag):
        return None
    return next((name for name in ("cache", "past_key_values") if forward_accepts(inner, name)), None)


def prefix_cache(model: Any, input_ids: Tensor, attention_mask: Tensor, rows: Tensor) -> dict[str, Any]:
    """The KV cache of the prefixes ``input_ids``, row ``i`` from prefix ``rows[i]``, as forward kwargs (or ``{}``)."""
    name = cache_argument(model)
    if name is None:
        return {}
    inner = generating_model(model)
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True}
    if forward_accepts(inner, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    if forward_accepts(inner, "logits_to_keep"):  # skip the prefix's unused vocabulary projection
        kwargs["logits_to_keep"] = 1
    cache = getattr(model(input_ids=input_ids, **kwargs), name, None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return {}
    cache.batch_select_indices(rows)
    return {name: cache}


def shared_prompt_cache(policy: Any, input_ids: Tensor, attention_mask: Tensor, repeats: int) -> dict[str, Any]:
    """``generate`` kwargs: the cache of the distinct prompts ``(P, L)``, each repeated ``repeats`` times, or ``{}``."""
    if repeats < 2 or input_ids.shape[1] < 2 or getattr(policy, "tp_group", None) is not None:
        return {}
    rows = torch.arange(len(input_ids), device=input_ids.device).repeat_interleave(repeats)
    start = time.perf_counter()
    cached = prefix_cache(policy, input_ids[:, :-1], attention_mask[:, :-1].long(), rows)
    stats = getattr(policy, "stats", None)
    if cached and hasattr(stats, "add"):
        stats.add(generate_s=time.perf_counter() - start)
    return cached


def shared_prompt_response_logits(model: nn.Module, sequences: Tensor, attention_mask: Tensor,
                                  response_length: int) -> Tensor | None:
    """Differentiable logits ``(B, R, V)`` of the responses with each distinct prompt run once, or None (run in full).

    None under ZeRO-3 too: the two forwards double DeepSpeed's parameter fetches, which ate the saving.
    """
    prompt_length = sequences.shape[1] - response_length
    if prompt_length < 2 or any(is_partitioned(p) for p in model.parameters()):
        return None
    prompts = torch.cat([sequences[:, :prompt_length], attention_mask[:, :prompt_length]], dim=1)
    distinct, rows = torch.unique(prompts, dim=0, return_inverse=True)
    if len(distinct) == len(prompts):
        return None
    first = torch.full((len(distinct),), len(rows), device=rows.device).scatter_reduce(
        0, rows, torch.arange(len(rows), device=rows.device), reduce="amin")
    head = prompt_length - 1  # the last prompt token runs with the answer: its logits score answer token 0
    cached = prefix_cache(model, sequences[first, :head], attention_mask[first, :head], rows)
    if not cached:
        return None
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True, **cached}
    if forward_accepts(generating_model(model), "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)[:, head:]
    logits = model(input_ids=sequences[:, head:], **kwargs).logits
    return logits[:, :-1]
