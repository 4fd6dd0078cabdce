"""``HybridDeepSpeedStrategy``'s default ``release_inference_cache=None`` in a real fit: a fully fine-tuned actor's
replica is freed before each backward and shared by the validation batches between two steps; a LoRA actor's is
kept through training."""

from __future__ import annotations

import pytest
from lightning.pytorch import Callback

from lightning_rlhf.models import LoraArgs
from lightning_rlhf.strategies import HybridDeepSpeedStrategy
from lightning_rlhf.strategies.generation import _CACHE
from tests.modules.test_grpo import make_data, make_module, make_trainer


class Watch(Callback):
    """Replicas cached at each backward, and the switch's refreshed groups after each validation batch."""

    def __init__(self) -> None:
        self.cached_at_backward: list[int] = []
        self.refreshed_after_val: list[int] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.cached_at_backward.append(len(_CACHE))

    def on_validation_batch_end(self, trainer, *args) -> None:
        self.refreshed_after_val.append(trainer.strategy.generation_stats.groups_refreshed)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_default_frees_a_fully_fine_tuned_replica_before_backward_and_keeps_a_lora_one(tmp_path, actor, lora):
    assert HybridDeepSpeedStrategy().release_inference_cache is None
    watch = Watch()
    module = make_module(actor, update_epochs=1, actor_lora=LoraArgs(rank=4, alpha=8) if lora else None)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=3,
                           strategy=HybridDeepSpeedStrategy(stage=2), callbacks=[watch])
    trainer.fit(module, datamodule=make_data(actor, eval_batch_size=2, eval_fraction=0.3))
    assert len(watch.cached_at_backward) >= 2  # every mini-batch of both iterations
    assert set(watch.cached_at_backward) == ({1} if lora else {0}), watch.cached_at_backward
    first, *rest = watch.refreshed_after_val
    assert len(rest) == 2 and rest == [first, first], "the later validation batches reuse the first one's replica"
    _CACHE.clear()


@pytest.fixture()
def actor(tiny_model_factory):
    return tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=2, num_heads=4)
