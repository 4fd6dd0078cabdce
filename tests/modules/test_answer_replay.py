"""Replay of guided answers: the latest guided answer per prompt is kept and imitated beside later mini-batches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lightning_rlhf.modules.answer_replay import AnswerReplay
from lightning_rlhf.modules.optim import OptimizerArgs
from tests.modules.test_answer_guidance import WANTED, actor, wanted_logprob  # noqa: F401 (fixture)
from tests.modules.test_grpo import make_data, make_module, make_trainer, scalars

PAD = 0


def _rollout(prompts: list[list[int]], answers: list[list[int]], prompt_width: int, response_width: int):
    sequences = torch.full((len(prompts), prompt_width + response_width), PAD)
    attention = torch.zeros_like(sequences)
    response_mask = torch.zeros((len(prompts), response_width), dtype=torch.bool)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        sequences[i, prompt_width - len(p):prompt_width] = torch.tensor(p)
        sequences[i, prompt_width:prompt_width + len(a)] = torch.tensor(a)
        attention[i, prompt_width - len(p):prompt_width + len(a)] = 1
        response_mask[i, :len(a)] = True
    return sequences, attention, response_mask


def test_the_latest_guided_answer_per_prompt_is_kept_and_replayed_in_the_mini_batch_layout():
    replay = AnswerReplay(PAD, capacity=2)
    sequences, attention, mask = _rollout([[5, 6], [7], [5, 6]], [[9, 2], [8, 2], [3, 2]], 3, 3)
    replay.add(sequences, attention, mask, torch.tensor([True, False, False]))
    replay.add(sequences, attention, mask, torch.tensor([False, True, True]))  # prompt [5, 6] again: its newer answer
    assert replay.answers == {(7,): (8, 2), (5, 6): (3, 2)}
    replay.add(*_rollout([[4]], [[1, 2]], 1, 2), torch.tensor([True]))  # over capacity: the oldest prompt goes
    assert list(replay.answers) == [(5, 6), (4,)]
    rows = replay.rows(5, prompt_width=3, response_width=2, generator=torch.Generator().manual_seed(0))
    assert rows is not None
    got = {tuple(s.tolist()): (tuple(a.tolist()), tuple(m.tolist())) for s, a, m in zip(*rows)}
    assert got == {(PAD, 5, 6, 3, 2): ((0, 1, 1, 1, 1), (True, True)),
                   (PAD, PAD, 4, 1, 2): ((0, 0, 1, 1, 1), (True, True))}
    assert replay.rows(5, prompt_width=1, response_width=2, generator=torch.Generator()) is not None  # [4] fits
    assert replay.rows(5, prompt_width=1, response_width=1, generator=torch.Generator()) is None  # nothing fits
    restored = AnswerReplay(PAD)
    restored.load_state_dict(replay.state_dict())
    assert restored.answers == replay.answers and list(restored.answers) == list(replay.answers)


_calls = []


def wanted_in_the_first_rollout_only(prompts, completions, **kwargs):
    """Candidates in the first rollout; no projection after it, so later rollouts have no guided answer."""
    _calls.append(1)
    return [WANTED if len(_calls) == 1 else None for _ in completions]


def test_replay_keeps_imitating_guided_answers_after_their_rollout(tmp_path, actor):
    """Guidance places candidates in the first rollout alone: without replay the imitation stops with it, with
    replay the kept answers are imitated in every later mini-batch and the policy ends more likely to give them."""
    logprob = {}
    for replay in (0, 4):
        _calls.clear()
        torch.manual_seed(0)
        module = make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:only_alone"],
                             reward_weights=None,
                             answer_projection="tests.modules.test_answer_replay:wanted_in_the_first_rollout_only",
                             answer_imitation_coef=1.0, answer_replay=replay, update_epochs=1, train_batch_size=16,
                             actor_optimizer=OptimizerArgs(learning_rate=1e-2, scheduler="constant"))
        trainer = make_trainer(tmp_path / str(replay), limit_train_batches=5, limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(actor))
        events = scalars(trainer)
        if replay:
            replayed = [e.value for e in events.Scalars("grpo/replayed_answers")]
            assert all(value > 0 for value in replayed), replayed  # the first rollout's are kept before its update
            state = module.extra_state()["answer_replay_per_rank"]
            assert len(state) == 1 and state[0]["answers"]
        logprob[replay] = wanted_logprob(module, make_data(actor))
    print(logprob)
    assert logprob[4] > logprob[0] + 0.5, logprob
    with pytest.raises(ValueError, match="answer_replay replays guided answers into the imitation term, which is off"):
        make_module(actor, reward_funcs=["tests.modules.test_answer_guidance:only_alone"], reward_weights=None,
                    answer_projection="final_answer", answer_replay=4)


@pytest.mark.distributed
def test_two_ranks_under_zero3_replay_their_own_answers_and_checkpoint_both(tmp_path):
    """Each rank replays the answers it kept; the checkpoint holds both ranks' (gathered: saving is collective)."""
    from tests.modules.test_grpo_zero3 import fit_small_grpo_on_two_ranks

    checkpoint = {"class_path": "lightning_rlhf.callbacks.IterationCheckpoint",
                  "init_args": {"every_n_iterations": 2, "dirpath": str(tmp_path / "ckpt"), "save_top_k": 0}}
    events = fit_small_grpo_on_two_ranks(tmp_path, {
        "reward_funcs": ["tests.modules.test_answer_guidance:alone_pays_most"],
        "answer_projection": "tests.modules.test_answer_guidance:to_wanted", "answer_imitation_coef": 1.0,
        "answer_replay": 2}, callbacks=[checkpoint])
    assert [e.value for e in events.Scalars("grpo/replayed_answers")] == [2.0, 2.0]  # both ranks, both rollouts
    state = torch.load(tmp_path / "ckpt" / "last.ckpt" / "lightning_state.pt", weights_only=False)
    saved = state["grpo_state"]["answer_replay_per_rank"]
    assert len(saved) == 2 and all(rank["answers"] for rank in saved)
