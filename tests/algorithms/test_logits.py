"""Log-probs and entropy against plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import entropy_from_logits, logprobs_from_logits


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 4, 11)])
def test_logprobs_and_entropy_match_loop(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(shape, generator=gen) * 4
    tokens = torch.randint(0, shape[2], shape[:2], generator=gen)
    lp, ent = logprobs_from_logits(logits, tokens), entropy_from_logits(logits)
    for i in range(shape[0]):
        for t in range(shape[1]):
            row = [float(z) for z in logits[i, t]]
            log_z = math.log(sum(math.exp(z) for z in row))
            probs = [math.exp(z - log_z) for z in row]
            assert lp[i, t].item() == pytest.approx(row[int(tokens[i, t])] - log_z, abs=1e-5)
            assert ent[i, t].item() == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-5)
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5)


def test_logprobs_gradient_and_shape_error():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="do not align"):
        logprobs_from_logits(logits, torch.zeros(2, 4, dtype=torch.long))
