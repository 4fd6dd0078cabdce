"""How the actor samples its rollouts: one typed group of settings that rollouts and validation share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GenerationArgs:
    """How the actor samples responses.

    Attributes:
        max_new_tokens: longest response in tokens (DeepSpeed-Chat's ``--max_answer_seq_len``); EOS stops earlier.
        do_sample: sample (True) or decode greedily (False).
        temperature: softmax temperature of sampling; the rollout's log-probabilities use the same.
        top_k: keep only the ``top_k`` most likely tokens (0 disables); the log-probabilities stay those of the
            untruncated distribution (as in TRL and OpenRLHF), so keep 0 for exact ratios.
        top_p: nucleus sampling threshold (1.0 disables; same caveat as ``top_k``).
    """

    max_new_tokens: int = 256
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationArgs.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"GenerationArgs.temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationArgs.top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self, pad_token_id: int, eos_token_id: int | list[int], greedy: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (``greedy`` overrides ``do_sample``); the model's own are set aside."""
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
            do_sample=self.do_sample and not greedy,
        )
        if kwargs["do_sample"]:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs

    @property
    def logprob_temperature(self) -> float:
        """Temperature the log-probabilities divide the logits by (1 when decoding greedily)."""
        return self.temperature if self.do_sample else 1.0
