#!/usr/bin/env bash
# GPU-only checks of the generation switch, for a machine with CUDA (CI has none, so these skip there):
# the @pytest.mark.gpu tests (native and DeepSpeed-kernel backends, NCCL tensor parallel when 2+ GPUs),
# then the generation benchmark on the GPUs. Extra arguments go to pytest.
#   bash benchmarks/gpu_smoke.sh            # from the repository root, in the project's environment
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke.sh needs a CUDA device')"
"$PYTHON" -m pytest -rs -m gpu tests/strategies/test_generation.py "$@"
GPUS="$("$PYTHON" -c 'import torch; print(min(torch.cuda.device_count(), 2))')"
if [ "$GPUS" -ge 2 ]; then
  "$PYTHON" -m torch.distributed.run --nproc_per_node=2 benchmarks/generation.py
else
  "$PYTHON" -m torch.distributed.run --nproc_per_node=1 benchmarks/generation.py --tp-sizes 1
fi
