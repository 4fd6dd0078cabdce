"""The tiny end-to-end RLHF run on the built-in addition task: tokenizer -> tiny llama -> SFT -> reward -> PPO.

Usage: python tests/modules/scripts/ppo_pipeline.py OUTDIR [--steps sft,reward,ppo,grpo] [--ppo-epochs N]

Each step exports a Hugging Face folder (``OUTDIR/<step>/final``) that the next one starts from, so a later
step alone reuses earlier ones (handy when tuning PPO). PPO validates the SFT policy on the held-out prompts
first (``before``), trains, and validates again (``after``); OUTDIR/summary.json holds every number.
The PPO settings are :func:`~lightning_rlhf.modules.tiny_presets.tiny_ppo_settings`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_rlhf  # noqa: F401
from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.data.task import default_task
from lightning_rlhf.models import save_tiny_model, train_tokenizer
from lightning_rlhf.modules import OptimizerArgs, RewardModule, SFTModule
from lightning_rlhf.modules.grpo import GRPOModule
from lightning_rlhf.modules.tiny_presets import TINY_GRPO_ROLLOUT_PROMPTS, tiny_grpo_settings
from lightning_rlhf.modules.ppo import PPOModule
from lightning_rlhf.modules.tiny_presets import TINY_PPO_ROLLOUT_SIZE, tiny_ppo_settings

DATA = dict(task_size=6000, split="2,5,3", eval_fraction=0.05, max_prompt_length=16, max_length=24)
MODEL = dict(hidden_size=64, num_layers=2, num_heads=4, max_positions=64)



def trainer(root: Path, name: str, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, num_sanity_val_steps=0, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                    logger=TensorBoardLogger(str(root), name=name, version=0), default_root_dir=str(root))
    return Trainer(**{**defaults, **kwargs})


def data(tokenizer: str, stage: str, root: Path, batch_size: int) -> RLHFDataModule:
    return RLHFDataModule(tokenizer, stage=stage, batch_size=batch_size, cache_dir=str(root / "cache"), **DATA)


def build_base(root: Path) -> Path:
    """A tokenizer trained on the task's corpus and a tiny llama built from scratch."""
    tokenizer = train_tokenizer(default_task().corpus(), vocab_size=320)
    return save_tiny_model(root / "base", "llama", tokenizer, seed=0, **MODEL)


def run_stage(module_class: type, model: Path, stage: str, lr: float, root: Path, epochs: int) -> dict[str, Any]:
    """Train ``module_class`` from ``model`` on ``stage`` batches, export to ``root/stage``, return its validation."""
    seed_everything(0)
    module = module_class(str(model), optimizer=OptimizerArgs(learning_rate=lr, warmup_steps=10, scheduler="constant"))
    tr = trainer(root, stage, max_epochs=epochs, callbacks=[HFExportCallback(dirpath=str(root / stage))])
    dm = data(str(model), stage, root, 32)
    tr.fit(module, datamodule=dm)
    return {k: float(v) for k, v in tr.validate(module, datamodule=dm, verbose=False)[0].items()}


def run_sft(base: Path, root: Path, epochs: int = 13) -> dict[str, Any]:
    return run_stage(SFTModule, base, "sft", 3e-3, root, epochs)


def run_reward(sft: Path, root: Path, epochs: int = 13) -> dict[str, Any]:
    return run_stage(RewardModule, sft, "reward", 1e-3, root, epochs)


def run_ppo(sft: Path, reward: Path, root: Path, epochs: int = 3, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Validate the SFT policy, train PPO for ``epochs`` passes over the prompts (28 rollouts each), validate again."""
    seed_everything(seed)
    module = PPOModule(actor=str(sft), reward_model=str(reward), **{**tiny_ppo_settings(), **overrides})
    return run_online(module, "ppo", sft, root, epochs, TINY_PPO_ROLLOUT_SIZE)


def run_grpo(sft: Path, root: Path, epochs: int = 1, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Validate the SFT policy, train GRPO with reward functions (no reward model) for ``epochs`` passes over the
    prompts, validate again."""
    seed_everything(seed)
    module = GRPOModule(actor=str(sft), **{**tiny_grpo_settings(), **overrides})
    return run_online(module, "grpo", sft, root, epochs, TINY_GRPO_ROLLOUT_PROMPTS)


def run_online(module: Any, name: str, sft: Path, root: Path, epochs: int, prompts: int) -> dict[str, Any]:
    """Validate, fit for ``epochs`` passes over the prompt part (``prompts`` per rollout), validate; export the actor."""
    dm = data(str(sft), "rl", root, prompts)
    tr = trainer(root, name, max_epochs=epochs,
                 callbacks=[HFExportCallback(dirpath=str(root / name), model_attr="actor")])
    before = tr.validate(module, datamodule=dm, verbose=False)[0]
    tr.fit(module, datamodule=dm)
    after = tr.validate(module, datamodule=dm, verbose=False)[0]
    return {"before": {k: float(v) for k, v in before.items()}, "after": {k: float(v) for k, v in after.items()},
            "log_dir": tr.logger.log_dir, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("--steps", default="sft,reward,ppo")
    parser.add_argument("--ppo-epochs", type=int, default=3)
    parser.add_argument("--ppo-overrides", default="{}", help="JSON of PPOModule arguments (scalars)")
    parser.add_argument("--grpo-epochs", type=int, default=1)
    parser.add_argument("--grpo-overrides", default="{}", help="JSON of GRPOModule arguments (scalars)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the GRPO run")
    args = parser.parse_args()
    root = Path(args.outdir)
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    steps = args.steps.split(",")
    for step in steps:
        start = time.perf_counter()
        if step == "sft":
            summary["sft"] = run_sft(build_base(root), root)
        elif step == "reward":
            summary["reward"] = run_reward(root / "sft" / "final", root)
        elif step == "ppo":
            summary["ppo"] = run_ppo(root / "sft" / "final", root / "reward" / "final", root,
                                     args.ppo_epochs, **json.loads(args.ppo_overrides))
        elif step == "grpo":
            summary["grpo"] = run_grpo(root / "sft" / "final", root, args.grpo_epochs, args.seed,
                                       **json.loads(args.grpo_overrides))
        summary[step]["seconds"] = time.perf_counter() - start
        summary_path.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
