"""Rollout decoding without ``generate``'s overheads: what ``generation_backend="fast"`` runs on the replica.

Why: transformers' ``generate`` grows its KV cache by concatenation at every step and runs every linear layer
with PyTorch's default GEMM, which for the few dozen rows of a decode step reaches a fraction of the machine's
matmul rate (``benchmarks/generation.py`` measures both). This loop decodes into a KV cache allocated once for the
call and, on the CPU, runs the linear layers from weights packed for oneDNN (:mod:`.packed_linear`) and attends with
one query token without the flash-attention kernel (:mod:`.decode_attention`). With
``compile=True`` (the default on CUDA) the cache is a ``StaticCache`` of a fixed length and the one-token step is
compiled (CUDA graphs on GPU) once per shape bucket: rows x cache length rounded up to :data:`CACHE_BUCKET`.

It decodes as ``generate`` does with the arguments rollouts pass (``GenerationArgs.generate_kwargs``): greedy or
sampled from ``softmax(logits / temperature)`` after top-k / top-p (drawn by :func:`sample_tokens`), custom logits
processors first (so :class:`~lightning_rlhf.models.sampling.StreamedLogprobs` sees the raw logits), finished rows
padded, stopping when every row has ended. A shared prompt prefix (``past_key_values`` from
:func:`~lightning_rlhf.models.prompt_cache.shared_prompt_cache`) is copied into the cache.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lightning_rlhf.models.decode_attention import one_token_attention
from lightning_rlhf.models.packed_linear import PackedWeights, packing_available
from lightning_rlhf.models.prompt_cache import cache_argument

#: the ``generate`` arguments the loop implements; the first three are required
ARGUMENTS = ("max_new_tokens", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p",
             "logits_processor", "past_key_values", "cache")

#: a compiled step's cache length is rounded up to a multiple of this, so prompts of similar length share it
CACHE_BUCKET = 64


class FastDecoder:
    """Decodes for one model; keep it with the model (compiled steps and packed weights are reused).

    Args:
        model: a transformers causal LM without hooks (the generation replica). Weights written in place (the
            replica's refresh) are seen: a compiled step reads the live weights, and a written layer is packed again;
            after other changes call :meth:`weights_changed`.
        compile: a ``StaticCache`` and a compiled step (``torch.compile``; CUDA graphs on GPU); None: on CUDA only.
        pack: run the CPU linear layers from oneDNN-packed weights; None where available (float32 on the CPU).
    """

    def __init__(self, model: nn.Module, compile: bool | None = None, pack: bool | None = None) -> None:
        self.model = model
        name = cache_argument(model)
        if name is None:
            raise ValueError(f"generation_backend 'fast' decodes with a KV cache, which {type(model).__name__} does not "
                             "take here (an encoder-decoder or recurrent model, or activation checkpointing in "
                             "training mode); use generation_backend='native'")
        self._cache_name = name
        device = next(model.parameters()).device
        self.compile = device.type == "cuda" if compile is None else compile
        self.packed = PackedWeights(model) if (packing_available(model) if pack is None else pack) else None
        self._static: dict[tuple[int, int], Any] = {}
        self._step: Callable[..., Tensor] = self._forward
        if self.compile:
            self._step = torch.compile(self._forward, dynamic=False,
                                       mode="reduce-overhead" if device.type == "cuda" else None)
        #: shape buckets the compiled step has seen: each cost one compile on first use
        self.buckets: list[tuple[int, int]] = []
        #: seconds of the calls that met a new bucket (its compile and that call's decode together)
        self.compile_s = 0.0

    @staticmethod
    def supports(kwargs: dict[str, Any]) -> bool:
        """Whether :meth:`generate` implements a ``generate`` call with these keyword arguments."""
        return set(kwargs) <= set(ARGUMENTS) and all(kwargs.get(name) is not None for name in ARGUMENTS[:3])

    def weights_changed(self) -> None:
        """Say that the model's weights were replaced in a way their version counters do not show (new tensors, or
        writes through ``.data``): every packed copy is made again. In-place writes need no call."""
        if self.packed is not None:
            self.packed.invalidate()

    def packed_linears(self) -> ContextManager:
        """Within the block the linear layers run packed (if packing): for the replica's other inference forwards."""
        return self.packed.active() if self.packed is not None else nullcontext()

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, logits_to_keep=1, **{self._cache_name: cache}).logits[:, -1]

    def _cache(self, rows: int, length: int) -> Any:
        if not self.compile:
            return _growing_cache(self.model.config, length)
        from transformers import StaticCache

        cache = self._static.get((rows, length))
        if cache is None:
            config = self.model.config
            cache = StaticCache(config=config, max_cache_len=length)
            heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            param = next(self.model.parameters())
            cache.early_initialization(rows, heads, head_dim, param.dtype, param.device)
            self._static[(rows, length)] = cache
        for layer in cache.layers:  # stale keys past the new prompt are never attended: no need to zero them
            layer.cumulative_length.zero_()
        return cache

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 eos_token_id: int | Sequence[int], pad_token_id: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = 0, top_p: float = 1.0,
                 logits_processor: Iterable[Callable[[Tensor, Tensor], Tensor]] | None = None,
                 past_key_values: Any = None, cache: Any = None, **unsupported: Any) -> Tensor:
        """Prompt + response ids ``(B, L + R)`` for left-padded prompts, as ``model.generate`` returns them.

        ``cache`` (or ``past_key_values``) may hold the KV cache of the prompts without their last token, as
        :func:`~lightning_rlhf.models.prompt_cache.shared_prompt_cache` makes it (one prefill per group).
        """
        past_key_values = cache if cache is not None else past_key_values
        if unsupported:
            raise TypeError(f"generation_backend='fast' takes the arguments rollouts use; got {sorted(unsupported)}; "
                            f"use generation_backend='native' for the rest of transformers' generate")
        rows, prompt_length = input_ids.shape
        total = prompt_length + max_new_tokens
        length = math.ceil(total / CACHE_BUCKET) * CACHE_BUCKET if self.compile else total
        started, new_bucket = time.perf_counter(), self.compile and (rows, length) not in self.buckets
        with self.packed_linears(), one_token_attention(self.model) if not self.compile else nullcontext():
            sequences = self._decode(input_ids, attention_mask, self._cache(rows, length), length, max_new_tokens,
                                     eos_token_id, pad_token_id, do_sample, temperature, top_k, top_p,
                                     list(logits_processor or []), past_key_values)
        if new_bucket:
            self.buckets.append((rows, length))
            self.compile_s += time.perf_counter() - started
        return sequences

    def _decode(self, input_ids: Tensor, attention_mask: Tensor, cache: Any, length: int, max_new_tokens: int,
                eos_token_id: int | Sequence[int], pad_token_id: int, do_sample: bool, temperature: float,
                top_k: int | None, top_p: float, processors: list, past_key_values: Any) -> Tensor:
        rows, prompt_length = input_ids.shape
        mask = attention_mask.new_ones(rows, length)
        mask[:, :prompt_length] = attention_mask
        # a static cache attends over its whole length (later positions are causally masked); a growing one over
        # what it holds
        seen = (lambda end: mask) if self.compile else (lambda end: mask[:, :end])
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if past_key_values is not None:
            held = _copy_prefix(past_key_values, cache)
            if held != prompt_length - 1:
                raise ValueError(f"past_key_values caches {held} tokens; expected the prompt without its last "
                                 f"token ({prompt_length - 1})")
            logits = self._step(input_ids[:, -1:], seen(prompt_length), positions[:, -1:], cache)
        else:  # prompts differ in length from call to call: the prefill runs eagerly
            logits = self._forward(input_ids, seen(prompt_length), positions, cache)
        stop = torch.tensor(list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                            dtype=torch.long, device=input_ids.device)
        sequences = torch.cat([input_ids, input_ids.new_full((rows, max_new_tokens), pad_token_id)], dim=1)
        running = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        position, end = positions[:, -1:], prompt_length
        warpers = _warpers(temperature, top_k, top_p) if do_sample else []
        for step in range(max_new_tokens):
            scores = logits.float()
            for processor in processors:
                scores = processor(sequences[:, :end], scores)
            if do_sample:
                for warper in warpers:
                    scores = warper(sequences[:, :end], scores)
                token = sample_tokens(scores.softmax(-1))
            else:
                token = scores.argmax(-1)
            token = torch.where(running, token, token.new_tensor(pad_token_id))
            sequences[:, end] = token
            end += 1
            running &= ~torch.isin(token, stop)
            if step == max_new_tokens - 1 or not running.any():
                break
            position = position + 1
            logits = self._step(token[:, None], seen(end), position, cache)
        return sequences[:, :end]


