"""The suite's own helpers decide what they claim to decide."""

from __future__ import annotations

import itertools
import statistics

import pytest

from tests.helpers.seeds import SeededRuns, median_clears


@pytest.mark.parametrize("strict", [False, True])
def test_median_clears_decides_the_median_of_three_exactly_and_skips_a_seed_that_cannot_change_it(strict, capsys):
    for values in itertools.product([0.0, 1.0, 2.0], repeat=3):
        asked = []
        runs = SeededRuns(lambda seed: asked.append(seed) or values[seed])
        median = statistics.median(values)
        assert median_clears("claim", lambda s: runs[s], 1.0, strict=strict) == (median > 1.0 if strict else median >= 1.0)
        first_two_agree = (values[0] > 1.0 if strict else values[0] >= 1.0) == (
            values[1] > 1.0 if strict else values[1] >= 1.0)
        assert asked == ([0, 1] if first_two_agree else [0, 1, 2]), values
        assert sorted(runs.done) == asked and runs[0] == values[0] and asked.count(0) == 1  # memoised
    assert "not needed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="odd number of seeds"):
        median_clears("claim", float, 1.0, seeds=(0, 1))
