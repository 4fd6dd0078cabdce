"""The real-model slow tier: SmolLM2-135M-Instruct through SFT -> reward -> PPO, ZeRO-3 and LoRA, on 2 CPU ranks.

What tiny models cannot show: a pretrained checkpoint's traits (pad id 2, tied embeddings, 9 heads over 3 KV
heads) loaded partitioned, four 135M models at once, and what a step costs. Each step's time per training step
and each rank's peak RSS are printed (``pytest -s``). Needs ``bash scripts/install_slow_tier.sh``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

WORKER = Path(__file__).parent / "scripts" / "smollm2_pipeline_worker.py"


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
