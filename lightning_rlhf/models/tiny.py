"""Tiny models and tokenizers built locally, never downloaded, for the default pipeline and the tests.

They keep real-model traits (SmolLM2, Llama 3): a non-zero pad id, tied embeddings, grouped-query attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

Family = Literal["llama", "opt", "gpt2", "gpt_neox"]

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, one token per digit, with UNK 0, BOS 1, EOS 2, pad 3."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
    )


def tiny_config(
    family: Family,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 256,
    num_kv_heads: int | None = None,
    tie_embeddings: bool | None = None,
) -> PretrainedConfig:
    """A small config of ``family`` (llama, opt, gpt2, gpt_neox) whose vocabulary and special ids match ``tokenizer``.

    Llama only: ``num_kv_heads`` None is the largest proper divisor of ``num_heads``; ``tie_embeddings`` None ties.
    """
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if family == "llama":
        return AutoConfig.for_model(
            "llama", hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or grouped_kv_heads(num_heads),
            max_position_embeddings=max_positions, tie_word_embeddings=True if tie_embeddings is None else tie_embeddings,
            **ids,
        )
    if family == "opt":
        return AutoConfig.for_model(
            "opt", hidden_size=hidden_size, ffn_dim=hidden_size * 4, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, word_embed_proj_dim=hidden_size, max_position_embeddings=max_positions,
            **ids,
        )
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions, **ids
        )
    if family == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox", hidden_size=hidden_size, intermediate_size=hidden_size * 4, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, max_position_embeddings=max_positions, **ids,
        )
    raise ValueError(f"unknown tiny model family {family!r}; choose one of llama, opt, gpt2, gpt_neox")


def grouped_kv_heads(num_heads: int) -> int:
    """Key/value heads for grouped-query attention: the largest divisor of ``num_heads`` below it (1 for 1)."""
    return next((k for k in range(num_heads // 2, 0, -1) if num_heads % k == 0), 1)


def save_tiny_model(
    path: str | Path,
    family: Family,
    tokenizer: PreTrainedTokenizerFast,
    head: Literal["causal_lm", "value"] = "causal_lm",
    seed: int = 0,
    **sizes: int,
) -> Path:
    """Save a randomly initialised tiny model (``head="value"``: reward model / critic) and its tokenizer to ``path``.

    ``sizes`` go to :func:`tiny_config`.
    """
    path = Path(path)
    config = tiny_config(family, tokenizer, **sizes)
    torch.manual_seed(seed)
    if head == "value":
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
