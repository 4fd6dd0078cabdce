"""Learning claims over several seeds: the median, never one trajectory.

Why: a seeded run of a tiny model is chaotic; the float rounding of another CPU's kernels (AVX-512 vs
AVX2) moves its start and end points. A claim that holds for the median of several seeds, with a
threshold set from the measured spread, holds on any CPU. Every per-seed figure is printed, so a failing
run shows how far off each seed was.

Seeds run lazily (:class:`SeededRuns`) and a claim stops asking for seeds once it is decided
(:func:`median_clears`): the median of an odd number of values clears a threshold exactly when a majority
of them does, so when the first two seeds of three agree, the third cannot change the outcome and is not
run. That is about a third of the suite's learning-test time (each seed is a full training run).
"""

from __future__ import annotations

import operator
from typing import Any, Callable

SEEDS = (0, 1, 2)


class SeededRuns:
    """``runs[seed]``: ``run(seed)`` computed on first use and kept (several claims read the same runs).

    ``runs.done`` maps the seeds run so far to their results, for checks that apply to every run made.
    """

    def __init__(self, run: Callable[[int], Any]) -> None:
        self._run = run
        self.done: dict[int, Any] = {}

    def __getitem__(self, seed: int) -> Any:
        if seed not in self.done:
            self.done[seed] = self._run(seed)
        return self.done[seed]


def median_clears(name: str, value: Callable[[int], float], threshold: float, *, strict: bool = False,
                  seeds: tuple[int, ...] = SEEDS) -> bool:
    """Whether the median of ``value(seed)`` over ``seeds`` is ``>= threshold`` (``>`` if ``strict``).

    Asks for seeds in order and stops as soon as a majority is on one side of the threshold, which decides the
    median of an odd number of seeds exactly. Prints every figure it computed and how the claim was decided.
    """
    if len(seeds) % 2 == 0:
        raise ValueError(f"median_clears needs an odd number of seeds, got {list(seeds)}")
    clears = operator.gt if strict else operator.ge
    majority = len(seeds) // 2 + 1
    values: dict[int, float] = {}
    for seed in seeds:
        values[seed] = float(value(seed))
        above = sum(clears(v, threshold) for v in values.values())
        if above >= majority or len(values) - above >= majority:
            break
    passed = above >= majority
    sign = ">" if strict else ">="
    figures = ", ".join(f"seed {s}: {v:.4g}" for s, v in values.items())
    rest = [s for s in seeds if s not in values]
    skipped = f"; seeds {rest} not needed, they cannot change the median's side" if rest else ""
    print(f"{name}: median over seeds {list(seeds)} {sign} {threshold:g}: {'yes' if passed else 'NO'} "
          f"({figures}{skipped})")
    return passed
