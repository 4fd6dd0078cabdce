"""Tiny models carry the traits of real pretrained ones, so tests meet what SmolLM2 or Llama 3 bring."""

from __future__ import annotations

import pytest

from lightning_rlhf.models.tiny import grouped_kv_heads, tiny_config
from lightning_rlhf.strategies.tp_plans import check_divisible
from tests.models.fixtures import task_tokenizer


def test_tiny_tokenizer_pads_with_a_non_zero_id_distinct_from_eos():
    tokenizer = task_tokenizer()
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 3)


def test_tiny_llama_ties_embeddings_and_groups_query_heads():
    config = tiny_config("llama", task_tokenizer())
    assert config.pad_token_id == 3 and config.tie_word_embeddings
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    untied = tiny_config("llama", task_tokenizer(), num_kv_heads=4, tie_embeddings=False)
    assert untied.num_key_value_heads == 4 and not untied.tie_word_embeddings
    assert [grouped_kv_heads(n) for n in (1, 2, 3, 4, 9)] == [1, 1, 1, 2, 3]


def test_three_heads_cannot_be_split_over_two_ranks():
    config = tiny_config("llama", task_tokenizer(), hidden_size=48, num_heads=3)
    with pytest.raises(ValueError, match="num_attention_heads=3 is not divisible by inference_tp_size=2"):
        check_divisible(config, 2)
