"""Policy, value, pairwise and LM losses against plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import causal_lm_loss, clipped_policy_loss, clipped_value_loss, pairwise_reward_loss
from tests.algorithms.conftest import randn


def loop_masked_mean(pairs):
    return sum(pairs) / len(pairs) if pairs else 0.0


def test_policy_loss_matches_loop(case):
    gen, shape, mask, _ = case
    lp, old, adv = randn(gen, shape, 0.3), randn(gen, shape, 0.3), randn(gen, shape)
    lp.requires_grad_(True)
    before = (lp.detach().clone(), old.clone(), adv.clone())
    loss, stats = clipped_policy_loss(lp, old, adv, mask, clip_range=0.2)
    losses, clipped, kls = [], [], []
    for i in range(shape[0]):
        for j in range(shape[1]):
            if not mask[i, j]:
                continue
            ratio = math.exp(float(lp.detach()[i, j]) - float(old[i, j]))
            a = float(adv[i, j])
            u, c = -a * ratio, -a * max(0.8, min(1.2, ratio))
            losses.append(max(u, c))
            clipped.append(1.0 if c > u else 0.0)
            kls.append(ratio - 1 - math.log(ratio))
    assert loss.item() == pytest.approx(loop_masked_mean(losses), abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(loop_masked_mean(clipped), abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(loop_masked_mean(kls), abs=1e-6)
    loss.backward()
    assert torch.isfinite(lp.grad).all() and (lp.grad[~mask] == 0).all()
    assert torch.equal(lp.detach(), before[0]) and torch.equal(old, before[1]) and torch.equal(adv, before[2])


def test_value_loss_matches_loop(case):
    gen, shape, mask, _ = case
    v, old, ret = randn(gen, shape), randn(gen, shape), randn(gen, shape)
    loss, stats = clipped_value_loss(v, old, ret, mask, clip_range=0.2)
    errs, clipped = [], []
    for i in range(shape[0]):
        for j in range(shape[1]):
            if mask[i, j]:
                vi, oi, ri = float(v[i, j]), float(old[i, j]), float(ret[i, j])
                vc = oi + max(-0.2, min(0.2, vi - oi))
                errs.append(max((vi - ri) ** 2, (vc - ri) ** 2))
                clipped.append(1.0 if (vc - ri) ** 2 > (vi - ri) ** 2 else 0.0)
    assert loss.item() == pytest.approx(0.5 * loop_masked_mean(errs), abs=1e-6)
    assert stats["value_clipfrac"].item() == pytest.approx(loop_masked_mean(clipped), abs=1e-6)


def test_policy_loss_at_old_policy_is_minus_mean_advantage():
    """At ratio 1 nothing is clipped and the loss is -mean(A), as in the paper."""
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    lp = torch.zeros(1, 3)
    mask = torch.tensor([[True, True, False]])
    loss, stats = clipped_policy_loss(lp, lp, adv, mask)
    assert loss.item() == pytest.approx(0.5) and stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_pairwise_loss_matches_loop(case):
    gen, shape, mask, _ = case
    chosen, rejected = randn(gen, shape[:1]), randn(gen, shape[:1])
    loss, stats = pairwise_reward_loss(chosen, rejected)
    want = [math.log1p(math.exp(-(float(c) - float(r)))) for c, r in zip(chosen, rejected)]
    assert loss.item() == pytest.approx(sum(want) / len(want), abs=1e-6)
    acc = sum(1.0 for c, r in zip(chosen, rejected) if c > r) / len(want)
    assert stats["accuracy"].item() == pytest.approx(acc)
    # token-wise (DeepSpeed-Chat): mean over the masked entries
    tc, tr = randn(gen, shape), randn(gen, shape)
    tok_loss, _ = pairwise_reward_loss(tc, tr, mask)
    terms = [math.log1p(math.exp(-(float(tc[i, j]) - float(tr[i, j]))))
             for i in range(shape[0]) for j in range(shape[1]) if mask[i, j]]
    assert tok_loss.item() == pytest.approx(loop_masked_mean(terms), abs=1e-6)


def test_causal_lm_loss_matches_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, :3] = -100
    terms = []
    for i in range(2):
        for t in range(4):
            y = int(labels[i, t + 1])
            if y != -100:
                row = logits[i, t].tolist()
                terms.append(math.log(sum(math.exp(z) for z in row)) - row[y])
    assert causal_lm_loss(logits, labels).item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)


def test_pairwise_accuracy_counts_a_tie_as_half():
    """An untrained reward head scores every pair equally: that is chance (0.5), not 0."""
    _, stats = pairwise_reward_loss(torch.zeros(4), torch.zeros(4))
    assert stats["accuracy"].item() == 0.5
    _, stats = pairwise_reward_loss(torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 3.0, 1.0]))
    assert stats["accuracy"].item() == pytest.approx((1 + 0.5 + 0 + 0) / 4)
