"""``lightning-rlhf pipeline --resume``: finished steps are reused, the interrupted step resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rlhf.commands.main import main
from lightning_rlhf.commands.pipeline_resume import bare_resume_flag
from tests.helpers.interrupt import Killed

PPO_ITERATIONS = 3
QUICK = [
    "--tiny.hidden_size", "32", "--data.task_size", "400",
    "--sft.trainer.max_epochs", "1", "--sft.trainer.limit_train_batches", "2",
    "--reward.trainer.max_epochs", "1", "--reward.trainer.limit_train_batches", "2",
    "--ppo.trainer.max_epochs", "1", "--ppo.trainer.limit_train_batches", str(PPO_ITERATIONS),
    "--ppo.data.batch_size", "8", "--ppo.model.train_batch_size", "8",
    *[f"--{s}.trainer.enable_progress_bar=false" for s in ("sft", "reward", "ppo")],
    *[f"--{s}.trainer.{k}={v}" for s in ("sft", "reward", "ppo") for k, v in (("devices", 1), ("strategy", "auto"))],
]
CHECKPOINT = {"class_path": "lightning_rlhf.callbacks.IterationCheckpoint", "init_args": {"every_n_iterations": 1}}


def _steps(root: Path) -> list[int]:
    """The PPO iterations logged by every launch, in launch order."""
    steps = []
    for version in sorted((root / "ppo" / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[1])):
        events = EventAccumulator(str(version), size_guidance={"scalars": 0})
        events.Reload()
        steps += [e.step for e in events.Scalars("ppo/reward_mean")]
    return steps


def test_a_bare_resume_flag_means_true():
    assert bare_resume_flag(["--resume", "--steps", "ppo"]) == ["--resume=true", "--steps", "ppo"]
    assert bare_resume_flag(["--resume"]) == ["--resume=true"]
    assert bare_resume_flag(["--resume", "false"]) == ["--resume", "false"]


def test_pipeline_resume_reuses_finished_steps_and_resumes_ppo_in_the_iteration_it_was_killed(tmp_path):
    crash = {"class_path": "tests.helpers.interrupt.CrashAtIteration", "init_args": {"iteration": 3}}
    with pytest.raises(Killed):
        main(["pipeline", "--output_dir", str(tmp_path), *QUICK,
              "--ppo.trainer.callbacks", yaml.safe_dump([CHECKPOINT, crash], default_flow_style=True)])
    finished = {s: (tmp_path / s / "step_result.json").read_text() for s in ("sft", "reward")}
    assert not (tmp_path / "ppo" / "step_result.json").exists() and not (tmp_path / "summary.json").exists()
    sft_weights = (tmp_path / "sft" / "hf" / "final" / "model.safetensors").stat().st_mtime_ns

    results = main(["pipeline", "--output_dir", str(tmp_path), *QUICK, "--resume",
                    "--ppo.trainer.callbacks", yaml.safe_dump([CHECKPOINT], default_flow_style=True)])
    assert [r.step for r in results] == ["sft", "reward", "ppo"]
    # sft and reward were not run again: same records, same export, and their rows are in the summary
    assert (tmp_path / "sft" / "hf" / "final" / "model.safetensors").stat().st_mtime_ns == sft_weights
    summary = json.loads((tmp_path / "summary.json").read_text())
    for row in summary[:2]:
        assert row == json.loads(finished[row["step"]])
    # ppo went on from the checkpoint of iteration 2: iteration 3 only, one continuous curve
    assert _steps(tmp_path) == list(range(PPO_ITERATIONS))
    assert {"val/reward_mean", "val/task_success"} <= set(summary[2]["after"])
    assert (tmp_path / "ppo" / "step_result.json").exists()
