"""SFTModule and RewardModule under HybridDeepSpeedStrategy ZeRO-3 on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed, run_once
from tests.models.fixtures import tiny_folder

WORKER = Path(__file__).parent / "scripts" / "sft_reward_zero3_worker.py"


CASES = [("sft", False), ("reward", False), ("sft", True)]


def _case(stage: str, lora: bool) -> str:
    return f"{stage}-lora" if lora else stage


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory) -> Path:
    """Every case in one 2-process launch, once per session (the start-up of two DeepSpeed processes is paid once,
    not per case): ``<root>/<case>/result-rank<R>.json``."""
    cases = ",".join(_case(stage, lora) for stage, lora in CASES)
    return run_once(tmp_path_factory, "sft_reward_zero3", lambda root: run_distributed(
        WORKER, cases, str(tiny_folder(root, "llama")), str(root), nprocs=2, timeout=900))


@pytest.mark.distributed
@pytest.mark.parametrize(("stage", "lora"), CASES)
def test_zero3_two_processes_trains_and_exports_the_same_model(zero3_runs, stage, lora):
    tmp_path = zero3_runs / _case(stage, lora)
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
