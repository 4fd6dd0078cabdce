"""GRPOModule on tiny models, one process: every curve in TensorBoard, the variants, rewards, errors, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import AutoModelForCausalLM
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.models import LoraArgs
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.grpo import GRPO_TAGS, GRPOModule
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.models.forward import policy_logprobs
from lightning_rlhf.rewards import RewardError
from tests.rewards.test_remote import server  # noqa: F401  (the scoring server on 127.0.0.1)

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4)
CALLS: list[dict] = []


def recording_reward(prompts, completions, answer, **kwargs):
    """A reward that records what it was given (by import path: ``tests.modules.test_grpo:recording_reward``)."""
    CALLS.append({"prompts": list(prompts), "completions": list(completions), "answer": list(answer), **kwargs})
    return [float(len(c) % 3) for c in completions]


def failing_on_third_row(prompts, completions, **kwargs):
    return [1.0, 1.0, "oops"] + [1.0] * (len(completions) - 3)


@pytest.fixture()
def actor(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)


def make_module(actor: Path, **overrides) -> GRPOModule:
    kwargs = dict(
        actor=str(actor), reward_funcs=["answer_match_shaped", "answer_only_format"], reward_weights=[1.0, 0.5],
        actor_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=5), num_generations=4, train_batch_size=8, update_epochs=2,
        log_samples_every_n_steps=1,
    )
    kwargs.update(overrides)
    return GRPOModule(**kwargs)


def make_data(actor: Path, **overrides) -> RLHFDataModule:
    kwargs = dict(tokenizer=str(actor), stage="rl", task_size=200, batch_size=4, eval_fraction=0.1,
                  max_prompt_length=32, max_length=64)
    kwargs.update(overrides)
    return RLHFDataModule(**kwargs)


def make_trainer(root: Path, **overrides) -> Trainer:
    kwargs = dict(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=TensorBoardLogger(str(root), name="grpo", version=0), default_root_dir=str(root),
    )
    kwargs.update(overrides)
    return Trainer(**kwargs)


def scalars(trainer: Trainer) -> EventAccumulator:
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_grpo_logs_every_curve_per_function_and_samples_without_a_reference(tmp_path, actor):
    torch.manual_seed(0)
    module = make_module(actor, dynamic_sampling=True, filter_truncated=True, overlong_buffer_length=2)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, datamodule=make_data(actor))
    assert module.reference is None and module.reward_model is None  # KL off: no reference engine at all
    events = scalars(trainer)
    tags = set(events.Tags()["scalars"])
    expected = set(GRPO_TAGS) | {
        "grpo/reward/answer_match_shaped", "grpo/reward/answer_only_format", "grpo/task_success",
        "grpo/groups_filtered", "grpo/truncated_filtered",
        "val/reward_mean", "val/reward/answer_match_shaped", "val/reward/answer_only_format", "val/task_success"}
    assert expected <= tags, f"missing: {sorted(expected - tags)}"
    for tag in GRPO_TAGS:  # one point per iteration
        assert len(events.Scalars(tag)) == 2, tag
    # 2 iterations x 2 epochs x (4 prompts x 4 answers / 8 rows per mini-batch) actor steps
    assert trainer.global_step == 2 * 2 * 2
    assert {"grpo/samples/text_summary", "val/samples/text_summary"} <= set(events.Tags()["tensors"])
    assert events.Scalars("grpo/response_length_max")[0].value <= 5
    # dynamic sampling drops exactly the groups without signal: a whole number of the 4 groups per rollout
    for without, filtered in zip(events.Scalars("grpo/groups_without_signal"), events.Scalars("grpo/groups_filtered")):
        assert without.value == pytest.approx(filtered.value) and (4 * without.value) == pytest.approx(
            round(4 * without.value))


def test_reward_functions_by_import_path_receive_the_repeated_prompts_and_the_answer_column(tmp_path, actor):
    CALLS.clear()
    module = make_module(actor, reward_funcs=["tests.modules.test_grpo:recording_reward"], reward_weights=None,
                         num_generations=3)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    call = CALLS[0]
    assert len(call["completions"]) == 4 * 3
    # prompt-major groups: each prompt and its answer column repeated num_generations times in a row
    assert call["prompts"][0:3] == [call["prompts"][0]] * 3 and call["answer"][3:6] == [call["answer"][3]] * 3
    task = trainer.datamodule.task
    assert call["answer"] == [task.answer(p) for p in call["prompts"]]
    assert len(call["completion_ids"]) == 12 and all(isinstance(i, int) for i in call["completion_ids"][0])


def test_a_reward_function_returning_a_non_number_fails_the_step_naming_it_and_the_row(tmp_path, actor):
    module = make_module(actor, reward_funcs=["tests.modules.test_grpo:failing_on_third_row"], reward_weights=None)
    with pytest.raises(RewardError, match=r"tests.modules.test_grpo:failing_on_third_row.*row 2"):
        make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=make_data(actor))


@pytest.mark.parametrize("estimator,aggregation,kl", [
    ("dr_grpo", "seq_mean_token_sum_norm", {"kl_coef": 0.05, "kl_estimator": "k3"}),
    ("rloo", "token_mean", {"clip_range_high": 0.28, "entropy_coef": 0.01}),
    ("reinforce_pp", "token_mean", {"kl_coef": 0.05, "kl_in_reward": True, "kl_estimator": "k1"}),
    ("reinforce_pp_baseline", "seq_mean_token_mean", {}),
])
def test_every_estimator_trains_with_its_aggregation_and_kl_placement(tmp_path, actor, estimator, aggregation, kl):
    torch.manual_seed(0)
    module = make_module(actor, advantage_estimator=estimator, loss_aggregation=aggregation, update_epochs=1, **kl)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    assert (module.reference is not None) == (kl.get("kl_coef", 0) > 0)
    metrics = trainer.logged_metrics
    assert torch.isfinite(metrics["grpo/policy_loss"])
    start = AutoModelForCausalLM.from_pretrained(str(actor)).state_dict()
    moved = max((param.detach() - start[name]).abs().max().item() for name, param in module.actor.named_parameters())
    assert moved > 1e-5  # the estimator's advantages gave the loss a gradient and the optimizer stepped
    if module.reference is not None:  # one iteration from the reference's own weights: the KL is ~0
        assert "grpo/kl" in metrics and abs(float(metrics["grpo/kl"])) < 1e-3


@pytest.mark.parametrize("setting", [
    {"policy_loss": "gspo", "clip_range_low": 3e-4, "clip_range_high": 4e-4},  # the GSPO paper's ranges
    {"policy_loss": "cispo", "clip_range_low": 1.0, "clip_range_high": 0.28, "loss_aggregation": "token_mean"},
    {"scale_rewards": "batch"},
], ids=["gspo", "cispo", "scale_rewards_batch"])
def test_gspo_cispo_and_batch_scaled_rewards_train(tmp_path, actor, setting):
    """One iteration of each variant: the loss and its clip curves are finite and the actor's weights moved."""
    torch.manual_seed(0)
    module = make_module(actor, update_epochs=1, **setting)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    metrics = trainer.logged_metrics
    for tag in ("grpo/policy_loss", "grpo/clipfrac_low", "grpo/clipfrac_high", "grpo/ratio_mean"):
        assert torch.isfinite(metrics[tag]), tag
    start = AutoModelForCausalLM.from_pretrained(str(actor)).state_dict()
    moved = max((param.detach() - start[name]).abs().max().item() for name, param in module.actor.named_parameters())
    assert moved > 1e-5


