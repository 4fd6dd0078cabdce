#!/usr/bin/env bash
# Create (or reuse) a virtual environment in $VENV (default .venv) with the CPU build of torch
# pinned first, so pip never pulls a multi-GB CUDA build, then install this package with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
