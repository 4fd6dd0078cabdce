"""The critic-free policy loss of GRPO, DAPO, Dr. GRPO, GSPO and CISPO, which differ only in its arguments: the
policy term (:mod:`~lightning_rlhf.algorithms.policy_losses`), clip ranges (DAPO's clip-higher,
https://arxiv.org/abs/2503.14476), the KL in the loss (GRPO, https://arxiv.org/abs/2402.03300, eq. 3), the
aggregation, and PPO's entropy bonus (https://arxiv.org/abs/1707.06347, eq. 9), optionally switched off above a target
entropy so that it cannot grow the entropy without bound when the rewards give no signal.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor

from lightning_rlhf.algorithms.aggregation import get_loss_aggregation
from lightning_rlhf.algorithms.kl import get_kl_estimator, kl_k3
from lightning_rlhf.algorithms.masked import masked_mean
from lightning_rlhf.algorithms.policy_losses import get_policy_loss


class GRPOLossStats(TypedDict):
    """Detached token means over the mask of one critic-free policy update (as :class:`PolicyLossStats`); GSPO's
    clip fractions and ratio mean are over answers."""

    clipfrac_low: Tensor
    clipfrac_high: Tensor
    clipfrac: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    #: per-token KL to the reference (0 without reference log-probs)
    kl: Tensor
    #: 1.0 where the entropy bonus was in the loss, 0.0 where it was off (none, or above ``entropy_target``)
    entropy_bonus_on: Tensor


def grpo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range_low: float = 0.2,
    clip_range_high: float = 0.2,
    aggregation: str = "seq_mean_token_mean",
    max_tokens: int | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    policy_loss: str = "clip",
    entropy_target: float | None = None,
) -> tuple[Tensor, GRPOLossStats]:
    """``aggregate(policy_t + beta * KL_t - c H_t)`` over ``mask``; ``policy_t`` is PPO's clipped
    ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`` by default, or GSPO's or CISPO's term.

    Args:
        logprobs: ``(batch, seq)`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``(batch, seq)`` the same at sampling time.
        advantages: ``(batch, seq)`` advantages (see :mod:`lightning_rlhf.algorithms.group_advantages`).
        mask: ``(batch, seq)`` true on the response tokens that count.
        clip_range_low: ``eps_low`` (0.2 in PPO, GRPO and DAPO; 3e-4 in GSPO's paper).
        clip_range_high: ``eps_high``; above ``clip_range_low`` is DAPO's clip-higher (0.28 in the paper; 4e-4 in
            GSPO's).
        aggregation: a name in :data:`~lightning_rlhf.algorithms.aggregation.LOSS_AGGREGATIONS`.
        max_tokens: the constant of ``seq_mean_token_sum_norm`` (the generation's ``max_new_tokens``).
        ref_logprobs: ``(batch, seq)`` reference log-probabilities; required when ``beta > 0``, else only reported.
        beta: coefficient of the per-token KL in the loss; 0 turns the term off.
        kl_estimator: a name in :data:`~lightning_rlhf.algorithms.kl.KL_ESTIMATORS` (``k3`` as GRPO).
        entropy: ``(batch, seq)`` per-token entropies of the current policy; required when ``entropy_coef > 0``.
        entropy_coef: coefficient ``c`` of the entropy bonus; 0 turns it off.
        policy_loss: a name in :data:`~lightning_rlhf.algorithms.policy_losses.POLICY_LOSSES`: ``clip`` (PPO's),
            ``gspo`` (only with ``seq_mean_token_mean``) or ``cispo``.
        entropy_target: the bonus counts only while the masked mean entropy of this batch is below it (nats, at
            the log-prob temperature); None: always. A hinge, so the bonus holds the entropy up near the target
            against collapse and adds nothing above it. Decided per call: under data parallelism each rank decides
            for its own mini-batch, so the averaged gradient carries the bonus of the ranks below the target.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if entropy_coef < 0:
        raise ValueError(f"entropy_coef must be >= 0, got {entropy_coef}")
    if entropy_target is not None and not entropy_target > 0:
        raise ValueError(f"entropy_target must be > 0 nats or None, got {entropy_target}")
    if entropy_coef > 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs the policy's per-token entropy (with its gradient); "
                         f"pass entropy or set entropy_coef=0")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} puts the KL to the reference in the loss, which needs ref_logprobs; "
                         f"pass the reference model's log-probabilities or set beta=0")
    shapes = {t.shape for t in (logprobs, old_logprobs, advantages, mask)}
    shapes.update(t.shape for t in (ref_logprobs, entropy) if t is not None)
    if len(shapes) != 1:
        raise ValueError(f"logprobs, old_logprobs, advantages, mask (and ref_logprobs, entropy) must share one shape, "
                         f"got {sorted(tuple(s) for s in shapes)}")
    aggregate = get_loss_aggregation(aggregation)
    estimate_kl = get_kl_estimator(kl_estimator)
    term = get_policy_loss(policy_loss, aggregation)(logprobs, old_logprobs, advantages, mask, clip_range_low,
                                                     clip_range_high)
    per_token = term.loss
    kl = estimate_kl(logprobs, ref_logprobs) if ref_logprobs is not None else None
    if kl is not None and beta > 0:
        per_token = per_token + beta * kl
    bonus_on = term.ratio_mean.new_tensor(float(entropy_coef > 0))
    if entropy_coef > 0:
        if entropy_target is not None:  # a 0/1 factor, not a branch: no host sync, the same graph on every rank
            below = (masked_mean(entropy.detach(), mask) < entropy_target) & mask.any()
            bonus_on = below.to(per_token.dtype)
        per_token = per_token - entropy_coef * bonus_on * entropy
    stats = GRPOLossStats(
        clipfrac_low=term.clipfrac_low,
        clipfrac_high=term.clipfrac_high,
        clipfrac=term.clipfrac_low + term.clipfrac_high,
        approx_kl=masked_mean(kl_k3(old_logprobs, logprobs, clamp=None), mask).detach(),
        ratio_mean=term.ratio_mean,
        kl=masked_mean(kl, mask).detach() if kl is not None else term.ratio_mean.new_zeros(()),
        entropy_bonus_on=bonus_on.detach(),
    )
    return aggregate(per_token, mask, max_tokens), stats
