"""Fixtures of the module tests: the tiny SFT policy the PPO and GRPO learning tests both start from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.distributed import run_once


@pytest.fixture(scope="session")
def tiny_sft_start(tmp_path_factory) -> Path:
    """``<folder>/sft/final``: the built-in task's tokenizer, a tiny llama and 13 epochs of SFT
    (``tests/modules/scripts/ppo_pipeline.py``), trained once per session even under pytest-xdist; the PPO and
    GRPO learning tests each go on from the same start (about 35 CPU-seconds each saved)."""
    from tests.modules.test_ppo_pipeline import load_pipeline

    pipeline = load_pipeline()

    def produce(folder: Path) -> None:
        sft = pipeline.run_sft(pipeline.build_base(folder), folder)
        print(f"shared SFT start: held-out loss {sft['val/loss']:.3f}")

    return run_once(tmp_path_factory, "tiny-sft-start", produce) / "sft" / "final"
