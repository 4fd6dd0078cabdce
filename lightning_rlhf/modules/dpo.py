"""Step 2': DPO-family preference optimisation of the SFT policy on the reward step's chosen/rejected pairs."""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.algorithms import (
    PreferenceStats,
    get_preference_loss,
    preference_loss,
    response_token_mask,
    sequence_logprobs,
)
from lightning_rlhf.models import LoraArgs, load_causal_lm
from lightning_rlhf.modules._base import HFModelModule
from lightning_rlhf.models.forward import eval_mode
from lightning_rlhf.modules.deprecations import take_renamed
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.placement import attached_strategy
from lightning_rlhf.modules.dpo_reference import (
    ReferenceLogpsCache,
    ReferenceMode,
    gather_rows,
    in_fixed_order,
    pair_keys,
)
from lightning_rlhf.modules.reward import stack_pairs
from lightning_rlhf.strategies import frozen_models

_PAIR_KEYS = ("chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask",
              "prompt_lengths")
#: ``PreferenceStats`` field -> logged name (TRL's, under ``train/`` and ``val/``)
DPO_METRICS = {"rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
               "rewards_accuracies": "rewards/accuracies", "rewards_margins": "rewards/margins",
               "logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected",
               "logps_accuracies": "logps/accuracies"}
_CACHE_KEY = "dpo_reference_logps"


