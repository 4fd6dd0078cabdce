"""Answer guidance: a projected candidate takes a group's lowest answer where it earns more; on the tiny model, the
candidates reach the update with log-probs of their own tokens (first ratio 1) and are counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lightning_rlhf.modules.answer_guidance import AnswerGuidance
from lightning_rlhf.modules.rollout import Generated
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.projection import final_answer_alone, resolve_projection
from lightning_rlhf.modules.optim import OptimizerArgs
from tests.modules.test_grpo import SIZES, make_data, make_module, make_trainer, scalars

WANTED = "7"


def alone_pays_most(prompts, completions, **kwargs):
    """1 for the wanted answer alone, 0.5 for an answer containing it, 0 otherwise."""
    return [1.0 if c.strip() == WANTED else 0.5 if WANTED in c else 0.0 for c in completions]


def to_wanted(prompts, completions, **kwargs):
    return [WANTED for _ in completions]


@pytest.fixture()
def actor(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", "causal_lm", seed=0, **SIZES)


def test_final_answer_alone_projects_an_equation_to_its_result_and_a_statement_to_its_answer():
    completions = ["7 * 8 = 56", "The answer is Paris.", "", "#### 12"]
    assert final_answer_alone([""] * 4, completions, answer=["56", "Paris", "3", "12"]) == ["56", "Paris", None, "12"]
    assert resolve_projection("final_answer") is final_answer_alone
    assert resolve_projection("tests.modules.test_answer_guidance:to_wanted") is to_wanted
    with pytest.raises(ValueError, match="answer_projection 'no_such' is neither a built-in \\(final_answer\\)"):
        resolve_projection("no_such")


def _generated(tokenizer, prompt_ids: list[int], answers: list[str], width: int) -> Generated:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [(tokenizer(a, add_special_tokens=False)["input_ids"] + [eos])[:width] for a in answers]
    responses = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows])
    prompts = torch.tensor([prompt_ids] * len(answers))
    sequences = torch.cat([prompts, responses], 1)
    attention = torch.cat([torch.ones_like(prompts), mask.long()], 1)
    return Generated(sequences, attention, mask, torch.ones(len(answers), dtype=torch.bool),
                     torch.zeros(mask.shape), torch.zeros(mask.shape))


def test_the_candidate_replaces_the_lowest_answer_with_its_tokens_and_a_stop(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    rewards = RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"])
    answers = ["is 7", "cat", "bread", "dog", "the 7", "7", "fox", "cat"]  # group 2 already has the bare form
    generated = _generated(tokenizer, tokenizer("What is 3 + 4?")["input_ids"], answers, width=6)
    batch = {"prompts": ["What is 3 + 4?"] * 8}
    guidance = AnswerGuidance(to_wanted, tokenizer)
    out, guided = guidance(rewards, batch, generated, answers, group_size=4, iteration=0)
    assert guided.tolist() == [False, True, False, False] + [False] * 4  # "cat" (0.0, the first lowest) goes
    width = generated.response_mask.shape[1]
    row = out.sequences[1, -width:][out.response_mask[1]].tolist()
    assert row == tokenizer(WANTED, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert out.attention_mask[1, -width:].sum() == len(row) and bool(out.eos_found[1])
    assert out.logprobs is None and out.entropy is None  # computed again by a forward pass
    keep = [0, 2, 3, 4, 5, 6, 7]
    assert torch.equal(out.sequences[keep], generated.sequences[keep])


def first_number(prompts, completions, **kwargs):
    return [next((w for w in c.split() if w.isdigit()), None) for c in completions]


def test_min_agreement_places_a_candidate_only_where_most_answers_give_its_answer(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    rewards = RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"])
    # group 0: three of four answers say 7 in words; group 1: only its best answer does
    answers = ["is 7", "the 7 cat", "so 7", "dog", "is 7", "5 cats", "9 dogs", "fox"]
    generated = _generated(tokenizer, tokenizer("What is 3 + 4?")["input_ids"], answers, width=6)
    batch = {"prompts": ["What is 3 + 4?"] * 8}
    ungated = AnswerGuidance(first_number, tokenizer)(rewards, batch, generated, answers, group_size=4, iteration=0)
    assert ungated[1].view(2, 4).any(1).tolist() == [True, True]
    gated = AnswerGuidance(first_number, tokenizer, min_agreement=0.75)
    _, guided = gated(rewards, batch, generated, answers, group_size=4, iteration=0)
    assert guided.tolist() == [False, False, False, True] + [False] * 4  # the lowest answer of group 0 only
    with pytest.raises(ValueError, match="min_agreement must be in \\[0, 1\\], got 1.5"):
        AnswerGuidance(first_number, tokenizer, min_agreement=1.5)


def test_form_parity_pauses_guidance_while_the_answers_in_the_wanted_form_earn_less_than_the_others(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    rewards = RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"])
    prompt, batch = tokenizer("What is 3 + 4?")["input_ids"], {"prompts": ["What is 3 + 4?"] * 8}
    guidance = AnswerGuidance(first_number, tokenizer, form_parity=True)
    # "5" and "9" are in the wanted form (their own projection) and earn 0; the answers in words earn 0.25 on average
    answers = ["is 7", "the 7 cat", "5", "dog", "is 7", "9", "cat", "fox"]
    _, guided = guidance(rewards, batch, _generated(tokenizer, prompt, answers, 6), answers, group_size=4, iteration=0)
    assert not guided.any() and guidance.paused
    # nobody answers in the form: guided as without the check, one candidate per group
    answers = ["is 7", "the 7 cat", "so 5", "dog", "is 7", "a 9", "cat", "fox"]
    _, guided = guidance(rewards, batch, _generated(tokenizer, prompt, answers, 6), answers, group_size=4, iteration=0)
    assert guided.view(2, 4).sum(1).tolist() == [1, 1]
    # the same rollout, but another rank's answers in the form earned less: summed over the ranks, it pauses here too
    another_rank = torch.tensor([0.0, 8.0, 0.0, 0.0])
    _, guided = guidance(rewards, batch, _generated(tokenizer, prompt, answers, 6), answers, group_size=4,
                         iteration=0, reduce=lambda sums: sums + another_rank)
    assert not guided.any()


def test_a_groups_best_answer_already_in_the_wanted_form_is_an_exemplar_where_the_group_has_a_signal(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    rewards = RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"])
    # group 0: "7" is best and bare; group 1: bare answers, all paid 0 (no signal); group 2: best "is 7" in words
    answers = ["dog", "7", "is 7", "cat", "5", "9", "fox", "dog", "is 7", "cat", "3", "bread"]
    guidance = AnswerGuidance(first_number, tokenizer)
    generated = _generated(tokenizer, tokenizer("What is 3 + 4?")["input_ids"], answers, 6)
    _, guided = guidance(rewards, {"prompts": ["What is 3 + 4?"] * 12}, generated, answers, group_size=4,
                         iteration=0)
    assert guidance.exemplars.nonzero().flatten().tolist() == [1]
    assert guided.nonzero().flatten().tolist() == [9]  # group 2's candidate "7" takes "cat"


def test_no_candidate_where_it_earns_no_more_than_its_source(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    rewards = RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"])
    answers = ["cat", "dog", "fox", "bread"]
    generated = _generated(tokenizer, tokenizer("hi")["input_ids"], answers, width=6)
    guidance = AnswerGuidance(lambda prompts, completions, **kw: ["cow"] * len(completions), tokenizer)
    out, guided = guidance(rewards, {"prompts": ["hi"] * 4}, generated, answers, group_size=4, iteration=0)
    assert out is generated and not guided.any()


def test_a_projection_that_returns_no_text_fails_naming_itself(actor):
    tokenizer = AutoTokenizer.from_pretrained(actor)
    answers = ["cat", "dog"]
    generated = _generated(tokenizer, tokenizer("hi")["input_ids"], answers, width=4)
    guidance = AnswerGuidance(lambda prompts, completions, **kw: [1.0], tokenizer)
    with pytest.raises(ValueError, match="answer_projection '<lambda>' returned \\[1.0\\]"):
        guidance(RewardSources(["tests.modules.test_answer_guidance:alone_pays_most"]), {"prompts": ["hi"] * 2},
                 generated, answers, group_size=2, iteration=0)


def test_guided_grpo_counts_one_candidate_per_group_and_starts_each_update_at_ratio_one(tmp_path, actor):
    torch.manual_seed(0)
    module = make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:alone_pays_most"],
                         reward_weights=None, answer_projection="tests.modules.test_answer_guidance:to_wanted",
                         update_epochs=1, train_batch_size=16)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(actor))
    events = scalars(trainer)
    # 4 prompts x 4 answers: one candidate per group unless the policy sampled the bare "7" itself
    assert events.Scalars("grpo/guided_answers")[0].value == pytest.approx(0.25)
    # one mini-batch over the whole rollout: the candidates' old log-probs are the policy's own
    assert events.Scalars("grpo/ratio_mean")[0].value == pytest.approx(1.0, abs=1e-5)
    assert events.Scalars("grpo/reward_mean")[0].value >= 0.25  # each group holds a candidate paid 1.0


def test_answer_projection_needs_reward_functions_without_a_reward_model(actor, tiny_model_factory):
    reward_model = tiny_model_factory("llama", "reward", seed=0, **SIZES)
    with pytest.raises(ValueError, match="answer_projection scores its candidates with the reward functions"):
        make_module(actor, reward_model=str(reward_model), answer_projection="final_answer")
    with pytest.raises(ValueError, match="answer_agreement gates answer guidance, which is off"):
        make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:alone_pays_most"], reward_weights=None,
                    answer_agreement=0.5)
    with pytest.raises(ValueError, match="answer_form_parity pauses answer guidance, which is off"):
        make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:alone_pays_most"], reward_weights=None,
                    answer_form_parity=True)


def only_alone(prompts, completions, **kwargs):
    """A strict reward: the wanted answer alone, nothing for anything else."""
    return [1.0 if c.strip() == WANTED else 0.0 for c in completions]


def test_a_form_the_policy_never_samples_is_learned_only_with_guidance(tmp_path, actor):
    """The first trap of issue 31 on the tiny model: the reward pays only a form the untrained policy never
    samples, so every group is all zeros and nothing is learned; with guidance each group holds a candidate in that
    form, and the policy comes to sample it itself (rewards above the candidates' own 1 in 4, fewer candidates)."""
    curves = {}
    for projection in (None, "tests.modules.test_answer_guidance:to_wanted"):
        torch.manual_seed(0)
        module = make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:only_alone"],
                             reward_weights=None, answer_projection=projection, update_epochs=1,
                             train_batch_size=16, actor_optimizer=OptimizerArgs(learning_rate=5e-2,
                                                                                 scheduler="constant"))
        trainer = make_trainer(tmp_path / str(projection is not None), limit_train_batches=12, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(actor))
        events = scalars(trainer)
        curves[projection is not None] = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
                                          if tag in ("grpo/reward_mean", "grpo/guided_answers")}
    assert set(curves[False]["grpo/reward_mean"]) == {0.0} and "grpo/guided_answers" not in curves[False]
    print(curves)  # the curves the note quotes (pytest -s)
    reward, guided = curves[True]["grpo/reward_mean"], curves[True]["grpo/guided_answers"]
    assert guided[0] == pytest.approx(0.25) and reward[0] == pytest.approx(0.25)
    # the last 4 rollouts: the policy samples the form itself, so fewer groups need a candidate and more answers pay
    assert sum(reward[-4:]) / 4 > 0.3 and sum(guided[-4:]) / 4 < 0.15, curves