def sample_tokens(probs: Tensor) -> Tensor:
    """One token per row of ``probs`` ``(B, V)``: a uniform number below the row's total against its float64 cumsum.

    Why not ``torch.multinomial``: it draws an exponential number for every vocabulary entry, costly on the CPU. The
    distribution is the same; the tokens drawn under one seed differ from ``generate``'s.
    """
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _warpers(temperature: float, top_k: int | None, top_p: float) -> list:
    """``generate``'s own sampling warpers, in its order (temperature, top-k, top-p), each only where it changes
    something, so sampled tokens follow the same distribution as HF ``generate``'s."""
    warpers: list = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


class _PreallocatedLayer(DynamicLayer):
    """A dynamic cache layer that writes into storage allocated once for ``capacity`` tokens instead of growing by
    concatenation; ``keys``/``values`` are views of what it holds."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            rows_heads = key_states.shape[:2]
            self._k = key_states.new_empty(*rows_heads, self.capacity, key_states.shape[-1])
            self._v = value_states.new_empty(*rows_heads, self.capacity, value_states.shape[-1])
            self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        held, new = self.keys.shape[-2], key_states.shape[-2]
        self._k[:, :, held : held + new] = key_states
        self._v[:, :, held : held + new] = value_states
        self.keys, self.values = self._k[:, :, : held + new], self._v[:, :, : held + new]
        return self.keys, self.values


def _growing_cache(config: Any, capacity: int) -> Cache:
    """A KV cache for ``capacity`` tokens that holds what it was given so far (attention runs over that only)."""
    return Cache(layers=[_PreallocatedLayer(capacity) for _ in range(config.num_hidden_layers)])


def _copy_prefix(source: Any, cache: Any) -> int:
    """Write a dynamic cache's keys and values into ``cache``'s first positions; how many positions that is."""
    held = 0
    for layer, prefix in zip(cache.layers, source.layers):
        held = prefix.keys.shape[-2]
        if hasattr(layer, "cumulative_length") and torch.is_tensor(layer.cumulative_length):  # a static layer
            layer.keys[:, :, :held].copy_(prefix.keys)
            layer.values[:, :, :held].copy_(prefix.values)
            layer.cumulative_length.fill_(held)
        else:
            layer.update(prefix.keys, prefix.values)
    return held
