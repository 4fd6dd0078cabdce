"""Looking up an algorithm variant by the name a config gives.

Why one helper: every variant family (KL estimators, advantage estimators, loss aggregations) is a small
name -> function mapping, and a misspelt name should fail the same clear way everywhere, listing the choices.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


def choose(choices: Mapping[str, T], name: str, what: str) -> T:
    """``choices[name]``, or a ``ValueError`` saying ``unknown <what> '<name>'`` and listing the names."""
    try:
        return choices[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(choices)}") from None