@torch.no_grad()
def wanted_logprob(module, datamodule) -> float:
    """The policy's mean log-probability of answering the wanted form ("7", then EOS) to a batch of prompts."""
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    ids = module.tokenizer(WANTED, add_special_tokens=False)["input_ids"] + [module.tokenizer.eos_token_id]
    answer = torch.tensor(ids).expand(len(batch["prompt_input_ids"]), -1)
    sequences = torch.cat([batch["prompt_input_ids"], answer], dim=1)
    mask = torch.cat([batch["prompt_attention_mask"], torch.ones_like(answer)], dim=1)
    logits = module.actor(input_ids=sequences, attention_mask=mask).logits[:, -len(ids) - 1:-1]
    return float(logits.log_softmax(-1).gather(-1, answer.unsqueeze(-1)).sum((1, 2)).mean())


def test_imitating_the_guided_answers_raises_their_probability_beyond_the_policy_gradient(tmp_path, actor):
    """``answer_imitation_coef`` adds the guided answers' NLL to the loss (logged as ``grpo/imitation_nll``): with
    the same seed and rewards, the policy ends with more probability on the guided form than with the candidates'
    policy gradient alone."""
    logprob = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        module = make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:only_alone"],
                             reward_weights=None, answer_projection="tests.modules.test_answer_guidance:to_wanted",
                             answer_imitation_coef=coef, update_epochs=1, train_batch_size=16,
                             actor_optimizer=OptimizerArgs(learning_rate=1e-2, scheduler="constant"))
        trainer = make_trainer(tmp_path / str(coef), limit_train_batches=5, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(actor))
        events = scalars(trainer)
        assert ("grpo/imitation_nll" in events.Tags()["scalars"]) == bool(coef)
        logprob[coef] = wanted_logprob(module, make_data(actor))
    print(logprob)
    assert logprob[1.0] > logprob[0.0] + 0.5, logprob
    with pytest.raises(ValueError, match="answer_imitation_coef imitates the guided answers, and answer guidance is off"):
        make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:only_alone"], reward_weights=None,
                    answer_imitation_coef=1.0)


