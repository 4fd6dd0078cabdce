"""Answer guidance's choice of rows (``modules/answer_guidance.py``): in each group of answers to one prompt, the
answer whose projection becomes a candidate, and the answer the candidate replaces. Pure tensor maths; a group is
``group_size`` consecutive rows, and a ``nan`` total (no reward source scored the row) counts lowest."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.algorithms.masked import masked_mean


def _grouped(totals: Tensor, group_size: int) -> Tensor:
    if group_size < 1 or len(totals) % group_size:
        raise ValueError(f"{len(totals)} rewards do not split into groups of {group_size}")
    return torch.nan_to_num(totals.float(), nan=float("-inf")).view(-1, group_size)


def best_rows(totals: Tensor, group_size: int) -> Tensor:
    """``(groups,)`` the row of each group's highest total reward (the first on ties); -1 where no row of the group
    was scored."""
    scores = _grouped(totals, group_size)
    offsets = torch.arange(len(scores), device=scores.device) * group_size
    best = scores.argmax(1) + offsets
    return torch.where(scores.max(1).values > float("-inf"), best, -1)


def replaced_rows(totals: Tensor, sources: Tensor, candidate_totals: Tensor, group_size: int) -> Tensor:
    """``(groups,)`` the row each group's candidate replaces, -1 where it replaces none.

    A candidate replaces its group's lowest answer (an unscored one first) only where it earns strictly more than
    the answer it was projected from (``sources``, -1: no candidate; ``candidate_totals`` ``nan``: none), and never
    that answer itself (a group of one keeps it).
    """
    scores = _grouped(totals, group_size)
    offsets = torch.arange(len(scores), device=scores.device) * group_size
    has_source = sources >= 0
    source_totals = torch.where(has_source, scores.flatten()[sources.clamp(min=0)], float("inf"))
    others = scores.flatten().clone()
    others[sources[has_source]] = float("inf")  # the lowest of the other answers, also where all are equal
    worst = others.view_as(scores).argmin(1) + offsets
    gains = torch.nan_to_num(candidate_totals.float(), nan=float("-inf")) > source_totals
    return torch.where(has_source & gains & (worst != sources), worst, -1)


def form_sums(totals: Tensor, in_form: Tensor) -> Tensor:
    """``(4,)``: total reward and count of the scored answers in the wanted form, then of the others."""
    scored = ~torch.isnan(totals.float())
    values = torch.nan_to_num(totals.float())
    form = in_form.to(values.device) & scored
    other = ~in_form.to(values.device) & scored
    return torch.stack([values[form].sum(), form.sum(), values[other].sum(), other.sum()]).float()


def form_earns_less(sums: Tensor) -> bool:
    """Whether the form's answers earn less on average than the others (False while either kind is missing)."""
    form_total, form_count, other_total, other_count = (float(v) for v in sums)
    if not form_count or not other_count:
        return False
    return form_total / form_count < other_total / other_count


def imitation_loss(logprobs: Tensor, response_mask: Tensor, demonstrations: Tensor) -> Tensor:
    """The mean negative log-likelihood per token of the demonstration rows (``demonstrations`` ``(B,)`` bool), 0
    (with the graph kept) in a mini-batch without one: supervised learning of a guided answer beside its policy
    gradient, so its tokens are learned at a rate the advantages' scaling does not set (SFT mixed into RL)."""
    return -masked_mean(logprobs, response_mask & demonstrations.to(response_mask.device).unsqueeze(1))


__all__ = ["best_rows", "form_earns_less", "form_sums", "imitation_loss", "replaced_rows"]
