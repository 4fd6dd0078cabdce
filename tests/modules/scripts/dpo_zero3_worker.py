"""Worker for the DPO ZeRO-3 test; run by torchrun (2 ranks, gloo, CPU).

Usage: dpo_zero3_worker.py MODES MODEL_DIR OUTDIR, MODES a comma-separated list of ``model``, ``adapters_off``,
``precomputed``. For each mode (one after the other in the same two processes, so the start-up is paid once): validates,
trains a few steps under ``HybridDeepSpeedStrategy(stage=3)`` on the built-in task's pairs with HFExportCallback,
validates again, and rank 0 compares the module's log-probs with the exported folder loaded by plain
``from_pretrained``. Each rank writes OUTDIR/<mode>/result-rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from transformers import AutoModelForCausalLM, AutoTokenizer

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.data import PreferenceDataModule
from lightning_rlhf.models import LoraArgs
from lightning_rlhf.modules import DPOModule, OptimizerArgs
from lightning_rlhf.strategies import HybridDeepSpeedStrategy


def _partitioned(module: torch.nn.Module) -> dict[str, object]:
    """Whether every parameter is a ZeRO-3 one, the elements of this rank's shards, the full count, and the elements
    gathered right now (ZeRO-3 may keep a forward-only module gathered between steps when it is soon reused)."""
    params = list(module.parameters())
    return {"partitioned": all(hasattr(p, "ds_id") for p in params), "count": len(params),
            "shard_numel": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "local_numel": sum(p.numel() for p in params)}


class Inspect(Callback):
    """At the end of fit: placement of policy and reference, and the module's log-probs vs the exported folder's."""

    def __init__(self, batch: dict[str, torch.Tensor], export_dir: Path, out: Path) -> None:
        self.batch, self.export_dir, self.out = batch, export_dir, out
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        result = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "policy": _partitioned(pl_module.model),
                  "reference": _partitioned(pl_module.reference) if pl_module.reference is not None else None,
                  "cache_size": len(pl_module.reference_cache), "losses": self.losses,
                  "global_step": trainer.global_step}
        pl_module.eval()
        with torch.no_grad():
            mine = torch.stack(pl_module.pair_logps(pl_module.model, self.batch))
            if trainer.is_global_zero:
                loaded = AutoModelForCausalLM.from_pretrained(self.export_dir)
                theirs = torch.stack(pl_module.pair_logps(loaded, self.batch))
                result["max_abs_diff"] = (mine - theirs).abs().max().item()
        result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"result-rank{trainer.global_rank}.json").write_text(json.dumps(result))


MODES = ("model", "adapters_off", "precomputed")


def run(mode: str, model_dir: str, out: Path) -> None:
    """One mode's validate -> fit -> validate; writes ``out/result-rank<R>.json``."""
    seed_everything(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = PreferenceDataModule(tokenizer, stage="reward", task_size=300, batch_size=4, eval_fraction=0.1,
                                max_length=32, max_prompt_length=16, cache_dir=str(out / "cache"))
    data.setup()
    batch = next(iter(data.val_dataloader()))
    module = DPOModule(model_dir, lora=LoraArgs(rank=4) if mode == "adapters_off" else None,
                       precompute_reference=mode == "precomputed",
                       optimizer=OptimizerArgs(learning_rate=1e-2, warmup_steps=1))
    trainer = Trainer(
        strategy=HybridDeepSpeedStrategy(stage=3), accelerator="cpu", devices=2, max_steps=4,
        limit_val_batches=3, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[HFExportCallback(dirpath=str(out / "hf")), Inspect(batch, out / "hf" / "final", out)],
    )
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]
    path = out / f"result-rank{trainer.global_rank}.json"
    result = json.loads(path.read_text())
    result.update(before=before, after=after)
    path.write_text(json.dumps(result))


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
