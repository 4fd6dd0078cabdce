"""Per-parameter change flags and the adapter-only decision of a replica refresh, on a real peft LoRA model.

The 2-rank ZeRO-3 runs (``tests/strategies/test_generation.py``, refresh cases) check bytes and bits; this checks
the decision itself in one process: which parameters are flagged, and when a group is re-merged from its adapters.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from lightning_rlhf.strategies.lora_refresh import GroupSources
from lightning_rlhf.strategies.replica_refresh import ChangedParameters
from lightning_rlhf.strategies.tensor_parallel import InferenceReplica

CPU = torch.device("cpu")


def test_only_changed_adapters_are_flagged_and_re_merged(tiny_model_factory):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", hidden_size=64, num_layers=2, num_heads=4))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    group = InferenceReplica(model, CPU, gather_partition_size=1).groups[1]  # decoder layer 0
    sources, changes = GroupSources.of(group), ChangedParameters()
    attention = model.base_model.model.model.layers[0].self_attn
    q_slot = next(i for i, slot in enumerate(group) if slot.lora_owner is attention.q_proj)
    lora_a, lora_b = attention.q_proj.lora_A["default"].weight, attention.q_proj.lora_B["default"].weight
    every, none = [True] * len(group), [False] * len(group)

    def flagged() -> tuple[list[bool], list[int]]:
        flags = changes.changed([sources.params], CPU)[0]
        changes.refreshed()
        return flags, [id(p) for p, flag in zip(sources.params, flags) if flag]

    flags, moved = flagged()
    assert len(moved) == len(sources.params) == len({id(p) for p in sources.params})  # first: all, each once
    assert sources.adapter_only(flags, every) is None  # base weights among them: copy whole
    with torch.no_grad():
        lora_b.add_(0.1)
    flags, moved = flagged()
    assert moved == [id(lora_b)]
    assert sources.adapter_only(flags, every) == [q_slot]
    assert [id(p) for p in sources.adapters_of([q_slot])] == [id(lora_a), id(lora_b)]
    assert sources.adapter_only(flags, none) is None  # no kept base shard: copy whole
    with torch.no_grad():
        attention.q_proj.base_layer.weight.mul_(1.5)  # a checkpoint load / EMA swap of a frozen weight
        lora_a.add_(0.1)
    flags, moved = flagged()
    assert moved == [id(attention.q_proj.base_layer.weight), id(lora_a)]
    assert sources.adapter_only(flags, every) is None
    flags, moved = flagged()
    assert moved == [] and sources.adapter_only(flags, every) == []
