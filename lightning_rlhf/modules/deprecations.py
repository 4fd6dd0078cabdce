"""Old argument names kept working for one release: the value moves to the new name, with a warning naming it."""

from __future__ import annotations

from typing import Any, MutableMapping

from lightning.pytorch.utilities import rank_zero_warn


def take_renamed(hparams: MutableMapping[str, Any], owner: str, old: str, new: str, default: Any) -> None:
    """Move ``hparams[old]`` (None unless given) to ``hparams[new]``; ``default`` is ``new``'s default."""
    value = hparams.pop(old, None)
    if value is None:
        return
    if hparams.get(new, default) not in (default, value):
        raise ValueError(f"{owner}: {old}={value!r} and {new}={hparams[new]!r} both given; {old} is the deprecated "
                         f"name of {new}: keep only {new}")
    rank_zero_warn(f"{owner}({old}=...) is deprecated and will be removed in the next release; use {new}=...",
                   category=FutureWarning)
    hparams[new] = value
