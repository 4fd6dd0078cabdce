"""Loss aggregations against plain-loop references on random masked tensors."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.algorithms import LOSS_AGGREGATIONS, get_loss_aggregation
from tests.algorithms.conftest import randn

MAX_TOKENS = 16


def loop_aggregate(name: str, values: torch.Tensor, mask: torch.Tensor) -> float:
    rows = []
    for i in range(values.shape[0]):
        row = [float(values[i, j]) for j in range(values.shape[1]) if mask[i, j]]
        if row:
            rows.append(row)
    if not rows:
        return 0.0
    if name == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    if name == "token_mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    assert name == "seq_mean_token_sum_norm"
    return sum(sum(r) / MAX_TOKENS for r in rows) / len(rows)


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_aggregation_matches_loop(case, name):
    gen, shape, random_mask, right_padded = case
    for mask in (random_mask, right_padded):
        values = randn(gen, shape)
        values[~mask] = float("nan")  # padding may hold anything
        values.requires_grad_(True)
        got = get_loss_aggregation(name)(values, mask, max_tokens=MAX_TOKENS)
        assert got.dim() == 0
        assert got.item() == pytest.approx(loop_aggregate(name, values.detach(), mask), abs=1e-12)
        got.backward()
        assert (values.grad[~mask] == 0).all()


def test_aggregations_weigh_long_sequences_differently():
    """One short and one long sequence: the per-sequence mean weighs them equally, the token mean by length."""
    values = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert get_loss_aggregation("seq_mean_token_mean")(values, mask).item() == pytest.approx(0.5)
    assert get_loss_aggregation("token_mean")(values, mask).item() == pytest.approx(0.2)
    assert get_loss_aggregation("seq_mean_token_sum_norm")(values, mask, max_tokens=4).item() == pytest.approx(0.125)


def test_constant_normaliser_is_required_and_names_are_checked():
    values, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_tokens"):
        get_loss_aggregation("seq_mean_token_sum_norm")(values, mask)
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'.*'token_mean'"):
        get_loss_aggregation("sum")
    with pytest.raises(ValueError, match=r"must both be shaped \(batch, seq\)"):
        get_loss_aggregation("token_mean")(values, torch.ones(2, 4, dtype=torch.bool))
