"""The critic-free policy loss (asymmetric clipping, KL in the loss, named aggregation) against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import LOSS_AGGREGATIONS, clipped_policy_loss, grpo_policy_loss
from tests.algorithms.conftest import randn
from tests.algorithms.test_aggregation import MAX_TOKENS, loop_aggregate

LOW, HIGH = 0.2, 0.28


def loop_kl(name: str, lp: float, ref: float) -> float:
    x = lp - ref
    value = {"k1": x, "k2": 0.5 * x * x, "k3": math.exp(-x) - 1 + x}[name]
    return max(-10.0, min(10.0, value))


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("kl_estimator,beta", [("k1", 0.0), ("k1", 0.1), ("k2", 0.05), ("k3", 0.04)])
def test_grpo_loss_matches_loop(case, aggregation, kl_estimator, beta):
    gen, shape, mask, _ = case
    lp, old, ref, adv = randn(gen, shape, 0.3), randn(gen, shape, 0.3), randn(gen, shape, 0.3), randn(gen, shape)
    lp.requires_grad_(True)
    before = [t.detach().clone() for t in (lp, old, ref, adv)]
    loss, stats = grpo_policy_loss(lp, old, adv, mask, clip_range_low=LOW, clip_range_high=HIGH,
                                   aggregation=aggregation, max_tokens=MAX_TOKENS, ref_logprobs=ref, beta=beta,
                                   kl_estimator=kl_estimator)
    per_token = torch.zeros(shape, dtype=torch.float64)
    low, high, kls, ratios = [], [], [], []
    positions = [(i, j) for i in range(shape[0]) for j in range(shape[1]) if mask[i, j]]
    for i, j in positions:
        logp, a = float(lp.detach()[i, j]), float(adv[i, j])
        ratio = math.exp(logp - float(old[i, j]))
        kl = loop_kl(kl_estimator, logp, float(ref[i, j]))
        per_token[i, j] = max(-a * ratio, -a * max(1 - LOW, min(1 + HIGH, ratio))) + beta * kl
        low.append(1.0 if a < 0 and ratio < 1 - LOW else 0.0)
        high.append(1.0 if a > 0 and ratio > 1 + HIGH else 0.0)
        kls.append(kl)
        ratios.append(ratio)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    assert loss.item() == pytest.approx(loop_aggregate(aggregation, per_token, mask), abs=1e-6)
    assert stats["clipfrac_low"].item() == pytest.approx(mean(low), abs=1e-6)
    assert stats["clipfrac_high"].item() == pytest.approx(mean(high), abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(mean(low) + mean(high), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(mean(kls), abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(mean(ratios), abs=1e-6)
    loss.backward()
    assert torch.isfinite(lp.grad).all() and (lp.grad[~mask] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip((lp.detach(), old, ref, adv), before))


def test_clip_higher_lets_positive_advantages_grow_further():
    """At ratio 1.25 with A > 0: symmetric clipping (0.2) stops the gradient, clip-higher (0.28) keeps it."""
    lp = torch.full((1, 2), math.log(1.25), requires_grad=True)
    old, adv, mask = torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    loss, stats = grpo_policy_loss(lp, old, adv, mask, clip_range_low=0.2, clip_range_high=0.2)
    loss.backward()
    assert stats["clipfrac_high"].item() == 1.0 and (lp.grad == 0).all()
    lp.grad = None
    loss, stats = grpo_policy_loss(lp, old, adv, mask, clip_range_low=0.2, clip_range_high=0.28)
    loss.backward()
    assert stats["clipfrac_high"].item() == 0.0 and (lp.grad < 0).all()


def test_symmetric_clipping_matches_ppo_loss(case):
    """With equal ranges and the token mean, the GRPO loss is PPO's clipped loss and clip fraction."""
    gen, shape, mask, _ = case
    lp, old, adv = randn(gen, shape, 0.3), randn(gen, shape, 0.3), randn(gen, shape)
    ppo_loss, ppo_stats = clipped_policy_loss(lp, old, adv, mask, clip_range=0.2)
    loss, stats = grpo_policy_loss(lp, old, adv, mask, aggregation="token_mean")
    assert loss.item() == pytest.approx(ppo_loss.item(), abs=1e-9)
    assert stats["clipfrac"].item() == pytest.approx(ppo_stats["clipfrac"].item(), abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(ppo_stats["approx_kl"].item(), abs=1e-9)


def test_kl_off_needs_no_reference_and_bad_arguments_are_named():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    loss, stats = grpo_policy_loss(x, x, torch.ones(2, 3), mask)
    assert loss.item() == pytest.approx(-1.0) and stats["kl"].item() == 0.0
    with pytest.raises(ValueError, match="beta=0.1 .* needs ref_logprobs"):
        grpo_policy_loss(x, x, x, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        grpo_policy_loss(x, x, x, mask, ref_logprobs=x, beta=-1.0)
    with pytest.raises(ValueError, match="must share one shape"):
        grpo_policy_loss(x, x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="clip ranges must satisfy"):
        grpo_policy_loss(x, x, x, mask, clip_range_high=-0.1)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        grpo_policy_loss(x, x, x, mask, kl_estimator="k4")


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
def test_entropy_bonus_subtracts_the_aggregated_entropy_and_its_gradient_widens_a_collapsed_group(case, aggregation):
    """A group whose answers all earned the same reward (advantage 0) gives the surrogate no gradient; with the
    bonus the loss is ``aggregate(surrogate - c H)`` (checked against a plain loop) and one step on the logits
    raises the entropy of every counted token."""
    gen, shape, mask, _ = case
    logits = (4.0 * randn(gen, (*shape, 6))).requires_grad_(True)  # peaked distributions over 6 tokens
    tokens = logits.detach().argmax(-1)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    no_signal = torch.zeros(shape)
    coef = 0.01
    loss, _ = grpo_policy_loss(logp, logp.detach(), no_signal, mask, aggregation=aggregation,
                               max_tokens=MAX_TOKENS, entropy=entropy, entropy_coef=coef)
    assert loss.item() == pytest.approx(loop_aggregate(aggregation, -coef * entropy.detach(), mask), abs=1e-6)
    loss.backward()
    stepped = logits.detach() - 10.0 * logits.grad
    after = -(torch.softmax(stepped, -1) * torch.log_softmax(stepped, -1)).sum(-1)
    assert (after[mask] > entropy.detach()[mask]).all()
    assert torch.equal(after[~mask], entropy.detach()[~mask])  # tokens out of the mask are left alone


def test_entropy_bonus_arguments_are_checked():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="entropy_coef=0.01 needs the policy's per-token entropy"):
        grpo_policy_loss(x, x, x, mask, entropy_coef=0.01)
    with pytest.raises(ValueError, match="entropy_coef must be >= 0"):
        grpo_policy_loss(x, x, x, mask, entropy=x, entropy_coef=-1.0)
    with pytest.raises(ValueError, match="must share one shape"):
        grpo_policy_loss(x, x, x, mask, entropy=torch.zeros(2, 4), entropy_coef=0.01)


def test_an_entropy_target_switches_the_bonus_off_above_it_so_no_signal_cannot_grow_the_entropy():
    """The third trap: with no reward signal the bonus is the only gradient and raises the entropy without bound.
    As a hinge at ``entropy_target`` it acts exactly as the plain bonus below the target and adds nothing above."""
    mask = torch.ones(2, 3, dtype=torch.bool)
    no_signal = torch.zeros(2, 3)
    for level, expected_on in ((0.2, True), (2.0, False)):
        logp, entropy = torch.zeros(2, 3, requires_grad=True), torch.full((2, 3), level, requires_grad=True)
        hinged, stats = grpo_policy_loss(logp, logp, no_signal, mask, entropy=entropy, entropy_coef=0.1,
                                         entropy_target=1.0)
        plain, _ = grpo_policy_loss(logp, logp, no_signal, mask, entropy=entropy, entropy_coef=0.1)
        assert stats["entropy_bonus_on"].item() == float(expected_on)
        assert hinged.item() == pytest.approx(plain.item() if expected_on else 0.0)
        hinged.backward()
        assert (entropy.grad < 0).all() if expected_on else (entropy.grad == 0).all()
    with pytest.raises(ValueError, match="entropy_target must be > 0"):
        grpo_policy_loss(no_signal, no_signal, no_signal, mask, entropy=no_signal, entropy_coef=0.1,
                         entropy_target=0.0)
