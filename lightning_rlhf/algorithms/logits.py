"""Quantities read off language-model logits without materialising a full softmax copy per batch.

Why: ``log_softmax`` over ``(batch, seq, vocab)`` in float32 is the largest tensor in PPO; we go row
by row (the ``selective_log_softmax`` trick of TRL,
https://github.com/huggingface/trl/blob/main/trl/trainer/utils.py) so peak memory is one row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of ``tokens`` under ``logits``: ``logits[t, tokens[t]] - logsumexp(logits[t])``.

    Args:
        logits: ``(batch, seq, vocab)``, already aligned so ``logits[:, t]`` scores ``tokens[:, t]``.
        tokens: ``(batch, seq)`` token ids.

    Returns:
        ``(batch, seq)`` float32 log-probabilities (differentiable w.r.t. ``logits``).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with tokens {tuple(tokens.shape)}")
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(tokens.shape, dtype=torch.float32)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: ``logsumexp(z) - sum(softmax(z) * z)``.

    Args:
        logits: ``(batch, seq, vocab)``.

    Returns:
        ``(batch, seq)`` float32 entropies in nats.
    """
    rows = []
    for row_logits in logits:
        row_logits = row_logits.float()
        probs = torch.softmax(row_logits, dim=-1)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * row_logits).sum(-1))
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
