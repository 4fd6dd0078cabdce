"""Step 2: a reward model trained on preference pairs with the pairwise (Bradley-Terry) loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.algorithms import pairwise_reward_loss
from lightning_rlhf.models import LoraArgs, load_value_model, sequence_scores
from lightning_rlhf.modules._base import HFModelModule
from lightning_rlhf.modules.optim import OptimizerArgs

REWARD_STATS_FILE = "reward_stats.json"
_PAIR_KEYS = ("chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask")


def stack_pairs(batch: dict[str, Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Chosen rows then rejected rows in one right-padded ``(2B, T)`` batch: one forward, one ZeRO-3 gather."""
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    ids, masks = [], []
    for side in ("chosen", "rejected"):
        grow = width - batch[f"{side}_input_ids"].shape[1]
        ids.append(F.pad(batch[f"{side}_input_ids"], (0, grow), value=pad_id))
        masks.append(F.pad(batch[f"{side}_attention_mask"], (0, grow), value=0))
    return torch.cat(ids), torch.cat(masks)


class RewardModule(HFModelModule):
    """Backbone + scalar head trained with ``-logsigmoid(r_chosen - r_rejected)`` at each sequence's last real token.

    The last token is what PPO reads (why not DeepSpeed-Chat's per-token loss: docs/concepts.md). On export,
    ``reward_stats.json`` (the training split's reward mean and std) is written for PPO's reward normalisation.

    Args:
        model: a Hugging Face folder (causal LM: a zero-initialised head is added; value model: kept).
        tokenizer: tokenizer folder (None: the model folder).
        lora: LoRA settings; the head stays trainable.
        gradient_checkpointing: recompute activations in the backward pass.
        dropout: set every dropout probability to this (None keeps the model's).
        torch_dtype: parameter dtype when loading (``bfloat16``, ``float16``; None keeps float32).
        trust_remote_code: allow custom modelling code from the model folder.
        optimizer: AdamW + warmup/cosine settings (defaults: lr 1e-5, no warmup, cosine to 0).
        packed_linears: run frozen linear layers (LoRA's base weights, a reference) from oneDNN-packed weights where
            oneDNN runs them (CPU, float32; docs/recipes/generation.md).
        reward_stats_max_batches: training batches scored for ``reward_stats.json`` (None: all).
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
        reward_stats_max_batches: int | None = None,
    ) -> None:
        super().__init__(
            model, tokenizer, lora, gradient_checkpointing, dropout, torch_dtype, trust_remote_code, optimizer,
            packed_linears,
        )
        if reward_stats_max_batches is not None and reward_stats_max_batches <= 0:
            raise ValueError(f"reward_stats_max_batches must be positive or None, got {reward_stats_max_batches}")
        self.reward_stats_max_batches = reward_stats_max_batches
        self.val_metrics = torch.nn.ModuleDict(
            {name: MeanMetric() for name in ("loss", "accuracy", "chosen_reward", "rejected_reward", "margin")}
        )
        self.reward_stats: dict[str, float] | None = None

    def build_model(self) -> PreTrainedModel:
        return load_value_model(self._model_in or self.model_path, **self.load_kwargs())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Rewards ``(B,)``: the value at each sequence's last non-padding token."""
        return sequence_scores(self.model, input_ids, attention_mask)

    def score_pairs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(chosen_rewards, rejected_rewards)``, each ``(B,)``, from one forward over both halves."""
        missing = set(_PAIR_KEYS) - set(batch)
        if missing:
            raise KeyError(f"RewardModule: batch lacks {sorted(missing)} (got {sorted(batch)}); use a reward batch")
        ids, mask = stack_pairs(batch, self.tokenizer.pad_token_id)
        rewards = self(ids, mask)
        return rewards.chunk(2)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        chosen, rejected = self.score_pairs(batch)
        loss, stats = pairwise_reward_loss(chosen, rejected)
        size = chosen.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", stats["accuracy"], prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        chosen, rejected = self.score_pairs(batch)
        loss, stats = pairwise_reward_loss(chosen, rejected)
        size = chosen.shape[0]
        values = {
            "loss": loss, "accuracy": stats["accuracy"], "chosen_reward": stats["chosen_mean"],
            "rejected_reward": stats["rejected_mean"], "margin": (chosen - rejected).mean(),
        }
        for name, value in values.items():
            self.val_metrics[name].update(value.detach(), weight=size)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "accuracy", sync_dist=False)
            metric.reset()

    @torch.no_grad()
    def compute_reward_stats(self, dataloader: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Mean and std of every chosen and rejected reward in ``dataloader``; collective (each rank its shard)."""
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # count, sum, sum of squares
        for index, batch in enumerate(dataloader):
            if self.reward_stats_max_batches is not None and index >= self.reward_stats_max_batches:
                break
            batch = {k: batch[k].to(self.device) for k in _PAIR_KEYS}
            rewards = torch.cat(self.score_pairs(batch)).double()
            sums += torch.stack([torch.tensor(rewards.numel(), device=self.device).double(), rewards.sum(),
                                 (rewards**2).sum()])
        self.model.train(was_training)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if self._trainer is not None else sums
        count, total, squares = sums.tolist()
        if count == 0:
            raise ValueError("RewardModule: no training pairs to compute reward statistics from")
        mean = total / count
        std = math.sqrt(max(squares / count - mean**2, 0.0))
        return {"mean": mean, "std": std, "count": int(count)}

    def export_artifacts(self) -> dict[str, Any]:
        """``reward_stats.json``; collective."""
        dataloader = self.trainer.train_dataloader if self._trainer is not None else None
        if dataloader is None:
            self.trainer.fit_loop.setup_data()
            dataloader = self.trainer.train_dataloader
        self.reward_stats = self.compute_reward_stats(dataloader)
        return {REWARD_STATS_FILE: self.reward_stats}


def read_reward_stats(reward_model: str) -> tuple[float, float]:
    """``(mean, std)`` of the reward model's training scores from the ``reward_stats.json`` the reward step wrote."""
    path = Path(reward_model) / REWARD_STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"PPOModule(normalize_reward=True) needs {path} (written by the reward step)")
    stats = json.loads(path.read_text())
    if not stats.get("std", 0) > 0:
        raise ValueError(f"{path}: 'std' must be > 0, got {stats.get('std')}")
    return float(stats["mean"]), float(stats["std"])
