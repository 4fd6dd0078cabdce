"""Multi-turn episodes in GRPO on the tiny model: the loss covers the model's tokens only, each log-prob taken in the
context the token was sampled in (tool results included); the loop logs turns and tool calls; two ranks with
uneven episodes finish."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.algorithms.grpo_loss import grpo_policy_loss
from lightning_rlhf.environments import Environment, ToolEnvironment
from lightning_rlhf.environments.episodes import EpisodeArgs, run_episodes
from lightning_rlhf.models.forward import policy_logprobs
from tests.environments.test_episodes import Scripted, prompts, records
from tests.environments.test_tools import calc
from tests.modules.test_grpo import SIZES, make_data, make_module, make_trainer, scalars


@pytest.fixture()
def actor(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)


class AnswersTwice(Environment):
    """Answers the first two model turns of every episode whatever they say, then ends it: turns that neither call
    a tool nor stop still make a three-turn episode, with the environment's text between them."""

    def step(self, messages):
        said = sum(m["role"] == "assistant" for m in messages)
        if said > 2:
            return None, None, True
        return [{"role": "tool", "content": f" note {said}", "error": said == 2}], None, False


class AnswersOnRankZero(Environment):
    """Rank 0's episodes go on for 3 turns, rank 1's end after one: the ranks' rollouts differ in length."""

    def step(self, messages):
        import torch.distributed as dist

        said = sum(m["role"] == "assistant" for m in messages)
        if dist.get_rank() != 0 or said >= 3:
            return None, None, True
        return [{"role": "tool", "content": " more"}], None, False


def test_the_loss_gradient_is_a_plain_loops_over_the_models_tokens_in_their_context(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    model = AutoModelForCausalLM.from_pretrained(actor).eval()
    eos = tokenizer.eos_token_id
    script = Scripted(tokenizer, [["<tool>calc(2+3)</tool>", " it is 5<EOS>"], ["6<EOS>"]], eos)
    ep = run_episodes(script, tokenizer, ToolEnvironment([calc]), records(2), prompts(2), [eos], max_turns=3,
                      max_tokens=80, max_new_tokens=40)
    responses, model_mask, real = ep.tensors(tokenizer.pad_token_id)
    prompt = torch.tensor(prompts(2))
    sequences = torch.cat([prompt, responses], 1)
    attention = torch.cat([torch.ones_like(prompt), real.long()], 1)
    advantages = torch.tensor([1.5, -0.5])
    width = responses.shape[1]

    logprobs, _ = policy_logprobs(model, sequences, attention, width)
    loss, _ = grpo_policy_loss(logprobs, logprobs.detach(), advantages[:, None].expand_as(logprobs), model_mask)
    ours = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    plain = torch.zeros(())  # each model token scored alone, its whole prefix (prompt, calls, results) as context
    for row in range(2):
        positions = [t for t in range(width) if model_mask[row, t]]
        for t in positions:
            context = sequences[row, : prompt.shape[1] + t]
            logits = model(input_ids=context[None]).logits[0, -1]
            token_lp = torch.log_softmax(logits.float(), -1)[sequences[row, prompt.shape[1] + t]]
            ratio = torch.exp(token_lp - token_lp.detach())
            plain = plain - advantages[row] * ratio / len(positions) / 2
    expected = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    assert model_mask[0].sum() < real[0].sum()  # the tool's result is in the episode and out of the loss
    for got, want in zip(ours, expected):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)


