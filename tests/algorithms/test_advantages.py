"""Reward shaping, GAE and explained variance against plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import (
    explained_variance,
    generalized_advantage_estimation,
    kl_penalized_rewards,
    last_token_index,
    process_scores,
)
from tests.algorithms.conftest import randn, selected
from tests.algorithms.test_kl import loop_k


def loop_gae(rewards, values, mask, gamma, lam):
    """Per row: keep the real tokens in order, then the textbook backwards recursion over them."""
    adv = [[0.0] * len(r) for r in rewards]
    ret = [[0.0] * len(r) for r in rewards]
    for i in range(len(rewards)):
        idx = [j for j in range(len(rewards[i])) if mask[i][j]]
        last_gae = 0.0
        for k in range(len(idx) - 1, -1, -1):
            j = idx[k]
            next_v = values[i][idx[k + 1]] if k + 1 < len(idx) else 0.0
            delta = rewards[i][j] + gamma * next_v - values[i][j]
            last_gae = delta + gamma * lam * last_gae
            adv[i][j] = last_gae
            ret[i][j] = last_gae + values[i][j]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
@pytest.mark.parametrize("which_mask", ["random", "right_padded"])
def test_gae_matches_loop(case, gamma, lam, which_mask):
    gen, shape, random_mask, right_padded = case
    mask = random_mask if which_mask == "random" else right_padded
    rewards, values = randn(gen, shape), randn(gen, shape)
    before = (rewards.clone(), values.clone())
    adv, ret = generalized_advantage_estimation(rewards, values, mask, gamma, lam)
    want_adv, want_ret = loop_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    for i in range(shape[0]):
        assert adv[i].tolist() == pytest.approx(want_adv[i], abs=1e-5)
        assert ret[i].tolist() == pytest.approx(want_ret[i], abs=1e-5)
    assert torch.equal(rewards, before[0]) and torch.equal(values, before[1])


def test_last_token_index(case):
    _, shape, mask, _ = case
    got = last_token_index(mask).tolist()
    for i in range(shape[0]):
        real = [j for j in range(shape[1]) if mask[i, j]]
        assert got[i] == (real[-1] if real else -1)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalized_rewards_match_loop(case, estimator):
    gen, shape, mask, _ = case
    scores, lp, ref = randn(gen, shape[:1], 3.0), randn(gen, shape), randn(gen, shape)
    rewards, stats = kl_penalized_rewards(scores, lp, ref, mask, kl_coef=0.1, kl_estimator=estimator)
    totals, kls = [], []
    for i in range(shape[0]):
        real = [j for j in range(shape[1]) if mask[i, j]]
        row_kl = 0.0
        for j in range(shape[1]):
            want = 0.0
            if mask[i, j]:
                k = loop_k(estimator, float(lp[i, j]), float(ref[i, j]))
                row_kl += k
                want = -0.1 * k + (float(scores[i]) if j == real[-1] else 0.0)
            assert rewards[i, j].item() == pytest.approx(want, abs=1e-5)
        totals.append(sum(rewards[i].tolist()))
        kls.append(row_kl)
    assert stats["kl"].item() == pytest.approx(sum(kls) / len(kls), abs=1e-5)
    assert stats["reward_mean"].item() == pytest.approx(sum(totals) / len(totals), abs=1e-5)
    if len(totals) > 1:
        m = sum(totals) / len(totals)
        std = math.sqrt(sum((t - m) ** 2 for t in totals) / (len(totals) - 1))
        assert stats["reward_std"].item() == pytest.approx(std, abs=1e-5)


def test_process_scores_loop(case):
    gen, shape, _, _ = case
    scores = randn(gen, shape[:1], 10.0)
    eos = torch.rand(shape[:1], generator=gen) > 0.5
    out = process_scores(scores, eos, missing_eos_penalty=1.5, score_mean=0.5, score_std=2.0, clip=3.0)
    for i in range(shape[0]):
        want = (float(scores[i]) - 0.5) / 2.0 - (0.0 if eos[i] else 1.5)
        assert out[i].item() == pytest.approx(max(-3.0, min(3.0, want)), abs=1e-6)
    with pytest.raises(ValueError, match="score_std"):
        process_scores(scores, score_std=0.0)


def test_explained_variance_loop(case):
    gen, shape, mask, _ = case
    returns = randn(gen, shape)
    values = returns + 0.3 * randn(gen, shape)
    ys, rs = selected(returns, mask), selected(returns - values, mask)
    got = explained_variance(values, returns, mask).item()

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

    if len(ys) < 2 or var(ys) == 0:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(1 - var(rs) / var(ys), abs=1e-6)


def test_rewards_shape_errors_are_named():
    with pytest.raises(ValueError, match="shape mismatch"):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 0.1)
