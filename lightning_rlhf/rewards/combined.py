"""One reward per sampled answer from reward functions and a reward model's scores, added up the same way for PPO
and GRPO. A source that does not score a row is left out of its sum; a row no source scored stays ``nan``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lightning_rlhf.rewards.resolve import RewardSpec, resolve_reward_functions
from lightning_rlhf.rewards.scoring import compute_rewards

REWARD_MODEL_SOURCE = "reward_model"


@dataclass(frozen=True)
class SampleRewards:
    """The rewards of one batch of answers: ``total`` ``(batch,)``, the weighted sum over the sources that scored
    each row (``nan`` where none did), ``per_source`` unweighted by curve name, and ``num_unscored`` rows."""

    total: Tensor
    per_source: dict[str, Tensor]
    num_unscored: int


class RewardSources:
    """Reward functions and optionally a reward model's scores, weighted and added; the arguments are
    :class:`~lightning_rlhf.modules.grpo.GRPOModule`'s of the same names, resolved now so that a typo fails early."""

    def __init__(self, reward_funcs: Sequence[RewardSpec] | None, reward_weights: Sequence[float] | None = None,
                 reward_model_weight: float = 1.0, reward_url: str | None = None,
                 reward_start_iterations: Sequence[int] | None = None, reward_gate: bool = False) -> None:
        specs = list(reward_funcs or []) + ([reward_url] if reward_url is not None else [])
        if not specs and reward_weights is not None:
            raise ValueError("reward_weights is set but reward_funcs is not; give the functions the weights are for")
        if reward_url is not None and not str(reward_url).startswith(("http://", "https://")):
            raise ValueError(f"reward_url must start with http:// or https://, got {reward_url!r}")
        self.functions, self.weights = resolve_reward_functions(specs, reward_weights)
        self.reward_model_weight = float(reward_model_weight)
        self.start_iterations = checked_start_iterations(reward_start_iterations, len(self.functions))
        if reward_gate and len(self.functions) < 2:
            raise ValueError(f"reward_gate pays the reward functions after the first only together with the first, "
                             f"but there are {len(self.functions)}; give the correctness reward first and at least one "
                             "more, or set reward_gate=False")
        self.gate = bool(reward_gate)

    def __bool__(self) -> bool:
        return bool(self.functions)

    def weights_at(self, iteration: int | None) -> list[float]:
        """The functions' weights at ``iteration``: 0 before a function's start; None: all (outside ``fit``)."""
        return [w if iteration is None or iteration >= start else 0.0
                for w, start in zip(self.weights, self.start_iterations)]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.functions)

    def score(
        self,
        prompts: Sequence[Any],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        model_scores: Tensor | None = None,
        iteration: int | None = None,
    ) -> SampleRewards:
        """Call every function on the batch (one row per answer, ``columns`` by name) and add the reward model's
        ``(batch,)`` ``model_scores`` when given; ``iteration`` selects the weights (:meth:`weights_at`)."""
        per_source: dict[str, Tensor] = {}
        parts: list[Tensor] = []
        if self.functions:
            scores = compute_rewards(self.functions, self.weights_at(iteration), prompts, completions, columns,
                                     completion_ids, gate_on_first=self.gate)
            per_source.update({name: column for name, column in zip(scores.names, scores.per_function.T)})
            parts.append(scores.total)
        if model_scores is not None:
            model_scores = model_scores.detach().float().cpu()
            per_source[REWARD_MODEL_SOURCE] = model_scores
            parts.append(self.reward_model_weight * model_scores)
        if not parts:
            raise ValueError("no reward source: give reward_funcs, a reward_model, or both")
        stacked = torch.stack(parts)
        scored = ~stacked.isnan()
        total = torch.where(scored.any(0), torch.nansum(stacked, 0), float("nan"))
        return SampleRewards(total, per_source, int((~scored.any(0)).sum()))


def checked_start_iterations(starts: Sequence[int] | None, num_functions: int) -> list[int]:
    """``reward_start_iterations`` validated (None: all 0)."""
    if starts is None:
        return [0] * num_functions
    starts = list(starts)
    if len(starts) != num_functions:
        raise ValueError(f"reward_start_iterations has {len(starts)} entries for {num_functions} reward functions; "
                         "give one iteration per function (0: from the start)")
    bad = [s for s in starts if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"reward_start_iterations must be integers >= 0, got {bad}")
    return starts


__all__ = ["REWARD_MODEL_SOURCE", "RewardSources", "SampleRewards"]
