"""The package's rooms import downwards only and no module imports itself back (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


def test_no_import_cycle_and_no_import_from_a_room_above():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cycles: none; imports going up: 0" in result.stdout
