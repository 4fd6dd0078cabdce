"""How models are built: causal LMs and value models (LoRA, checkpointing, dropout), tokenizers, HF export."""

from lightning_rlhf.models.export import export_hf, gathered_state_dict, load_exported
from lightning_rlhf.models.loading import (
    LORA_TARGETS,
    LoraArgs,
    LoraConfigArgs,
    apply_lora,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    set_dropout,
    unwrap_peft,
    value_head_name,
)
from lightning_rlhf.models.tiny import save_tiny_model, tiny_config, train_tokenizer
from lightning_rlhf.models.values import (
    forward_accepts,
    gather_last,
    last_token_index,
    position_ids_from_mask,
    sequence_scores,
    token_values,
)

__all__ = [
    "LORA_TARGETS",
    "LoraArgs",
    "LoraConfigArgs",
    "apply_lora",
    "count_parameters",
    "export_hf",
    "gather_last",
    "gathered_state_dict",
    "last_token_index",
    "load_causal_lm",
    "load_exported",
    "load_tokenizer",
    "load_value_model",
    "forward_accepts",
    "position_ids_from_mask",
    "save_tiny_model",
    "sequence_scores",
    "set_dropout",
    "tiny_config",
    "token_values",
    "train_tokenizer",
    "unwrap_peft",
    "value_head_name",
]
