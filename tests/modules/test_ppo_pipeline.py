"""The headline run: tokenizer -> tiny llama -> SFT -> reward -> PPO on the built-in task, on CPU.

PPO must lift the held-out reward and task success clearly above the SFT policy's with the KL bounded.
The same run as ``python tests/modules/scripts/ppo_pipeline.py OUTDIR`` (prints every number).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightning_rlhf.modules.ppo import PPO_TAGS
from tests.modules.test_ppo import read_events

SCRIPT = Path(__file__).parent / "scripts" / "ppo_pipeline.py"


def load_pipeline():
    spec = importlib.util.spec_from_file_location("ppo_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ppo_lifts_heldout_reward_and_task_success_above_sft(tmp_path):
    pipeline = load_pipeline()
    sft = pipeline.run_sft(pipeline.build_base(tmp_path), tmp_path)
    reward = pipeline.run_reward(tmp_path / "sft" / "final", tmp_path)
    ppo = pipeline.run_ppo(tmp_path / "sft" / "final", tmp_path / "reward" / "final", tmp_path)
    before, after = ppo["before"], ppo["after"]
    print(f"SFT val loss {sft['val/loss']:.3f}; reward held-out accuracy {reward['val/accuracy']:.3f}; "
          f"PPO held-out reward {before['val/reward_mean']:.2f} -> {after['val/reward_mean']:.2f}, "
          f"task success {before['val/task_success']:.3f} -> {after['val/task_success']:.3f}")
    assert reward["val/accuracy"] >= 0.9
    assert after["val/task_success"] >= before["val/task_success"] + 0.2
    assert after["val/reward_mean"] >= before["val/reward_mean"] + 1.0

    events = read_events(ppo["log_dir"])
    expected = set(PPO_TAGS) | {"ppo/task_success", "val/reward_mean", "val/task_success"}
    assert expected <= set(events.Tags()["scalars"]), sorted(expected - set(events.Tags()["scalars"]))
    kl = [e.value for e in events.Scalars("ppo/kl")]
    assert len(kl) == len(events.Scalars("ppo/reward_mean")) >= 60  # one point per PPO iteration
    assert max(kl) < 3.0 and sum(kl[-20:]) / 20 < 1.5, f"KL not bounded: {kl}"
    success = [e.value for e in events.Scalars("ppo/task_success")]
    assert sum(success[-20:]) / 20 > sum(success[:5]) / 5 + 0.1  # the sampled rollouts improve too
    assert (tmp_path / "ppo" / "final" / "model.safetensors").exists()  # the PPO actor, exported
