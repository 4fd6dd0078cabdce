"""Worker of the ZeRO-3 loading test; run by torchrun (2 ranks, gloo, CPU).

Usage: zero3_load_worker.py MODEL_DIR NO_PAD_TOKENIZER_DIR OUTDIR. Loads MODEL_DIR (a tiny llama with real-model
traits) partitioned in three ways, each caught on its own so one failure does not hide the others:

- ``sft`` / ``reward``: the pipeline's SFTModule and RewardModule validated under ``HybridDeepSpeedStrategy(stage=3)``;
- ``resize``: SFTModule with a tokenizer that has no pad token (Llama 3's kind), so a ``<pad>`` row is added;
- ``zero_init``: ``load_causal_lm`` inside a bare ``deepspeed.zero.Init``, as under Lightning's own DeepSpeedStrategy
  or a user's block.

After each, the gathered weights are compared with the checkpoint's. Each rank writes OUTDIR/result-rank<R>.json.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from safetensors.torch import load_file

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.models import load_causal_lm, value_head_name
from lightning_rlhf.modules import RewardModule, SFTModule
from lightning_rlhf.strategies import HybridDeepSpeedStrategy
from tests.models.fixtures import random_batches


def compare(model: torch.nn.Module, checkpoint: dict[str, torch.Tensor]) -> dict:
    """Gather every parameter and compare it with the checkpoint's (new embedding rows and a fresh head aside)."""
    import deepspeed

    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        full = {n: p.detach().clone() for n, p in params.items()}
    diffs, head = {}, None
    for name, value in full.items():
        if name in checkpoint:
            expected = checkpoint[name]
            diffs[name] = (value[: expected.shape[0]] - expected).abs().max().item()
    if hasattr(model, "score"):
        head = full[f"{value_head_name(model)}.weight"].abs().max().item()
    embed = model.get_input_embeddings().weight
    partitioned = all(hasattr(p, "ds_id") for p in params.values())
    return {"compared": len(diffs), "checkpoint": len(checkpoint), "max_abs_diff": max(diffs.values()),
            "head_max_abs": head, "rows": int(embed.ds_shape[0]), "partitioned": partitioned}


def validate(module, loader, checkpoint: dict[str, torch.Tensor]) -> dict:
    trainer = Trainer(strategy=HybridDeepSpeedStrategy(stage=3), accelerator="cpu", devices=2, limit_val_batches=1,
                      logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    return {"val_loss": float(metrics["val/loss"]), **compare(module.model, checkpoint)}


def zero_init(folder: str, checkpoint: dict[str, torch.Tensor]) -> dict:
    import deepspeed

    with deepspeed.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 3}, "train_batch_size": 2}):
        model = load_causal_lm(folder)
    return compare(model, checkpoint)


def main(folder: str, no_pad_tokenizer: str, out: Path) -> None:
    seed_everything(0)
    sft, reward = random_batches(n_batches=1)
    checkpoint = load_file(str(Path(folder) / "model.safetensors"))
    cases = {
        "sft": lambda: validate(SFTModule(folder), sft, checkpoint),
        "reward": lambda: validate(RewardModule(folder), reward, checkpoint),
        "resize": lambda: validate(SFTModule(folder, tokenizer=no_pad_tokenizer), sft, checkpoint),
        "zero_init": lambda: zero_init(folder, checkpoint),
    }
    results = {}
    for name, run in cases.items():
        try:
            results[name] = run()
        except Exception as err:  # recorded for the test's message; the other cases still run
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
    rank = torch.distributed.get_rank()
    (out / f"result-rank{rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
