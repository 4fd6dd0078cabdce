"""KL estimators and KL-coefficient controllers.

Schulman's per-token k1/k2/k3 of ``KL(pi || pi_ref)`` (http://joschu.net/blog/kl-approx.html), clamped as OpenRLHF's
``compute_approx_kl``; the adaptive controller of https://arxiv.org/abs/1909.08593, section 2.2.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor

from lightning_rlhf.algorithms.named import choose

#: so k3's ``exp`` never overflows (or yields nan gradients)
_LOG_RATIO_LIMIT = 20.0


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor, clamp: float | None = 10.0) -> Tensor:
    """k1 = ``logp - ref_logp``: unbiased, high variance, can be negative per token.

    ``logprobs``, ``ref_logprobs``: ``(batch, seq)`` sampled tokens' log-probabilities under the policy and the
    reference; each estimate is clamped to ``[-clamp, clamp]`` (``None``: not).
    """
    return _clamp(logprobs.float() - ref_logprobs.float(), clamp)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor, clamp: float | None = 10.0) -> Tensor:
    """k2 = ``0.5 * (logp - ref_logp) ** 2``: biased, low variance, non-negative. Args as :func:`kl_k1`."""
    return _clamp(0.5 * (logprobs.float() - ref_logprobs.float()) ** 2, clamp)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, clamp: float | None = 10.0) -> Tensor:
    """k3 = ``exp(r) - 1 - r``, ``r = ref_logp - logp``: unbiased, low variance, non-negative. Args as :func:`kl_k1`."""
    log_ratio = (ref_logprobs.float() - logprobs.float()).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    return _clamp(torch.expm1(log_ratio) - log_ratio, clamp)


def _clamp(values: Tensor, limit: float | None) -> Tensor:
    return values if limit is None else values.clamp(-limit, limit)


KLEstimator = Callable[..., Tensor]

KL_ESTIMATORS: Mapping[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLEstimator:
    """The estimator called ``name`` in :data:`KL_ESTIMATORS`."""
    return choose(KL_ESTIMATORS, name, "KL estimator")


class KLController(Protocol):
    """What PPO needs from a KL coefficient: its value, an update per rollout, and checkpointable state."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: Mapping[str, float]) -> None: ...


class FixedKLController:
    """A constant KL coefficient ``kl_coef``, the ``beta`` of the per-token KL penalty."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s controller: ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)``.

    Args:
        kl_coef: initial coefficient.
        target: KL (nats per sequence) to steer towards.
        horizon: number of samples over which the error is corrected (10000 in the paper).
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        if kl_coef <= 0:
            raise ValueError(f"an adaptive KL (kl_target={target}) needs an initial kl_coef > 0, got {kl_coef}; "
                             f"start from e.g. kl_coef=0.1, or drop kl_target for no KL penalty")
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update from the KL of a rollout of ``n_steps`` samples; returns the new coefficient."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
