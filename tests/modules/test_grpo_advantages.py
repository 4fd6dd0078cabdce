"""GRPOModule.advantages() wiring, on a hand-built rollout: filters apply before whitening, the overlong penalty is
added, the filters reach the loss mask, and a KL in the reward moves the advantages instead of the loss."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_rlhf.algorithms import get_kl_estimator
from lightning_rlhf.algorithms.dapo import overlong_penalty
from lightning_rlhf.algorithms.group_advantages import get_group_advantage_estimator
from lightning_rlhf.algorithms.masked import masked_whiten
from lightning_rlhf.modules import GRPOModule
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.rollout import Experience
from lightning_rlhf.modules.rollout import Generated
from lightning_rlhf.rewards.combined import SampleRewards

G, R = 4, 6  # answers per prompt, response width
#: 4 groups: the first two without a signal (all answers score the same), the last two mixed
SCORES = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 2.0, 1.0, 0.0, 1.0])
LENGTHS = torch.tensor([6, 3, 2, 5, 4, 6, 1, 2, 3, 6, 5, 4, 2, 6, 3, 5])
ENDED = LENGTHS < R  # answers as long as the limit were cut there (no EOS)


@pytest.fixture()
def actor(tiny_model_factory):
    return str(tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=2, num_heads=4))


def module(actor, **settings) -> GRPOModule:
    grpo = GRPOModule(actor=actor, reward_funcs=["answer_match"], num_generations=G,
                      generation=GenerationArgs(max_new_tokens=R), **settings)
    grpo.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False)
    return grpo


def experience(logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None) -> Experience:
    mask = torch.arange(R).unsqueeze(0) < LENGTHS.unsqueeze(1)
    sequences = torch.randint(3, 50, (len(SCORES), 4 + R))
    attention = torch.cat([torch.ones(len(SCORES), 4, dtype=torch.long), mask.long()], dim=1)
    generated = Generated(sequences, attention, mask, ENDED)
    logprobs = torch.full((len(SCORES), R), -1.0) if logprobs is None else logprobs
    rewards = SampleRewards(SCORES.clone(), {"answer_match": SCORES.clone()}, 0)
    return Experience(["p"] * len(SCORES), ["a"] * len(SCORES), generated, logprobs, torch.zeros(len(SCORES), R),
                      ref_logprobs, None, rewards, None)


def test_reinforce_pp_whitens_only_the_rows_the_filters_keep(actor):
    """Dynamic sampling leaves the first two groups out of the loss; whitening over all rows would scale the kept
    ones by about sqrt(N_all / N_kept) (the old order). The kept advantages are those rows whitened alone."""
    rollout, _ = module(actor, advantage_estimator="reinforce_pp", dynamic_sampling=True).advantages(experience())
    kept = rollout.response_mask
    assert not kept[: 2 * G].any() and torch.equal(kept[2 * G :], experience().generated.response_mask[2 * G :])
    tokens = torch.where(kept, SCORES.unsqueeze(1), 0.0)
    expected = masked_whiten(tokens, kept)
    torch.testing.assert_close(rollout.advantages[kept], expected[kept])
    assert rollout.advantages[kept].std().item() == pytest.approx(1.0, abs=0.05)


def test_filter_truncated_and_dynamic_sampling_reach_the_loss_mask(actor):
    rollout, metrics = module(actor, filter_truncated=True, dynamic_sampling=True).advantages(experience())
    full = experience().generated.response_mask
    signal = torch.tensor([False] * 2 * G + [True] * 2 * G)
    expected = full & (ENDED & signal).unsqueeze(1)
    assert torch.equal(rollout.response_mask, expected)
    assert "grpo/truncated_filtered" in metrics and "grpo/groups_filtered" in metrics


def test_the_overlong_penalty_is_added_to_the_scores_before_the_advantages(actor):
    rollout, _ = module(actor, advantage_estimator="dr_grpo", overlong_buffer_length=3,
                        overlong_penalty_factor=2.0).advantages(experience())
    shaped = SCORES + overlong_penalty(LENGTHS, R, 3, 2.0)
    assert (shaped != SCORES).any()
    mask = experience().generated.response_mask
    expected = get_group_advantage_estimator("dr_grpo")(shaped, G, mask)
    torch.testing.assert_close(rollout.advantages, expected)


def test_a_kl_in_the_reward_moves_the_advantages_and_leaves_the_loss_without_kl(actor):
    logprobs = -torch.rand(len(SCORES), R)
    same = experience(logprobs, logprobs.clone())
    shifted = experience(logprobs, logprobs - 0.5 * torch.rand(len(SCORES), R))
    grpo = module(actor, advantage_estimator="reinforce_pp", kl_coef=0.1, kl_in_reward=True)
    assert grpo.hparams.kl_estimator == "k1"  # the unbiased estimate of KL(pi||ref) as a detached reward
    without_kl, _ = grpo.advantages(same)
    with_kl, metrics = grpo.advantages(shifted)
    assert with_kl.ref_logprobs is None and without_kl.ref_logprobs is None  # nothing for the loss's KL term
    assert not torch.allclose(with_kl.advantages, without_kl.advantages)
    penalty = 0.1 * get_kl_estimator("k1")(shifted.logprobs, shifted.ref_logprobs)
    mask = shifted.generated.response_mask
    expected = get_group_advantage_estimator("reinforce_pp")(SCORES, G, mask, penalty)
    torch.testing.assert_close(with_kl.advantages, expected)
    assert metrics["grpo/kl"] is not None
    in_loss, _ = module(actor, kl_coef=0.1).advantages(shifted)  # GRPO: the KL goes to the loss
    assert in_loss.ref_logprobs is not None


def test_batch_scaled_rewards_divide_by_the_std_reduced_over_ranks(actor):
    """``scale_rewards="batch"``: the module hands its all-reduce to the estimator (a fake one that doubles: a
    second rank with the same rewards), and the batch's std counts only the rows the loss keeps."""
    grpo = module(actor, scale_rewards="batch", dynamic_sampling=True)
    calls = []

    def doubling(tensor):
        calls.append(tensor)
        return 2 * tensor

    grpo.sum_across_ranks = lambda: doubling
    rollout, _ = grpo.advantages(experience())
    assert calls
    kept = rollout.response_mask
    expected = get_group_advantage_estimator("grpo", "batch")(SCORES, G, kept, sum_across=doubling)
    torch.testing.assert_close(rollout.advantages, expected)
    rows = SCORES[2 * G:]  # the two groups with a signal, twice over
    std = torch.cat([rows, rows]).std()
    assert rollout.advantages[2 * G, 0].item() == pytest.approx((1.0 - 0.375) / (std.item() + 1e-4), rel=1e-5)


def test_kl_in_reward_keeps_an_estimator_given_explicitly(actor):
    assert module(actor, kl_coef=0.1, kl_in_reward=True, kl_estimator="k3").hparams.kl_estimator == "k3"
    assert module(actor, kl_coef=0.1).hparams.kl_estimator == "k3"  # in the loss: GRPO's k3


def test_max_steps_on_an_online_run_warns_that_the_schedule_is_planned_in_iterations(actor, tmp_path):
    grpo = module(actor)
    grpo.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, max_steps=5,
                           default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"max_steps=5\) counts optimizer steps .*bound online runs with max_epochs"):
        grpo.setup("fit")
