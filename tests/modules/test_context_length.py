"""Prompt + response limits are checked against the model's positions before anything trains."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.modules import SFTModule
from lightning_rlhf.modules.ppo import GenerationArgs
from tests.modules.test_ppo import SIZES, make_data, make_module, make_trainer


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ppo_prompt_plus_new_tokens_over_the_positions_is_refused_before_training(tmp_path, tiny_model_factory,
                                                                                   family):
    paths = {"actor": tiny_model_factory(family, "causal_lm", seed=0, max_positions=24, **SIZES),
             "reward_model": tiny_model_factory(family, "value", seed=1, max_positions=24, **SIZES)}
    module = make_module(paths, generation=GenerationArgs(max_new_tokens=16))
    trainer = make_trainer(tmp_path)
    message = (r"data.max_prompt_length \(16\) \+ model.generation.max_new_tokens \(16\) = 32 tokens, but the model "
               r".* has 24 positions \(max_position_embeddings=24\); "
               r"lower data.max_prompt_length or model.generation.max_new_tokens")
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, datamodule=make_data(paths, max_prompt_length=16, max_length=24))
    assert trainer.global_step == 0


def test_gpt2_rollout_from_a_foreign_loader_gets_the_clear_error(tmp_path, tiny_model_factory):
    """Without our data module the limit is only known per batch: the error comes before generate's IndexError."""
    paths = {"actor": tiny_model_factory("gpt2", "causal_lm", seed=0, max_positions=24, **SIZES),
             "reward_model": tiny_model_factory("gpt2", "value", seed=1, max_positions=24, **SIZES)}
    data = make_data(paths, max_prompt_length=16, max_length=24)
    data.setup()
    loader = data.train_dataloader()
    module = make_module(paths, generation=GenerationArgs(max_new_tokens=20))
    with pytest.raises(ValueError, match=r"the prompt batch \(\d+ tokens wide\) \+ model.generation.max_new_tokens "
                                         r"\(20\) = \d+ tokens, but the model .* has 24 positions "
                                         r"\(max_position_embeddings=24\)"):
        make_trainer(tmp_path).fit(module, train_dataloaders=loader)


def test_sft_max_length_over_the_positions_is_refused(tmp_path, tiny_model_factory):
    model = tiny_model_factory("gpt2", "causal_lm", seed=0, max_positions=24, **SIZES)
    data = RLHFDataModule(str(model), stage="sft", task_size=100, max_prompt_length=16, max_length=32)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"data.max_length \(32\) = 32 tokens, but the model .* has 24 positions "
                                         r"\(max_position_embeddings=24\); lower data.max_length so it fits"):
        trainer.fit(SFTModule(str(model)), datamodule=data)
    assert trainer.global_step == 0
