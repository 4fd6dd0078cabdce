"""DPOModule under HybridDeepSpeedStrategy ZeRO-3 on 2 CPU processes (gloo), for each way of getting the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed, run_once
from tests.models.fixtures import tiny_folder

WORKER = Path(__file__).parent / "scripts" / "dpo_zero3_worker.py"


MODES = ["model", "adapters_off", "precomputed"]


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory) -> Path:
    """Every mode in one 2-process launch, once per session (the start-up of two DeepSpeed processes is paid once,
    not per mode): ``<root>/<mode>/result-rank<R>.json``."""
    return run_once(tmp_path_factory, "dpo_zero3", lambda root: run_distributed(
        WORKER, ",".join(MODES), str(tiny_folder(root, "llama")), str(root), nprocs=2, timeout=900))


@pytest.mark.distributed
@pytest.mark.parametrize("mode", MODES)
def test_zero3_two_processes_train_dpo_and_export_the_policy(dpo_runs, mode):
    ranks = [json.loads((dpo_runs / mode / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2 and result["global_step"] == 4
        assert result["policy"]["partitioned"] and result["policy"]["local_numel"] == 0  # only ZeRO-3 shards
        assert result["policy"]["shard_numel"] <= (result["policy"]["full_numel"] + result["policy"]["count"]) / 2
        if mode == "model":  # the frozen reference is partitioned like the policy: each rank owns half of it
            reference = result["reference"]
            assert reference["partitioned"]
            assert reference["shard_numel"] <= (reference["full_numel"] + reference["count"]) / 2
            assert reference["full_numel"] == result["policy"]["full_numel"]
        else:
            assert result["reference"] is None
        assert result["before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
        assert result["before"]["val/rewards/accuracies"] == 0.5
        assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
        assert result["after"]["val/rewards/margins"] != 0.0
    zero, one = ranks
    assert zero["after"] == one["after"], "validation metrics are synchronised across ranks"
    assert zero["max_abs_diff"] <= 1e-4  # exported folder = the trained policy (LoRA merged)
    if mode == "precomputed":  # each rank computed its shard; both hold every pair after the gather
        assert zero["cache_size"] == one["cache_size"] > 0
