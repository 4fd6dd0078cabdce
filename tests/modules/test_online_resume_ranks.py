"""Exact resume on 2 ranks without tensor parallelism: each rank generates its own rollouts with its own sampling
RNG, so each rank must get its own RNG back (only rank 0's was saved and restored on every rank)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.distributed import run_distributed
from tests.models.fixtures import tiny_folder

CLI = Path(__file__).resolve().parents[2] / "lightning_rlhf" / "commands" / "main.py"


def answers(root: Path, phase: str, rank: int) -> list[list[str]]:
    path = root / f"{phase}-rank{rank}.jsonl"
    return [json.loads(line)["completions"] for line in path.read_text().splitlines()]


@pytest.mark.distributed
def test_each_rank_resumes_its_own_sampling_rng_and_rolls_out_what_the_uninterrupted_run_did(tmp_path):
    actor = tiny_folder(tmp_path, "llama", num_heads=4)
    ckpt = tmp_path / "ckpt"

    def fit(phase: str, callbacks: list[dict], *extra: str) -> None:
        config = {
            "model": {"actor": str(actor), "reward_funcs": ["tests.modules.scripts.rank_rollouts:recording_reward"],
                      "actor_optimizer": {"learning_rate": 1e-3, "scheduler": "constant"},
                      "generation": {"max_new_tokens": 4, "temperature": 1.0}, "num_generations": 4,
                      "train_batch_size": 8},
            "data": {"task_size": 200, "batch_size": 2, "max_prompt_length": 16, "max_length": 24,
                     "cache_dir": str(tmp_path / "cache")},
            "trainer": {"accelerator": "cpu", "devices": 2, "max_epochs": 1, "limit_train_batches": 4,
                        "limit_val_batches": 0, "default_root_dir": str(tmp_path / phase),
                        "enable_progress_bar": False, "strategy": "hybrid_deepspeed_stage_2",
                        "callbacks": [{"class_path": "tests.modules.scripts.rank_rollouts.RankSkew"}, *callbacks]},
        }
        path = tmp_path / f"{phase}.yaml"
        path.write_text(yaml.safe_dump(config))
        run_distributed(CLI, "grpo", "fit", "--config", str(path), *extra, nprocs=2, timeout=900,
                        env={"ROLLOUT_RECORD": str(tmp_path / phase)})

    checkpoint = {"class_path": "lightning_rlhf.callbacks.IterationCheckpoint",
                  "init_args": {"every_n_iterations": 2, "dirpath": str(ckpt), "save_top_k": 0}}
    fit("full", [])
    fit("first", [checkpoint, {"class_path": "tests.modules.scripts.rank_rollouts.StopAfter",
                               "init_args": {"iterations": 2}}])
    fit("second", [checkpoint], "--ckpt_path", "last")
    for rank in (0, 1):
        full, first, second = (answers(tmp_path, phase, rank) for phase in ("full", "first", "second"))
        assert len(full) == 4 and len(first) == 2 and len(second) == 2
        assert first + second == full, f"rank {rank}: the resumed rollouts differ from the uninterrupted run's"
    assert answers(tmp_path, "full", 0) != answers(tmp_path, "full", 1)  # the ranks do sample different answers

    # preemption: SIGTERM reaches rank 1 during iteration 2 (Lightning's handler ran a collective inside the signal
    # handler and the run hung until SIGKILL); every rank finishes the iteration, saves once, exits cleanly, and
    # the resumed run continues exactly
    preempt = {"class_path": "lightning_rlhf.callbacks.IterationCheckpoint",
               "init_args": {"every_n_iterations": 100, "dirpath": str(tmp_path / "preempt"), "save_top_k": 0}}
    fit("sigterm", [preempt, {"class_path": "tests.modules.scripts.rank_rollouts.SigtermAt",
                              "init_args": {"iteration": 2, "ranks": [1]}}])
    assert (tmp_path / "preempt" / "last.ckpt").is_dir()
    fit("after", [preempt], "--ckpt_path", "last")
    for rank in (0, 1):
        stopped, resumed = answers(tmp_path, "sigterm", rank), answers(tmp_path, "after", rank)
        assert len(stopped) == 2 and stopped + resumed == answers(tmp_path, "full", rank), f"rank {rank}"
