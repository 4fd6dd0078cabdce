"""Sampling from the policy's own distribution, and knowing where its turn ends.

Why: ``generate`` merges the model's saved ``generation_config`` into every call (a ``repetition_penalty``,
``no_repeat_ngram_size``, ``min_new_tokens``, ``suppress_tokens``, ``top_k``/``top_p``: Qwen2.5-Instruct ships
``repetition_penalty > 1``). Those processors change the distribution tokens are drawn from, while PPO/GRPO
score the samples with the raw policy (``log_softmax(logits / T)``), so the ratio, the KL and the policy gradient
would belong to samples pi never produced. The rollout therefore samples from pi itself: the saved settings are
set aside for the call (with one warning naming them), and only what :class:`~.GenerationArgs` says is applied.

Log-probabilities as tokens are produced: :class:`StreamedLogprobs` reads each step's scores inside
``generate`` and keeps one step's distribution, where ``output_logits=True`` would keep ``B x R x V`` float32
logits (2 GB for a 128k vocabulary, 16 prompts, 256 tokens) until the rollout ends.

End of turn: instruct models often end a turn with a token that is not the tokenizer's ``eos_token``
(Llama-3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``); their ``generation_config.eos_token_id``
lists them. Generation stops at, and the response masks end at, any of them.
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
    from lightning_rlhf.strategies.tensor_parallel import unwrap_model

    return unwrap_model(getattr(policy, "module", policy))


def policy_stop_ids(tokenizer: Any, policy: Any) -> list[int]:
    """:func:`stop_token_ids` of the model that ``policy`` generates with."""
    return stop_token_ids(tokenizer, getattr(generating_model(policy), "generation_config", None))


@contextmanager
def sampling_from_policy(policy: Any, tokenizer: Any) -> Iterator[list[int]]:
    """Within the block, ``policy.generate`` applies only the arguments it is called with.

    The model's ``generation_config`` is swapped for one that keeps its token ids (EOS set to every stop id) and
    nothing else; settings that would have reshaped the distribution are warned about once per set of names.

    Yields:
        The token ids that end a response (:func:`policy_stop_ids`).
    """
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
    """A ``generate`` logits processor that records each sampled token's log-probability (and entropy) and keeps
    at most one step's ``(B, V)`` distribution.

    At step ``t`` it sees the scores token ``t`` is drawn from, ``log_softmax(logits / temperature)``; that token
    is the last column of ``input_ids`` at step ``t + 1`` (the last one is read off the returned sequences by
    :meth:`result`). Custom processors run after transformers' own ones and before temperature / top-k / top-p,
    so with :func:`sampling_from_policy` (nothing else set) the scores are the model's raw logits: the values equal
    those of ``output_logits`` and of a forward pass (see ``logprobs_from_generation`` of PPOModule).

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
        """``(B, R)`` log-probabilities of ``responses`` (the generated ids, prompt removed) and entropies (or None).

        Raises:
            RuntimeError: if ``generate`` did not call the processor once per generated token.
        """
        self._take(responses[:, -1])
        if len(self._logprobs) != responses.shape[1]:
            raise RuntimeError(f"StreamedLogprobs saw {len(self._logprobs)} sampling steps for {responses.shape[1]} "
                               f"generated tokens; pass a fresh instance to each generate call")
        logprobs = torch.stack(self._logprobs, dim=1)
        entropy = torch.stack(self._entropy, dim=1) if self.with_entropy else None
        self._logprobs, self._entropy = [], []
        return logprobs, entropy
