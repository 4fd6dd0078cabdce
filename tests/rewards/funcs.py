"""Reward functions the tests name by import path (``tests.rewards.funcs:<name>``), written in TRL's styles."""

from __future__ import annotations

import re

#: not a function: resolving it must fail clearly
NOT_CALLABLE = 3


def reward_len(completions, **kwargs):
    """TRL's documentation style: no ``prompts`` parameter, everything else in ``**kwargs``."""
    return [-abs(5 - len(completion)) for completion in completions]


def boxed_format(completions, **kwargs):
    """TRL's conversational style: each completion is a list with one assistant message."""
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if re.fullmatch(r"\\boxed\{.*\}", content) else 0.0 for content in contents]


def solution_match(prompts, completions, solution, **kwargs):
    """Reads a data column by name (``solution``, as open-r1's datasets call it); None where there is none."""
    return [None if sol is None else float(c.strip() == sol) for c, sol in zip(completions, solution)]


def ids_length(completion_ids, **kwargs):
    """Reads the token ids TRL passes as ``completion_ids``."""
    return [float(len(ids)) for ids in completion_ids]


def raises_on_seven(prompts, completions, **kwargs):
    if any("7" in c for c in completions):
        raise ValueError("cannot score a seven")
    return [1.0] * len(completions)


def raises_on_pairs(prompts, completions, **kwargs):
    """Fails only on batches of more than one row: no single row is to blame."""
    if len(completions) > 1:
        raise RuntimeError("batch too large")
    return [0.0]


def wrong_length(prompts, completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def returns_nan(prompts, completions, **kwargs):
    return [float("nan") if i == 2 else 0.0 for i in range(len(completions))]


def returns_text(prompts, completions, **kwargs):
    return ["good" if i == 1 else 1.0 for i in range(len(completions))]


def returns_scalar(prompts, completions, **kwargs):
    return 1.0
