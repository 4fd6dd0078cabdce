"""Critic-free advantage estimators against plain-loop references on random masked tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import GROUP_ADVANTAGE_ESTIMATORS, get_group_advantage_estimator, within_group_std
from lightning_rlhf.algorithms.group_advantages import GRPO_STD_EPS

GROUP_SIZES = [2, 3, 4]


def random_batch(seed: int, num_prompts: int, group: int, seq: int = 6, with_nan: bool = True):
    """Scores (some nan = unscored, some groups of equal scores), a random mask, a KL penalty."""
    gen = torch.Generator().manual_seed(seed)
    batch = num_prompts * group
    scores = torch.randn(batch, generator=gen, dtype=torch.float64)
    scores[:group] = 0.5  # one group without signal
    if with_nan and batch > 2:
        scores[torch.rand(batch, generator=gen) < 0.2] = float("nan")
    mask = torch.rand(batch, seq, generator=gen) > 0.3
    mask[-1] = False  # a row without response tokens
    kl = torch.randn(batch, seq, generator=gen, dtype=torch.float64).abs() * 0.1
    kl[~mask] = float("nan")  # padding may hold anything
    return scores, mask, kl


def loop_mean(xs):
    return sum(xs) / len(xs)


def loop_shaped(name: str, scores: torch.Tensor, group: int) -> list[float]:
    """The shaped sequence score of every row (nan for unscored rows), one group at a time."""
    out = []
    for start in range(0, len(scores), group):
        values = [float(s) for s in scores[start:start + group]]
        scored = [v for v in values if not math.isnan(v)]
        for v in values:
            if math.isnan(v):
                out.append(float("nan"))
            elif name in ("grpo",):
                m = loop_mean(scored)
                std = math.sqrt(sum((x - m) ** 2 for x in scored) / (len(scored) - 1)) if len(scored) > 1 else 0.0
                out.append((v - m) / (std + GRPO_STD_EPS))
            elif name in ("dr_grpo", "reinforce_pp_baseline"):
                out.append(v - loop_mean(scored))
            elif name == "rloo":
                others = list(scored)
                others.remove(v)
                out.append(v - loop_mean(others) if others else 0.0)
            else:
                out.append(v)
    return out


def loop_advantages(name, scores, group, mask, kl):
    shaped = loop_shaped(name, scores, group)
    batch, seq = mask.shape
    adv = [[0.0] * seq for _ in range(batch)]
    counted = []
    for i in range(batch):
        if math.isnan(shaped[i]):
            continue
        for j in range(seq):
            if mask[i, j]:
                future_kl = sum(float(kl[i, k]) for k in range(j, seq) if mask[i, k]) if kl is not None else 0.0
                adv[i][j] = shaped[i] - future_kl
                counted.append((i, j))
    if name.startswith("reinforce_pp") and counted:
        xs = [adv[i][j] for i, j in counted]
        m = loop_mean(xs)
        var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
        for i, j in counted:
            adv[i][j] = (adv[i][j] - m) / math.sqrt(var + 1e-8)
    return torch.tensor(adv, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(GROUP_ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("group", GROUP_SIZES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_kl", [False, True])
def test_estimator_matches_loop(name, group, seed, use_kl):
    scores, mask, kl = random_batch(seed, num_prompts=3, group=group)
    before = (scores.clone(), mask.clone(), kl.clone())
    penalty = kl if use_kl else None
    got = get_group_advantage_estimator(name)(scores, group, mask, kl_penalty=penalty)
    want = loop_advantages(name, scores, group, mask, penalty)
    assert got.shape == mask.shape
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(got).all() and (got[~mask] == 0).all()
    assert torch.equal(scores.nan_to_num(7.0), before[0].nan_to_num(7.0)) and torch.equal(mask, before[1])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_without_signal_gets_zero_advantage(name):
    """Equal rewards in a group carry no information: the group-relative estimators give it no push."""
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 2.0])
    mask = torch.ones(6, 4, dtype=torch.bool)
    adv = get_group_advantage_estimator(name)(scores, 3, mask)
    assert (adv[:3] == 0).all()
    assert (adv[3:] != 0).any()
    assert adv[3, 0] < 0 < adv[5, 0]


def test_sequence_advantage_is_the_same_on_every_token_without_kl():
    scores = torch.tensor([0.0, 1.0, 3.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    adv = get_group_advantage_estimator("grpo")(scores, 2, mask)
    for i in range(4):
        row = adv[i][mask[i]]
        assert torch.allclose(row, row[0].expand_as(row))
    # group (0, 1): mean 0.5, unbiased std sqrt(0.5)
    assert adv[1, 0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + GRPO_STD_EPS), rel=1e-6)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_estimators_need_two_samples(name):
    with pytest.raises(ValueError, match="num_generations >= 2"):
        get_group_advantage_estimator(name)(torch.zeros(3), 1, torch.ones(3, 2, dtype=torch.bool))


def test_shapes_and_names_are_checked():
    mask = torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"num_prompts \* num_generations"):
        get_group_advantage_estimator("grpo")(torch.zeros(5), 2, torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be shaped"):
        get_group_advantage_estimator("rloo")(torch.zeros(4), 2, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="kl_penalty shape"):
        get_group_advantage_estimator("reinforce_pp")(torch.zeros(4), 1, mask, kl_penalty=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*'rloo'"):
        get_group_advantage_estimator("ppo")


@pytest.mark.distributed
def test_reinforce_pp_whitens_over_the_global_batch_on_two_ranks(whiten_worker_output):
    """REINFORCE++'s whitening with an all-reduce equals whitening the two ranks' rows concatenated."""
    assert whiten_worker_output.count("ok reinforce_pp rank") == 2, whiten_worker_output


def test_reinforce_pp_takes_one_sample_per_prompt():
    scores, mask, kl = random_batch(3, num_prompts=8, group=1)
    got = get_group_advantage_estimator("reinforce_pp")(scores, 1, mask, kl_penalty=kl)
    torch.testing.assert_close(got, loop_advantages("reinforce_pp", scores, 1, mask, kl), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_within_group_std_matches_loop(seed, group):
    scores, _, _ = random_batch(seed, num_prompts=5, group=group)
    stds = []
    for start in range(0, len(scores), group):
        scored = [float(s) for s in scores[start:start + group] if not math.isnan(float(s))]
        m = loop_mean(scored) if scored else 0.0
        stds.append(math.sqrt(sum((x - m) ** 2 for x in scored) / (len(scored) - 1)) if len(scored) > 1 else 0.0)
    assert within_group_std(scores, group).item() == pytest.approx(loop_mean(stds), abs=1e-12)


def loop_batch_scaled(scores, group, mask, copies: int = 1):
    """TRL's ``scale_rewards="batch"``: ``(r_i - mean(group)) / (std(batch) + 1e-4)``, the unbiased std over the
    scored rows with response tokens (``copies`` times over: the other ranks of a fake all-reduce)."""
    rows = [i for i in range(len(scores)) if not math.isnan(float(scores[i])) and any(mask[i].tolist())]
    kept = [float(scores[i]) for i in rows] * copies
    m = loop_mean(kept)
    std = math.sqrt(sum((x - m) ** 2 for x in kept) / (len(kept) - 1)) if len(kept) > 1 else 0.0
    centred = loop_shaped("dr_grpo", scores, group)
    adv = torch.zeros(mask.shape, dtype=torch.float64)
    for i in range(len(scores)):
        for j in range(mask.shape[1]):
            if mask[i, j] and not math.isnan(centred[i]):
                adv[i, j] = centred[i] / (std + GRPO_STD_EPS)
    return adv


@pytest.mark.parametrize("group", GROUP_SIZES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_scaled_grpo_matches_loop(group, seed):
    scores, mask, _ = random_batch(seed, num_prompts=3, group=group)
    before = scores.clone()
    got = get_group_advantage_estimator("grpo", scale_rewards="batch")(scores, group, mask)
    torch.testing.assert_close(got, loop_batch_scaled(scores, group, mask), atol=1e-9, rtol=1e-9)
    assert torch.equal(scores.nan_to_num(7.0), before.nan_to_num(7.0))


def test_batch_scale_by_hand_and_across_ranks():
    """Two groups of 4: rewards 1,0,0,0 and 1,1,0,1 (group means 0.25, 0.75); the batch's unbiased std is
    sqrt(8 * 0.25 / 7). A fake all-reduce that doubles every sum is a second rank holding the same rows: the mean
    stays, the std becomes sqrt(16 * 0.25 / 15)."""
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    mask = torch.ones(8, 3, dtype=torch.bool)
    estimator = get_group_advantage_estimator("grpo", scale_rewards="batch")
    got = estimator(scores, 4, mask)
    assert got[0, 0].item() == pytest.approx(0.75 / (math.sqrt(2 / 7) + GRPO_STD_EPS), rel=1e-12)
    assert got[5, 2].item() == pytest.approx(0.25 / (math.sqrt(2 / 7) + GRPO_STD_EPS), rel=1e-12)
    calls = []

    def doubling(t):
        calls.append(t.clone())
        return 2 * t

    across = estimator(scores, 4, mask, sum_across=doubling)
    assert calls, "the batch std must be reduced over ranks"
    assert across[0, 0].item() == pytest.approx(0.75 / (math.sqrt(4 / 15) + GRPO_STD_EPS), rel=1e-12)
    torch.testing.assert_close(across, loop_batch_scaled(scores, 4, mask, copies=2), atol=1e-12, rtol=1e-12)
    # a group of nearly equal rewards stays small, where its own std blows the 0.01 difference up to 1.47
    near = torch.tensor([1.0, 1.0, 1.0, 1.01, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert get_group_advantage_estimator("grpo")(near, 4, mask)[3, 0].item() == pytest.approx(1.47, abs=0.01)
    assert get_group_advantage_estimator("grpo", scale_rewards="batch")(near, 4, mask)[:4].abs().max() < 0.02


def test_scale_rewards_applies_to_grpo_only():
    from lightning_rlhf.algorithms import grpo_advantages, grpo_batch_std_advantages

    assert get_group_advantage_estimator("grpo") is grpo_advantages
    assert get_group_advantage_estimator("grpo", "batch") is grpo_batch_std_advantages
    assert get_group_advantage_estimator("rloo", "group") is GROUP_ADVANTAGE_ESTIMATORS["rloo"]
    for name in ("dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"):
        with pytest.raises(ValueError, match=f"scale_rewards='batch' replaces the group std .*{name!r}"):
            get_group_advantage_estimator(name, "batch")
    with pytest.raises(ValueError, match="unknown scale_rewards 'none'.*'batch', 'group'"):
        get_group_advantage_estimator("grpo", "none")
