"""Quantities read off language-model logits, row by row (TRL's ``selective_log_softmax`` trick): a float32
``log_softmax`` over ``(batch, seq, vocab)`` is PPO's largest tensor, so peak memory stays at one row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """``(batch, seq)`` float32 ``logits[t, tokens[t]] - logsumexp(logits[t])``, ``logits`` ``(batch, seq, vocab)``
    already aligned with ``tokens`` ``(batch, seq)``."""
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not align with tokens {tuple(tokens.shape)}")
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(tokens.shape, dtype=torch.float32)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """``(batch, seq)`` float32 entropy in nats of ``logits`` ``(batch, seq, vocab)``: ``logsumexp(z) - E[z]``."""
    rows = []
    for row_logits in logits:
        row_logits = row_logits.float()
        probs = torch.softmax(row_logits, dim=-1)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * row_logits).sum(-1))
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