def test_variant_settings_that_mean_nothing_fail_at_construction(actor):
    with pytest.raises(ValueError, match="'gspo' is one term per answer.*got 'token_mean'"):
        make_module(actor, policy_loss="gspo", loss_aggregation="token_mean")
    with pytest.raises(ValueError, match="policy_loss 'gspo' weighs each answer by one advantage.*kl_in_reward"):
        make_module(actor, policy_loss="gspo", kl_coef=0.05, kl_in_reward=True)
    with pytest.raises(ValueError, match="scale_rewards='batch' replaces the group std .*'dr_grpo'"):
        make_module(actor, advantage_estimator="dr_grpo", scale_rewards="batch")
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        make_module(actor, policy_loss="ppo")


def test_with_lora_the_kl_reference_is_the_actor_with_its_adapters_off(tmp_path, actor):
    """No second model: after training (the adapters no longer zero) the adapter-free actor scores responses
    exactly as a frozen copy loaded from the same folder, while the trained actor scores them differently."""
    torch.manual_seed(0)
    lora = LoraArgs(rank=4, alpha=8)
    module = make_module(actor, actor_lora=lora, kl_coef=0.05, update_epochs=1)
    assert module.loads_reference is False and list(module.model_paths()) == [str(actor)]
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    assert module.reference is None
    kl = scalars(trainer).Scalars("grpo/kl")
    assert abs(kl[0].value) < 1e-6  # the first rollout: actor and reference are the same policy

    copy = make_module(actor, actor_lora=lora, kl_coef=0.05, reference=str(actor))
    copy.configure_model()
    assert copy.loads_reference and copy.reference is not None
    sequences = torch.randint(3, 60, (4, 12))
    attention_mask = torch.ones_like(sequences)
    from_adapters_off = module.reference_logprobs(sequences, attention_mask, 5)
    from_copy = copy.reference_logprobs(sequences, attention_mask, 5)
    torch.testing.assert_close(from_adapters_off, from_copy, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        from_actor = policy_logprobs(module.actor, sequences, attention_mask, 5)[0]
    assert (from_actor - from_copy).abs().max() > 1e-4  # the trained adapters are on outside the reference pass
    assert module.actor.training  # the reference pass put the actor's mode back


def test_bad_settings_fail_at_construction_with_what_to_do(actor):
    with pytest.raises(ValueError, match="needs a reward"):
        GRPOModule(actor=str(actor))
    with pytest.raises(ValueError, match="num_generations must be >= 2.*reinforce_pp"):
        make_module(actor, num_generations=1)
    with pytest.raises(ValueError, match="unknown advantage estimator 'gpro'"):
        make_module(actor, advantage_estimator="gpro")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.rewards'"):
        make_module(actor, reward_funcs=["no_such_pkg.rewards:f"], reward_weights=None)
    with pytest.raises(ValueError, match="reward_weights has 1 entries for 2"):
        make_module(actor, reward_weights=[1.0])
    with pytest.raises(ValueError, match="overlong_buffer_length"):
        make_module(actor, overlong_buffer_length=50)


def test_grpo_resumes_from_an_iteration_checkpoint_with_its_shuffle_state(tmp_path, actor):
    from lightning_rlhf.callbacks import IterationCheckpoint

    torch.manual_seed(0)
    module = make_module(actor)
    trainer = make_trainer(tmp_path, enable_checkpointing=True, limit_val_batches=0,
                           callbacks=[IterationCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_iterations=1)])
    trainer.fit(module, datamodule=make_data(actor))
    checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert checkpoints
    state = torch.load(checkpoints[0], weights_only=False)
    assert "grpo_state" in state and "shuffle_rng" in state["grpo_state"]
    resumed = make_module(actor)
    trainer2 = make_trainer(tmp_path / "resumed", max_epochs=2, limit_val_batches=0)
    trainer2.fit(resumed, datamodule=make_data(actor), ckpt_path=str(checkpoints[-1]))
    assert trainer2.global_step > trainer.global_step


