"""The critic's values live on the returns' scale: with normalised scores they are normalised the same way."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lightning_rlhf.algorithms import masked_mean
from lightning_rlhf.modules.pooled import Pooled
from lightning_rlhf.models.forward import critic_values
from tests.modules.test_ppo import make_data, make_module, make_trainer, ppo_paths  # noqa: F401 (fixture)

STATS = {"mean": 3.0, "std": 0.5}  # far from the tiny reward model's raw outputs (about 0), as a real offset is


@pytest.fixture()
def normalised_paths(ppo_paths, tmp_path):
    reward = tmp_path / "reward"
    shutil.copytree(ppo_paths["reward_model"], reward)
    (reward / "reward_stats.json").write_text(json.dumps(STATS))
    return {**ppo_paths, "reward_model": reward}


def test_values_are_normalised_like_the_scores_in_rollout_and_update(tmp_path, normalised_paths):
    module = make_module(normalised_paths, normalize_reward=True)
    module.trainer = make_trainer(tmp_path)
    module.configure_model()
    data = make_data(normalised_paths)
    data.setup("fit")
    torch.manual_seed(0)
    rollout, metrics, _ = module.make_experience(next(iter(data.train_dataloader())))
    mask, length = rollout.response_mask, rollout.response_mask.shape[1]
    with torch.no_grad():
        raw = critic_values(module.critic, rollout.sequences, rollout.attention_mask, length)
    torch.testing.assert_close(rollout.values[mask], ((raw - STATS["mean"]) / STATS["std"])[mask])
    metrics = {name: float(m.combine(m.sums)) if isinstance(m, Pooled) else float(m) for name, m in metrics.items()}
    assert metrics["ppo/value_mean"] == pytest.approx(float(masked_mean(rollout.values, mask)))
    # the first values sit with the returns (scores normalised to about -6, clipped to -5), not 6 units above
    assert abs(metrics["ppo/value_mean"] - metrics["ppo/return_mean"]) < 1.0, metrics
