"""Rollouts from another engine than the trainer (vLLM) are slightly off-policy: its kernels give other
probabilities for the same weights. :func:`sampler_logprob_gap` measures it; :func:`truncated_importance_weights`
corrects for it as truncated importance sampling does (Yao et al., 2025; TRL's ``vllm_importance_sampling_cap``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean


def sampler_logprob_gap(logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute difference of ``(B, R)`` trainer and sampler log-probs where ``mask`` is true."""
    return masked_mean((logprobs - sampler_logprobs).abs(), mask)


def truncated_importance_weights(logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float) -> Tensor:
    """``(B, R)`` weights ``min(exp(logprobs - sampler_logprobs), cap)`` on masked tokens, 1 elsewhere, detached.

    Multiplying a token's advantage by its weight weights its clipped policy-gradient term by it: for a positive
    ``w``, ``min(r A w, clip(r) A w) = w min(r A, clip(r) A)``."""
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    ratio = torch.exp((logprobs - sampler_logprobs).detach().float()).clamp(max=cap)
    return torch.where(mask.bool(), ratio, torch.ones_like(ratio)).to(logprobs.dtype)


__all__ = ["sampler_logprob_gap", "truncated_importance_weights"]
