"""export_hf: consolidated safetensors folders that plain from_pretrained loads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lightning_rlhf.models import (
    LoraArgs,
    export_hf,
    gathered_state_dict,
    load_causal_lm,
    load_value_model,
    sequence_scores,
)
from tests.models.fixtures import task_tokenizer, tiny_folder


def _perturb_lora(model, seed=0):
    """Give LoRA (and head) weights non-zero values so merging has something to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or name.endswith("score.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_lora_merged_causal_lm_loads_plain_with_same_logits(tmp_path, family):
    model = load_causal_lm(tiny_folder(tmp_path, family), lora=LoraArgs(rank=4)).eval()
    _perturb_lora(model)
    out = export_hf(model, task_tokenizer(), tmp_path / "out")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in loaded.state_dict())
    ids = torch.randint(4, 200, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out).pad_token_id == task_tokenizer().pad_token_id


def test_export_value_model_with_lora_and_extra_files(tmp_path):
    model = load_value_model(tiny_folder(tmp_path, "opt"), lora=LoraArgs(rank=2)).eval()
    _perturb_lora(model)
    out = export_hf(model, None, tmp_path / "rm", extra_files={"reward_stats.json": {"mean": 1.5, "std": 2.0}})
    assert json.loads((out / "reward_stats.json").read_text()) == {"mean": 1.5, "std": 2.0}
    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert loaded.config.num_labels == 1
    ids = torch.randint(4, 200, (3, 7))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(sequence_scores(loaded, ids, mask), sequence_scores(model, ids, mask), atol=1e-5, rtol=0)


def test_export_unmerged_keeps_base_and_adapter(tmp_path):
    from peft import PeftModel

    model = load_causal_lm(tiny_folder(tmp_path, "llama"), lora=LoraArgs(rank=4)).eval()
    _perturb_lora(model)
    out = export_hf(model, task_tokenizer(), tmp_path / "unmerged", merge_lora=False)
    base = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(4, 200, (2, 9))
    with model.disable_adapter():
        torch.testing.assert_close(base(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.testing.assert_close(adapted(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_gathered_state_dict_without_zero_equals_state_dict(tmp_path):
    model = load_causal_lm(tiny_folder(tmp_path, "gpt2"))  # gpt2 ties lm_head to the embeddings
    full = gathered_state_dict(model, rank0_only=False, group_numel=1000)  # many small groups
    reference = model.state_dict()
    assert full.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(full[key], value) and full[key].device.type == "cpu"
