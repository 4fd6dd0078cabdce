"""Calling reward functions with TRL's signature, so that TRL's and open-r1's run unchanged, and checking what they
return: a reward that is quietly wrong trains the policy towards the wrong thing, so each failure names the row.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from lightning_rlhf.rewards.builtin import completion_text  # noqa: F401  (re-exported: rewards' one text rule)

RewardFunction = Callable[..., Sequence[Union[float, None]]]


class RewardError(RuntimeError):
    """A reward function or remote scorer failed or returned something unusable; the message names which."""


@dataclass(frozen=True)
class NamedRewardFunction:
    """A resolved reward function: its curve ``name`` (``reward/<name>``), its ``source`` for errors (import path,
    URL or qualified name) and the ``function``."""

    name: str
    source: str
    function: RewardFunction


@dataclass(frozen=True)
class RewardScores:
    """The rewards of one batch.

    Attributes:
        total: ``(batch,)`` weighted sum over the functions that applied to each row (gated by the first with
            ``gate_on_first``); ``nan`` where none did.
        per_function: ``(batch, num_functions)`` each function's reward, ``nan`` where it returned ``None``.
        names: the functions' names, in column order.
        num_none: per function, how many rows it returned ``None`` for.
        num_unscored: rows that no function scored.
    """

    total: Tensor
    per_function: Tensor
    names: tuple[str, ...]
    num_none: tuple[int, ...]
    num_unscored: int

    def means(self) -> dict[str, float]:
        """Mean reward of each function over the rows it scored (``nan`` if none), for the curves."""
        return {name: float(column.nanmean()) for name, column in zip(self.names, self.per_function.T)}


def compute_rewards(
    functions: Sequence[NamedRewardFunction],
    weights: Sequence[float],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]] | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
    gate_on_first: bool = False,
) -> RewardScores:
    """Call each reward function on the batch: ``total = sum_f w_f * r_f`` over the functions that returned a number.

    With ``gate_on_first`` every function after the first is paid in proportion to the first's reward clipped to
    ``[0, 1]``, ``total = w_0 r_0 + g * sum_{f>0} w_f r_f`` with ``g = clip(r_0, 0, 1)``, and not at all where the
    first returned ``None``: a format or length reward then pays only together with correctness, so it can neither
    be collected by wrong answers nor win against the answers (``docs/rewards.md``, "Gated rewards").

    Args:
        functions: resolved functions (:func:`resolve_reward_functions`).
        weights: one weight per function.
        prompts: the batch's prompts (text, or chat messages), one per row.
        completions: the sampled completions, one per row, in the prompts' format.
        columns: the data record's other columns by name, each a sequence with one entry per row.
        completion_ids: the completions' token ids, passed on as TRL does; ``None`` omits them.
        gate_on_first: pay the other functions only in proportion to the first's reward (above).

    Raises:
        RewardError: a function raised, returned the wrong number of rewards, ``nan``/``inf`` or a non-number.
    """
    batch = len(prompts)
    kwargs = _call_kwargs(batch, completions, columns, completion_ids)
    if len(weights) != len(functions):
        raise ValueError(f"{len(weights)} weights for {len(functions)} reward functions")
    per_function = torch.full((batch, len(functions)), float("nan"), dtype=torch.float64)
    for column, function in enumerate(functions):
        values = _call(function, prompts, kwargs)
        for row, value in enumerate(_checked(function, values, batch, prompts)):
            if value is not None:
                per_function[row, column] = value
    paid = gated(per_function) if gate_on_first else per_function
    scored = ~paid.isnan()
    weighted = torch.where(scored, paid * torch.tensor(weights, dtype=torch.float64), 0.0).sum(1)
    return RewardScores(
        total=torch.where(scored.any(1), weighted, float("nan")).float(),
        per_function=per_function.float(),
        names=tuple(f.name for f in functions),
        num_none=tuple(int(n) for n in per_function.isnan().sum(0)),
        num_unscored=int((~scored.any(1)).sum()),
    )


def gated(per_function: Tensor) -> Tensor:
    """``(batch, functions)`` rewards with every column after the first multiplied by the first clipped to
    ``[0, 1]`` (``nan`` where the first is ``nan``)."""
    gate = per_function[:, :1].clamp(0.0, 1.0)
    return torch.cat([per_function[:, :1], per_function[:, 1:] * gate], dim=1)


def _call_kwargs(
    batch: int,
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]] | None,
    completion_ids: Sequence[Sequence[int]] | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"completions": list(completions)}
    if completion_ids is not None:
        kwargs["completion_ids"] = list(completion_ids)
    for name, values in (columns or {}).items():
        if name in ("prompts", "completions", "completion_ids"):
            raise ValueError(f"data column {name!r} clashes with the reward-function argument of that name; "
                             f"rename the column")
        kwargs[name] = list(values)
    for name, values in kwargs.items():
        if len(values) != batch:
            raise ValueError(f"{name} has {len(values)} entries for a batch of {batch} prompts")
    return kwargs


def _row(prompts: Sequence[Any], row: int) -> str:
    text = str(prompts[row])
    return f"row {row} (prompt {text[:60] + ('...' if len(text) > 60 else '')!r})"


def _call(function: NamedRewardFunction, prompts: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    try:  # fresh lists, so a function that edits its arguments cannot change what the next one sees
        return function.function(prompts=list(prompts), **{name: list(values) for name, values in kwargs.items()})
    except RewardError:  # already names the function and rows (a remote scorer's errors)
        raise
    except Exception as exc:
        row = _first_failing_row(function, prompts, kwargs)
        where = _row(prompts, row) if row is not None else f"the batch of {len(prompts)} rows (no row fails alone)"
        raise RewardError(f"reward function {function.source!r} raised {type(exc).__name__}: {exc} on {where}") \
            from exc


def _first_failing_row(function: NamedRewardFunction, prompts: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    for row in range(len(prompts)):
        try:
            function.function(prompts=[prompts[row]], **{k: [v[row]] for k, v in kwargs.items()})
        except Exception:
            return row
    return None


def _checked(function: NamedRewardFunction, values: Any, batch: int, prompts: Sequence[Any]) -> list[float | None]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise RewardError(f"reward function {function.source!r} returned a {type(values).__name__}; "
                          f"return a list with one float (or None) per completion")
    if len(values) != batch:
        raise RewardError(f"reward function {function.source!r} returned {len(values)} rewards for {batch} "
                          f"completions; return one float (or None) per completion")
    checked: list[float | None] = []
    for row, value in enumerate(values):
        if getattr(value, "ndim", None) == 0:  # as TRL accepts
            value = value.item()
        if value is not None and not isinstance(value, numbers.Real):
            raise RewardError(f"reward function {function.source!r} returned {value!r} "
                              f"({type(value).__name__}) for {_row(prompts, row)}; return a float or None")
        if value is not None and not math.isfinite(value):
            raise RewardError(f"reward function {function.source!r} returned {value} for {_row(prompts, row)}; "
                              f"return a finite float, or None where the function does not apply")
        checked.append(None if value is None else float(value))
    return checked
