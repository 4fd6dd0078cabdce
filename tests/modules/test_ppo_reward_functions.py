"""PPO scored by reward functions: alone (no reward model: the critic starts from the actor) or added to a reward
model's score; answers no source scores are left out of the update and counted."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.models import sequence_scores
from lightning_rlhf.modules.ppo import PPO_TAGS, PPOModule
from tests.modules.test_ppo import SIZES, make_data, make_module, make_trainer, read_events


def half_unscored(prompts, completions, **kwargs):
    """1.0 on even rows, ``None`` (not applicable) on odd rows."""
    return [1.0 if row % 2 == 0 else None for row in range(len(completions))]


@pytest.fixture()
def actor(tiny_model_factory):
    return tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)


def test_ppo_trains_on_reward_functions_alone_with_a_critic_from_the_actor(tmp_path, actor):
    torch.manual_seed(0)
    module = make_module({"actor": actor, "reward_model": None}, reward_funcs=["answer_match", "answer_only_format"],
                         reward_weights=[1.0, 0.5])
    trainer = make_trainer(tmp_path)
    trainer.fit(module, datamodule=make_data({"actor": actor}))
    assert module.reward_model is None and module.critic is not None
    events = read_events(trainer.logger.log_dir)
    tags = set(events.Tags()["scalars"])
    expected = set(PPO_TAGS) | {"ppo/reward/answer_match", "ppo/reward/answer_only_format", "ppo/unscored_fraction",
                                "val/reward_mean", "val/reward/answer_match", "val/task_success"}
    assert expected <= tags, sorted(expected - tags)
    # the score curve is the functions' weighted sum: within [0, 1.5]
    assert all(0.0 <= e.value <= 1.5 for e in events.Scalars("ppo/score_mean"))


def test_answers_no_source_scores_are_masked_out_and_counted(tmp_path, actor):
    module = make_module({"actor": actor, "reward_model": None},
                         reward_funcs=["tests.modules.test_ppo_reward_functions:half_unscored"], reward_weights=None)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data({"actor": actor}))
    assert float(trainer.logged_metrics["ppo/unscored_fraction"]) == pytest.approx(0.5)
    batch = next(iter(trainer.datamodule.train_dataloader()))
    rollout, _, _ = module.make_experience(batch)
    assert not rollout.response_mask[1::2].any() and rollout.response_mask[0::2].any()


def test_a_reward_model_and_functions_add_up_and_bad_combinations_are_refused(tmp_path, actor, tiny_model_factory):
    reward_model = tiny_model_factory("llama", "value", seed=1, **SIZES)
    module = make_module({"actor": actor, "reward_model": reward_model}, reward_funcs=["answer_only_format"],
                         reward_weights=[2.0], clip_reward_value=None)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data({"actor": actor}))
    batch = trainer.strategy.batch_to_device(next(iter(trainer.datamodule.train_dataloader())))
    generated = module.generate(batch, greedy=True)
    responses = module.responses(generated)
    raw = sequence_scores(module.reward_model, generated.sequences, generated.attention_mask)
    rewards = module.score(batch["prompts"], generated, responses, batch.get("columns"), module.reward_model_scores(raw))
    fmt = rewards.per_source["answer_only_format"]
    assert torch.allclose(rewards.total, raw.float() + 2.0 * fmt)
    with pytest.raises(ValueError, match="needs a reward"):
        PPOModule(actor=str(actor))
    with pytest.raises(ValueError, match="normalize_reward=True.*no reward_model"):
        PPOModule(actor=str(actor), reward_funcs=["answer_match"], normalize_reward=True)