def test_reward_url_scores_every_answer_through_a_real_http_server(tmp_path, actor, server):
    """``reward_url``: the rollout's answers are POSTed (with their prompt and answer column) to a scorer on the
    loopback address, whose rewards (the answers' lengths here) are the ``grpo/reward/remote`` curve."""
    module = make_module(actor, reward_funcs=None, reward_weights=None, reward_url=f"{server.url}/score")
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    sent = [r for r in server.requests if r["path"] == "/score"]
    rows = sum(len(r["completions"]) for r in sent)
    assert rows == 4 * 4  # 4 prompts x 4 answers, one reward each
    assert all(set(r) >= {"prompts", "completions", "answer"} for r in sent)
    assert float(trainer.logged_metrics["grpo/reward/remote"]) == pytest.approx(
        sum(len(c) for r in sent for c in r["completions"]) / rows)
    with pytest.raises(ValueError, match="reward_url must start with http"):
        make_module(actor, reward_funcs=None, reward_weights=None, reward_url="ftp://scorer")


def test_a_reward_schedule_pays_a_function_from_its_start_iteration(tmp_path, actor):
    """``reward_start_iterations=[0, 2]``: the second function is logged from the first iteration but weighs in
    from the third (constant functions, 1 and 2, weights 1 and 0.5: the reward is 1, 1, 2, 2)."""
    module = make_module(actor, reward_funcs=["tests.rewards.test_scoring:ones", "tests.rewards.test_scoring:twos"],
                         reward_weights=[1.0, 0.5], reward_start_iterations=[0, 2], update_epochs=1)
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    events = scalars(trainer)
    assert [e.value for e in events.Scalars("grpo/reward_mean")] == [1.0, 1.0, 2.0, 2.0]
    assert [e.value for e in events.Scalars("grpo/reward/twos")] == [2.0] * 4  # logged before it counts


