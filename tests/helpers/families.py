"""Tiny models of any transformers family that ships a tensor-parallel plan, built from its default config.

Why a generic shrinker: transformers adds families and plan styles every release; the tests walk them
without a hand-written config per family. Only fields the family's config already has are overridden,
so every family keeps its own structure (experts, MLA ranks, sliding windows) at a tiny size with
real-model traits: a pad id set, grouped-query attention (4 heads, 2 key/value heads).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=256, moe_intermediate_size=32, shared_expert_intermediate_size=32,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
    first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
    v_head_dim=16, qk_head_dim=16, sliding_window=16, n_group=1, topk_group=1, rotary_dim=8,
)

#: Per-family traits of the real models: MLA (DeepSeek-V2) expands its latent to every head, no grouped-query KV.
FAMILY_OVERRIDES = {"deepseek_v2": dict(num_key_value_heads=4)}
OFF_WHEN_NONE = {"sliding_window", "q_lora_rank", "rotary_dim"}  # None switches the feature off: keep it off


def tiny_family_config(family: str, tokenizer, **overrides):
    """A small config of ``family`` whose vocabulary and special ids match ``tokenizer``."""
    defaults = AutoConfig.for_model(family)
    sizes = {k: v for k, v in {**SMALL, **FAMILY_OVERRIDES.get(family, {}), **overrides}.items()
             if hasattr(defaults, k) and (getattr(defaults, k) is not None or k not in OFF_WHEN_NONE)}
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    return AutoConfig.for_model(family, **sizes, **ids)


def save_tiny_family(path: Path, family: str, tokenizer, seed: int = 0) -> Path:
    """Save a randomly initialised tiny ``family`` model and ``tokenizer`` to ``path`` (fp32)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_family_config(family, tokenizer), dtype=torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
