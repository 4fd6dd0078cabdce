"""The package keeps its shape: rooms import downwards only, no module imports itself back (docs/architecture.md),
and docstrings stay within their budget without figures that go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


def test_no_import_cycle_and_no_import_from_a_room_above():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cycles: none; imports going up: 0" in result.stdout


def test_docstrings_and_comments_stay_within_budget_and_quote_no_figures():
    """At most 20% of the package's non-blank lines; no date, timing, size or machine in them (figures go in
    docs/measurements.md and benchmarks/, beside their command)."""
    script = SCRIPT.parent / "docstring_budget.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
