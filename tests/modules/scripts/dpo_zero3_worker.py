"""Worker for the DPO ZeRO-3 test; run by torchrun (2 ranks, gloo, CPU).

Usage: dpo_zero3_worker.py MODES MODEL_DIR OUTDIR, MODES a comma-separated list of ``model``, ``adapters_off``,
``precomputed``, ``model-offload`` (``model`` with ``offload_frozen_models``, gradient clipping and accumulation 2,
then a resume from a checkpoint written at the end of fit). For each mode (one after the other in the same two processes, so the start-up is paid once): validates,
trains a few steps under ``HybridDeepSpeedStrategy(stage=3)`` on the built-in task's pairs with HFExportCallback,
validates again, and rank 0 compares the module's log-probs with the exported folder loaded by plain
``from_pretrained``. Each rank writes OUTDIR/<mode>/result-rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.models import LoraArgs
from lightning_rlhf.modules import DPOModule, OptimizerArgs
from lightning_rlhf.modules.optim import parameter_groups
from lightning_rlhf.strategies import HybridDeepSpeedStrategy


def _partitioned(module: torch.nn.Module) -> dict[str, object]:
    """Whether every parameter is a ZeRO-3 one, the elements of this rank's shards, the full count, and the elements
    gathered right now (ZeRO-3 may keep a forward-only module gathered between steps when it is soon reused)."""
    params = list(module.parameters())
    return {"partitioned": all(hasattr(p, "ds_id") for p in params), "count": len(params),
            "shard_numel": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "local_numel": sum(p.numel() for p in params)}


def _init_of(param: torch.nn.Parameter) -> object:
    """The ``zero.Init`` that partitioned ``param`` (DeepSpeed's ``param.partition`` closes over it)."""
    (init,) = {id(c.cell_contents): c.cell_contents for c in param.partition.__closure__
               if type(c.cell_contents).__name__ == "Init"}.values()
    return init


def _engines(trainer: Trainer, pl_module: DPOModule, model_dir: str, batch: dict) -> dict[str, object]:
    """Which engines the strategy built, where the reference's partitions were created, whether it is unchanged."""
    engines = trainer.strategy.engines
    result: dict[str, object] = {"engines": sorted(engines)}
    if "reference" in engines:
        ref, policy = engines["reference"], engines["model"]
        result["reference_offload"] = ref.zero_offload_param() is not None
        result["reference_in_policy_engine"] = any(p is next(pl_module.reference.parameters())
                                                   for p in policy.module.parameters())
        result["policy_config"] = {k: policy.config.get(k) for k in ("gradient_clipping", "gradient_accumulation_steps")}
    inits = {id(_init_of(p)): _init_of(p) for p in pl_module.reference.parameters()}
    result["reference_remote_device"] = sorted(f"{type(i.remote_device).__name__}:{i.remote_device}"
                                               for i in inits.values())
    result["reference_own_init"] = not set(inits) & {id(_init_of(p)) for p in pl_module.model.parameters()}
    result["reference_partition_devices"] = sorted({p.ds_tensor.device.type for p in pl_module.reference.parameters()})
    with torch.no_grad():  # collective under ZeRO-3; the frozen reference must still be the starting model
        mine = torch.stack(pl_module.pair_logps(pl_module.reference, batch))
        fresh = torch.stack(pl_module.pair_logps(AutoModelForCausalLM.from_pretrained(model_dir).eval(), batch))
    result["reference_max_abs_diff"] = (mine - fresh).abs().max().item()
    # AdamW groups of the partitioned policy (as a resumed run builds them): weights decay, norms do not
    result["policy_weight_decays"] = [g["weight_decay"] for g in parameter_groups(pl_module.model,
                                                                                  OptimizerArgs(weight_decay=0.1))]
    return result


class Losses(Callback):
    """Each micro-batch's training loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class Inspect(Losses):
    """At the end of fit: placement of policy and reference, and the module's log-probs vs the exported folder's."""

    def __init__(self, batch: dict[str, torch.Tensor], export_dir: Path, out: Path,
                 model_dir: Optional[str] = None) -> None:
        super().__init__()
        self.batch, self.export_dir, self.out, self.model_dir = batch, export_dir, out, model_dir

    def on_fit_end(self, trainer, pl_module) -> None:
        result = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "policy": _partitioned(pl_module.model),
                  "reference": _partitioned(pl_module.reference) if pl_module.reference is not None else None,
                  "cache_size": len(pl_module.reference_cache), "losses": self.losses,
                  "global_step": trainer.global_step}
        if self.model_dir is not None:
            result.update(_engines(trainer, pl_module, self.model_dir, self.batch))
        pl_module.eval()
        with torch.no_grad():
            mine = torch.stack(pl_module.pair_logps(pl_module.model, self.batch))
            if trainer.is_global_zero:
                loaded = AutoModelForCausalLM.from_pretrained(self.export_dir)
                theirs = torch.stack(pl_module.pair_logps(loaded, self.batch))
                result["max_abs_diff"] = (mine - theirs).abs().max().item()
        result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"result-rank{trainer.global_rank}.json").write_text(json.dumps(result))


MODES = ("model", "adapters_off", "precomputed", "model-offload")


def run(mode: str, model_dir: str, out: Path) -> None:
    """One mode's validate -> fit -> validate; writes ``out/result-rank<R>.json``."""
    seed_everything(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = RLHFDataModule(tokenizer, stage="reward", task_size=300, batch_size=4, eval_fraction=0.1,
                                max_length=32, max_prompt_length=16, cache_dir=str(out / "cache"))
    data.setup()
    batch = next(iter(data.val_dataloader()))
    offload = mode == "model-offload"
    module = DPOModule(model_dir, lora=LoraArgs(rank=4) if mode == "adapters_off" else None,
                       precompute_reference=mode == "precomputed",
                       optimizer=OptimizerArgs(learning_rate=1e-2, warmup_steps=1))
    trainer = Trainer(
        strategy=HybridDeepSpeedStrategy(stage=3, offload_frozen_models=offload), accelerator="cpu", devices=2,
        max_steps=4, gradient_clip_val=1.0 if offload else None, accumulate_grad_batches=2 if offload else 1,
        limit_val_batches=3, num_sanity_val_steps=0, logger=False, enable_checkpointing=offload,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[HFExportCallback(dirpath=str(out / "hf")),
                   Inspect(batch, out / "hf" / "final", out, model_dir if mode.startswith("model") else None)]
        + ([ModelCheckpoint(dirpath=out, filename="ckpt", every_n_train_steps=4)] if offload else []),
    )
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    path = out / f"result-rank{trainer.global_rank}.json"
    result = json.loads(path.read_text())
    result.update(before=before, after=after)
    if offload:
        result.update(resume(module, data, out))
    path.write_text(json.dumps(result))


def resume(module: DPOModule, data: RLHFDataModule, out: Path) -> dict[str, object]:
    """Resume the checkpoint of fit's last step in a new trainer for one more step; what was saved and the step."""
    marker = json.loads((out / "ckpt.ckpt" / "lightning_rlhf_checkpoint.json").read_text())
    saved = sorted(p.name for p in (out / "ckpt.ckpt").rglob("*model_states.pt"))
    frozen_keys = set()
    for path in (out / "ckpt.ckpt").rglob("*model_states.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        frozen_keys |= set(state.get("frozen_param_fragments") or {}) | set(state.get("module") or {})
    recorder = Losses()
    resumed = Trainer(strategy=HybridDeepSpeedStrategy(stage=3, offload_frozen_models=True), accelerator="cpu",
                      devices=2, max_steps=5, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      gradient_clip_val=1.0, accumulate_grad_batches=2, callbacks=[recorder])
    resumed.fit(DPOModule(module.model_path, optimizer=OptimizerArgs(learning_rate=1e-2, warmup_steps=1)),
                datamodule=data, ckpt_path=out / "ckpt.ckpt")
    return {"marker": marker, "model_states": saved, "reference_keys_saved": sorted(k for k in frozen_keys
                                                                                    if "reference" in k),
            "resumed_step": resumed.global_step, "resumed_losses": recorder.losses,
            "resumed_engines": sorted(resumed.strategy.engines)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("modes", help=f"comma-separated, of {MODES}")
    parser.add_argument("model_dir")
    parser.add_argument("outdir")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"modes must be among {MODES}, got {modes}")
    for mode in modes:
        (Path(args.outdir) / mode).mkdir(parents=True, exist_ok=True)
        run(mode, args.model_dir, Path(args.outdir) / mode)


if __name__ == "__main__":
    main()
