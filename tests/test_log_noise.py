"""Repeated warnings are shown once: in a Python process, and in a real 2-rank PPO log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

LOG_NOISE = Path(__file__).resolve().parents[1] / "lightning_rlhf" / "commands" / "log_noise.py"
REPEAT = """
import importlib.util, sys, warnings
spec = importlib.util.spec_from_file_location("log_noise", sys.argv[1])
log_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(log_noise)
log_noise.show_repeated_warnings_once()
for _ in range(5):
    with warnings.catch_warnings():  # what Lightning, transformers and DeepSpeed do around their calls
        pass
    warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Use x.", FutureWarning)
    warnings.warn("a warning of this library", UserWarning)
"""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_warning_repeated_across_catch_warnings_blocks_is_shown_once(rank):
    env = {**os.environ, "RANK": rank}
    proc = subprocess.run([sys.executable, "-c", REPEAT, str(LOG_NOISE)], env=env, capture_output=True, text=True,
                          check=True)
    assert proc.stderr.count("is deprecated") == (1 if rank == "0" else 0), proc.stderr
    assert proc.stderr.count("a warning of this library") == 1, proc.stderr


@pytest.mark.slow
def test_two_rank_ppo_log_shows_each_warning_and_data_line_once(tmp_path, tiny_model_factory):
    """``lightning-rlhf ppo fit`` on 2 CPU ranks under hybrid_deepspeed: before, 50 of its ~150 log lines were two
    torch FutureWarnings (DeepSpeed's ZeRO-3 collectives)."""
    sizes = dict(hidden_size=32, num_layers=2, num_heads=4, max_positions=64)
    actor, reward = tiny_model_factory("llama", **sizes), tiny_model_factory("llama", "value", seed=1, **sizes)
    proc = run_distributed(
        Path(__file__).parent / "scripts" / "cli_entry.py", "ppo", "fit", "--model.actor", actor,
        "--model.reward_model", reward, "--model.generation.max_new_tokens", "4", "--data.max_prompt_length", "16",
        "--data.max_length", "24", "--data.task_size", "400", "--data.cache_dir", tmp_path / "cache",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "hybrid_deepspeed",
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
        "false", "--trainer.default_root_dir", tmp_path / "run", timeout=600,
    )
    log = (proc.stdout + proc.stderr).splitlines()
    warnings = [line for line in log if "Warning:" in line]
    assert warnings and len(warnings) == len(set(warnings)), "\n".join(warnings)
    assert sum("FutureWarning" in line for line in log) <= 2
    data_lines = [line for line in log if line.startswith("[data]")]
    assert len(data_lines) == 4 and len(set(data_lines)) == 4, data_lines  # source, train, eval, ptx: once each
    assert (tmp_path / "run" / "hf" / "final" / "model.safetensors").exists()


def test_rank_comes_from_the_process_group_when_the_environment_is_stale(tmp_path):
    """Failed before the fix: with ``RANK=0`` inherited, rank 1 also took itself for rank 0 and wrote the
    pipeline's records and summary a second time."""
    script = Path(__file__).parent / "scripts" / "stale_rank_env.py"
    run_distributed(script, str(tmp_path / "rank"), nprocs=2, timeout=120)
    reports = {rank: (tmp_path / f"rank.{rank}").read_text().split() for rank in (0, 1)}
    assert reports == {0: ["0", "1"], 1: ["1", "0"]}
