"""DPOModule under HybridDeepSpeedStrategy ZeRO-3 on 2 CPU processes (gloo), for each way of getting the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed, run_once
from tests.models.fixtures import tiny_folder

WORKER = Path(__file__).parent / "scripts" / "dpo_zero3_worker.py"


MODES = ["model", "adapters_off", "precomputed", "model-offload"]  # the last: offload, clipping, accumulation 2


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
        if mode.startswith("model"):  # the frozen reference is partitioned like the policy: each rank owns half of it
            reference = result["reference"]
            assert reference["partitioned"]
            assert reference["shard_numel"] <= (reference["full_numel"] + reference["count"]) / 2
            assert reference["full_numel"] == result["policy"]["full_numel"]
        else:
            assert result["reference"] is None
        assert result["before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
        assert result["before"]["val/rewards/accuracies"] == 0.5
        accumulation = 2 if mode == "model-offload" else 1  # Lightning logs each micro-batch's loss / accumulation
        assert result["losses"][0] == pytest.approx(math.log(2) / accumulation, abs=1e-6)
        assert result["after"]["val/rewards/margins"] != 0.0
    zero, one = ranks
    assert zero["after"] == one["after"], "validation metrics are synchronised across ranks"
    assert zero["max_abs_diff"] <= 1e-4  # exported folder = the trained policy (LoRA merged)
    if mode == "precomputed":  # each rank computed its shard; both hold every pair after the gather
        assert zero["cache_size"] == one["cache_size"] > 0


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["model", "model-offload"])
def test_zero3_dpo_reference_is_a_frozen_engine_of_its_own_offloaded_and_never_saved(dpo_runs, mode):
    """The frozen reference is not a frozen part of the policy's engine but an inference engine of its own: built by
    a zero.Init of its own on the CPU with offload_frozen_models (on a CUDA host its partitions never touch the
    GPU), left out of checkpoints, unchanged by training; the policy keeps Lightning's automatic optimization with
    Trainer(gradient_clip_val) and accumulation in its engine's config, and a checkpoint resumes."""
    for rank in (0, 1):
        result = json.loads((dpo_runs / mode / f"result-rank{rank}.json").read_text())
        assert result["engines"] == ["model", "reference"]
        assert result["reference_in_policy_engine"] is False
        assert result["reference_max_abs_diff"] == 0.0  # the reference still computes the starting model's log-probs
        # the policy is partitioned here (empty 1-d placeholders): its weight matrices still go in the decay group
        assert result["policy_weight_decays"] == [0.1, 0.0]
        assert all(math.isfinite(loss) for loss in result["losses"])
        assert result["after"]["val/logps/chosen"] != result["before"]["val/logps/chosen"]  # the policy trained
        if mode == "model":  # partitioned with the training zero.Init's device, not offloaded
            assert result["reference_offload"] is False and not result["reference_own_init"]
            continue
        assert result["reference_offload"] is True
        assert result["reference_own_init"] and result["reference_remote_device"] == ["str:cpu"]
        assert result["reference_partition_devices"] == ["cpu"]
        assert result["policy_config"] == {"gradient_clipping": 1.0, "gradient_accumulation_steps": 2}
        assert result["marker"]["layout"] == "several" and result["marker"]["engines"] == ["model"]
        assert len(result["model_states"]) == 2 and result["reference_keys_saved"] == []
        assert result["resumed_engines"] == ["model", "reference"] and result["resumed_step"] == 5
        assert len(result["resumed_losses"]) == 2 and all(math.isfinite(loss) for loss in result["resumed_losses"])