def to_wanted_on_rank_zero(prompts, completions, **kwargs):
    """Candidates on rank 0 only: the ranks disagree on whether the rollout needs a log-prob forward."""
    import torch.distributed as dist

    return [WANTED if dist.get_rank() == 0 else None for _ in completions]


@pytest.mark.distributed
def test_two_ranks_under_zero3_agree_on_the_log_prob_forward_when_one_places_a_candidate(tmp_path):
    """Before the fix rank 0 ran the (collective) ZeRO-3 forward for its candidates and rank 1 did not: a hang."""
    from tests.modules.test_grpo_zero3 import fit_small_grpo_on_two_ranks

    events = fit_small_grpo_on_two_ranks(tmp_path, {
        "reward_funcs": ["tests.modules.test_answer_guidance:alone_pays_most"],
        "answer_projection": "tests.modules.test_answer_guidance:to_wanted_on_rank_zero"})
    # rank 0's 2 groups hold a candidate each, rank 1's none: 2 of the 16 answers of both ranks
    assert [e.value for e in events.Scalars("grpo/guided_answers")] == [pytest.approx(2 / 16)] * 2
    assert all(e.value == pytest.approx(1.0, abs=1e-5) for e in events.Scalars("grpo/ratio_mean"))


def half_or_alone_on_rank_zero(prompts, completions, **kwargs):
    """Rank 0: 1 for the wanted answer alone, 0.5 for anything else; rank 1: nothing."""
    import torch.distributed as dist

    return [(1.0 if c.strip() == WANTED else 0.5) if dist.get_rank() == 0 else 0.0 for c in completions]