class DPOModule(HFModelModule):
    """A causal-LM policy trained on preference pairs with a DPO-family loss.

    The losses, where the reference log-probs come from and the logged metrics are described in docs/dpo.md.

    Args:
        model: a Hugging Face causal-LM folder (the SFT output), or a built ``PreTrainedModel``.
        tokenizer: tokenizer folder (None: the model folder).
        lora: LoRA settings of the policy; None trains every weight.
        gradient_checkpointing: recompute activations in the backward pass.
        dropout: set every dropout probability to this (None keeps the model's). 0, as in TRL: with dropout the
            policy's log-probs differ from the reference's at the first step.
        torch_dtype: parameter dtype when loading (``bfloat16``, ``float16``; None keeps float32).
        trust_remote_code: allow custom modelling code from the model folder.
        optimizer: AdamW + warmup/cosine settings (defaults: lr 5e-7 as DeepSpeed-Chat's DPO, no warmup).
        packed_linears: run frozen linear layers (LoRA's base weights, a reference) from oneDNN-packed weights where
            oneDNN runs them (CPU, float32; docs/recipes/generation.md).
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC) or ``simpo``.
        beta: inverse temperature of the implicit reward (DPO 0.1; SimPO's papers use 2-2.5).
        label_smoothing: conservative DPO's label-flip probability in ``[0, 0.5)`` (``sigmoid``, ``simpo``).
        simpo_margin: SimPO's target reward margin ``gamma`` (``simpo`` only).
        reference: folder of the frozen reference policy (None: ``model``, or the adapter-free policy with LoRA).
        precompute_reference: compute every training and validation pair's reference log-probs once, from the
            starting policy, instead of keeping a reference model.
        gamma: deprecated name of ``simpo_margin`` (removed in the next release).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        lora: LoraArgs | None = None,
        gradient_checkpointing: bool = False,
        dropout: float | None = 0.0,
        torch_dtype: str | None = None,
        trust_remote_code: bool = False,
        optimizer: OptimizerArgs | None = None,
        packed_linears: bool = True,
        loss_type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        simpo_margin: float = 0.5,
        reference: str | None = None,
        precompute_reference: bool = False,
        gamma: float | None = None,
    ) -> None:
        super().__init__(model, tokenizer, lora, gradient_checkpointing, dropout, torch_dtype, trust_remote_code,
                         optimizer or OptimizerArgs(learning_rate=5e-7), packed_linears)
        take_renamed(self.hparams, "DPOModule", "gamma", "simpo_margin", default=0.5)
        simpo_margin = self.hparams.simpo_margin
        self.variant = get_preference_loss(loss_type)
        if not beta > 0:
            raise ValueError(f"DPOModule.beta must be > 0, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"DPOModule.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if label_smoothing > 0 and not self.variant.smooths_labels:
            raise ValueError(f"DPOModule: loss_type {loss_type!r} takes no label_smoothing (sigmoid and simpo do); "
                             f"set label_smoothing to 0")
        self.loss_type, self.beta, self.label_smoothing = loss_type, beta, label_smoothing
        self.simpo_margin = simpo_margin
        self.reference_path = reference
        self.reference_mode = self._reference_mode(reference, precompute_reference)
        self.reference: PreTrainedModel | None = None
        self.reference_cache = ReferenceLogpsCache()
        self._restored = False
        self.val_metrics = torch.nn.ModuleDict({name: MeanMetric() for name in ("loss", *DPO_METRICS)})

    def _reference_mode(self, reference: str | None, precompute: bool) -> ReferenceMode:
        if not self.variant.needs_reference:
            if reference is not None or precompute:
                raise ValueError(f"DPOModule: loss_type {self.loss_type!r} is reference-free; remove reference= "
                                 "and precompute_reference=")
            return "none"
        if precompute:
            if reference is not None:
                raise ValueError("DPOModule: precompute_reference computes the reference log-probs from the starting "
                                 "policy; with a different reference folder set precompute_reference=False")
            return "precomputed"
        return "adapters_off" if self.lora is not None and reference is None else "model"

    def build_model(self) -> PreTrainedModel:
        return load_causal_lm(self._model_in or self.model_path, **self.load_kwargs())

    def configure_model(self) -> None:
        """Build the policy and, in ``model`` mode, the frozen reference."""
        if self.model is not None:
            return
        built = self._model_in
        if self.reference_mode == "model" and self.reference_path is None and built is not None:
            self.reference = copy.deepcopy(built)  # before LoRA or training touch the built model
        super().configure_model()
        if self.reference_mode == "model" and self.reference is None:
            # offload_frozen_models: its ZeRO-3 partitions are created on the CPU by a zero.Init of its own
            with self.loading_context(), frozen_models(attached_strategy(self)):
                self.reference = load_causal_lm(self.reference_path or self.model_path, dropout=self.dropout,
                                                torch_dtype=self.torch_dtype, tokenizer=self.tokenizer,
                                                trust_remote_code=self.trust_remote_code)
        if self.reference is not None:
            self.reference.requires_grad_(False).eval()
        rank_zero_info(f"DPOModule: loss {self.loss_type}, beta {self.beta}, reference: {self.reference_mode}")

    @property
    def engine_per_child(self) -> bool:
        """With a reference model, the hybrid strategy gives it a frozen inference engine beside the policy's."""
        return self.reference_mode == "model"

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Policy logits ``(B, T, V)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def pair_logps(self, model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(chosen, rejected)`` sequence log-probs ``(B,)`` under ``model``, from one forward over both halves."""
        missing = set(_PAIR_KEYS) - set(batch)
        if missing:
            raise KeyError(f"DPOModule: batch lacks {sorted(missing)} (got {sorted(batch)}); use a reward-stage "
                           "batch of RLHFDataModule (its data cache from before prompt_lengths is rebuilt)")
        ids, mask = stack_pairs(batch, self.tokenizer.pad_token_id)
        response = response_token_mask(mask, batch["prompt_lengths"].repeat(2))
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return sequence_logprobs(logits, ids, response, average=self.variant.length_normalized).chunk(2)

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor],
                        policy_logps: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Reference ``(chosen, rejected)`` log-probs ``(B,)`` or Nones; ``policy_logps`` can fill a cache miss."""
        mode = self.reference_mode
        if mode == "none":
            return None, None
        if mode == "model":
            return self.pair_logps(self.reference, batch)
        if mode == "adapters_off":
            with self.model.disable_adapter(), eval_mode(self.model):
                return self.pair_logps(self.model, batch)
        keys = pair_keys(batch)
        missing = self.reference_cache.missing(keys)
        if missing:
            if self.trainer.global_step > 0 or self._restored:
                raise RuntimeError(
                    f"DPOModule(precompute_reference=True): {missing} of {len(keys)} pairs of this batch have no "
                    f"precomputed reference log-probs, and the policy has been trained since, so it cannot stand in "
                    f"for the reference. Precomputation covers the training and validation data of the fit; "
                    f"evaluate other data with precompute_reference=False and a reference folder")
            if policy_logps is None:
                with eval_mode(self.model):  # the untrained policy is the reference: cache what it says now
                    policy_logps = self.pair_logps(self.model, batch)
            self.reference_cache.add(keys, *(logps.detach() for logps in policy_logps))
        return self.reference_cache.lookup(keys, self.device)

    @torch.no_grad()
    def precompute(self, loaders: Iterable[Iterable[dict[str, Tensor]]]) -> int:
        """Fill the reference cache from the current policy over ``loaders``; returns the cache size.

        Collective (equal batch counts on every rank); batches cached on every rank are gathered, not run again."""
        all_gather = self.all_gather if self.trainer.world_size > 1 else None
        with eval_mode(self.model):
            for loader in loaders:
                keys = [torch.zeros(0, dtype=torch.int64, device=self.device)]
                values = [torch.zeros(0, 2, device=self.device)]
                for batch in in_fixed_order(loader):
                    batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, Tensor)}
                    batch_keys = pair_keys(batch)
                    missing = torch.tensor(self.reference_cache.missing(batch_keys), device=self.device)
                    if (missing if all_gather is None else all_gather(missing)).sum() > 0:
                        logps = self.pair_logps(self.model, batch)
                    else:  # still gathered: every rank ends with every rank's pairs
                        logps = self.reference_cache.lookup(batch_keys, self.device)
                    keys.append(batch_keys.to(self.device))
                    values.append(torch.stack(logps, dim=1))
                keys_all, values_all = gather_rows(torch.cat(keys), all_gather), gather_rows(torch.cat(values),
                                                                                             all_gather)
                self.reference_cache.add(keys_all, values_all[:, 0], values_all[:, 1])
        return len(self.reference_cache)

    def on_train_start(self) -> None:
        """With ``precompute_reference``, fill the cache before the first step."""
        if self.reference_mode != "precomputed" or self._restored:
            return
        self._warn_if_precomputing_unseen_pairs()
        loaders = [self.trainer.train_dataloader]
        val_loop = self.trainer.fit_loop.epoch_loop.val_loop
        val_loop.setup_data()
        val = self.trainer.val_dataloaders
        loaders += [] if val is None else list(val) if isinstance(val, (list, tuple)) else [val]
        size = self.precompute(loader for loader in loaders if loader is not None)
        rank_zero_info(f"DPOModule: precomputed the reference log-probs of {size} pairs")

    def _warn_if_precomputing_unseen_pairs(self) -> None:
        trainer = self.trainer
        loader = trainer.train_dataloader
        try:
            total = len(loader)
        except TypeError:
            return
        seen = trainer.num_training_batches * max(trainer.max_epochs or 1, 1)
        if trainer.max_steps and trainer.max_steps > 0:
            seen = min(seen, trainer.max_steps * trainer.accumulate_grad_batches)
        if seen < total:
            rank_zero_warn(
                f"DPOModule(precompute_reference=True) computes the reference log-probs of all {total} training "
                f"batches, but this run trains on {seen} (limit_train_batches / max_steps). "
                + ("With LoRA, precompute_reference=False uses the adapter-free policy as the reference and runs it "
                   "only on the batches trained on." if self.lora is not None else
                   "A reference folder (reference=) runs the reference only on the batches trained on."))

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, PreferenceStats]:
        """The preference loss of a reward-stage batch and its statistics."""
        chosen, rejected = self.pair_logps(self.model, batch)
        ref_chosen, ref_rejected = self.reference_logps(batch, None if self.model.training else (chosen, rejected))
        return preference_loss(chosen, rejected, ref_chosen, ref_rejected, self.loss_type, self.beta,
                               self.label_smoothing, self.simpo_margin)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, stats = self.compute_loss(batch)
        size = batch["chosen_input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for field, name in DPO_METRICS.items():
            self.log(f"train/{name}", stats[field], prog_bar=field == "rewards_accuracies", batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, stats = self.compute_loss(batch)
        size = batch["chosen_input_ids"].shape[0]
        self.val_metrics["loss"].update(loss.detach(), weight=size)
        for field in DPO_METRICS:
            self.val_metrics[field].update(stats[field], weight=size)

    def on_validation_epoch_end(self) -> None:
        for field, metric in self.val_metrics.items():
            name = DPO_METRICS.get(field, field)
            self.log(f"val/{name}", metric.compute(), prog_bar=field == "rewards_accuracies", sync_dist=False)
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the precomputed reference log-probs (the trained policy could not recompute them)."""
        if self.reference_mode == "precomputed":
            checkpoint[_CACHE_KEY] = self.reference_cache.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the cache; a resumed policy is no longer the reference."""
        self._restored = True
        if self.reference_mode == "precomputed":
            if _CACHE_KEY not in checkpoint:
                raise ValueError("DPOModule(precompute_reference=True): the checkpoint holds no precomputed reference "
                                 "log-probs (it was saved with another reference setting)")
            self.reference_cache.load_state_dict(checkpoint[_CACHE_KEY])
