"""Prompts and the model's generations written to TensorBoard as text, to watch a policy learn."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_rlhf.callbacks.export import export_target, find_tokenizer
from lightning_rlhf.data.collate import pad

IGNORE_INDEX = -100


def markdown_table(rows: list[tuple[str, str]]) -> str:
    """``| prompt | response |`` table with pipes and newlines escaped (TensorBoard renders markdown)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>") or " "

    return "\n".join(["| prompt | response |", "|---|---|", *(f"| {cell(p)} | {cell(r)} |" for p, r in rows)])


def prompts_from_batch(batch: dict[str, Any]) -> list[list[int]]:
    """Prompt token ids from an SFT batch (tokens before the first label) or a PPO batch."""
    if "prompt_input_ids" in batch:
        return [ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_input_ids"], batch["prompt_attention_mask"])]
    if "labels" in batch:
        out = []
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            answer = (labels != IGNORE_INDEX).nonzero()
            end = int(answer[0]) if len(answer) else int(mask.sum())
            out.append(ids[:end].tolist())
        return out
    raise KeyError(f"cannot find prompts in a batch with keys {sorted(batch)}; pass prompts= to SampleLoggingCallback")


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded ``(ids, attention_mask)`` for generation."""
    return pad(sequences, pad_id, left=True)


class SampleLoggingCallback(Callback):
    """Generate from fixed prompts and log ``| prompt | response |`` tables to TensorBoard text (rank 0 logs).

    Args:
        prompts: prompt texts (tokenized with the module's tokenizer); None takes them from validation data.
        num_prompts: how many prompts to take from the validation batch.
        every_n_steps: also log every this many optimizer steps (0: only after validation).
        max_new_tokens: generation length limit.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling threshold.
        model_attr: attribute holding the causal LM (None: ``export_model()`` or ``model``; PPO: ``actor``).
        tag: TensorBoard text tag.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        num_prompts: int = 4,
        every_n_steps: int = 0,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        model_attr: str | None = None,
        tag: str = "samples",
    ) -> None:
        if num_prompts < 1 or every_n_steps < 0 or max_new_tokens < 1:
            raise ValueError("SampleLoggingCallback: num_prompts and max_new_tokens must be >= 1, every_n_steps >= 0")
        self.prompts = prompts
        self.num_prompts = num_prompts
        self.every_n_steps = every_n_steps
        self.generate_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generate_kwargs.update(temperature=temperature, top_p=top_p)
        self.model_attr = model_attr
        self.tag = tag
        self._prompt_ids: list[list[int]] | None = None
        self._last_step = -1

    def _resolve_prompts(self, trainer: Trainer, tokenizer: Any) -> list[list[int]]:
        if self._prompt_ids is None:
            if self.prompts is not None:
                self._prompt_ids = [tokenizer(p)["input_ids"] for p in self.prompts]
            else:
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                if loader is None:
                    raise ValueError("SampleLoggingCallback: no prompts= given and no validation dataloader to take them from")
                self._prompt_ids = prompts_from_batch(next(iter(loader)))[: self.num_prompts]
        return self._prompt_ids

    @torch.no_grad()
    def generate_samples(self, trainer: Trainer, pl_module: LightningModule) -> list[tuple[str, str]]:
        """``[(prompt, response), ...]`` generated now by the current weights. Collective."""
        from lightning_rlhf.models.sampling import policy_stop_ids
        from lightning_rlhf.strategies import generation_mode

        tokenizer = find_tokenizer(trainer, pl_module)
        if tokenizer is None:
            raise ValueError("SampleLoggingCallback needs a tokenizer on the module or the datamodule")
        ids, mask = left_pad(self._resolve_prompts(trainer, tokenizer), tokenizer.pad_token_id)
        ids, mask = ids.to(pl_module.device), mask.to(pl_module.device)
        model = export_target(pl_module, self.model_attr)
        with generation_mode(trainer.strategy, model) as generator:
            sequences = generator.generate(
                input_ids=ids, attention_mask=mask, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=policy_stop_ids(tokenizer, generator),
                **self.generate_kwargs,
            )
        prompts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        responses = tokenizer.batch_decode(sequences[:, ids.shape[1]:], skip_special_tokens=True)
        return list(zip(prompts, responses))

    def log_samples(self, trainer: Trainer, pl_module: LightningModule) -> list[tuple[str, str]]:
        """Generate and write the table to every TensorBoard logger (rank 0)."""
        samples = self.generate_samples(trainer, pl_module)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            rank_zero_warn("SampleLoggingCallback: no TensorBoardLogger attached; samples are not logged")
        if trainer.is_global_zero:
            for logger in loggers:
                logger.experiment.add_text(self.tag, markdown_table(samples), global_step=trainer.global_step)
                logger.experiment.flush()
        return samples

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.log_samples(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step != self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self.log_samples(trainer, pl_module)
