"""Sampling from the policy's own distribution, and knowing where its turn ends.

Why: ``generate`` merges the model's saved ``generation_config`` into every call (a ``repetition_penalty``,
``no_repeat_ngram_size``, ``min_new_tokens``, ``suppress_tokens``, ``top_k``/``top_p``: Qwen2.5-Instruct ships
``repetition_penalty > 1``). Those processors change the distribution tokens are drawn from, while PPO/GRPO
score the samples with the raw policy (``log_softmax(logits / T)``), so the ratio, the KL and the policy gradient
would belong to samples pi never produced. The rollout therefore samples from pi itself: the saved settings are
set aside for the call (with one warning naming them), and only what :class:`~.GenerationArgs` says is applied.

End of turn: instruct models often end a turn with a token that is not the tokenizer's ``eos_token``
(Llama-3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``); their ``generation_config.eos_token_id``
lists them. Generation stops at, and the response masks end at, any of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

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
