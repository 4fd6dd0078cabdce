"""PPO's curves describe the global batch: statistics pooled over ranks, and prompts checked for left padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_rlhf.modules.pooled import pooled_explained_variance, pooled_mean, pooled_std
from lightning_rlhf.modules.rollout import check_left_padded
from tests.helpers.distributed import run_distributed


def test_pooled_statistics_of_one_rank_equal_the_direct_ones():
    from lightning_rlhf.algorithms import explained_variance, masked_mean

    gen = torch.Generator().manual_seed(0)
    values, returns = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen) * 2
    mask = torch.rand(4, 6, generator=gen) > 0.3
    explained = explained_variance(values, returns, mask)
    for pooled, direct in ((pooled_mean(values, mask), masked_mean(values, mask)),
                           (pooled_std(values[0]), values[0].std()),
                           (pooled_explained_variance(values, returns, mask), explained)):
        assert float(pooled.combine(pooled.sums)) == pytest.approx(float(direct), rel=1e-5)


@pytest.mark.distributed
def test_rollout_curves_are_global_on_two_ranks():
    """Token-weighted means and reward_std over 2 gloo ranks with 2 and 15 tokens equal those of the joined batch."""
    proc = run_distributed(Path(__file__).parent / "scripts" / "pooled_metrics_worker.py")
    assert proc.stdout.count("ok rank") == 2, proc.stdout


def test_right_padded_prompts_are_refused_with_what_to_do():
    check_left_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left-padded: fine
    with pytest.raises(ValueError, match=r"left-padded.*rows \[0\].*padding_side = 'left'"):
        check_left_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        check_left_padded(torch.tensor([[1, 1, 1], [0, 1, 0]]))
