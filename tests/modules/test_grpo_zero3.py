"""``lightning-rlhf grpo fit`` as a user runs it: 2 CPU ranks, HybridDeepSpeedStrategy ZeRO-3 with the generation
switch (tensor-parallel replica over both ranks), a LoRA actor, a KL term (the reference: the actor with its
adapters off), reward functions by name; the exported folder loads in plain transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.modules.grpo import GRPO_TAGS
from tests.helpers.distributed import run_distributed
from tests.models.fixtures import tiny_folder
from tests.modules.test_ppo import read_events

CLI = Path(__file__).resolve().parents[2] / "lightning_rlhf" / "commands" / "main.py"


@pytest.mark.distributed
def test_grpo_fit_on_two_ranks_under_zero3_with_the_generation_switch_and_exports_a_loadable_model(tmp_path):
    actor = tiny_folder(tmp_path, "llama", num_heads=4)  # 2 key/value heads: one per tensor-parallel rank
    config = {
        "model": {
            "actor": str(actor), "reward_funcs": ["answer_match", "answer_only_format"], "reward_weights": [1.0, 0.5],
            "kl_coef": 0.05, "actor_lora": {"rank": 8, "alpha": 16},
            "actor_optimizer": {"learning_rate": 1e-3, "scheduler": "constant"},
            "generation": {"max_new_tokens": 4}, "num_generations": 4, "train_batch_size": 8,
        },
        "data": {"task_size": 200, "batch_size": 4, "max_prompt_length": 16, "max_length": 24, "eval_fraction": 0.1,
                 "cache_dir": str(tmp_path / "cache")},
        "trainer": {
            "accelerator": "cpu", "devices": 2, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
            "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False,
            "strategy": {"class_path": "lightning_rlhf.strategies.HybridDeepSpeedStrategy",
                         "init_args": {"stage": 3, "inference_tp_size": 2}},
        },
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    run_distributed(CLI, "grpo", "fit", "--config", str(path), nprocs=2, timeout=600)

    logs = sorted((tmp_path / "run" / "lightning_logs").glob("version_*"))
    events = read_events(str(logs[-1]))
    tags = set(events.Tags()["scalars"])
    expected = set(GRPO_TAGS) | {"grpo/kl", "grpo/reward/answer_match", "val/reward_mean", "val/task_success"}
    assert expected <= tags, sorted(expected - tags)
    assert len(events.Scalars("grpo/reward_mean")) == 2  # one point per iteration
    assert abs(events.Scalars("grpo/kl")[0].value) < 1e-5  # adapters off under ZeRO-3 = the starting policy
    assert all(e.value > 0 for e in events.Scalars("throughput/generated_tokens_per_s"))

    export = tmp_path / "run" / "hf" / "final"
    model = AutoModelForCausalLM.from_pretrained(export)  # LoRA merged: a plain transformers model
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert not any("lora" in name for name, _ in model.named_parameters())
    messages = [{"role": "user", "content": "3+4="}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def fit_small_grpo_on_two_ranks(tmp_path: Path, model: dict, limit_val_batches: int = 0,
                                callbacks: list[dict] | None = None):
    """``grpo fit`` of the tiny Llama on 2 CPU ranks under ZeRO-3 (2 prompts x 4 answers per rank, 2 rollouts) with
    ``model`` settings and trainer ``callbacks`` on top; returns the run's TensorBoard events."""
    actor = tiny_folder(tmp_path, "llama", num_heads=4)
    config = {
        "model": {"actor": str(actor), "actor_optimizer": {"learning_rate": 1e-3, "scheduler": "constant"},
                  "generation": {"max_new_tokens": 4}, "num_generations": 4, "train_batch_size": 8, **model},
        "data": {"task_size": 200, "batch_size": 2, "max_prompt_length": 16, "max_length": 24, "eval_fraction": 0.1,
                 "cache_dir": str(tmp_path / "cache")},
        "trainer": {"accelerator": "cpu", "devices": 2, "max_epochs": 1, "limit_train_batches": 2,
                    "limit_val_batches": limit_val_batches, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False,
                    **({"callbacks": callbacks} if callbacks else {}),
                    "strategy": {"class_path": "lightning_rlhf.strategies.HybridDeepSpeedStrategy",
                                 "init_args": {"stage": 3}}},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    run_distributed(CLI, "grpo", "fit", "--config", str(path), nprocs=2, timeout=300)
    return read_events(str(sorted((tmp_path / "run" / "lightning_logs").glob("version_*"))[-1]))
