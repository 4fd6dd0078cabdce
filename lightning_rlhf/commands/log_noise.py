"""Warnings that would otherwise repeat on every step and every rank, shown once.

ZeRO-3's collectives warn on every call and each ``warnings.catch_warnings()`` resets Python's once-per-place
memory, so the texts shown are remembered here; ranks other than 0 skip the known per-call deprecations.
"""

from __future__ import annotations

import warnings
from typing import Any, TextIO

from lightning_rlhf.commands.ranks import process_rank

#: warnings that library code under our strategy raises on every call: (message regex, category)
REPEATED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.distributed\.\w+` is deprecated", FutureWarning),
)

_shown: set[tuple[str, type[Warning]]] = set()


def _show_once(show: Any) -> Any:
    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        key = (str(message), category)
        if key in _shown:
            return
        _shown.add(key)
        show(message, category, filename, lineno, file, line)

    showwarning.shows_once = True  # type: ignore[attr-defined]
    return showwarning


def show_repeated_warnings_once() -> None:
    """Show each warning text once per process, :data:`REPEATED_WARNINGS` only on rank 0. Idempotent."""
    if process_rank() != 0:
        for message, category in REPEATED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
    if not getattr(warnings.showwarning, "shows_once", False):
        warnings.showwarning = _show_once(warnings.showwarning)
