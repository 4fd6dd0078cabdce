#!/usr/bin/env bash
# Opt-in drift check: build a separate environment (.venv-latest) with the newest releases that the
# package's ranges allow (no constraints.txt), then run the whole suite there. A failure here is what a
# user installing today would meet; fix it (or add an upper bound) before refreshing the lock.
# WRITE_LOCK=1 rewrites constraints.txt from that environment when the suite passes. Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV="${VENV:-.venv-latest}"
rm -rf "$VENV"
CONSTRAINTS= bash scripts/setup_env.sh
"$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -i -E '^(torch|lightning|deepspeed|transformers|peft|datasets|torchmetrics|tensorboard|jsonargparse|tokenizers|safetensors)==' || true
# The suite itself runs exactly as scripts/test.sh runs it (same workers, threads and offline settings); its
# set-up step finds everything installed already.
CONSTRAINTS= bash scripts/test.sh "$@"
if [ "${WRITE_LOCK:-0}" = 1 ]; then
    bash scripts/freeze_lock.sh
fi