def test_a_run_resumed_before_a_reward_start_continues_the_schedule(tmp_path, actor):
    from lightning_rlhf.callbacks import IterationCheckpoint

    def schedule_module():
        return make_module(actor, reward_funcs=["tests.rewards.test_scoring:ones", "tests.rewards.test_scoring:twos"],
                           reward_weights=[1.0, 0.5], reward_start_iterations=[0, 2], update_epochs=1)

    callback = IterationCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_iterations=1, save_top_k=-1)
    # stopped inside the epoch after one iteration (two optimizer steps: 16 answers in mini-batches of 8)
    make_trainer(tmp_path / "first", limit_train_batches=4, max_steps=2, limit_val_batches=0,
                 enable_checkpointing=True, callbacks=[callback]).fit(schedule_module(), datamodule=make_data(actor))
    checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert checkpoints, "no checkpoint written"
    checkpoint = checkpoints[0]  # after iteration 1 of 4
    resumed = make_trainer(tmp_path / "resumed", limit_train_batches=4, limit_val_batches=0)
    resumed.fit(schedule_module(), datamodule=make_data(actor), ckpt_path=str(checkpoint))
    assert [e.value for e in scalars(resumed).Scalars("grpo/reward_mean")] == [1.0, 2.0, 2.0]


@pytest.mark.parametrize("target,bonus_on", [(100.0, 1.0), (1e-3, 0.0)])
def test_the_recipe_settings_gate_the_secondary_rewards_and_hinge_the_entropy_bonus(tmp_path, actor, target, bonus_on):
    """``reward_gate``: brevity (collected by any short text) pays nothing while the correctness reward does not;
    ``entropy_target``: the bonus is in the loss below the target and out above it (``grpo/entropy_bonus_on``)."""
    torch.manual_seed(0)
    module = make_module(actor, reward_funcs=["answer_match", "brevity"], reward_weights=[1.0, 0.5],
                         reward_gate=True, entropy_coef=0.01, entropy_target=target, update_epochs=1)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    events = scalars(trainer)
    value = {tag: events.Scalars(tag)[0].value for tag in
             ("grpo/reward_mean", "grpo/reward/answer_match", "grpo/reward/brevity", "grpo/entropy_bonus_on")}
    assert value["grpo/reward/brevity"] > 0  # logged unscaled: the untrained model's answers are short
    # paid only with the answer: at most 1 + 0.5 per right answer, and nothing for the short wrong ones
    assert value["grpo/reward_mean"] <= 1.5 * value["grpo/reward/answer_match"] + 1e-6, value
    assert value["grpo/entropy_bonus_on"] == bonus_on
    with pytest.raises(ValueError, match="entropy_target must be > 0"):
        make_module(actor, entropy_coef=0.1, entropy_target=-1.0)