_projections_made = []


def wanted_on_rank_zero_and_itself_on_rank_one_first(prompts, completions, **kwargs):
    """Rank 0: the wanted answer. Rank 1: each answer itself in the first rollout (so all of them are in the wanted
    form there, earning 0), nothing after."""
    import torch.distributed as dist

    _projections_made.append(1)
    if dist.get_rank() == 0:
        return [WANTED for _ in completions]
    return list(completions) if len(_projections_made) == 1 else [None for _ in completions]


@pytest.mark.distributed
def test_form_parity_decides_over_both_ranks_under_zero3(tmp_path):
    """Rank 0 alone has no answer in the wanted form; rank 1's earn less than rank 0's in words, so in the first
    rollout guidance pauses on both ranks; in the second rank 1 has none and rank 0 guides both its groups."""
    from tests.modules.test_grpo_zero3 import fit_small_grpo_on_two_ranks

    events = fit_small_grpo_on_two_ranks(tmp_path, {
        "reward_funcs": ["tests.modules.test_answer_guidance:half_or_alone_on_rank_zero"], "answer_form_parity": True,
        "answer_projection": "tests.modules.test_answer_guidance:wanted_on_rank_zero_and_itself_on_rank_one_first"})
    assert [e.value for e in events.Scalars("grpo/guided_answers")] == [0.0, pytest.approx(2 / 16)]
    assert [e.value for e in events.Scalars("grpo/guidance_paused")] == [1.0, 0.0]
