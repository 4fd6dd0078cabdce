#!/usr/bin/env bash
# GPU smoke test, for a machine with CUDA (CI has none, so these skip there):
#   1. the @pytest.mark.gpu tests (native, fast and DeepSpeed-kernel backends, NCCL tensor parallel when 2+ GPUs);
#   2. benchmarks/generation.py on the GPUs (switch vs plain ZeRO-3 generate vs an unsharded copy);
#   3. benchmarks/gpu_training.py: OPT-125m- and Llama-shaped random models in bf16 under
#      HybridDeepSpeedStrategy, training and generation tokens/s and model TFLOPs, both generation backends.
#   4. where vLLM is installed (the vllm extra), the vLLM backend's tests on CUDA: greedy tokens equal to generate's
#      after every weight load, sampled log-probs against a forward pass, a GRPO run's log-prob gap
#      (tests/strategies/test_vllm_backend.py); skipped with a line saying so where vLLM is absent.
# Every step runs even if an earlier one fails; the exit status says whether all passed.
#   bash benchmarks/gpu_smoke.sh            # from the repository root, in the project's environment
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed's JIT op builder cannot parse arch names such as "9.0a"; give it plain compute capabilities.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke.sh needs a CUDA device')" || exit 2
status=0
"$PYTHON" -m pytest -rs -m gpu tests/strategies/test_generation.py "$@" || status=1
GPUS="$("$PYTHON" -c 'import torch; print(min(torch.cuda.device_count(), 2))')"
TP=$([ "$GPUS" -ge 2 ] && echo "1,2" || echo "1")
"$PYTHON" -m torch.distributed.run --nproc_per_node="$GPUS" benchmarks/generation.py --tp-sizes "$TP" || status=1
for family in opt llama; do
  "$PYTHON" -m torch.distributed.run --nproc_per_node=1 benchmarks/gpu_training.py --family "$family" || status=1
done
if "$PYTHON" -c "import vllm" 2>/dev/null; then
  VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PYTHON" -m pytest -rs tests/strategies/test_vllm_backend.py "$@" || status=1
else
  echo "gpu_smoke.sh: vLLM is not installed here; the vLLM backend was not checked (pip install 'lightning-rlhf[vllm]')"
fi
exit $status
