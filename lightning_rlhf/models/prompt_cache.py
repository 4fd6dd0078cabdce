"""Each distinct prompt's forward pass, computed once and shared by all the answers sampled for it.

Why: GRPO (and every group estimator) samples ``num_generations`` answers per prompt by repeating each prompt
``G`` times, so every forward over the rollout (``generate``'s prefill, the reference's and the update's
log-probabilities) runs over ``G`` identical copies of each prompt. With short answers the prompt is most of the
arithmetic. SmolLM2-135M-Instruct + LoRA r8 on q/v, 8 chat prompts of 44 tokens x 4 answers of at most 16
tokens, 2 CPU threads (``python benchmarks/grpo_prompt_sharing.py --model SMOLLM2``, medians of 4, 2026-12-03):
``generate`` 6.00 s with the repeated prefill, 4.38 s shared; the update's forward + backward 7.88 s, 4.05 s
shared. vLLM and SGLang save the generation part with prefix caching; "Prefix Grouper" (arXiv:2506.05433)
does the training part for GRPO.

How: a forward over the distinct prompts without their last token fills a KV cache, whose rows are then
indexed out to every answer (an indexing op, so gradients flow back to the one prompt forward). The rest, the
last prompt token and the answer, runs against that cache with the positions and attention mask the full
sequence would have, so every answer sees the same keys and values as without sharing (to float summation
order: response logits and LoRA gradients agree within 1e-5 and the same seed samples the same tokens,
``tests/models/test_prompt_cache.py``). Under ZeRO-3 the update does not share (see
:func:`shared_prompt_response_logits`).
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
    """The forward's KV-cache argument of ``model`` (``cache`` since transformers 5.2x renamed
    ``past_key_values``), or None where a prompt's cache cannot be shared: encoder-decoder and stateful
    (recurrent) models, and activation checkpointing (transformers drops the cache under it)."""
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
    """Run ``model`` over the left-padded prefixes ``input_ids`` ``(N, L)`` and return their KV cache with its
    batch row ``i`` taken from prefix ``rows[i]``, as the keyword argument of a forward or ``generate`` call
    (``{}`` where the model has no shareable cache; see :func:`cache_argument`)."""
    name = cache_argument(model)
    if name is None:
        return {}
    inner = generating_model(model)
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True}
    if forward_accepts(inner, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    if forward_accepts(inner, "logits_to_keep"):  # the prefix's logits are not used: skip the vocabulary projection
        kwargs["logits_to_keep"] = 1
    cache = getattr(model(input_ids=input_ids, **kwargs), name, None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return {}
    cache.batch_select_indices(rows)
    return {name: cache}


def shared_prompt_cache(policy: Any, input_ids: Tensor, attention_mask: Tensor, repeats: int) -> dict[str, Any]:
    """For ``generate``: the cache of the distinct left-padded prompts ``input_ids`` ``(P, L)`` (all but their
    last token), each repeated ``repeats`` times; pass it with ``input_ids.repeat_interleave(repeats, 0)`` and the
    repeated mask.

    Args:
        policy: what ``generation_mode`` yielded (a generation replica, or the transformers / peft model).
        input_ids: ``(P, L)`` distinct left-padded prompts.
        attention_mask: ``(P, L)``, 1 on prompt tokens.
        repeats: samples per prompt.

    Returns:
        ``generate`` keyword arguments: the cache, or ``{}`` where sharing does not apply (one sample per prompt,
        one-token prompts, a tensor-parallel replica, whose ``generate`` gathers the group's rows first, or a
        model without a shareable cache). The prefill's time counts in a replica's generation stats.
    """
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
    """Logits ``(B, R, V)`` scoring each response token of ``sequences`` (left-padded prompt + response), with
    each distinct prompt run once; None when every row's prompt is distinct or the model cannot share a cache
    (then run the plain forward). Differentiable: the update uses it.

    Not under ZeRO-3 (None for partitioned parameters): there the two forwards cost DeepSpeed's per-module
    parameter fetches twice, in forward and again in backward, and ate the saving. Measured with the SmolLM2
    example (``examples/smollm2_grpo/grpo.yaml``, 2 CPU ranks, 6 rollouts each, 2026-12-03, ``time/training_s``
    of rollouts 2-6): 9.0-11.0 s (median 10.0) shared against 8.7-16.0 s (median 9.1) in full. Generation still
    shares (its replica has no hooks).
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
