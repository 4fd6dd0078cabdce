"""HybridDeepSpeedStrategy checkpoints beyond resuming its own fit: evaluation from a checkpoint, Lightning's
DeepSpeedStrategy checkpoints (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_rlhf.strategies.checkpoint_folder import MARKER_FILE, read_marker
from tests.helpers.distributed import run_distributed, run_once

WORKER = Path(__file__).parent / "scripts" / "checkpoint_worker.py"


def results(outdir: Path, name: str, world: int) -> list[dict]:
    return [json.loads((outdir / f"{name}-rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory) -> Path:
    """The ``evaluate`` and ``plain`` scenarios and the first phase of ``ema``, in one 2-process launch per session
    (the start-up of two DeepSpeed processes is paid once, not per scenario)."""
    return run_once(tmp_path_factory, "checkpoints_zero3", lambda root: run_distributed(
        WORKER, "evaluate,plain,ema", root, "--stage", "3", nprocs=2, timeout=900))


@pytest.mark.distributed
def test_validate_and_test_from_a_several_engine_checkpoint_load_every_saved_engine(zero3_runs):
    """ZeRO-3 actor + critic + frozen child: validate/test(ckpt_path=...) score the saved weights, not fresh ones."""
    for out in results(zero3_runs, "evaluate-stage3", 2):
        assert out["validate_best"] == pytest.approx(out["best_score"], abs=1e-6)
        assert out["test_best"] == pytest.approx(out["best_score"], abs=1e-6)
        # a fresh module validated from the checkpoint scores what the best epoch scored, not its random start
        assert out["fresh_from_ckpt"] == pytest.approx(out["best_score"], abs=1e-6)
        assert abs(out["fresh_untrained"] - out["best_score"]) > 1e-3


@pytest.mark.distributed
def test_a_lightning_deepspeed_checkpoint_resumes_after_switching_the_strategy_string(zero3_runs, tmp_path):
    """Written by DeepSpeedStrategy's own save (no marker), resumed by "hybrid_deepspeed": the run continues exactly."""
    for out in results(zero3_runs, "plain-stage3", 2):
        assert MARKER_FILE not in out["files"] and "latest" in out["files"]
        assert out["first"] == out["full"][:4]
        assert len(out["second"]) == 4 and out["second"] == pytest.approx(out["full"][4:], abs=1e-6)
    # the marker's stand-in records the ranks that saved it: resuming on another number is refused up front
    with pytest.raises(AssertionError, match=r"saved by 2 ranks at ZeRO-3, this run has 1: the optimizer shards"):
        run_distributed(WORKER, "resume", tmp_path, "--stage", "3", "--ckpt", out["ckpt"], nprocs=1)


@pytest.mark.distributed
def test_a_one_engine_checkpoint_into_a_module_split_per_child_says_why_not_and_what_to_do(zero3_runs, tmp_path):
    """A Lightning DeepSpeedStrategy checkpoint holds one engine over the module; under hybrid_deepspeed the module
    gets one engine per child. It was refused as "saved from a different LightningModule"; now the error names
    why the optimizer state cannot carry over and the two ways on."""
    (out, _) = results(zero3_runs, "plain-stage3", 2)
    run_distributed(WORKER, "resume_split", tmp_path, "--stage", "3", "--ckpt", out["ckpt"], nprocs=2)
    for result in results(tmp_path, "resume_split-stage3", 2):
        error = result["error"]
        assert error and "holds one DeepSpeed engine over the whole SplitRegressor (Lightning's DeepSpeedStrategy)" \
            in error, error
        assert "gives each child its own engine (net)" in error and "cannot be re-split" in error
        assert "strategy='deepspeed'" in error and "convert_zero_checkpoint_to_fp32_state_dict" in error


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