def never_right(prompts, completions, **kwargs):
    """A strict reward the policy never earns: every group is all zeros, so the surrogate has no gradient."""
    return [0.0] * len(completions)


def test_with_no_reward_signal_an_entropy_target_leaves_the_policy_alone_where_the_plain_bonus_widens_it(
        tmp_path, actor):
    """The third trap of issue 31 on the tiny model: with no signal the plain bonus is the only gradient, so it
    moves the weights and raises the entropy rollout after rollout; with the entropy above ``entropy_target`` the
    bonus is off and, nothing else having a gradient, the weights do not move at all."""
    start = AutoModelForCausalLM.from_pretrained(str(actor)).state_dict()
    entropies, moved = {}, {}
    for target in (None, 1e-3):
        torch.manual_seed(0)
        module = make_module(actor, reward_funcs=[never_right], reward_weights=None, entropy_coef=0.1,
                             entropy_target=target, update_epochs=1,
                             actor_optimizer=OptimizerArgs(learning_rate=1e-2, scheduler="constant"))
        trainer = make_trainer(tmp_path / str(target), limit_train_batches=6, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(actor))
        entropies[target] = [e.value for e in scalars(trainer).Scalars("grpo/entropy")]
        moved[target] = max((p.detach() - start[n]).abs().max().item() for n, p in module.actor.named_parameters())
    assert moved[None] > 1e-3 and entropies[None][-1] > entropies[None][0], entropies
    assert moved[1e-3] == 0.0, "above the target the bonus is off: no signal, no gradient, no step"
    assert entropies[1e-3][-1] == pytest.approx(entropies[1e-3][0], abs=0.05)


def digit_share(prompts, completions, **kwargs):
    """A format reward any answer can collect, right or wrong: the share of its characters that are digits."""
    return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in completions]


def test_a_secondary_reward_is_collected_without_the_primary_unless_gated(tmp_path, actor):
    """The second trap of issue 31 on the tiny model: with a correctness reward the policy never earns and a format
    reward beside it, the plain sum pays wrong answers in the format, so the policy learns the format and nothing
    else (its reward rises); gated by correctness, the format pays nothing, no group has a signal, and the weights
    stay."""
    start = AutoModelForCausalLM.from_pretrained(str(actor)).state_dict()
    rewards, moved = {}, {}
    for gate in (False, True):
        torch.manual_seed(0)
        module = make_module(actor, reward_funcs=[never_right, digit_share], reward_weights=[1.0, 0.5],
                             reward_gate=gate, update_epochs=1, train_batch_size=16,
                             actor_optimizer=OptimizerArgs(learning_rate=3e-2, scheduler="constant"))
        trainer = make_trainer(tmp_path / str(gate), limit_train_batches=10, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(actor))
        rewards[gate] = [e.value for e in scalars(trainer).Scalars("grpo/reward_mean")]
        moved[gate] = max((p.detach() - start[n]).abs().max().item() for n, p in module.actor.named_parameters())
    print(rewards)  # the curves the note quotes (pytest -s)
    assert sum(rewards[False][-3:]) / 3 > sum(rewards[False][:3]) / 3 + 0.05, rewards  # the format learned alone
    assert set(rewards[True]) == {0.0} and moved[True] == 0.0, (rewards, moved)
