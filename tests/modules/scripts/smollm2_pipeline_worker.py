"""Worker of the real-model slow tier: SmolLM2-135M-Instruct through SFT -> reward -> PPO on 2 ranks (gloo, CPU).

Usage: smollm2_pipeline_worker.py MODEL_DIR OUTDIR. Every step runs under ``HybridDeepSpeedStrategy(stage=3)``
with LoRA and a few optimizer steps; :class:`tests.helpers.measure.StepResources` writes each step's time
per training step, peak RSS and final metrics to ``OUTDIR/resources/<step>-rank<R>.json``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from lightning_rlhf.commands.pipeline import PipelineConfig, run_pipeline

STEPS = 2  # optimizer steps per pipeline step: enough to show a step completes twice (refresh after an update)
DATA = dict(task_size=400, split="2,4,4", eval_fraction=0.02, max_prompt_length=48, max_length=64)
LORA = {"rank": 4, "alpha": 8}


def trainer(out: str, step: str) -> dict[str, Any]:
    """Trainer settings of one step: 2 CPU ranks, ZeRO-3, ``STEPS`` steps, one validation batch."""
    return {
        "accelerator": "cpu", "devices": 2, "max_steps": STEPS, "limit_val_batches": 1, "num_sanity_val_steps": 0,
        "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
        "strategy": {"class_path": "lightning_rlhf.strategies.HybridDeepSpeedStrategy", "init_args": {"stage": 3}},
        "callbacks": [{"class_path": "tests.helpers.measure.StepResources",
                       "init_args": {"dirpath": f"{out}/resources", "name": step}}],
    }


def main(model_dir: str, out: str) -> None:
    optimizer = {"learning_rate": 1.0e-4, "lora_learning_rate": 5.0e-4, "warmup_steps": 0, "scheduler": "constant"}
    config = PipelineConfig(
        output_dir=out, steps="sft,reward,ppo", base_model=model_dir, num_threads=1, data=DATA,
        evaluate_before=False,  # the time goes to training steps; tests/test_pipeline.py covers validate-then-fit
        sft={"model": {"lora": LORA, "optimizer": optimizer}, "data": {"batch_size": 2}, "trainer": trainer(out, "sft")},
        reward={"model": {"lora": LORA, "optimizer": optimizer, "reward_stats_max_batches": 2},
                "data": {"batch_size": 2}, "trainer": trainer(out, "reward")},
        ppo={"model": {"actor_lora": LORA, "critic_lora": LORA, "actor_optimizer": optimizer,
                       "critic_optimizer": optimizer, "generation": {"max_new_tokens": 6}, "train_batch_size": 2},
             "data": {"batch_size": 2}, "trainer": trainer(out, "ppo")},
    )
    run_pipeline(config)


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1], sys.argv[2])
