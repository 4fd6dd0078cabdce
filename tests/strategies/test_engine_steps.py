"""The update HybridDeepSpeedStrategy applies equals a plain PyTorch loop: clipping, accumulation, offload.

Each scenario runs real DeepSpeed engines under torchrun (gloo, CPU) in ``scripts/optimizer_worker.py``, which
compares the trained weights with the same steps written in plain PyTorch (SGD lr 1, ``clip_grad_norm_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

WORKER = Path(__file__).parent / "scripts" / "optimizer_worker.py"
TOLERANCE = 1e-5


def run(tmp_path: Path, scenario: str, *args: str, nprocs: int = 1) -> dict:
    run_distributed(WORKER, scenario, tmp_path, *args, nprocs=nprocs, timeout=900)
    return json.loads((tmp_path / f"{scenario}.json").read_text())


@pytest.mark.distributed
def test_module_clip_settings_become_each_engines_gradient_clipping_at_stages_0_2_3(tmp_path):
    out = run(tmp_path, "clip", "--stages", "0", "2", "3")
    for stage in (0, 2, 3):
        two = out[f"two_engines_stage{stage}"]
        assert two["unclipped_would_differ"] > 1e-2  # the clip bites, so equality below means it was applied
        # the actor's engine clips at the module's max_grad_norm, the critic's at its engine_configs override
        assert two["actor"] < TOLERANCE and two["critic"] < TOLERANCE, (stage, two)
        assert out[f"single_auto_stage{stage}"]["model"] < TOLERANCE, stage  # Trainer(gradient_clip_val)
        assert out[f"single_manual_stage{stage}"]["model"] < TOLERANCE, stage  # manual module's max_grad_norm


@pytest.mark.distributed
def test_per_engine_gradient_accumulation_applies_the_mean_of_the_micro_batch_gradients_at_stages_0_2_3(tmp_path):
    out = run(tmp_path, "accum", "--stages", "0", "2", "3")
    for stage in (0, 2, 3):
        res = out[f"stage{stage}"]
        assert res["critic_untouched_after_first"] == 0.0, (stage, res)  # no update before the boundary
        # SGD lr 1 over two micro-batches: w - (g1 + g2) / 2, not w - g2 / 2 (the first gradient lost)
        assert res["critic"] < TOLERANCE, (stage, res)
        assert res["actor"] < TOLERANCE, (stage, res)  # the actor's engine (no accumulation) steps every batch