def test_grpo_runs_episodes_and_logs_turns_and_tool_curves(tmp_path, actor):
    torch.manual_seed(0)
    episodes = EpisodeArgs(environment="tests.modules.test_grpo_episodes:AnswersTwice", max_turns=4)
    module = make_module(actor, episodes=episodes, update_epochs=1)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=make_data(actor))
    events = scalars(trainer)
    turns = [e.value for e in events.Scalars("grpo/turns_per_episode")]
    assert len(turns) == 2 and all(1 <= t <= 3 for t in turns)
    # an episode that is not ended by EOS gets 3 turns and 2 environment messages, the second one an error
    calls = events.Scalars("grpo/tool_calls_per_episode")[0].value
    errors = events.Scalars("grpo/tool_errors_per_episode")[0].value
    assert 0 < calls <= 2 and 0 <= errors <= calls / 2 + 1e-6
    assert events.Scalars("grpo/episodes_at_max_turns")[0].value == 0.0
    assert {"val/reward_mean", "grpo/episodes_at_max_tokens"} <= set(events.Tags()["scalars"])


def test_max_turns_in_the_loop_stops_every_episode_at_the_limit(tmp_path, actor):
    torch.manual_seed(0)
    episodes = EpisodeArgs(environment="tests.modules.test_grpo_episodes:AnswersTwice", max_turns=1, max_tokens=20)
    module = make_module(actor, episodes=episodes, update_epochs=1)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    events = scalars(trainer)
    assert events.Scalars("grpo/turns_per_episode")[0].value == 1.0
    ended = 1 - events.Scalars("grpo/eos_fraction")[0].value
    assert events.Scalars("grpo/episodes_at_max_turns")[0].value == pytest.approx(ended)


def test_episode_settings_that_cannot_work_fail_at_construction(actor):
    with pytest.raises(ValueError, match="needs tools .* or an environment"):
        EpisodeArgs()
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        EpisodeArgs(tools=["tests.environments.test_tools:calc"], max_turns=0)
    with pytest.raises(ValueError, match="answer_projection replaces single answers"):
        make_module(actor, episodes=EpisodeArgs(tools=["tests.environments.test_tools:calc"]),
                    answer_projection="final_answer")


@pytest.mark.distributed
def test_two_ranks_under_zero3_finish_when_their_episodes_differ_in_turns(tmp_path):
    from tests.modules.test_grpo_zero3 import fit_small_grpo_on_two_ranks

    events = fit_small_grpo_on_two_ranks(tmp_path, {
        "reward_funcs": ["answer_match"],
        "episodes": {"environment": "tests.modules.test_grpo_episodes:AnswersOnRankZero", "max_turns": 3}},
        limit_val_batches=1)
    turns = [e.value for e in events.Scalars("grpo/turns_per_episode")]
    # rank 1's episodes take one turn; rank 0's up to 3 (fewer where the model stops): the mean is between
    assert len(turns) == 2 and all(1.0 < t <= 2.0 for t in turns), turns


def test_the_first_turn_of_a_groups_episodes_runs_its_prompt_once(tmp_path, actor):
    """``share_prompt_prefix``: the first turn (every row its prompt) prefills each prompt once per group; the
    episodes are the same as without sharing, under one seed (later turns differ per row and run in full)."""
    from lightning_rlhf.modules.rollout import repeat_groups
    from tests.models.test_prompt_cache import counted_prompt_tokens, left_padded_prompts

    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(actor))
    batch = {"prompt_input_ids": ids, "prompt_attention_mask": mask, "prompts": ["a", "b", "c"]}
    group, results, embedded = 4, [], []
    for share in (False, True):
        episodes = EpisodeArgs(environment="tests.modules.test_grpo_episodes:AnswersTwice", max_turns=2)
        module = make_module(actor, episodes=episodes, share_prompt_prefix=share, num_generations=group)
        module.trainer = make_trainer(tmp_path)
        module.configure_model()
        counts = counted_prompt_tokens(module.actor)
        torch.manual_seed(0)
        results.append(module.generate_episodes(repeat_groups(batch, group), greedy=False, group_size=group))
        embedded.append(counts[0])  # the first forward of the first turn: the whole batch, or the shared prefill
    (plain, plain_episodes), (shared, shared_episodes) = results
    assert torch.equal(plain.sequences, shared.sequences) and plain_episodes.tokens == shared_episodes.tokens
    assert embedded == [3 * group * ids.shape[1], 3 * (ids.shape[1] - 1)]
