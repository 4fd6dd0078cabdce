"""Deterministic split of one source's records between the steps, plus a held-out evaluation part.

Ratios are normalised as DeepSpeed-Chat's ``--data_split 2,4,4``; the permutation depends only on the seed, the
source's position and its record count, so it is the same on every rank and run.
"""

from __future__ import annotations

import numpy as np

STAGES = ("sft", "reward", "rl")


def parse_ratios(split: str) -> tuple[float, float, float]:
    """Parse ``split``, three comma-separated non-negative numbers like ``"2,4,4"``, into fractions for each stage."""
    parts = [p.strip() for p in str(split).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"split must be three comma-separated numbers like '2,4,4', got {split!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"split must be three non-negative numbers (sft,reward,rl), not all 0, got {split!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def split_indices(
    n: int, split: str = "2,4,4", seed: int = 0, eval_fraction: float = 0.0, source_index: int = 0
) -> dict[str, dict[str, list[int]]]:
    """Assign each of ``n`` record indices to a stage (by the ``split`` ratios) and to its ``train`` or ``eval`` part.

    ``eval_fraction`` of each part is held out (at least one record of two or more); ``source_index``, the source's
    position, shuffles several sources independently.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    ratios = parse_ratios(split)
    order = np.random.default_rng([seed, source_index]).permutation(n)
    bounds = np.round(np.cumsum((0.0,) + ratios) * n).astype(int)
    out: dict[str, dict[str, list[int]]] = {}
    for stage, start, stop in zip(STAGES, bounds[:-1], bounds[1:]):
        part = order[start:stop]
        n_eval = int(np.ceil(eval_fraction * len(part))) if len(part) >= 2 else 0
        out[stage] = {"train": sorted(part[n_eval:].tolist()), "eval": sorted(part[:n_eval].tolist())}
    return out
