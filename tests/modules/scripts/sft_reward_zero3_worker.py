"""Worker for the SFT / reward ZeRO-3 tests; run by torchrun (2 ranks, gloo, CPU).

Usage: sft_reward_zero3_worker.py CASES MODEL_DIR OUTDIR, CASES a comma-separated list of ``sft``, ``reward``,
``sft-lora``, ``reward-lora``. For each case (one after the other in the same two processes, so the start-up is
paid once): trains a few steps under ``HybridDeepSpeedStrategy(stage=3)`` on the built-in task with
HFExportCallback, then (all ranks, inside fit) runs the module's forward on a fixed batch and rank 0 compares it
with the exported folder loaded by plain ``from_pretrained``. Each rank writes OUTDIR/<case>/result-rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.models import LoraArgs, load_causal_lm, load_value_model, sequence_scores
from lightning_rlhf.modules import OptimizerArgs, RewardModule, SFTModule
from lightning_rlhf.strategies import HybridDeepSpeedStrategy


class CompareWithExport(Callback):
    """After HFExportCallback wrote ``final``: module output vs the exported folder's (rank 0 compares)."""

    def __init__(self, stage: str, export_dir: Path, out: Path) -> None:
        self.stage, self.export_dir, self.out = stage, export_dir, out

    def _outputs(self, pl_module, folder: Path, is_zero: bool, plain: bool = True):
        """(module output, output of ``folder`` loaded without ZeRO on rank 0 else None) on a fixed batch.

        ``plain``: load with ``AutoModel*.from_pretrained``; else with the library's loader (which gives a
        causal-LM folder the reward model's zero-initialised head).
        """
        ids = torch.randint(4, 200, (2, 12), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            mine = pl_module(ids, mask)
            theirs = None
            if is_zero:
                if plain:
                    cls = AutoModelForCausalLM if self.stage == "sft" else AutoModelForSequenceClassification
                    loaded = cls.from_pretrained(folder)
                else:
                    loaded = (load_causal_lm if self.stage == "sft" else load_value_model)(folder)
                theirs = loaded(input_ids=ids).logits if self.stage == "sft" else sequence_scores(loaded, ids, mask)
        pl_module.train(was_training)
        return mine, theirs

    def on_fit_start(self, trainer, pl_module) -> None:
        mine, theirs = self._outputs(pl_module, Path(pl_module.model_path), trainer.is_global_zero, plain=False)
        self.initial_diff = (mine - theirs).abs().max().item() if theirs is not None else None

    def on_fit_end(self, trainer, pl_module) -> None:
        params = list(pl_module.model.parameters())
        result = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "partitioned": all(hasattr(p, "ds_id") for p in params),
                  "local_numel": sum(p.numel() for p in params),
                  "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params)}
        mine, theirs = self._outputs(pl_module, self.export_dir, trainer.is_global_zero)
        if theirs is not None:
            result["max_abs_diff"] = (mine - theirs).abs().max().item()
            result["initial_max_abs_diff"] = self.initial_diff
            result["files"] = sorted(p.name for p in self.export_dir.iterdir())
        result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"result-rank{trainer.global_rank}.json").write_text(json.dumps(result))


def run(stage: str, lora: bool, model_dir: str, out: Path) -> None:
    """One case: a few ZeRO-3 steps of ``stage`` (with LoRA adapters if ``lora``), checked against its export."""
    seed_everything(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = RLHFDataModule(tokenizer, stage=stage, task_size=400, batch_size=4, eval_fraction=0.1,
                                max_length=48, max_prompt_length=24, cache_dir=str(out / "cache"))
    module_cls = SFTModule if stage == "sft" else RewardModule
    module = module_cls(model_dir, lora=LoraArgs(rank=4) if lora else None,
                        optimizer=OptimizerArgs(learning_rate=1e-2, warmup_steps=1))
    export = HFExportCallback(dirpath=str(out / "hf"), monitor="val/loss")
    trainer = Trainer(
        strategy=HybridDeepSpeedStrategy(stage=3), accelerator="cpu", devices=2, max_steps=3,
        limit_val_batches=2, val_check_interval=3, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[export, CompareWithExport(stage, out / "hf" / "final", out)],
    )
    trainer.fit(module, datamodule=data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", help="comma-separated: sft, reward, sft-lora, reward-lora")
    parser.add_argument("model_dir")
    parser.add_argument("outdir")
    args = parser.parse_args()
    for case in args.cases.split(","):
        stage, _, lora = case.partition("-")
        if stage not in ("sft", "reward") or lora not in ("", "lora"):
            parser.error(f"unknown case {case!r}: use sft, reward, sft-lora or reward-lora")
        (Path(args.outdir) / case).mkdir(parents=True, exist_ok=True)
        run(stage, lora == "lora", args.model_dir, Path(args.outdir) / case)


if __name__ == "__main__":
    main()
