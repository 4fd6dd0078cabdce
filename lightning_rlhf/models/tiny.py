"""Tiny models and tokenizers built locally, never downloaded.

Why: the embedded default pipeline and every test need real ``transformers`` models and a real
tokenizer without network access. We train a small byte-level BPE tokenizer on the texts at hand
(digits split one per token, so arithmetic stays learnable) and build randomly initialised models of
the common families from their configs, saved with ``save_pretrained`` so the ordinary
``from_pretrained`` path is what loads them.

Real-model traits on purpose, so tests meet what pretrained models bring (SmolLM2, Llama 3): the pad token
has a non-zero id (an embedding row of its own, zeroed by transformers' init: the row ZeRO-3 partitioning
can hide), llama ties its input and output embeddings and uses grouped-query attention.
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
    """Train a byte-level BPE tokenizer with distinct pad, BOS, EOS and UNK tokens.

    The special ids are UNK 0, BOS 1, EOS 2, pad 3 (the layout of SmolLM2's, whose pad is not 0 either).

    Args:
        texts: the corpus to learn merges from (any iterable of strings).
        vocab_size: target vocabulary size including the 256 byte symbols and 4 special tokens.
    """
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
    """A small config of ``family`` whose vocabulary and special ids match ``tokenizer``.

    Args:
        family: model family, one of ``llama``, ``opt``, ``gpt2``, ``gpt_neox``.
        tokenizer: the tokenizer whose size and pad/BOS/EOS ids the config takes.
        hidden_size: width of the residual stream.
        num_layers: number of transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``; 3 or 9 give heads that a tensor-parallel
            size of 2 cannot split).
        max_positions: longest sequence the position embeddings cover.
        num_kv_heads: llama's key/value heads; None: grouped-query attention with the largest proper divisor
            of ``num_heads`` (4 -> 2, 9 -> 3, 3 -> 1), as in Llama 3 and SmolLM2.
        tie_embeddings: llama's ``tie_word_embeddings``; None: tied, as in small Llama-family models.
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
    """Build a randomly initialised tiny model and save it with its tokenizer as a Hugging Face folder.

    Args:
        path: output folder.
        family: model family (see :func:`tiny_config`).
        tokenizer: saved beside the model.
        head: ``causal_lm`` for a policy, ``value`` for a one-label sequence-classification model
            (reward model / critic).
        seed: initialisation seed, so tests are reproducible.
        **sizes: forwarded to :func:`tiny_config` (``hidden_size``, ``num_layers``, ``num_kv_heads``, ...).
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
