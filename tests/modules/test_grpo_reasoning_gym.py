"""GRPO wired to reasoning-gym: its prompts as data and its verifier as the reward, on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_rlhf.data import RLHFDataModule
from tests.modules.test_grpo import SIZES, make_module, make_trainer, scalars

SOURCE = "reasoning_gym:spell_backward?min_word_len=3&max_word_len=3&size=40&seed=0"


@pytest.fixture()
def actor(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)


def test_grpo_fits_on_reasoning_gym_prompts_scored_by_the_tasks_verifier(tmp_path, actor):
    module = make_module(actor, reward_funcs=["reasoning_gym_score"], reward_weights=None)
    data = RLHFDataModule(tokenizer=str(actor), stage="rl", sources=[SOURCE], split="0,0,1", eval_fraction=0.1,
                          batch_size=4, max_prompt_length=96, max_length=112)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step > 0
    events = scalars(trainer)
    reward = events.Scalars("grpo/reward/reasoning_gym_score")
    assert len(reward) == 1 and 0.0 <= reward[0].value <= 1.0
    assert events.Scalars("grpo/unscored_fraction")[0].value == 0.0  # every answer reached the verifier
    assert not math.isnan(events.Scalars("grpo/reward_mean")[0].value)
