#!/usr/bin/env bash
# The README's main job: set up the environment from nothing, then run the whole RLHF pipeline
# (SFT -> reward model -> PPO) on the built-in task with a tiny model trained from scratch, on CPU.
# Extra arguments go to `lightning-rlhf pipeline` (e.g. --config examples/tiny_cpu/pipeline.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${VENV:-.venv}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$VENV/bin/lightning-rlhf" pipeline "$@"
