#!/usr/bin/env bash
# The test command of the README, and exactly what CI runs: set up the environment from nothing,
# then run the whole suite (fast tests, 2-process gloo tests, slow end-to-end runs; GPU tests skip
# with their reason on a machine without CUDA). Extra arguments go to pytest.
#
# The suite runs on TEST_WORKERS pytest-xdist workers (default 3; 0 runs it in this process, as plain pytest
# does), each with OMP_NUM_THREADS=1 unless set: much of the suite is process start-up, imports, 2-rank gloo runs
# and waits (a rank timing out on purpose) that leave a core idle, and a third worker fills those gaps.
# --maxschedchunk 1: each worker is handed one more test whenever it finishes one. xdist's default hands every
# worker a quarter of its share up front (about 70 consecutive tests), which put all the longest tests, sorted
# first (tests/conftest.py), on one worker one after another while the others ran out of work.
# The 30 slowest tests are listed at the end. Then scripts/test_vllm.sh runs the vLLM backend's tests in their own
# environment (its own tested version set, constraints-vllm.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${VENV:-.venv}"
WORKERS="${TEST_WORKERS:-3}"
if [ "$WORKERS" = 0 ]; then
    PARALLEL=()
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
else
    PARALLEL=(-n "$WORKERS" --maxschedchunk 1)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# DeepSpeed JIT-builds a small CPU communication op on first use; keep its build cache with this environment so
# another environment's build (different include paths) never forces a rebuild in the middle of the suite.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/$VENV/torch_extensions}"
# The first offloaded optimizer JIT-compiles DeepSpeed's CPU Adam: at -O0 without debug info (~80 CPU-s), see
# the script.
export CXX="${CXX:-$PWD/scripts/cxx_quick_build}"
"$VENV/bin/python" -m pytest -rs --durations=30 "${PARALLEL[@]}" "$@"
# The whole suite (no arguments) goes on with the vLLM backend's tests in their own environment (VLLM_SUITE=0 skips).
if [ $# -eq 0 ] && [ "${VLLM_SUITE:-1}" = 1 ]; then
    bash scripts/test_vllm.sh
fi
