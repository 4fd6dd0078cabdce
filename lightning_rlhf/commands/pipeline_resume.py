"""What ``lightning-rlhf pipeline --resume`` reads and writes: the bare flag and each step's record.

An export alone does not prove its step finished: ``<step>/step_result.json``, written last, does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

STEP_RESULT_FILE = "step_result.json"


def write_step_record(step_dir: Path, result: dict[str, Any]) -> None:
    """Record in ``step_dir`` that a step finished, with its summary row (rank 0 only)."""
    (step_dir / STEP_RESULT_FILE).write_text(json.dumps(result, indent=2))


def finished_step_record(step_dir: Path, export_dir: Path) -> dict[str, Any] | None:
    """The summary row of a step an earlier launch finished (record and export both there), else None."""
    record = step_dir / STEP_RESULT_FILE
    if not record.is_file() or not (export_dir / "config.json").is_file():
        return None
    return json.loads(record.read_text())


def bare_resume_flag(argv: Sequence[str]) -> list[str]:
    """Read a bare ``--resume`` (no value after it) as ``--resume=true``, as a user types it."""
    values = {"true", "false", "yes", "no", "1", "0", "on", "off"}
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--resume" and (i + 1 == len(out) or out[i + 1].lower() not in values):
            out[i] = "--resume=true"
    return out
