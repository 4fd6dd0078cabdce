"""DPO and its family of preference losses (docs/dpo.md): each a function of the margin ``z = r_chosen - r_rejected``
of the implicit rewards ``r = beta * (log pi(y|x) - log pi_ref(y|x))`` (SimPO: ``beta * mean log pi(y|x)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rlhf.algorithms.logits import logprobs_from_logits
from lightning_rlhf.algorithms.masked import masked_mean, masked_sum


def response_token_mask(attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
    """``(batch, seq)`` bool, true on the response tokens of right-padded ``prompt + response`` rows: past the
    ``prompt_lengths`` ``(batch,)`` first tokens and where ``attention_mask`` ``(batch, seq)`` is 1."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions.unsqueeze(0) >= prompt_lengths.unsqueeze(1)) & attention_mask.bool()


def sequence_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor, average: bool = False) -> Tensor:
    """``(batch,)`` float32 log-probability of each row's response: the sum (or mean) over its response tokens.

    Prompt and padding never count; a row without response tokens gets 0.

    Args:
        logits: ``(batch, seq, vocab)`` from a forward over ``input_ids``.
        input_ids: ``(batch, seq)`` prompt + response token ids.
        response_mask: ``(batch, seq)`` true on the response tokens (see :func:`response_token_mask`).
        average: the mean per response token (SimPO, IPO) instead of the sum (DPO).
    """
    if logits.shape[:2] != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must share (batch, seq)")
    token_logps = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])
    mask = response_mask[:, 1:].bool()
    reduce = masked_mean if average else masked_sum
    return reduce(token_logps, mask, dim=-1)


def sigmoid_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """DPO (https://arxiv.org/abs/2305.18290) ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`` per pair, cDPO
    (https://ericmitchell.ai/cdpo.pdf) with flip chance ``eps = label_smoothing``; ``margins`` carry ``beta``."""
    return -(1.0 - label_smoothing) * F.logsigmoid(margins) - label_smoothing * F.logsigmoid(-margins)


def ipo_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """IPO (https://arxiv.org/abs/2310.12036): ``(z / beta - 1 / (2 beta))^2`` per pair, a finite target margin."""
    return (margins / beta - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """SLiC (https://arxiv.org/abs/2305.10425): ``max(0, 1 - z)`` per pair."""
    return torch.relu(1.0 - margins)


def simpo_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5) -> Tensor:
    """SimPO (https://arxiv.org/abs/2405.14734): the DPO loss of ``z - gamma``, ``z`` without a reference."""
    return sigmoid_loss(margins - gamma, beta, label_smoothing)


@dataclass(frozen=True)
class PreferenceLoss:
    """One variant: its per-pair loss and the log-probs it is built from.

    Attributes:
        fn: ``fn(margins, beta, label_smoothing, gamma) -> (batch,)`` losses.
        needs_reference: rewards are log-ratios against a reference policy (False: SimPO).
        length_normalized: sequence log-probs are per-token means instead of sums.
        smooths_labels: accepts ``label_smoothing`` > 0.
    """

    fn: Callable[[Tensor, float, float, float], Tensor]
    needs_reference: bool = True
    length_normalized: bool = False
    smooths_labels: bool = False


PREFERENCE_LOSSES: Mapping[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(sigmoid_loss, smooths_labels=True),
    "ipo": PreferenceLoss(ipo_loss, length_normalized=True),
    "hinge": PreferenceLoss(hinge_loss),
    "simpo": PreferenceLoss(simpo_loss, needs_reference=False, length_normalized=True, smooths_labels=True),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The variant called ``name`` in :data:`PREFERENCE_LOSSES`."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(PREFERENCE_LOSSES)}") from None


class PreferenceStats(TypedDict):
    """Detached batch means of one preference batch, TRL's names with ``/`` for ``_`` (docs/dpo.md, Metrics)."""

    rewards_chosen: Tensor
    rewards_rejected: Tensor
    rewards_accuracies: Tensor
    rewards_margins: Tensor
    logps_chosen: Tensor
    logps_rejected: Tensor
    #: the policy's own ranking, no reference: meaningful before training, when ``rewards_accuracies`` is 0.5
    logps_accuracies: Tensor


def pair_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Fraction of pairs with ``chosen > rejected``, a tie counting 0.5."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().detach()


def implicit_rewards(logps: Tensor, ref_logps: Tensor | None, beta: float) -> Tensor:
    """``beta * (logps - ref_logps)``, or ``beta * logps`` without a reference (SimPO)."""
    return beta * (logps if ref_logps is None else logps - ref_logps)


def preference_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
) -> tuple[Tensor, PreferenceStats]:
    """Mean preference loss over a batch of pairs, and its statistics.

    Args:
        chosen_logps: ``(batch,)`` policy log-probs of the chosen responses (sums or means, as the variant says).
        rejected_logps: ``(batch,)`` the same for the rejected responses.
        ref_chosen_logps: ``(batch,)`` reference log-probs of the chosen responses (None for SimPO).
        ref_rejected_logps: ``(batch,)`` the same for the rejected responses.
        loss_type: a name in :data:`PREFERENCE_LOSSES`.
        beta: inverse temperature of the implicit reward (DPO's KL strength).
        label_smoothing: cDPO's flip probability (``sigmoid`` and ``simpo`` only).
        gamma: SimPO's target reward margin.
    """
    variant = get_preference_loss(loss_type)
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError("pass both reference log-probs (chosen and rejected) or neither")
    if variant.needs_reference and ref_chosen_logps is None:
        raise ValueError(f"loss {loss_type!r} needs reference log-probs; only 'simpo' is reference-free")
    if not variant.needs_reference:
        ref_chosen_logps = ref_rejected_logps = None
    chosen_rewards = implicit_rewards(chosen_logps.float(), ref_chosen_logps, beta)
    rejected_rewards = implicit_rewards(rejected_logps.float(), ref_rejected_logps, beta)
    margins = chosen_rewards - rejected_rewards
    loss = variant.fn(margins, beta, label_smoothing, gamma).mean()
    stats = PreferenceStats(
        rewards_chosen=chosen_rewards.mean().detach(),
        rewards_rejected=rejected_rewards.mean().detach(),
        rewards_accuracies=pair_accuracy(chosen_rewards, rejected_rewards),
        rewards_margins=margins.mean().detach(),
        logps_chosen=chosen_logps.detach().float().mean(),
        logps_rejected=rejected_logps.detach().float().mean(),
        logps_accuracies=pair_accuracy(chosen_logps.float(), rejected_logps.float()),
    )
    return loss, stats
