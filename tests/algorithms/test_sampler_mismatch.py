"""Truncated importance sampling against a generation engine's log-probs (``algorithms/sampler_mismatch.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms.policy_losses import clip_policy_term
from lightning_rlhf.algorithms.sampler_mismatch import sampler_logprob_gap, truncated_importance_weights


def test_weights_are_the_ratio_to_the_sampler_capped_and_one_off_the_mask():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]])
    sampler = torch.tensor([[-1.5, -2.0, -4.0], [-0.1, -1.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    weights = truncated_importance_weights(trainer, sampler, mask, cap=2.0)
    expected = torch.tensor([[math.exp(0.5), 1.0, 2.0], [1.0, math.exp(-2.0), 1.0]])
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad
    assert sampler_logprob_gap(trainer, sampler, mask).item() == pytest.approx((0.5 + 0 + 3.5 + 0 + 2.0) / 5)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(trainer, sampler, mask, cap=0.0)


def test_weighting_the_advantages_weights_each_tokens_clipped_loss_and_its_gradient():
    """``min(r A w, clip(r) A w) = w min(r A, clip(r) A)`` for ``w > 0``: the online loop applies the weights to the
    advantages, which must equal weighting each token's PPO-clip loss (value and gradient)."""
    generator = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=generator) * 3
    logprobs = (old + torch.randn(4, 6, generator=generator) * 0.4).requires_grad_()
    advantages = torch.randn(4, 6, generator=generator)
    mask = torch.ones(4, 6, dtype=torch.bool)
    weights = truncated_importance_weights(old, old - torch.randn(4, 6, generator=generator), mask, cap=2.0)
    weighted = clip_policy_term(logprobs, old, advantages * weights, mask, 0.2, 0.2).loss
    (grad_weighted,) = torch.autograd.grad(weighted.sum(), logprobs)
    plain = clip_policy_term(logprobs, old, advantages, mask, 0.2, 0.2).loss
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), logprobs)
    torch.testing.assert_close(weighted, plain * weights)
    torch.testing.assert_close(grad_weighted, grad_plain)
