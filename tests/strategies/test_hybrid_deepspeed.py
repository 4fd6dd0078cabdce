"""HybridDeepSpeedStrategy on CPU/gloo: drop-in training, several engines, exact resume, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer

import lightning_rlhf  # noqa: F401
from lightning_rlhf.strategies import HybridDeepSpeedStrategy
from lightning_rlhf.strategies.checkpoint_folder import MARKER_FILE, consolidated_state_dict, read_marker, staging_path
from tests.helpers.distributed import run_distributed, run_once

WORKER = Path(__file__).parent / "scripts" / "strategy_worker.py"


def results(outdir: Path, name: str, world: int) -> list[dict]:
    return [json.loads((outdir / f"{name}-rank{r}.json").read_text()) for r in range(world)]


def test_registered_presets_and_repeated_import_are_harmless():
    from lightning.pytorch.strategies import StrategyRegistry

    subprocess.run([sys.executable, "-c", "import lightning_rlhf, importlib; importlib.reload(lightning_rlhf)"], check=True)
    for name, stage in [("hybrid_deepspeed", 3), ("hybrid_deepspeed_stage_2", 2), ("hybrid_deepspeed_stage_3_offload", 3)]:
        strategy = StrategyRegistry.get(name)
        assert isinstance(strategy, HybridDeepSpeedStrategy) and strategy.zero_stage == stage
    offload = StrategyRegistry.get("hybrid_deepspeed_stage_3_offload").config["zero_optimization"]
    assert offload["offload_param"]["device"] == "cpu" and offload["offload_optimizer"]["device"] == "cpu"
    trainer = Trainer(strategy="hybrid_deepspeed", accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, HybridDeepSpeedStrategy)


def test_lightningcli_builds_it_from_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=HybridDeepSpeedStrategy)
    cfg = parser.parse_object({"strategy": {"class_path": "lightning_rlhf.strategies.HybridDeepSpeedStrategy",
                                            "init_args": {"stage": 2, "inference_tp_size": 2}}})
    strategy = parser.instantiate_classes(cfg).strategy
    assert strategy.zero_stage == 2 and strategy.inference_tp_size == 2


def test_constructor_errors_name_the_option():
    with pytest.raises(TypeError, match="unexpected keyword argument 'inference_tp'"):
        HybridDeepSpeedStrategy(inference_tp=2)
    with pytest.raises(ValueError, match="inference_tp_size must be positive"):
        HybridDeepSpeedStrategy(inference_tp_size=0)
    with pytest.raises(ValueError, match="generation_backend"):
        HybridDeepSpeedStrategy(generation_backend="sglang")


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fp16_on_cpu_is_a_clear_error():
    trainer = Trainer(strategy="hybrid_deepspeed", accelerator="cpu", devices=1, precision="16-mixed", logger=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    with pytest.raises(ValueError, match="precision='16-mixed' is not supported on CPU"):
        trainer.fit(_Tiny(), loader)


def test_inference_tp_size_must_divide_world_size(tmp_path):
    script = tmp_path / "tp.py"
    script.write_text(
        "import torch, lightning_rlhf\nfrom lightning import Trainer\n"
        "from lightning_rlhf.strategies import HybridDeepSpeedStrategy\n"
        "from tests.strategies.test_hybrid_deepspeed import _Tiny\n"
        "t = Trainer(strategy=HybridDeepSpeedStrategy(inference_tp_size=2), accelerator='cpu', devices=1, logger=False)\n"
        "t.fit(_Tiny(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2))\n"
    )
    with pytest.raises(AssertionError, match=r"inference_tp_size=2 must divide the world size 1"):
        run_distributed(script, nprocs=1, timeout=300)


def test_checkpoint_loading_rejects_missing_and_incomplete_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_marker(tmp_path / "nope.ckpt")
    partial = tmp_path / "half.ckpt"
    staging_path(partial).mkdir()
    with pytest.raises(FileNotFoundError, match="the save was interrupted"):
        read_marker(partial)
    partial.mkdir()
    with pytest.raises(ValueError, match=f"incomplete or corrupt: it has no {MARKER_FILE}"):
        read_marker(partial)
    (partial / MARKER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_marker(partial)
    (tmp_path / "file.ckpt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        read_marker(tmp_path / "file.ckpt")


@pytest.mark.distributed
def test_dropin_single_process_matches_a_raw_deepspeed_loop_at_stages_0_2_3(tmp_path):
    run_distributed(WORKER, "dropin", tmp_path, "--stages", "0", "2", "3", nprocs=1)
    (out,) = results(tmp_path, "dropin", 1)
    for stage in ("stage0", "stage2", "stage3"):
        assert out[stage]["losses"] == pytest.approx(out[stage]["raw_losses"], abs=1e-6)
        assert sum(out[stage]["losses"][-2:]) < sum(out[stage]["losses"][:2])
    assert out["stage3"]["sharded_at_init"] is True  # configure_model ran under deepspeed.zero.Init
    assert out["stage0"]["sharded_at_init"] is False
    # one rank at ZeRO-0: the no-op gradient all-reduce is skipped, and the losses above still equal DeepSpeed's
    assert [out[s]["allreduce_skipped"] for s in ("stage0", "stage2", "stage3")] == [True, False, False]


@pytest.mark.distributed
def test_transformers_from_config_in_configure_model_is_partitioned_under_zero3():
    proc = run_distributed(Path(__file__).parent / "scripts" / "hf_from_config.py", nprocs=1)
    assert "partitioned True" in proc.stdout and "ok 2" in proc.stdout


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory) -> Path:
    """``dropin`` at ZeRO 0/2/3 and ``two_engines`` (ZeRO-3, fp32) on 2 ranks, in one launch per session (the
    start-up of two DeepSpeed processes is paid once): ``<root>/<scenario>-rank<R>.json``."""
    return run_once(tmp_path_factory, "strategy_two_ranks", lambda root: run_distributed(
        WORKER, "dropin,two_engines", root, "--stages", "0", "2", "3", nprocs=2, timeout=900))


@pytest.mark.distributed
def test_dropin_two_processes_by_registered_name(two_rank_runs):
    ranks = results(two_rank_runs, "dropin", 2)
    for stage in ("stage0", "stage2", "stage3"):
        losses = [r[stage]["losses"] for r in ranks]
        assert all(len(l) == 6 for l in losses)
        # every stage sees the same data and parameters, so the trajectories agree across stages
        assert losses[0] == pytest.approx(ranks[0]["stage0"]["losses"], abs=1e-5)
        assert sum(losses[0][-2:]) < sum(losses[0][:2])
        assert not any(r[stage]["allreduce_skipped"] for r in ranks)  # two data-parallel ranks must reduce


@pytest.mark.distributed
@pytest.mark.parametrize(("nprocs", "precision"), [(1, "bf16-mixed"), (2, "32-true")])
def test_two_engines_learn_and_frozen_child_is_untouched(request, tmp_path, nprocs, precision):
    if nprocs == 2:  # ZeRO-3 fp32 on 2 ranks: in the shared launch
        tmp_path = request.getfixturevalue("two_rank_runs")
    else:
        run_distributed(WORKER, "two_engines", tmp_path, "--stages", "3", "--precision", precision, nprocs=nprocs)
    for out in results(tmp_path, "two_engines", nprocs):
        assert out["engines"] == ["actor", "critic", "frozen"]
        assert out["frozen_identical"] is True
        actor = [l[0] for l in out["losses"]]
        critic = [l[1] for l in out["losses"]]
        assert sum(actor[-2:]) < sum(actor[:2]) and sum(critic[-2:]) < sum(critic[:2])
        assert out["actor_lr"] == pytest.approx(1e-2 * 0.5 ** 2)  # StepLR(2, 0.5) stepped 5 times


@pytest.mark.distributed
def test_resume_in_a_fresh_process_continues_exactly(tmp_path):
    for phase in ("full", "first", "second"):
        run_distributed(WORKER, "resume", tmp_path, "--phase", phase, "--stages", "3", nprocs=2)
    for rank in range(2):
        full = json.loads((tmp_path / f"resume-full-rank{rank}.json").read_text())["losses"]
        first = json.loads((tmp_path / f"resume-first-rank{rank}.json").read_text())["losses"]
        second = json.loads((tmp_path / f"resume-second-rank{rank}.json").read_text())
        assert first == full[:2]
        resumed, uninterrupted = sum(second["losses"], []), sum(full[2:], [])
        assert len(resumed) == 4 and resumed == pytest.approx(uninterrupted, abs=1e-6)
        assert second["actor_lr"] == pytest.approx(1e-2 * 0.5 ** 2)
        assert second["critic_lr"] == pytest.approx(5e-3 * 0.1 ** 2), "every engine's param groups are restored"
    # the offline consolidation of one engine equals the live parameters at the moment of saving
    first = json.loads((tmp_path / "resume-first-rank0.json").read_text())
    state = consolidated_state_dict(second["ckpt"], "actor")
    assert sorted(state) == sorted(first["actor"])
    for name, values in first["actor"].items():
        assert state[name].flatten().tolist() == pytest.approx(values, abs=1e-7)
    with pytest.raises(ValueError, match="has no engine 'reference'"):
        consolidated_state_dict(second["ckpt"], "reference")
    marker = read_marker(Path(second["ckpt"]))
    assert marker["engines"] == ["actor", "critic"] and marker["zero_stage"] == 3 and marker["world_size"] == 2
    assert not staging_path(Path(second["ckpt"])).exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_hung_rank_makes_the_other_fail_within_the_timeout_and_is_stopped():
    """Lightning's own launcher (plain ``python script.py``), rank 1 hangs: rank 0 errors at the timeout, no hang."""
    import os
    import time

    script = Path(__file__).parent / "scripts" / "dying_rank.py"
    # Trainers run earlier in this pytest process leave RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in os.environ; with
    # them the script would believe it was already launched and never start rank 1.
    launched = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launched}
    env.update(OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    # the timeout also bounds the rendezvous, and the launcher starts rank 1 from scratch (imports ~30 s on 2 cores)
    proc = subprocess.Popen([sys.executable, str(script), "90", "hang"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode != 0, output[-3000:]
    assert "rank 1 hangs" in output and "Timed out waiting 90000ms" in output, output[-3000:]
    assert time.monotonic() - start < 400
    leftover = subprocess.run(["pgrep", "-f", f"{script.name} 90 hang"], capture_output=True, text=True).stdout
    assert leftover.strip() == "", f"rank processes left running: {leftover}"


@pytest.mark.distributed
def test_validate_before_fit_on_cpu_for_one_and_several_engines(tmp_path):
    extensions = tmp_path / "torch_extensions"  # empty: whatever DeepSpeed compiles for these runs shows up here
    proc = run_distributed(Path(__file__).parent / "scripts" / "validate_worker.py", nprocs=1,
                           env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    for name in ("R", "T"):
        assert f"fit-after-validate ok {name}" in proc.stdout
        assert f"{name} [{{'v': " in proc.stdout
    # DeepSpeed's shared-memory all-reduce op (about 2 minutes of compiling on 2 cores) is never used on CPU
    assert not (extensions / "deepspeed_shm_comm").exists(), "DeepSpeed compiled its unused shm op"


def test_cpu_bf16_detection_reads_the_cpu_flags(tmp_path):
    from lightning_rlhf.strategies.environment import cpu_has_bf16

    cases = {"flags\t\t: fpu sse2 avx2 fma\n": False, "flags\t\t: fpu avx2 avx512f avx512_bf16\n": True,
             "flags\t\t: fpu amx_tile amx_bf16\n": True, "Features\t: fp asimd bf16 i8mm\n": True,
             "Features\t: fp asimd\n": False, "processor\t: 0\n": True}  # no flag line: unknown, no warning
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"cpuinfo{i}"
        path.write_text(text)
        assert cpu_has_bf16(str(path)) is expected, text
    assert cpu_has_bf16(str(tmp_path / "missing")) is True


@pytest.mark.distributed
def test_one_optimizer_and_a_frozen_child_get_the_same_engines_in_fit_and_validate(tmp_path):
    """Manual optimization, one optimizer, two children: one layout in both stages, so validate(ckpt_path) loads."""
    proc = run_distributed(Path(__file__).parent / "scripts" / "layout_worker.py", tmp_path, nprocs=1)
    lines = proc.stdout.splitlines()
    assert "fit engines ['policy', 'reference']" in lines
    assert "validate engines ['policy', 'reference']" in lines
    (scores,) = [line.split() for line in lines if line.startswith("validate from checkpoint")]
    assert float(scores[3]) == pytest.approx(float(scores[5]), abs=1e-6)
    (error,) = [line for line in lines if line.startswith("config optimizer:")]
    assert error.startswith("config optimizer: ValueError The DeepSpeed config sets 'optimizer'"), error


@pytest.mark.distributed
def test_offload_frozen_models_partitions_the_frozen_children_on_the_cpu_under_zero3(tmp_path):
    """Built in frozen_models(strategy), a frozen child is partitioned by a zero.Init of its own with remote_device
    "cpu" (on a CUDA host its partitions never touch the GPU), its embeddings too when resized for the tokenizer; one
    built outside stays with the training zero.Init."""
    run_distributed(Path(__file__).parent / "scripts" / "frozen_worker.py", tmp_path, nprocs=2)
    for out in results(tmp_path, "frozen", 2):
        # its own zero.Init, told remote_device="cpu"; the training one has the local
        # device (torch.device: cuda:N on a GPU host, cpu here, so the partition device alone proves nothing here)
        assert out["reference"]["remote_device"] == ["str:cpu"], out["reference"]
        assert not out["reference"]["same_init_as_policy"] and out["reference"]["partition_devices"] == ["cpu"]
        assert out["policy"]["remote_device"] == ["device:cpu"]
        assert out["elsewhere"]["same_init_as_policy"], "built outside frozen_models: the training zero.Init"
        if out["rank"] == 0:  # ...and said so (it was silent): naming it, not the reference built inside
            (warning,) = out["offload_warnings"]
            assert "frozen elsewhere built outside `with frozen_models(strategy):`" in warning, warning
        assert out["reference"]["partitioned"] and out["policy"]["partitioned"]
        # the embeddings of a frozen model resized for a tokenizer without pad: re-partitioned by the offloading
        # zero.Init too (they went to the training config's device before)
        assert out["resized_rows"] == 40 and out["resized_embedding"]["remote_device"] == ["str:cpu"], out
        assert set(out["resized"]["remote_device"]) == {"str:cpu"}, out["resized"]
        assert out["offload"] == {"reference": True, "elsewhere": True, "resized": True}
        assert out["reference_weights_intact"] and out["reference_output_matches"]
        assert len(out["losses"]) == 3 and all(l == l for l in out["losses"])


def test_a_tensor_parallel_group_never_spans_nodes(monkeypatch):
    from lightning_rlhf.strategies.environment import check_tensor_parallel_layout

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    check_tensor_parallel_layout(2, 4, num_nodes=2)  # ranks 0-1 on node 0, 2-3 on node 1: groups stay inside
    with pytest.raises(ValueError, match=r"inference_tp_size=4 would put a tensor-parallel group across nodes: each "
                                         r"node runs 2 processes \(4 ranks on 2 nodes\).*one of \[1, 2\]"):
        check_tensor_parallel_layout(4, 4, num_nodes=2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # the launcher's count wins over world size / nodes
    with pytest.raises(ValueError, match="each node runs 2 processes"):
        check_tensor_parallel_layout(4, 8, num_nodes=1)
    with pytest.raises(ValueError, match="must divide the world size 4"):
        check_tensor_parallel_layout(3, 4, num_nodes=1)


@pytest.mark.distributed
def test_cpu_accelerator_keeps_zero_partitions_on_the_cpu_when_deepspeed_picked_cuda(tmp_path):
    """DS_ACCELERATOR=cuda stands in for a CUDA host, where DeepSpeed picks CUDA on its own; accelerator='cpu' wins."""
    run_distributed(WORKER, "dropin", tmp_path, "--stages", "3", nprocs=1, env={"DS_ACCELERATOR": "cuda"})
    (out,) = results(tmp_path, "dropin", 1)
    assert out["stage3"]["sharded_at_init"] is True
    assert out["stage3"]["losses"] == pytest.approx(out["stage3"]["raw_losses"], abs=1e-6)


@pytest.mark.distributed
def test_manual_backward_with_the_optimizer_frees_the_graph_under_one_engine():
    """``manual_backward(loss, opt)`` with one engine: the optimizer is not handed to DeepSpeed's backward as
    ``retain_graph`` (which kept every step's graph alive), and the step still trains."""
    proc = run_distributed(Path(__file__).parent / "scripts" / "manual_backward_worker.py", nprocs=1)
    assert "graph freed after manual_backward: True" in proc.stdout, proc.stdout[-2000:]
    assert "weights moved: True" in proc.stdout


def test_generation_settings_that_cannot_work_are_refused_before_any_model_loads(tiny_model_factory, tmp_path):
    """generation_backend='deepspeed' under transformers 5, and heads that inference_tp_size cannot split, failed
    only at the first rollout, after every model had loaded; both are refused at construction / engine setup."""
    from lightning.pytorch import LightningModule
    from transformers import AutoModelForCausalLM

    from lightning_rlhf.strategies.deepspeed_inference import kernels_work_with_installed_transformers
    from lightning_rlhf.strategies.tp_plans import check_generation_layout

    if not kernels_work_with_installed_transformers():
        with pytest.raises(RuntimeError, match="does not work with transformers .*generation_backend='native'"):
            HybridDeepSpeedStrategy(generation_backend="deepspeed")
    module = LightningModule()
    module.actor = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", hidden_size=48, num_heads=3))
    module.actor.config.num_key_value_heads = 3
    check_generation_layout(module, 3, None)  # 3 heads over 3 ranks split
    with pytest.raises(ValueError, match=r"LightningModule.actor cannot generate split over inference_tp_size=2: "
                                         r"llama config.num_attention_heads=3 is not divisible"):
        check_generation_layout(module, 2, None)
