"""A LightningModule around one Hugging Face model, built in ``configure_model`` so ZeRO-3 partitions it as created."""

from __future__ import annotations

import copy
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_rlhf.models import LoraArgs, count_parameters, load_tokenizer
from lightning_rlhf.models.context import check_context_length
from lightning_rlhf.models.packed_linear import PackedWeights, frozen_layers_packed
from lightning_rlhf.modules.optim import OptimizerArgs, lightning_optimizer_config
from lightning_rlhf.modules.placement import sharded_loading

# the typed arguments kept in ``hparams`` must unpickle under ``weights_only`` on resume
torch.serialization.add_safe_globals([LoraArgs, OptimizerArgs])


class HFModelModule(LightningModule):
    """Base of :class:`SFTModule`, :class:`RewardModule` and :class:`DPOModule` (see their arguments)."""

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
        super().__init__()
        built = isinstance(model, nn.Module)
        self.save_hyperparameters(ignore=["model", "tokenizer"] if built else ["tokenizer"])
        if not built and not isinstance(model, (str, Path)):
            raise TypeError(f"model must be a folder path or a PreTrainedModel, got {type(model).__name__}")
        self.model_path: str | None = None if built else str(model)
        self._model_in: PreTrainedModel | None = model if built else None
        self._tokenizer_in = tokenizer
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.dropout = dropout
        self.torch_dtype = torch_dtype
        self.trust_remote_code = trust_remote_code
        self.optimizer_args = copy.copy(optimizer or OptimizerArgs())  # the signature's default is shared
        self.model: PreTrainedModel | None = None
        self.packed_linears = packed_linears
        self._packed_layers: dict[int, PackedWeights] = {}
        self._packing: ExitStack | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded once, pad token set up by :func:`~lightning_rlhf.models.load_tokenizer`)."""
        if self._tokenizer is None:
            source = self._tokenizer_in
            if isinstance(source, PreTrainedTokenizerBase):
                self._tokenizer = source
            else:
                path = source or self.model_path or getattr(getattr(self._model_in, "config", None), "_name_or_path", None)
                if not path:
                    raise ValueError(f"{type(self).__name__}: pass tokenizer= when model is a built model")
                self._tokenizer = load_tokenizer(path, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`load_causal_lm` / :func:`load_value_model`."""
        return dict(
            lora=self.lora, gradient_checkpointing=self.gradient_checkpointing, dropout=self.dropout,
            torch_dtype=self.torch_dtype, trust_remote_code=self.trust_remote_code, tokenizer=self.tokenizer,
        )

    def build_model(self) -> PreTrainedModel:
        """Load the model; subclasses pick the head."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Refuse, before training, a data ``max_length`` longer than the model's positions."""
        settings = getattr(getattr(self.trainer, "datamodule", None), "settings", None)
        max_length = getattr(settings, "max_length", None)
        if max_length is not None:
            check_context_length(self.model_path or self._model_in or self.model, max_length,
                                 f"data.max_length ({max_length})", "data.max_length",
                                 trust_remote_code=self.trust_remote_code)

    def loading_context(self) -> Any:
        """Under ZeRO-3 the strategy's ``zero3_loading``, else a no-op."""
        return sharded_loading(self)

    def configure_model(self) -> None:
        """Build ``self.model`` once, inside the strategy's sharded context."""
        if self.model is None:
            with self.loading_context():
                model = self.build_model()
            # from_pretrained returns eval mode and Lightning does not call train() at fit start
            self.model = model.train()
            self._model_in = None
            trainable, total = count_parameters(self.model)
            rank_zero_info(f"{type(self).__name__}: {trainable:,} trainable of {total:,} parameters")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """From here to the batch's end (its backward and step included) frozen linear layers run packed."""
        self._stop_packing()  # a batch that raised left them packed
        if self.packed_linears:
            self._packing = ExitStack()
            self._packing.enter_context(frozen_layers_packed([self], self._packed_layers))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop_packing()

    def on_train_end(self) -> None:
        self._stop_packing()

    def _stop_packing(self) -> None:
        if self._packing is not None:
            self._packing.close()
            self._packing = None

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (decay groups, optional LoRA learning rate) with warmup + cosine decay per step."""
        return lightning_optimizer_config(self.model, self.optimizer_args, self.trainer.estimated_stepping_batches,
                                          self.trainer)

    def export_model(self) -> nn.Module:
        """The model :class:`~lightning_rlhf.callbacks.HFExportCallback` writes."""
        return self.model

    def export_artifacts(self) -> dict[str, Any]:
        """Extra files written beside the exported model (``name -> dict or str``). Collective: all ranks call."""
        return {}
