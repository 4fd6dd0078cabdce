"""DAPO's dynamic sampling, overlong penalty and truncation filter against plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import dynamic_sampling, mask_truncated, overlong_penalty


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_sampling_matches_loop(seed, group):
    gen = torch.Generator().manual_seed(seed)
    num_prompts = 6
    # rewards from {0, 0.5, 1} so many groups are all equal, as with a checker's 0/1 rewards
    scores = torch.randint(0, 3, (num_prompts * group,), generator=gen).float() / 2
    scores[torch.rand(scores.shape, generator=gen) < 0.15] = float("nan")
    result = dynamic_sampling(scores, group)
    keep, dropped = [], 0
    for start in range(0, len(scores), group):
        scored = [float(s) for s in scores[start:start + group] if not math.isnan(float(s))]
        informative = len(scored) >= 2 and max(scored) != min(scored)
        dropped += not informative
        keep += [informative] * group
    assert result.keep.tolist() == keep
    assert result.num_dropped == dropped and result.num_groups == num_prompts


def test_dynamic_sampling_tolerance_and_errors():
    scores = torch.tensor([1.0, 1.0 + 1e-9, 0.0, 1.0], dtype=torch.float64)
    assert dynamic_sampling(scores, 2).num_dropped == 0
    result = dynamic_sampling(scores, 2, atol=1e-6)
    assert result.keep.tolist() == [False, False, True, True] and result.num_dropped == 1
    with pytest.raises(ValueError, match=r"num_prompts \* num_generations"):
        dynamic_sampling(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="atol"):
        dynamic_sampling(scores, 2, atol=-1.0)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_overlong_penalty_matches_the_paper(factor):
    """Equation 13 of DAPO with L_max = 20, L_cache = 8, checked length by length."""
    lengths = torch.arange(0, 26)
    got = overlong_penalty(lengths, max_length=20, buffer_length=8, penalty_factor=factor)
    for length, value in zip(lengths.tolist(), got.tolist()):
        if length <= 12:
            want = 0.0
        elif length <= 20:
            want = (12 - length) / 8
        else:
            want = -1.0
        assert value == pytest.approx(factor * want), length


def test_overlong_penalty_rejects_bad_settings():
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(torch.tensor([3]), max_length=4, buffer_length=8)
    with pytest.raises(ValueError, match="penalty_factor"):
        overlong_penalty(torch.tensor([3]), max_length=4, buffer_length=2, penalty_factor=-1.0)


def test_mask_truncated_drops_rows_and_counts_them():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    before = mask.clone()
    new, count = mask_truncated(mask, torch.tensor([False, True, False]))
    assert count == 1
    assert new.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    assert torch.equal(mask, before)
    with pytest.raises(ValueError, match="truncated must be shaped"):
        mask_truncated(mask, torch.tensor([True]))
