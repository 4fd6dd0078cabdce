"""Looking up an algorithm variant by the name a config gives, failing the same clear way everywhere."""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


def choose(choices: Mapping[str, T], name: str, what: str) -> T:
    """``choices[name]``, or a ``ValueError`` listing the names."""
    try:
        return choices[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(choices)}") from None
