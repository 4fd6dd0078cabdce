"""Renamed arguments keep working for one release: the old name sets the new one, with a warning naming it; both
given with different values is refused. The command line takes the old flags too."""

from __future__ import annotations

import pytest

from lightning_rlhf.commands.stages import GRPOCLI
from lightning_rlhf.data import PreferenceDataModule, RLHFDataModule
from lightning_rlhf.modules import DPOModule, GRPOModule, PPOModule

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4)


@pytest.fixture()
def actor(tiny_model_factory):
    return str(tiny_model_factory("llama", "causal_lm", seed=0, **SIZES))


def test_ppo_epochs_becomes_update_epochs_in_both_online_modules(actor):
    for cls in (PPOModule, GRPOModule):
        with pytest.warns(FutureWarning, match=r"ppo_epochs=\.\.\.\) is deprecated .*use update_epochs="):
            module = cls(actor=actor, reward_funcs=["answer_match"], ppo_epochs=3)
        assert module.hparams.update_epochs == 3 and "ppo_epochs" not in module.hparams
        with pytest.raises(ValueError, match="ppo_epochs=3 and update_epochs=2 both given"):
            cls(actor=actor, reward_funcs=["answer_match"], ppo_epochs=3, update_epochs=2)


def test_grpo_beta_becomes_kl_coef_and_loads_the_reference(actor):
    with pytest.warns(FutureWarning, match=r"GRPOModule\(beta=\.\.\.\) is deprecated .*use kl_coef="):
        module = GRPOModule(actor=actor, reward_funcs=["answer_match"], beta=0.05)
    assert module.hparams.kl_coef == 0.05 and module.uses_reference and module.loads_reference


def test_dpo_gamma_becomes_simpo_margin(actor):
    with pytest.warns(FutureWarning, match=r"DPOModule\(gamma=\.\.\.\) is deprecated .*use simpo_margin="):
        module = DPOModule(model=actor, loss_type="simpo", gamma=1.5)
    assert module.simpo_margin == 1.5 and module.hparams.simpo_margin == 1.5


def test_the_data_module_and_its_ppo_stage_keep_their_old_names(actor):
    with pytest.warns(FutureWarning, match=r"stage='ppo'\) is deprecated .*use stage='rl'"):
        data = RLHFDataModule(actor, stage="ppo")
    assert data.stage == "rl" and data.hparams.stage == "rl"
    with pytest.warns(FutureWarning, match="PreferenceDataModule is deprecated .*use RLHFDataModule"):
        old = PreferenceDataModule(actor, stage="ppo")
    assert isinstance(old, RLHFDataModule) and old.stage == "rl" and old.hparams.stage == "rl"


def test_the_command_line_takes_the_old_flags(actor, tmp_path):
    with pytest.warns(FutureWarning, match="ppo_epochs"):
        cli = GRPOCLI(["--model.actor", actor, "--model.reward_funcs", "[answer_match]", "--model.ppo_epochs", "2",
                       "--model.beta", "0.1", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.hparams.update_epochs == 2 and cli.model.hparams.kl_coef == 0.1
