"""A step DeepSpeed skips (an fp16 overflow; here a NaN gradient, which ZeRO skips the same way in float32) advances
neither that engine's learning-rate schedule nor the EMA, as in DeepSpeed; the online loop stepped both anyway."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback

from lightning_rlhf.callbacks import EMACallback
from lightning_rlhf.modules import GRPOModule
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.strategies import HybridDeepSpeedStrategy
from tests.modules.test_grpo import make_data, make_module, make_trainer

SKIPPED = 1  # the iteration whose gradient is NaN


class NaNAtOneIteration(GRPOModule):
    def optimizer_step(self, optimizer, loss):
        if self.trainer.fit_loop.epoch_loop.total_batch_idx == SKIPPED:
            loss = loss * float("nan")
        super().optimizer_step(optimizer, loss)


class Record(Callback):
    """After each iteration: the actor's lr, a weight and the EMA of it."""

    def __init__(self, ema: EMACallback):
        self.ema, self.rows = ema, []

    def on_train_batch_end(self, trainer, pl_module, *args):
        name = next(n for n, p in pl_module.actor.named_parameters() if p.requires_grad and "embed" not in n)
        weight = dict(pl_module.actor.named_parameters())[name].detach().clone()
        self.rows.append((pl_module.lr_schedulers().get_last_lr()[0], weight, self.ema.shadow[name].clone()))


def test_a_skipped_step_advances_neither_the_schedule_nor_the_ema(tmp_path, tiny_model_factory):
    actor = tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=2, num_heads=4)
    ema = EMACallback(decay=0.5, model_attr="actor")
    record = Record(ema)
    module = make_module(actor, actor_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="linear"),
                         train_batch_size=64, update_epochs=1)
    module.__class__ = NaNAtOneIteration  # the same module, with the NaN gradient at one iteration
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0,
                           strategy=HybridDeepSpeedStrategy(stage=2), callbacks=[ema, record])
    trainer.fit(module, datamodule=make_data(actor))
    lrs, weights, shadows = zip(*record.rows)
    assert torch.equal(weights[SKIPPED], weights[SKIPPED - 1])  # DeepSpeed skipped the step: nothing moved
    assert not torch.equal(weights[SKIPPED + 1], weights[SKIPPED])  # and stepped again after it
    assert lrs[SKIPPED] == lrs[SKIPPED - 1]  # the schedule waited...
    assert lrs[SKIPPED + 1] < lrs[SKIPPED]  # ...and moves on with the next applied step
    assert torch.equal(shadows[SKIPPED], shadows[SKIPPED - 1])  # the EMA did not count the skipped step
    assert not torch.equal(shadows[SKIPPED + 1], shadows[SKIPPED])
    assert all(math.isfinite(lr) for lr in lrs) and all(torch.isfinite(w).all() for w in weights)
