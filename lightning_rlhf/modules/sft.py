"""Step 1: supervised fine-tuning of a causal LM on prompt/response pairs."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.algorithms import causal_lm_loss
from lightning_rlhf.models import LoraArgs, load_causal_lm
from lightning_rlhf.modules._base import HFModelModule
from lightning_rlhf.modules.optim import OptimizerArgs

IGNORE_INDEX = -100


class SFTModule(HFModelModule):
    """Next-token cross-entropy on the response tokens only (labels ``-100`` on prompt and padding).

    Args:
        model: a Hugging Face causal-LM folder, or a built ``PreTrainedModel``.
        tokenizer: tokenizer folder (None: the model folder).
        lora: LoRA settings; None trains every weight.
        gradient_checkpointing: recompute activations in the backward pass.
        dropout: set every dropout probability to this (None keeps the model's).
        torch_dtype: parameter dtype when loading (``bfloat16``, ``float16``; None keeps float32).
        trust_remote_code: allow custom modelling code from the model folder.
        optimizer: AdamW + warmup/cosine settings (defaults: lr 1e-5, no warmup, cosine to 0).
        packed_linears: run frozen linear layers (LoRA's base weights, a reference) from oneDNN-packed weights where
            oneDNN runs them (CPU, float32; docs/recipes/generation.md).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        lora: LoraArgs | None = None,
        gradient_checkpointing: bool = False,
        dropout: float | None = None,
        torch_dtype: str | None = None,
        trust_remote_code: bool = False,
        optimizer: OptimizerArgs | None = OptimizerArgs(),
        packed_linears: bool = True,
    ) -> None:
        super().__init__(
            model, tokenizer, lora, gradient_checkpointing, dropout, torch_dtype, trust_remote_code, optimizer,
            packed_linears,
        )
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)

    def build_model(self) -> PreTrainedModel:
        return load_causal_lm(self._model_in or self.model_path, **self.load_kwargs())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits ``(B, T, V)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _check_batch(self, batch: dict[str, Tensor]) -> None:
        missing = {"input_ids", "attention_mask", "labels"} - set(batch)
        if missing:
            raise KeyError(f"SFTModule: batch lacks {sorted(missing)} (got {sorted(batch)}); use an SFT-stage batch")

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean next-token cross-entropy over the response tokens of an SFT batch."""
        self._check_batch(batch)
        return causal_lm_loss(self(batch["input_ids"], batch["attention_mask"]), batch["labels"], IGNORE_INDEX)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._check_batch(batch)
        logits = self(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        if tokens > 0:
            self.val_loss.update(causal_lm_loss(logits, labels, IGNORE_INDEX), weight=tokens)
            self.val_perplexity.update(logits[:, :-1].float(), labels[:, 1:])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.log("val/perplexity", self.val_perplexity.compute(), prog_bar=True, sync_dist=False)
        self.val_loss.reset()
        self.val_perplexity.reset()

    @torch.no_grad()
    def evaluate_perplexity(self, dataloader) -> float:
        """Perplexity of the current model over ``dataloader`` (outside a Trainer; single process)."""
        metric = Perplexity(ignore_index=IGNORE_INDEX).to(self.device)
        was_training = self.training
        self.eval()
        for batch in dataloader:
            batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
            metric.update(self(batch["input_ids"], batch["attention_mask"])[:, :-1].float(), batch["labels"][:, 1:])
        self.train(was_training)
        return float(metric.compute())