@pytest.mark.distributed
def test_each_rank_resumes_its_own_ema_shard_under_zero3(zero3_runs):
    """EMA of the actor's ZeRO-3 partitions (actor + critic engines), 2 ranks, stop and resume in fresh processes:
    every rank gets back its own shard. (A single-engine module already did: DeepSpeed's ZeRO-3 model states are
    per rank and carry Lightning's state; the several-engine layout wrote it once, from rank 0.) The first phase
    ran in the shared launch (``zero3_runs``); the second starts two new processes from its checkpoint."""
    run_distributed(WORKER, "ema", zero3_runs, "--stage", "3", "--phase", "second", nprocs=2)
    saved = results(zero3_runs, "ema-first-stage3", 2)
    restored = results(zero3_runs, "ema-second-stage3", 2)
    assert saved[0]["end"] != saved[1]["end"], "the ranks hold different partitions: the test would prove nothing"
    for rank in range(2):
        assert restored[rank]["start"].keys() == saved[rank]["end"].keys()
        for name, values in saved[rank]["end"].items():
            # a CI run (2026-12-03) once saved a NaN here: the EMA averaged the uninitialised padding of a short
            # ZeRO-3 partition; it now averages the filled part only (models/zero3.py::local_partition)
            assert all(math.isfinite(v) for v in values), (rank, name, values)
            assert restored[rank]["start"][name] == pytest.approx(values, abs=0), (rank, name)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_an_offloaded_run_resumed_in_fresh_processes_follows_the_schedule_and_the_weights(tmp_path, stage):
    """offload_optimizer, warm-up + linear decay over 8 steps, killed at step 4 and resumed in new processes: the lr
    the offloaded optimizer applies, the losses and the final weights equal the uninterrupted run's, step by step.
    Before the fix the resumed optimizer kept the checkpoint's lr (DeepSpeedCPUAdam's load_state_dict replaced the
    param-group dicts the scheduler writes)."""
    for phase in ("full", "first", "second"):
        run_distributed(WORKER, "offload", tmp_path, "--stage", str(stage), "--phase", phase, nprocs=2, timeout=900)
    for rank in range(2):
        full, first, second = (results(tmp_path, f"offload-{phase}-stage{stage}", 2)[rank]
                               for phase in ("full", "first", "second"))
        assert len(full["lrs"]) == 8 and len(set(full["lrs"][2:])) == 6  # the schedule moves at every step
        assert first["lrs"] + second["lrs"] == pytest.approx(full["lrs"], rel=1e-6)
        assert first["losses"] + second["losses"] == pytest.approx(full["losses"], rel=1e-5)
        torch.testing.assert_close(torch.tensor(sum(second["weights"], [])), torch.tensor(sum(full["weights"], [])))


@pytest.mark.distributed
def test_a_checkpoint_folder_that_another_node_cannot_see_is_refused_on_every_rank(tmp_path):
    """Two "nodes" on one machine: node 1 runs in a mount namespace of its own whose checkpoint folder is a tmpfs,
    as node-local storage would be. Rank 0 alone made and renamed ``<ckpt>.partial``, so node 1's shards were never
    published; now every rank stops at the first save, naming the folder, instead of writing a broken checkpoint."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.helpers.distributed import free_port

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a mount namespace (node-local storage on one machine)")
    (tmp_path / "ckpts").mkdir()
    worker = Path(__file__).parent / "scripts" / "node_local_worker.py"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    command = [sys.executable, str(worker), str(tmp_path)]
    node1 = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{tmp_path / "ckpts"}" && exec "$@"', "-", *command]
    ranks = [subprocess.Popen(cmd, env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank, cmd in enumerate([command, node1])]
    logs = [rank.communicate(timeout=600)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), logs
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result-rank{rank}.json").read_text())
        assert result["error"] and "1 rank(s)" in result["error"], (rank, result, logs[rank][-2000:])
        assert "need a file system every node shares" in result["error"]
    assert ("(this rank among them)" in json.loads((tmp_path / "result-rank1.json").read_text())["error"])
    assert json.loads((tmp_path / "result-rank0.json").read_text())["saved"] == []  # no half checkpoint left
