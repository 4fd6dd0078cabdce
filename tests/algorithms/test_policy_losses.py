"""GSPO's and CISPO's policy terms, through ``grpo_policy_loss``, against plain loops written from the papers' formulas
(value and gradient with respect to the log-probabilities, masked, clipped and unclipped)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import LOSS_AGGREGATIONS, get_policy_loss, grpo_policy_loss
from tests.algorithms.conftest import randn
from tests.algorithms.test_aggregation import MAX_TOKENS, loop_aggregate
from tests.algorithms.test_grpo_loss import loop_kl

#: DAPO-like ranges (some answers clipped, some not) and the GSPO paper's (most clipped)
GSPO_RANGES = [(0.2, 0.28), (3e-4, 4e-4)]
#: CISPO: symmetric, and the paper's (no lower bound on the weight)
CISPO_RANGES = [(0.2, 0.28), (1.0, 0.28)]


def clip(x: float, low: float, high: float) -> float:
    return max(1 - low, min(1 + high, x))


def row_constant_advantages(gen, shape):
    """One advantage per answer, on each of its tokens (as the group estimators give)."""
    return randn(gen, (shape[0], 1)).expand(shape).clone()


def loop_gspo(lp, old, adv, mask, low, high, beta=0.0, ref=None):
    """GSPO (arXiv 2507.18071): ``1/G sum_i max(-A_i s_i, -A_i clip(s_i))``, ``s_i = (pi/pi_old)^(1/|y_i|)``;
    returns the loss, ``d loss / d logp`` and the per-answer clip flags."""
    batch, seq = mask.shape
    rows = [i for i in range(batch) if any(mask[i, j] for j in range(seq))]
    grad = torch.zeros(batch, seq, dtype=torch.float64)
    loss, flags = 0.0, []
    for i in rows:
        tokens = [j for j in range(seq) if mask[i, j]]
        s = math.exp(sum(float(lp[i, j]) - float(old[i, j]) for j in tokens) / len(tokens))
        a = float(adv[i, tokens[0]])
        clipped_low, clipped_high = a < 0 and s < 1 - low, a > 0 and s > 1 + high
        term = max(-a * s, -a * clip(s, low, high))
        if beta:
            term += sum(beta * loop_kl("k3", float(lp[i, j]), float(ref[i, j])) for j in tokens) / len(tokens)
        loss += term / len(rows)
        for j in tokens:  # d(-A s)/d logp_t = -A s / |y_i| where the clip is not active, else 0
            grad[i, j] = 0.0 if clipped_low or clipped_high else -a * s / len(tokens) / len(rows)
        flags.append((clipped_low, clipped_high, s))
    return loss, grad, flags


def loop_weights(aggregation: str, mask) -> torch.Tensor:
    """``d aggregate / d per_token``: the weight each token has in the aggregation."""
    batch, seq = mask.shape
    lengths = [sum(bool(mask[i, j]) for j in range(seq)) for i in range(batch)]
    rows, tokens = sum(1 for n in lengths if n), sum(lengths)
    weights = torch.zeros(batch, seq, dtype=torch.float64)
    for i in range(batch):
        for j in range(seq):
            if mask[i, j]:
                weights[i, j] = {"seq_mean_token_mean": 1 / (rows * lengths[i]), "token_mean": 1 / tokens,
                                 "seq_mean_token_sum_norm": 1 / (rows * MAX_TOKENS)}[aggregation]
    return weights


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


@pytest.mark.parametrize("low,high", GSPO_RANGES)
def test_gspo_matches_the_sequence_level_loop(case, low, high):
    gen, shape, random_mask, right_padded = case
    for mask in (random_mask, right_padded):
        lp, old = randn(gen, shape, 0.3).requires_grad_(True), randn(gen, shape, 0.3)
        adv = row_constant_advantages(gen, shape)
        before = [t.detach().clone() for t in (lp, old, adv)]
        loss, stats = grpo_policy_loss(lp, old, adv, mask, low, high, policy_loss="gspo")
        want, want_grad, flags = loop_gspo(lp.detach(), old, adv, mask, low, high)
        assert loss.item() == pytest.approx(want, abs=1e-6)
        assert stats["clipfrac_low"].item() == pytest.approx(mean([float(f[0]) for f in flags]), abs=1e-6)
        assert stats["clipfrac_high"].item() == pytest.approx(mean([float(f[1]) for f in flags]), abs=1e-6)
        assert stats["ratio_mean"].item() == pytest.approx(mean([f[2] for f in flags]), rel=1e-6)
        loss.backward()
        torch.testing.assert_close(lp.grad, want_grad, atol=1e-6, rtol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip((lp.detach(), old, adv), before))


def test_gspo_clips_whole_answers_by_their_length_normalised_ratio():
    """Four answers of two tokens: ratio exp(0.1) above 1.05 with A > 0 (clipped: no gradient), inside the range,
    below 0.95 with A < 0 (clipped), above 1.05 with A < 0 (not clipped: the unclipped term is the larger)."""
    lp = torch.tensor([[0.3, -0.1], [0.02, 0.0], [-0.3, 0.1], [0.1, 0.1]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(4, 2, dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64).unsqueeze(1).expand(4, 2)
    mask = torch.ones(4, 2, dtype=torch.bool)
    loss, stats = grpo_policy_loss(lp, old, adv, mask, 0.05, 0.05, policy_loss="gspo")
    assert stats["clipfrac_high"].item() == 0.25 and stats["clipfrac_low"].item() == 0.25
    want, want_grad, _ = loop_gspo(lp.detach(), old, adv, mask, 0.05, 0.05)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(lp.grad, want_grad, atol=1e-6, rtol=1e-5)
    assert (lp.grad[0] == 0).all() and (lp.grad[2] == 0).all()
    assert (lp.grad[1] < 0).all() and (lp.grad[3] > 0).all()


def test_gspo_equals_its_token_form_for_constant_advantages(case):
    """GSPO-token's ratio ``sg[s_i] pi_t / sg[pi_t]``, clipped per token and averaged per answer, has the value and
    the gradient of the sequence-level loss."""
    gen, shape, mask, _ = case
    lp, old, adv = randn(gen, shape, 0.3).requires_grad_(True), randn(gen, shape, 0.3), row_constant_advantages(
        gen, shape)
    loss, _ = grpo_policy_loss(lp, old, adv, mask, 0.2, 0.28, policy_loss="gspo")
    (grad,) = torch.autograd.grad(loss, lp)
    count = mask.sum(1).clamp(min=1)
    log_s = (torch.where(mask, lp - old, 0.0).sum(1) / count).detach()
    token_ratio = torch.exp(log_s.unsqueeze(1) + lp - lp.detach())
    per_token = torch.maximum(-adv * token_ratio, -adv * token_ratio.clamp(0.8, 1.28))
    token_loss = LOSS_AGGREGATIONS["seq_mean_token_mean"](per_token, mask)
    assert loss.item() == pytest.approx(token_loss.item(), abs=1e-6)
    torch.testing.assert_close(grad, torch.autograd.grad(token_loss, lp)[0], atol=1e-6, rtol=1e-5)


def test_gspo_adds_the_kl_per_answer_and_refuses_other_aggregations(case):
    gen, shape, mask, _ = case
    lp, old, ref = randn(gen, shape, 0.3), randn(gen, shape, 0.3), randn(gen, shape, 0.3)
    adv = row_constant_advantages(gen, shape)
    loss, _ = grpo_policy_loss(lp, old, adv, mask, 0.2, 0.28, ref_logprobs=ref, beta=0.04, policy_loss="gspo")
    assert loss.item() == pytest.approx(loop_gspo(lp, old, adv, mask, 0.2, 0.28, 0.04, ref)[0], abs=1e-6)
    for aggregation in ("token_mean", "seq_mean_token_sum_norm"):
        with pytest.raises(ValueError, match=f"'gspo' is one term per answer.*got '{aggregation}'"):
            grpo_policy_loss(lp, old, adv, mask, aggregation=aggregation, max_tokens=MAX_TOKENS, policy_loss="gspo")


@pytest.mark.parametrize("aggregation", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("low,high", CISPO_RANGES)
def test_cispo_matches_the_loop_and_keeps_every_tokens_gradient(case, aggregation, low, high):
    """CISPO (arXiv 2506.13585): ``-sg(clip(r_t)) A_t log pi_t`` per token, aggregated; the gradient is
    ``-clip(r_t) A_t`` times the token's aggregation weight, clipped or not."""
    gen, shape, random_mask, right_padded = case
    for mask in (random_mask, right_padded):
        lp, old, adv = randn(gen, shape, 0.3).requires_grad_(True), randn(gen, shape, 0.3), randn(gen, shape)
        before = [t.detach().clone() for t in (lp, old, adv)]
        loss, stats = grpo_policy_loss(lp, old, adv, mask, low, high, aggregation, MAX_TOKENS, policy_loss="cispo")
        per_token = torch.zeros(shape, dtype=torch.float64)
        grad_per_token = torch.zeros(shape, dtype=torch.float64)
        below, above, ratios = [], [], []
        for i in range(shape[0]):
            for j in range(shape[1]):
                if mask[i, j]:
                    logp, a = float(lp.detach()[i, j]), float(adv[i, j])
                    ratio = math.exp(logp - float(old[i, j]))
                    per_token[i, j] = -clip(ratio, low, high) * a * logp
                    grad_per_token[i, j] = -clip(ratio, low, high) * a
                    below.append(float(ratio < 1 - low))
                    above.append(float(ratio > 1 + high))
                    ratios.append(ratio)
        assert loss.item() == pytest.approx(loop_aggregate(aggregation, per_token, mask), abs=1e-6)
        assert stats["clipfrac_low"].item() == pytest.approx(mean(below), abs=1e-6)
        assert stats["clipfrac_high"].item() == pytest.approx(mean(above), abs=1e-6)
        assert stats["ratio_mean"].item() == pytest.approx(mean(ratios), rel=1e-6)
        loss.backward()
        torch.testing.assert_close(lp.grad, grad_per_token * loop_weights(aggregation, mask), atol=1e-6, rtol=1e-5)
        assert (lp.grad[mask] != 0).all()  # no token is dropped by the clip
        assert all(torch.equal(a, b) for a, b in zip((lp.detach(), old, adv), before))


def test_cispo_caps_the_weight_where_the_clipped_ratio_drops_the_token():
    """Ratio 1.5 with A > 0: PPO's clip gives no gradient, CISPO the REINFORCE gradient weighted by 1 + eps_high."""
    lp = torch.full((1, 1), math.log(1.5), requires_grad=True)
    old, adv, mask = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    loss, stats = grpo_policy_loss(lp, old, adv, mask, 0.2, 0.28, policy_loss="clip")
    loss.backward()
    assert lp.grad.item() == 0.0 and stats["clipfrac_high"].item() == 1.0
    lp.grad = None
    loss, stats = grpo_policy_loss(lp, old, adv, mask, 0.2, 0.28, policy_loss="cispo")
    loss.backward()
    assert lp.grad.item() == pytest.approx(-1.28) and stats["clipfrac_high"].item() == 1.0


def test_policy_loss_names_and_ranges_are_checked():
    x, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'.*'cispo', 'clip', 'gspo'"):
        get_policy_loss("ppo")
    for name in ("gspo", "cispo"):
        with pytest.raises(ValueError, match="clip ranges must satisfy"):
            grpo_policy_loss(x, x, x, mask, clip_range_low=1.5, policy_loss=name)
