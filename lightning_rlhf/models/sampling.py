"""Sampling from the policy's own distribution, and knowing where its turn ends.

A saved ``generation_config`` (e.g. ``repetition_penalty``) would reshape the distribution PPO/GRPO score, so
rollouts apply only :class:`~.GenerationArgs` (docs/concepts.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_rlhf.algorithms import entropy_from_logits

#: ``generation_config`` fields that only identify tokens or sizes: kept when the rest is set aside.
_KEPT_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

_WARNED: set[tuple[str, ...]] = set()


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's ``generation_config`` EOS list."""
    ids: list[int] = []
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(generation_config, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation_config names an EOS token; set "
                         "tokenizer.eos_token (or generation_config.eos_token_id) so responses can end")
    return ids


def ignored_settings(generation_config: Any) -> dict[str, Any]:
    """The settings of a saved ``generation_config`` that would change the sampled distribution (or length)."""
    from transformers import GenerationConfig

    if generation_config is None:
        return {}
    defaults = GenerationConfig().to_dict()
    neutral = {**GenerationConfig()._get_default_generation_params(), "top_k": None}
    ignored = {}
    for key, value in generation_config.to_dict().items():
        if key in _KEPT_FIELDS or key.startswith("_") or key not in defaults or value is None:
            continue
        if key in ("max_length", "max_new_tokens", "do_sample", "temperature", "use_cache", "cache_implementation") \
                or key.startswith(("output_", "return_")):
            continue
        if value not in (False, [], {}) and value != defaults[key] and value != neutral.get(key, defaults[key]):
            ignored[key] = value
    return ignored


def generating_model(policy: Any) -> nn.Module:
    """The transformers model whose ``generate`` runs under a generation switch, a DeepSpeed engine or peft."""
    from lightning_rlhf.models.loading import unwrap_model

    return unwrap_model(getattr(policy, "module", policy))


def policy_stop_ids(tokenizer: Any, policy: Any) -> list[int]:
    """:func:`stop_token_ids` of the model that ``policy`` generates with."""
    return stop_token_ids(tokenizer, getattr(generating_model(policy), "generation_config", None))


@contextmanager
def sampling_from_policy(policy: Any, tokenizer: Any) -> Iterator[list[int]]:
    """Within the block, ``policy.generate`` applies only its call's arguments (warned once); yields the stop ids."""
    from transformers import GenerationConfig

    model = generating_model(policy)
    saved = getattr(model, "generation_config", None)
    stop_ids = stop_token_ids(tokenizer, saved)
    ignored = ignored_settings(saved)
    if ignored and tuple(sorted(ignored)) not in _WARNED:
        _WARNED.add(tuple(sorted(ignored)))
        rank_zero_warn(
            f"the model's generation_config sets {ignored}; rollouts ignore them and sample from the policy's own "
            f"distribution (softmax(logits / temperature), with GenerationArgs' top_k / top_p), which is the one "
            f"PPO and GRPO score. Set sampling options in GenerationArgs instead."
        )
    kept = {key: getattr(saved, key, None) for key in _KEPT_FIELDS}
    model.generation_config = GenerationConfig(**{**kept, "eos_token_id": stop_ids})
    try:
        yield stop_ids
    finally:
        model.generation_config = saved


class StreamedLogprobs:
    """A ``generate`` logits processor recording each sampled token's log-probability (and entropy).

    It keeps one step's ``(B, V)`` distribution, where ``output_logits=True`` would keep all ``B x R x V`` logits.
    Under :func:`sampling_from_policy` it sees the raw logits, so its values equal a forward pass's.

    Args:
        temperature: the sampling temperature the logits are divided by.
        with_entropy: also record the entropy of each step's distribution.
    """

    def __init__(self, temperature: float = 1.0, with_entropy: bool = True) -> None:
        self.temperature = temperature
        self.with_entropy = with_entropy
        self._pending: Tensor | None = None  # (B, V) log-softmax of the latest step, until its token is known
        self._logprobs: list[Tensor] = []
        self._entropy: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Record step ``t - 1``'s sampled token, keep step ``t``'s distribution; the scores pass unchanged."""
        self._take(input_ids[:, -1])
        logits = scores.float() / self.temperature if self.temperature != 1.0 else scores.float()
        self._pending = torch.log_softmax(logits, dim=-1)
        if self.with_entropy:
            self._entropy.append(entropy_from_logits(logits.unsqueeze(1)).squeeze(1))
        return scores

    def _take(self, tokens: Tensor) -> None:
        if self._pending is not None:
            self._logprobs.append(self._pending.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
            self._pending = None

    def result(self, responses: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(B, R)`` log-probabilities of ``responses`` (the generated ids, prompt removed) and entropies (or None)."""
        self._take(responses[:, -1])
        if len(self._logprobs) != responses.shape[1]:
            raise RuntimeError(f"StreamedLogprobs saw {len(self._logprobs)} sampling steps for {responses.shape[1]} "
                               f"generated tokens; pass a fresh instance to each generate call")
        logprobs = torch.stack(self._logprobs, dim=1)
        entropy = torch.stack(self._entropy, dim=1) if self.with_entropy else None
        self._logprobs, self._entropy = [], []
        return logprobs, entropy
