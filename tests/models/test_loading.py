"""Loading causal LMs and value models: families, LoRA, dropout, gradient checkpointing, tokenizer setup."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from lightning_rlhf.models import (
    LoraArgs,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    sequence_scores,
    set_dropout,
)
from tests.models.fixtures import task_tokenizer, tiny_folder

FAMILIES = ["llama", "opt", "gpt2", "gpt_neox"]
AUTO_TARGET = {"llama": "q_proj", "opt": "q_proj", "gpt2": "c_attn", "gpt_neox": "query_key_value"}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_auto_targets_and_only_lora(tmp_path, family):
    path = tiny_folder(tmp_path, family)
    model = load_causal_lm(path, lora=LoraArgs(rank=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(AUTO_TARGET[family] in n for n in trainable)
    full = load_causal_lm(path, lora=LoraArgs(rank=4, only_lora=False))
    assert all(p.requires_grad for p in full.parameters())


def test_value_model_lora_keeps_head_trainable(tmp_path):
    model = load_value_model(tiny_folder(tmp_path), lora=LoraArgs(rank=2, target_modules=["v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith("score.weight") for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    assert not any("q_proj.lora" in n for n in trainable)


def test_lora_args_validation():
    with pytest.raises(ValueError, match="rank"):
        LoraArgs(rank=0)
    with pytest.raises(ValueError, match="no default for model type 'mamba'"):
        LoraArgs().resolve_targets("mamba")


def test_value_model_from_causal_lm_starts_at_zero_and_value_folder_keeps_head(tmp_path):
    ids = torch.randint(4, 200, (3, 6))
    mask = torch.ones_like(ids)
    fresh = load_value_model(tiny_folder(tmp_path, "gpt2"))
    assert torch.equal(sequence_scores(fresh, ids, mask), torch.zeros(3))
    trained = load_value_model(tiny_folder(tmp_path, "gpt2", head="value"))
    assert sequence_scores(trained, ids, mask).abs().sum() > 0


def test_dropout_zero_makes_training_forward_deterministic(tmp_path):
    path = tiny_folder(tmp_path, "opt")
    model = load_causal_lm(path, dropout=0.0).train()
    assert model.config.dropout == 0.0 and model.config.attention_dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    ids = torch.randint(4, 200, (2, 8))
    assert torch.equal(model(ids).logits, model(ids).logits)
    set_dropout(model, 0.5)
    assert model.config.dropout == 0.5
    assert not torch.equal(model(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="dropout"):
        set_dropout(model, 1.5)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    path = tiny_folder(tmp_path, "llama")
    ids = torch.randint(4, 200, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = load_causal_lm(path, gradient_checkpointing=checkpointing, dropout=0.0).train()
        assert model.is_gradient_checkpointing == checkpointing
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_load_tokenizer_gives_a_pad_distinct_from_eos(tmp_path):
    tokenizer = task_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").pad_token_id == tokenizer.pad_token_id  # already distinct: kept
    no_pad = AutoTokenizer.from_pretrained(tmp_path / "tok")
    no_pad.pad_token = no_pad.eos_token  # what gpt2/llama folders ship
    no_pad.save_pretrained(tmp_path / "eos_pad")
    fixed = load_tokenizer(tmp_path / "eos_pad")
    assert fixed.pad_token_id not in (None, fixed.eos_token_id)
    assert fixed.pad_token == fixed.unk_token


def test_new_pad_token_resizes_embeddings(tmp_path):
    path = tiny_folder(tmp_path, "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    model = load_causal_lm(path, tokenizer=tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_dropout_zero_reaches_the_lora_branch(tmp_path):
    """``dropout=0`` (PPO's setting) also silences LoRA's own dropout: two train-mode forwards agree."""
    from lightning_rlhf.models import LoraArgs, load_causal_lm
    from tests.models.fixtures import tiny_folder

    model = load_causal_lm(str(tiny_folder(tmp_path)), lora=LoraArgs(rank=4, dropout=0.3), dropout=0.0).train()
    probabilities = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert any("lora_dropout" in name for name in probabilities) and set(probabilities.values()) == {0.0}
    ids = torch.randint(4, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
