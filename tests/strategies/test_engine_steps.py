"""The update HybridDeepSpeedStrategy applies equals a plain PyTorch loop: clipping, accumulation, offload.

Each scenario runs real DeepSpeed engines under torchrun (gloo, CPU) in ``scripts/optimizer_worker.py``, which
compares the trained weights with the same steps written in plain PyTorch (SGD lr 1, ``clip_grad_norm_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed, run_once

WORKER = Path(__file__).parent / "scripts" / "optimizer_worker.py"
TOLERANCE = 1e-5


def run(tmp_path: Path, scenario: str, *args: str, nprocs: int = 1) -> dict:
    run_distributed(WORKER, scenario, tmp_path, *args, nprocs=nprocs, timeout=900)
    return json.loads((tmp_path / f"{scenario}.json").read_text())


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory) -> Path:
    """The ``clip`` and ``accum`` scenarios (one process each) in one launch per session, so the start-up of a
    DeepSpeed process is paid once: ``<root>/<scenario>.json``."""
    return run_once(tmp_path_factory, "engine_steps_one_process", lambda root: run_distributed(
        WORKER, "clip,accum", root, "--stages", "0", "2", "3", nprocs=1, timeout=900))


@pytest.mark.distributed
def test_module_clip_settings_become_each_engines_gradient_clipping_at_stages_0_2_3(one_process_runs):
    out = json.loads((one_process_runs / "clip.json").read_text())
    for stage in (0, 2, 3):
        two = out[f"two_engines_stage{stage}"]
        assert two["unclipped_would_differ"] > 1e-2  # the clip bites, so equality below means it was applied
        # the actor's engine clips at the module's max_grad_norm, the critic's at its engine_configs override
        assert two["actor"] < TOLERANCE and two["critic"] < TOLERANCE, (stage, two)
        assert out[f"single_auto_stage{stage}"]["model"] < TOLERANCE, stage  # Trainer(gradient_clip_val)
        assert out[f"single_manual_stage{stage}"]["model"] < TOLERANCE, stage  # manual module's max_grad_norm


@pytest.mark.distributed
def test_per_engine_gradient_accumulation_applies_the_mean_of_the_micro_batch_gradients_at_stages_0_2_3(
        one_process_runs):
    out = json.loads((one_process_runs / "accum.json").read_text())
    for stage in (0, 2, 3):
        res = out[f"stage{stage}"]
        assert res["critic_untouched_after_first"] == 0.0, (stage, res)  # no update before the boundary
        # SGD lr 1 over two micro-batches: w - (g1 + g2) / 2, not w - g2 / 2 (the first gradient lost)
        assert res["critic"] < TOLERANCE, (stage, res)
        assert res["actor"] < TOLERANCE, (stage, res)  # the actor's engine (no accumulation) steps every batch


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cpu_spec(trainer: dict, module: str) -> dict:
    """An example's strategy section adapted to CPU: the same ZeRO and offload settings, bf16 where it asks for
    half precision, the same accumulation."""
    strategy = trainer["strategy"]
    precision = str(trainer.get("precision", "32-true"))
    return {"strategy": strategy if isinstance(strategy, str) else strategy.get("init_args", {}),
            "precision": "bf16-mixed" if "16" in precision else "32-true",
            "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1), "module": module}


def strategy_specs() -> dict[str, dict]:
    """Every registered preset of the package (single model and several engines) and every example's strategy."""
    import yaml
    from lightning.pytorch.strategies import StrategyRegistry

    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    specs = {f"preset {name} {module}": {"strategy": name, "module": module}
             for name, entry in StrategyRegistry.items() if entry["strategy"] is HybridDeepSpeedStrategy
             for module in ("single", "two")}
    for path in sorted(EXAMPLES.glob("*/*.yaml")):
        config = yaml.safe_load(path.read_text())
        steps = {"ppo": config} if "trainer" in config else {s: config.get(s) or {} for s in ("sft", "reward", "ppo")}
        for step, section in steps.items():
            trainer = section.get("trainer") or {}
            if "strategy" in trainer:
                spec = cpu_spec(trainer, "two" if step == "ppo" else "single")
                if spec not in specs.values():
                    specs[f"{path.parent.name}/{path.name} {step}"] = spec
    return specs


