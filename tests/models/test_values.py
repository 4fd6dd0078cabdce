"""token_values / sequence_scores: last real token by the mask, right and left padding alike."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.models import LoraArgs, load_value_model, sequence_scores, token_values
from tests.models.fixtures import tiny_folder


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "gpt_neox"])
def test_scores_agree_for_unpadded_right_and_left_padded_input(tmp_path, family):
    model = load_value_model(tiny_folder(tmp_path, family, head="value")).eval()
    short, long = torch.randint(4, 200, (1, 5)), torch.randint(4, 200, (1, 8))
    alone = torch.cat([sequence_scores(model, s, torch.ones_like(s)) for s in (short, long)])
    right = torch.zeros(2, 8, dtype=torch.long)
    right_mask = torch.zeros_like(right)
    left, left_mask = right.clone(), right_mask.clone()
    right[0, :5], right[1] = short[0], long[0]
    right_mask[0, :5], right_mask[1] = 1, 1
    left[0, 3:], left[1] = short[0], long[0]
    left_mask[0, 3:], left_mask[1] = 1, 1
    torch.testing.assert_close(sequence_scores(model, right, right_mask), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(sequence_scores(model, left, left_mask), alone, atol=1e-5, rtol=0)


def test_token_values_match_hf_pooled_logits_at_the_last_token(tmp_path):
    model = load_value_model(tiny_folder(tmp_path, "llama", head="value")).eval()
    ids = torch.randint(4, 200, (2, 7))
    mask = torch.ones_like(ids)
    values = token_values(model, ids, mask)
    assert values.shape == (2, 7) and values.dtype == torch.float32
    torch.testing.assert_close(values[:, -1], model(input_ids=ids).logits.squeeze(-1))


def test_token_values_through_a_peft_wrapper_have_gradients(tmp_path):
    model = load_value_model(tiny_folder(tmp_path, "gpt2"), lora=LoraArgs(rank=2))
    ids = torch.randint(4, 200, (2, 6))
    token_values(model, ids, torch.ones_like(ids)).sum().backward()
    head = [p for n, p in model.named_parameters() if n.endswith("score.weight")][0]
    assert head.grad is not None and head.grad.abs().sum() > 0
