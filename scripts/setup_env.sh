#!/usr/bin/env bash
# Create (or reuse) a virtual environment in $VENV (default .venv) with the CPU build of torch
# pinned first, so pip never pulls a multi-GB CUDA build, then install this package with its extras
# at the versions the suite last passed with (constraints.txt, the lock; the package itself keeps ranges
# for its users). CONSTRAINTS= (empty) resolves the newest releases the ranges allow instead
# (scripts/test_latest.sh does that). SLOW_TIER=0 skips the real-model slow tier's packages. The dev extra holds
# reasoning-gym too (the suite tests its data source and reward on the real package).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-dev}"
CONSTRAINTS="${CONSTRAINTS-constraints.txt}"
PIN=()
if [ -n "$CONSTRAINTS" ]; then
    PIN=(-c "$CONSTRAINTS")
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade "${PIN[@]}" pip
# --no-compile: pip would byte-compile all ~15,500 Python files of the environment one after the other (about
# 75 CPU-seconds; transformers alone 14 of its 19 seconds of install); compileall does it below on every core.
"$VENV/bin/python" -m pip install -q --no-compile "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q --no-compile "${PIN[@]}" -e ".[$EXTRAS]"
if [ "${SLOW_TIER:-1}" = 1 ] && [ -f scripts/install_slow_tier.sh ]; then
    VENV="$VENV" CONSTRAINTS="$CONSTRAINTS" bash scripts/install_slow_tier.sh
fi
# Byte-compile the environment and this repository on every core. Not left to first import: where
# PYTHONDONTWRITEBYTECODE is set (CI sandboxes set it) Python never writes bytecode, so every interpreter compiled
# torch, Lightning and transformers from source again: `import lightning_rlhf.modules` took 25 CPU-seconds instead
# of 8.5 (measured, 2-core EPYC), and the test suite starts hundreds of interpreters. Already compiled files are only
# checked. A failure is not fatal, as in pip: some dependencies ship files for newer Pythons
# (torch/testing/_internal/py312_intrinsics.py), which nothing here imports.
SITE_PACKAGES="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$VENV/bin/python" -m compileall -qq -j 0 "$SITE_PACKAGES" lightning_rlhf tests benchmarks examples || true
