"""Offline preference losses on (chosen, rejected) pairs: DPO and its family.

Every loss here is a function of one number per pair, the *margin*
``z = r_chosen - r_rejected`` of the implicit rewards, where ``r = beta * (log pi(y|x) - log pi_ref(y|x))``
for the losses that use a reference and ``r = beta * mean log pi(y|x)`` for the reference-free SimPO.
The variants differ only in how the margin is penalised (and which log-probs it is built from), so a
variant is a function plus an entry in :data:`PREFERENCE_LOSSES`, never a branch:

- ``sigmoid``: DPO, Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly
  a Reward Model" (https://arxiv.org/abs/2305.18290), ``-log sigmoid(z)``. With ``label_smoothing`` eps it
  is conservative DPO (cDPO, Mitchell 2023, https://ericmitchell.ai/cdpo.pdf): the label is assumed flipped
  with probability eps, ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``.
- ``ipo``: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
  (https://arxiv.org/abs/2310.12036), ``(z / beta - 1 / (2 beta))^2``: a squared loss that keeps the
  log-ratio margin at a finite target instead of pushing it to infinity. Built on per-token mean log-probs,
  as TRL does on the authors' advice (the target ``1 / (2 beta)`` is on that scale).
- ``hinge``: SLiC, Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback"
  (https://arxiv.org/abs/2305.10425), ``max(0, 1 - z)`` (with ``beta`` as the inverse margin).
- ``simpo``: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
  (https://arxiv.org/abs/2405.14734): no reference, length-normalised log-probs, target margin ``gamma``,
  ``-log sigmoid(z - gamma)`` (label smoothing as in cDPO).

Sequence log-probs (:func:`sequence_logprobs`) sum the response tokens' log-probs (mean for the
length-normalised losses); prompt and padding never count, and a response cut at ``max_length`` counts
the tokens it kept.
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
    """True on the response tokens of right-padded ``prompt + response`` rows.

    Args:
        attention_mask: ``(batch, seq)`` 1 on real tokens (prompt and response), 0 on right padding.
        prompt_lengths: ``(batch,)`` number of prompt tokens at the start of each row.

    Returns:
        ``(batch, seq)`` bool.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions.unsqueeze(0) >= prompt_lengths.unsqueeze(1)) & attention_mask.bool()


def sequence_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each row's response under ``logits``: the sum (or mean) over its response tokens.

    Position ``t`` of the logits predicts token ``t + 1``, so the first token of a row is never scored
    (it has no context); a row without response tokens gets 0.

    Args:
        logits: ``(batch, seq, vocab)`` from a forward over ``input_ids``.
        input_ids: ``(batch, seq)`` prompt + response token ids.
        response_mask: ``(batch, seq)`` true on the response tokens (see :func:`response_token_mask`).
        average: the mean per response token (SimPO, IPO) instead of the sum (DPO).

    Returns:
        ``(batch,)`` float32, differentiable w.r.t. ``logits``.
    """
    if logits.shape[:2] != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and response_mask "
                         f"{tuple(response_mask.shape)} must share (batch, seq)")
    token_logps = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])
    mask = response_mask[:, 1:].bool()
    reduce = masked_mean if average else masked_sum
    return reduce(token_logps, mask, dim=-1)


def sigmoid_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """DPO (cDPO with ``label_smoothing``): ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`` per pair.

    Args:
        margins: ``(batch,)`` implicit-reward margins ``z`` (already scaled by ``beta``).
        beta: unused here (the margins carry it); part of the common signature.
        label_smoothing: probability ``eps`` in ``[0, 0.5)`` that a pair's label is flipped.
        gamma: unused (SimPO's margin).
    """
    return -(1.0 - label_smoothing) * F.logsigmoid(margins) - label_smoothing * F.logsigmoid(-margins)


def ipo_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """IPO: ``(z / beta - 1 / (2 beta))^2`` per pair (``z / beta`` is the log-ratio margin ``h``)."""
    return (margins / beta - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """SLiC's calibration loss: ``max(0, 1 - z)`` per pair."""
    return torch.relu(1.0 - margins)


def simpo_loss(margins: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5) -> Tensor:
    """SimPO: the DPO loss of ``z - gamma`` (``z`` from length-normalised, reference-free rewards)."""
    return sigmoid_loss(margins - gamma, beta, label_smoothing)


@dataclass(frozen=True)
class PreferenceLoss:
    """One variant: its per-pair loss and which log-probs it is built from.

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


#: the variants by name, for configuration (``loss_type: ipo``)
PREFERENCE_LOSSES: Mapping[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(sigmoid_loss, smooths_labels=True),
    "ipo": PreferenceLoss(ipo_loss, length_normalized=True),
    "hinge": PreferenceLoss(hinge_loss),
    "simpo": PreferenceLoss(simpo_loss, needs_reference=False, length_normalized=True, smooths_labels=True),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The variant called ``name`` (one of :data:`PREFERENCE_LOSSES`), with a clear error otherwise."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(PREFERENCE_LOSSES)}") from None


class PreferenceStats(TypedDict):
    """Detached batch means of one preference batch (TRL's names, with ``/`` for ``_``)."""

    #: implicit reward of the chosen responses
    rewards_chosen: Tensor
    #: implicit reward of the rejected responses
    rewards_rejected: Tensor
    #: fraction of pairs whose chosen reward is above the rejected one (a tie counts 0.5)
    rewards_accuracies: Tensor
    #: chosen minus rejected reward
    rewards_margins: Tensor
    #: policy log-probability of the chosen responses (sum, or mean when length-normalised)
    logps_chosen: Tensor
    #: policy log-probability of the rejected responses
    logps_rejected: Tensor
    #: fraction of pairs whose chosen log-prob is above the rejected one (a tie counts 0.5): the policy's own
    #: ranking, no reference. Why: at the start the implicit rewards are all 0 (policy = reference), so
    #: ``rewards_accuracies`` is 0.5 by construction; this is the starting (reference) model's real preference
    logps_accuracies: Tensor


def pair_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Fraction of pairs with ``chosen > rejected``, a tie counting 0.5 (detached scalar)."""
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
        chosen_logps: ``(batch,)`` policy log-probs of the chosen responses (carry the gradient); sums or
            means as the variant's ``length_normalized`` says.
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
