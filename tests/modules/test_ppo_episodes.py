"""Multi-turn episodes in PPO on the tiny model: the critic, the KL and the policy see the model's tokens only, the
score lands on the model's last token, and the loop logs the episode curves as GRPO does."""

from __future__ import annotations

import torch

from lightning_rlhf.environments.episodes import EpisodeArgs
from tests.modules.test_ppo import make_data, make_module, make_trainer, ppo_paths, read_events  # noqa: F401


def test_ppo_trains_the_critic_and_the_policy_on_the_models_tokens_of_an_episode_only(tmp_path, ppo_paths):
    torch.manual_seed(0)
    episodes = EpisodeArgs(environment="tests.modules.test_grpo_episodes:AnswersTwice", max_turns=3)
    module = make_module(ppo_paths, reward_model=None, reward_funcs=["answer_match"], episodes=episodes,
                         update_epochs=1, train_batch_size=4)
    seen = []
    original = module.update_step

    def recording(mb):
        seen.append(mb)
        return original(mb)

    module.update_step = recording
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=make_data(ppo_paths))

    assert seen
    environment_tokens = 0
    for mb in seen:
        width = mb.response_mask.shape[1]
        real = mb.attention_mask[:, -width:].bool()
        between = real & ~mb.response_mask  # attended to (the environment's text) and out of every loss
        environment_tokens += int(between.sum())
        assert not mb.advantages[between].any() and not mb.returns[between].any()
        assert not mb.advantages[~real].any() and not mb.returns[~real].any()
    assert environment_tokens > 0  # the episodes held environment text inside them
    events = read_events(trainer.logger.log_dir)
    turns = [e.value for e in events.Scalars("ppo/turns_per_episode")]
    assert len(turns) == 2 and all(1 <= t <= 3 for t in turns)
    assert {"ppo/tool_calls_per_episode", "ppo/episodes_at_max_turns", "ppo/value_loss"} <= set(
        events.Tags()["scalars"])


def test_a_checkpoint_holding_episode_settings_loads_under_weights_only(tmp_path):
    """Runs built in Python keep ``EpisodeArgs`` in their hparams; resuming reads checkpoints with weights_only."""
    import lightning_rlhf.modules.online  # noqa: F401 - registers the safe globals

    path = tmp_path / "hparams.pt"
    torch.save({"episodes": EpisodeArgs(tools=["tests.environments.test_tools:calc"], max_turns=2)}, path)
    assert torch.load(path, weights_only=True)["episodes"].max_turns == 2
