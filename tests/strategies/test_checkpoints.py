"""HybridDeepSpeedStrategy checkpoints outside resuming fit: evaluation from a checkpoint (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

WORKER = Path(__file__).parent / "scripts" / "checkpoint_worker.py"


def results(outdir: Path, name: str, world: int) -> list[dict]:
    return [json.loads((outdir / f"{name}-rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.distributed
def test_validate_and_test_from_a_several_engine_checkpoint_load_every_saved_engine(tmp_path):
    """ZeRO-3 actor + critic + frozen child: validate/test(ckpt_path=...) score the saved weights, not fresh ones."""
    run_distributed(WORKER, "evaluate", tmp_path, "--stage", "3", nprocs=2)
    for out in results(tmp_path, "evaluate-stage3", 2):
        assert out["validate_best"] == pytest.approx(out["best_score"], abs=1e-6)
        assert out["test_best"] == pytest.approx(out["best_score"], abs=1e-6)
        # a fresh module validated from the checkpoint scores what the best epoch scored, not its random start
        assert out["fresh_from_ckpt"] == pytest.approx(out["best_score"], abs=1e-6)
        assert abs(out["fresh_untrained"] - out["best_score"]) > 1e-3
