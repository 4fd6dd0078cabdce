"""Masked reductions against plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import masked_mean, masked_sum, masked_var, masked_whiten
from tests.algorithms.conftest import randn, selected


def loop_mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def loop_var(xs, unbiased=True):
    if unbiased and len(xs) < 2 or not xs:
        return 0.0
    m = loop_mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1 if unbiased else len(xs))


def test_masked_mean_sum_var(case):
    gen, shape, mask, _ = case
    x = randn(gen, shape)
    xs = selected(x, mask)
    assert masked_sum(x, mask).item() == pytest.approx(sum(xs))
    assert masked_mean(x, mask).item() == pytest.approx(loop_mean(xs))
    assert masked_var(x, mask).item() == pytest.approx(loop_var(xs))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(loop_var(xs, unbiased=False))
    per_row = masked_mean(x, mask, dim=1)
    for i in range(shape[0]):
        row = [float(x[i, j]) for j in range(shape[1]) if mask[i, j]]
        assert per_row[i].item() == pytest.approx(loop_mean(row))


def test_masked_whiten(case):
    gen, shape, mask, _ = case
    x = randn(gen, shape, scale=3.0) + 2.0
    before = x.clone()
    xs = selected(x, mask)
    m, v = loop_mean(xs), loop_var(xs)
    out = masked_whiten(x, mask)
    kept = masked_whiten(x, mask, shift_mean=False)
    for i in range(shape[0]):
        for j in range(shape[1]):
            want = (float(x[i, j]) - m) / math.sqrt(v + 1e-8) if mask[i, j] else 0.0
            assert out[i, j].item() == pytest.approx(want, abs=1e-9)
            want_kept = want + m if mask[i, j] else 0.0
            assert kept[i, j].item() == pytest.approx(want_kept, abs=1e-9)
    assert torch.equal(x, before)
    if len(xs) > 2:
        assert masked_mean(out, mask).item() == pytest.approx(0.0, abs=1e-9)
        assert masked_var(out, mask).item() == pytest.approx(1.0, rel=1e-6)


def test_masked_entries_may_hold_nan():
    x = torch.tensor([[1.0, float("nan")], [3.0, float("inf")]])
    mask = torch.tensor([[True, False], [True, False]])
    assert masked_mean(x, mask).item() == 2.0
    assert torch.isfinite(masked_whiten(x, mask)).all()


def test_mask_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="mask shape"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.distributed
def test_whitening_over_the_global_batch_on_two_ranks(whiten_worker_output):
    """PPO whitens advantages over every rank's rows (4 sequences per GPU in the OPT-13B example), not per rank."""
    assert whiten_worker_output.count("ok masked_whiten rank") == 2, whiten_worker_output
