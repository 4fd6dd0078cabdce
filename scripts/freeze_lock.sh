#!/usr/bin/env bash
# Write constraints.txt (the tested set) from the environment in $VENV (default .venv): every installed
# distribution at its exact version, except this package (editable) and torch (setup_env.sh pins the
# CPU build itself with TORCH_VERSION; GPU users install the build for their hardware).
# Run it only after the suite passed in that environment, e.g. after `WRITE_LOCK=1 bash scripts/test_latest.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
{
    echo "# The tested set: the exact versions the whole suite passed with (scripts/freeze_lock.sh, from $VENV,"
    echo "# $("$VENV/bin/python" -c 'import platform; print("Python", platform.python_version())'), torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') installed first)."
    echo "# Used by scripts/setup_env.sh as pip constraints; the package's own ranges are in pyproject.toml."
    "$VENV/bin/python" -m pip freeze --all --exclude-editable | grep -v -i -E '^(torch|lightning-rlhf)=='
} > constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins) from $VENV"
