"""The decode loop's one-token attention: ``sdpa``'s output for grouped heads and left-padding masks, set only on a
CPU model that attends with ``sdpa`` and only within its block."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lightning_rlhf.models.decode_attention import NAME, decode_attention_forward, one_token_attention
from tests.models.test_prompt_cache import SIZES


def test_one_query_token_attends_as_sdpa_with_grouped_heads_and_a_padding_mask():
    torch.manual_seed(0)
    module = nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    query, key, value = torch.randn(4, 6, 1, 8), torch.randn(4, 2, 9, 8), torch.randn(4, 2, 9, 8)
    mask = torch.ones(4, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :3] = False  # a left-padded row
    for attention_mask in (mask, None):
        expected, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
        out, weights = decode_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
        assert weights is None and out.shape == expected.shape == (4, 1, 6, 8)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    prompt = torch.randn(4, 6, 5, 8)  # several query tokens: sdpa itself
    assert torch.equal(decode_attention_forward(module, prompt, key, value, None, scaling=0.3)[0],
                       sdpa_attention_forward(module, prompt, key, value, None, scaling=0.3)[0])


def test_the_model_decodes_with_it_only_inside_the_block(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES), attn_implementation="sdpa")
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with one_token_attention(model) as active:
            assert active and model.config._attn_implementation == NAME
            torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"  # a user's choice is kept
    with one_token_attention(model) as active:
        assert not active and model.config._attn_implementation == "eager"
