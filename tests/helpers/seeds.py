"""Learning claims over several seeds: the median, never one trajectory.

Why: a seeded run of a tiny model is chaotic; the float rounding of another CPU's kernels (AVX-512 vs
AVX2) moves its start and end points. A claim that holds for the median of several seeds, with a
threshold set from the measured spread, holds on any CPU. Every per-seed figure is printed, so a failing
run shows how far off each seed was.
"""

from __future__ import annotations

import statistics
from typing import Callable

SEEDS = (0, 1, 2)


def median_over_seeds(name: str, run: Callable[[int], float], seeds: tuple[int, ...] = SEEDS) -> float:
    """Run ``run(seed)`` for every seed, print the figures, return their median."""
    values = [float(run(seed)) for seed in seeds]
    median = statistics.median(values)
    print(f"{name}: median {median:.4g} over seeds {list(seeds)}: " + ", ".join(f"{v:.4g}" for v in values))
    return median
