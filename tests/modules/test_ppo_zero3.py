"""PPOModule under HybridDeepSpeedStrategy ZeRO-3 on 2 CPU processes: every curve, a crash and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_rlhf.modules.ppo import PPO_TAGS
from tests.helpers.distributed import run_distributed
from tests.modules.test_ppo import SIZES, read_events

WORKER = Path(__file__).parent / "scripts" / "ppo_zero3_worker.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_tp2_logs_every_curve_and_resumes_after_a_crash(tmp_path, tiny_model_factory):
    actor = tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)
    reward = tiny_model_factory("llama", "value", seed=1, **SIZES)
    with pytest.raises(AssertionError, match="distributed run failed"):  # every rank SIGKILLs itself mid-epoch 2
        run_distributed(WORKER, actor, reward, tmp_path, "--phase", "killed", nprocs=2, timeout=600)
    run_distributed(WORKER, actor, reward, tmp_path, "--phase", "resumed", nprocs=2, timeout=600)
    killed = json.loads((tmp_path / "killed.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert "end" not in killed  # it really died before finishing

    # the resumed launch starts where the epoch-1 checkpoint stopped, with the adapted KL coefficient ...
    saved = killed["checkpoint"]
    assert resumed["start"]["epoch"] == 1 and resumed["start"]["global_step"] == saved["global_step"] > 0
    assert resumed["start"]["kl_coef"] == pytest.approx(saved["kl_coef"]) and saved["kl_coef"] != pytest.approx(0.1)
    # ... with every rank's ZeRO-3 shards of actor and critic exactly as saved ...
    for rank in (0, 1):
        before = torch.load(tmp_path / f"shards-killed-rank{rank}.pt")
        after = torch.load(tmp_path / f"shards-resumed-rank{rank}.pt")
        assert before.keys() == after.keys() and len(before) > 0
        assert all(torch.equal(before[k], after[k]) for k in before), f"rank {rank} shards differ after resume"
    # ... and finishes epoch 2 with the same number of optimizer steps per epoch, partitioned throughout
    end = resumed["end"]
    assert end["epoch"] == 2 and end["global_step"] == 2 * saved["global_step"]
    assert end["partitioned"] and end["engines"] == ["actor", "critic", "reference", "reward_model"]

    # every curve, once per PPO iteration, in the TensorBoard files of both launches
    expected = set(PPO_TAGS) | {"ppo/task_success", "val/reward_mean", "val/task_success"}
    for log_dir, iterations in ((killed["log_dir"], 3), (resumed["log_dir"], 2)):
        events = read_events(log_dir)
        scalars = set(events.Tags()["scalars"])
        assert expected <= scalars, f"{log_dir} misses {sorted(expected - scalars)}"
        assert all(len(events.Scalars(tag)) == iterations for tag in PPO_TAGS), log_dir
        assert "ppo/samples/text_summary" in events.Tags()["tensors"]
    assert events.Scalars("ppo/kl_coef")[0].value == pytest.approx(saved["kl_coef"])
    assert all(torch.isfinite(torch.tensor(e.value)) for tag in PPO_TAGS for e in events.Scalars(tag))
    assert 0.0 <= end["metrics"]["val/task_success"] <= 1.0
