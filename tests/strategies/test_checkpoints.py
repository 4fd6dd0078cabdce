"""HybridDeepSpeedStrategy checkpoints beyond resuming its own fit: evaluation from a checkpoint, Lightning's
DeepSpeedStrategy checkpoints (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_rlhf.strategies.checkpoint import MARKER_FILE, read_marker
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


@pytest.mark.distributed
def test_a_lightning_deepspeed_checkpoint_resumes_after_switching_the_strategy_string(tmp_path):
    """Written by DeepSpeedStrategy's own save (no marker), resumed by "hybrid_deepspeed": the run continues exactly."""
    run_distributed(WORKER, "plain", tmp_path, "--stage", "3", nprocs=2)
    for out in results(tmp_path, "plain-stage3", 2):
        assert MARKER_FILE not in out["files"] and "latest" in out["files"]
        assert out["first"] == out["full"][:4]
        assert len(out["second"]) == 4 and out["second"] == pytest.approx(out["full"][4:], abs=1e-6)
    # the marker's stand-in records the ranks that saved it: resuming on another number is refused up front
    with pytest.raises(AssertionError, match=r"saved by 2 ranks at ZeRO-3, this run has 1: the optimizer shards"):
        run_distributed(WORKER, "resume", tmp_path, "--stage", "3", "--ckpt", out["ckpt"], nprocs=1)


def _plain_checkpoint(root: Path, stage: int, world: int, drop: str | None = None) -> Path:
    """A directory laid out as DeepSpeed writes it for Lightning's DeepSpeedStrategy (tag "checkpoint")."""
    tag = root / "plain.ckpt" / "checkpoint"
    tag.mkdir(parents=True)
    (root / "plain.ckpt" / "latest").write_text("checkpoint")
    states = "zero_pp_rank_{}_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
    torch.save({"dp_world_size": world, "ds_config": {"zero_optimization": {"stage": stage}}}, tag / states.format(0))
    names = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)] if stage else []
    names += [states.format(r) for r in range(1, world)] if stage == 3 else []
    for name in names:
        (tag / name).write_bytes(b"shard")
    if drop:
        (tag / drop).unlink()
    return root / "plain.ckpt"


def test_what_is_checked_in_a_lightning_deepspeed_checkpoint_instead_of_the_marker(tmp_path):
    marker = read_marker(_plain_checkpoint(tmp_path / "ok", 3, 2), accept_lightning_deepspeed=True)
    assert marker["layout"] == "single" and marker["zero_stage"] == 3 and marker["world_size"] == 2
    with pytest.raises(ValueError, match=f"incomplete or corrupt: it has no {MARKER_FILE}"):
        read_marker(tmp_path / "ok" / "plain.ckpt")  # only loading accepts it; consolidation keeps the marker rule
    missing = _plain_checkpoint(tmp_path / "shard", 2, 2, drop="zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with pytest.raises(ValueError, match=r"ZeRO-2, 2 ranks\) is incomplete: .* lacks \['zero_pp_rank_1_mp_rank_00"):
        read_marker(missing, accept_lightning_deepspeed=True)
    no_states = _plain_checkpoint(tmp_path / "states", 3, 2, drop="zero_pp_rank_0_mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match="holds no rank-0 model states"):
        read_marker(no_states, accept_lightning_deepspeed=True)
    (tmp_path / "ok" / "plain.ckpt" / "latest").write_text("other")
    with pytest.raises(ValueError, match="names tag 'other'"):
        read_marker(tmp_path / "ok" / "plain.ckpt", accept_lightning_deepspeed=True)
