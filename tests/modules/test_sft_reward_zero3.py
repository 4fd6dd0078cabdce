"""SFTModule and RewardModule under HybridDeepSpeedStrategy ZeRO-3 on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed
from tests.models.fixtures import tiny_folder

WORKER = Path(__file__).parent / "scripts" / "sft_reward_zero3_worker.py"


@pytest.mark.distributed
@pytest.mark.parametrize(("stage", "lora"), [("sft", False), ("reward", False), ("sft", True)])
def test_zero3_two_processes_trains_and_exports_the_same_model(tmp_path, stage, lora):
    model = tiny_folder(tmp_path, "llama")
    run_distributed(WORKER, stage, str(model), str(tmp_path), *(["--lora"] if lora else []), nprocs=2, timeout=600)
    ranks = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2 and result["partitioned"]
        assert result["local_numel"] == 0  # parameters live only in ZeRO-3 shards
    zero = ranks[0]
    assert zero["initial_max_abs_diff"] <= 1e-5  # loaded partitioned = loaded plainly
    assert zero["max_abs_diff"] <= 1e-5  # exported folder = the trained module
    assert "model.safetensors" in zero["files"] and "tokenizer.json" in zero["files"]
    if stage == "reward":
        assert "reward_stats.json" in zero["files"]
        assert (tmp_path / "hf" / "final" / "reward_stats.json").exists()
    assert ranks[0]["metrics"]["val/loss"] == ranks[1]["metrics"]["val/loss"]  # synced metrics
