"""Answer guidance's row choice: each group's best answer is the source, its lowest answer the one replaced."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms.guidance import best_rows, form_earns_less, form_sums, imitation_loss, replaced_rows

NAN = math.nan


def test_the_source_is_each_groups_best_answer_and_an_unscored_group_has_none():
    totals = torch.tensor([0.1, 0.9, 0.5, NAN, NAN, NAN, 2.0, 2.0, 1.0])
    assert best_rows(totals, 3).tolist() == [1, -1, 6]  # the first of tied bests; a group nobody scored: -1


def test_a_candidate_replaces_the_lowest_answer_only_where_it_earns_more_than_its_source():
    totals = torch.tensor([0.1, 0.9, NAN, 1.0, 0.2, 0.3, 0.0, 0.0, 0.0])
    sources = best_rows(totals, 3)
    assert sources.tolist() == [1, 3, 6]
    candidates = torch.tensor([2.5, 1.0, NAN])  # more than 0.9; equal to 1.0 (no gain); no candidate
    assert replaced_rows(totals, sources, candidates, 3).tolist() == [2, -1, -1]  # the unscored row goes first
    candidates = torch.tensor([0.5, 1.5, 0.1])
    assert replaced_rows(totals, sources, candidates, 3).tolist() == [-1, 4, 7]


def test_a_group_of_one_keeps_its_answer():
    totals = torch.tensor([0.0, 1.0])
    assert replaced_rows(totals, best_rows(totals, 1), torch.tensor([5.0, 5.0]), 1).tolist() == [-1, -1]


def test_rewards_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        best_rows(torch.zeros(6), 4)


def test_imitation_is_the_mean_token_nll_of_the_demonstrations_alone():
    logprobs = torch.tensor([[-1.0, -3.0, -9.0], [-0.5, -0.5, -0.5], [-2.0, -4.0, -6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    loss = imitation_loss(logprobs, mask, torch.tensor([True, False, True]))
    assert loss.item() == pytest.approx((1.0 + 3.0 + 2.0) / 3)  # rows 0 and 2, their masked tokens only
    loss.backward()
    assert logprobs.grad[1].abs().sum() == 0 and logprobs.grad[0, 2] == 0
    none = imitation_loss(logprobs, mask, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad  # a mini-batch without demonstrations still backpropagates
    padded = torch.tensor([[-1.0, float("-inf")]])  # a padding position's log-prob never reaches the mean
    assert imitation_loss(padded, torch.tensor([[True, False]]), torch.tensor([True])).item() == 1.0


def test_the_form_earns_less_when_its_mean_total_is_below_the_others_and_never_while_one_kind_is_missing():
    totals = torch.tensor([0.0, 1.15, 1.0, 1.0, NAN, 0.0])
    in_form = torch.tensor([True, True, False, False, True, False])
    sums = form_sums(totals, in_form)  # the unscored answer counts on neither side
    assert sums.tolist() == pytest.approx([1.15, 2.0, 2.0, 3.0])
    assert form_earns_less(sums)  # 0.575 < 0.667
    assert not form_earns_less(form_sums(totals, torch.tensor([False, True, False, False, True, False])))  # 1.15 > 0.5
    assert not form_earns_less(form_sums(totals, torch.zeros(6, dtype=torch.bool)))  # nobody answers in the form yet
    assert not form_earns_less(form_sums(totals, torch.ones(6, dtype=torch.bool)))
    assert form_earns_less(sums + torch.tensor([0.0, 2.0, 0.0, 0.0]))  # summed across ranks: two more at 0