@pytest.mark.distributed
def test_every_preset_and_example_strategy_performs_a_real_optimizer_step(tmp_path):
    specs = strategy_specs()
    assert {"preset hybrid_deepspeed_stage_3_offload two", "opt_1.3b_1gpu/pipeline.yaml sft",
            "opt_13b_8gpu/pipeline.yaml ppo"} <= set(specs)
    # two ranks: the 13B recipe's inference_tp_size=2 needs them, and ZeRO partitions the offloaded state over them
    out = run(tmp_path, "presets", "--specs", json.dumps(specs), nprocs=2)
    for name in specs:
        res = out[name]
        assert "error" not in res, f"{name}: {res.get('error')}"
        assert all(change > 0 for change in res["changed"]) and res["finite"], (name, res)
        assert res.get("frozen_unchanged", True), name
        assert res["lrs"] == pytest.approx(res["scheduler_lrs"]), (name, res)  # the schedule reaches the optimizer
        offloaded = "offload" in name or "offload_optimizer" in str(specs[name]["strategy"])
        assert res["optimizers"] == (["DeepSpeedCPUAdam"] if offloaded else ["AdamW"]), (name, res)
    # DeepSpeedCPUAdam applies AdamW's update: the offloaded ZeRO-3 preset moves the weights as the plain one does
    for module in ("single", "two"):
        assert out[f"preset hybrid_deepspeed_stage_3_offload {module}"]["changed"] == pytest.approx(
            out[f"preset hybrid_deepspeed {module}"]["changed"], abs=1e-6)


def test_offloaded_optimizer_becomes_cpu_adam_over_the_same_param_groups_or_a_clear_error():
    import torch

    from lightning_rlhf.strategies.engine_steps import offload_ready_optimizer

    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    adamw = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "lr": 2e-3}],
                              lr=1e-3, betas=(0.9, 0.95))
    cpu_adam = offload_ready_optimizer(adamw, offload)
    assert type(cpu_adam).__name__ == "DeepSpeedCPUAdam" and cpu_adam.adam_w_mode
    assert all(a is b for a, b in zip(cpu_adam.param_groups, adamw.param_groups))  # a scheduler keeps driving it
    assert offload_ready_optimizer(adamw, {"zero_optimization": {"stage": 2}}) is adamw
    assert offload_ready_optimizer(adamw, {**offload, "zero_force_ds_cpu_optimizer": False}) is adamw
    with pytest.raises(ValueError, match="stands in for torch's Adam/AdamW only, not SGD"):
        offload_ready_optimizer(torch.optim.SGD(params, lr=0.1), offload)
    with pytest.raises(ValueError, match="DeepSpeedCPUAdam has no amsgrad"):
        offload_ready_optimizer(torch.optim.AdamW(params, amsgrad=True), offload)


def test_building_cpu_adam_runs_py_cpuinfo_once_per_process(monkeypatch):
    """py-cpuinfo spawns a Python subprocess per call (~1.5 s); DeepSpeed asks twice per DeepSpeedCPUAdam."""
    import cpuinfo
    import torch

    from lightning_rlhf.strategies import engine_steps

    calls = []
    real = cpuinfo.get_cpu_info
    counting = lambda: calls.append(1) or real()  # noqa: E731
    monkeypatch.setattr(cpuinfo, "get_cpu_info", counting)
    monkeypatch.setattr(engine_steps, "_CPU_INFO", {})
    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    for _ in range(2):
        params = [torch.nn.Parameter(torch.ones(3))]
        optimizer = engine_steps.offload_ready_optimizer(torch.optim.AdamW(params, lr=1e-3), offload)
        assert type(optimizer).__name__ == "DeepSpeedCPUAdam"
    assert len(calls) == 1
    assert cpuinfo.get_cpu_info is counting  # restored after each build


def test_a_resumed_cpu_adam_keeps_the_param_group_dicts_the_scheduler_drives():
    """ZeRO restores an offloaded run by calling DeepSpeedCPUAdam.load_state_dict, which in torch replaces every
    param-group dict; the learning-rate scheduler kept writing the module optimizer's old dicts, so the lr stayed at
    the restored value for the rest of the run. The loaded values go into the shared dicts instead."""
    import torch

    from lightning_rlhf.strategies.engine_steps import offload_ready_optimizer

    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    adamw = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(adamw, lambda step: 1.0 - step / 8)
    cpu_adam = offload_ready_optimizer(adamw, offload)
    for _ in range(3):  # the run before the kill
        scheduler.step()
    saved = cpu_adam.state_dict()
    saved["param_groups"][0]["lr"] = 7.0e-4  # the lr at save time, as the checkpoint holds it
    cpu_adam.load_state_dict(saved)
    assert all(a is b for a, b in zip(cpu_adam.param_groups, adamw.param_groups))
    assert cpu_adam.param_groups[0]["lr"] == 7.0e-4  # what was saved is restored...
    scheduler.step()
    assert [group["lr"] for group in cpu_adam.param_groups] == pytest.approx([5.0e-4, 5.0e-4])  # ...and driven on
