#!/usr/bin/env bash
# The test command of the README, and exactly what CI runs: set up the environment from nothing,
# then run the whole suite (fast tests, 2-process gloo tests, slow end-to-end runs; GPU tests skip
# with their reason on a machine without CUDA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${VENV:-.venv}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# DeepSpeed JIT-builds a small CPU communication op on first use; keep its build cache with this environment so
# another environment's build (different include paths) never forces a rebuild in the middle of the suite.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/$VENV/torch_extensions}"
exec "$VENV/bin/python" -m pytest -rs "$@"
