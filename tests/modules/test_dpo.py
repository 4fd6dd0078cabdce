"""DPOModule on one process: response-only log-probs from one forward, the reference modes, metrics, export,
kill and resume."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from transformers import AutoModelForCausalLM

from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.models import LoraArgs
from lightning_rlhf.modules import DPOModule, OptimizerArgs
from lightning_rlhf.modules.dpo import DPO_METRICS
from lightning_rlhf.modules.dpo_reference import pair_keys
from tests.models.fixtures import task_tokenizer, tiny_folder
from tests.modules.test_ppo import read_events


def _data(tmp_path, **kwargs) -> RLHFDataModule:
    settings = dict(stage="reward", task_size=200, batch_size=8, eval_fraction=0.1, max_length=32,
                    max_prompt_length=16, cache_dir=str(tmp_path / "cache"))
    return RLHFDataModule(task_tokenizer(), **{**settings, **kwargs})


def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def _batch(tmp_path) -> dict[str, torch.Tensor]:
    data = _data(tmp_path)
    data.setup()
    return next(iter(data.val_dataloader()))


class LossRecorder(Callback):
    """Each training step's loss, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_pair_logps_sum_response_tokens_of_one_concatenated_forward(tmp_path):
    module = DPOModule(str(tiny_folder(tmp_path)))
    module.configure_model()
    batch = _batch(tmp_path)
    chosen, rejected = module.pair_logps(module.model, batch)
    for side, got in (("chosen", chosen), ("rejected", rejected)):
        for row in range(len(got)):
            length = int(batch[f"{side}_attention_mask"][row].sum())
            ids = batch[f"{side}_input_ids"][row, :length].unsqueeze(0)  # alone, unpadded
            with torch.no_grad():
                logp = torch.log_softmax(module.model(input_ids=ids).logits[0].double(), -1)
            expected = sum(float(logp[t - 1, ids[0, t]]) for t in range(int(batch["prompt_lengths"][row]), length))
            assert got[row].item() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(KeyError, match="prompt_lengths"):
        module.pair_logps(module.model, {k: v for k, v in batch.items() if k != "prompt_lengths"})


@pytest.mark.parametrize(("kwargs", "mode"), [
    ({}, "model"), ({"precompute_reference": True}, "precomputed"), ({"lora": LoraArgs(rank=4)}, "adapters_off"),
    ({"loss_type": "simpo", "beta": 2.0}, "none"),
])
def test_reference_modes_start_where_dpo_says_and_train(tmp_path, kwargs, mode):
    """With a reference the first loss is log 2 (policy = reference); only ``model`` mode holds a second copy."""
    seed_everything(0)
    module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2), **kwargs)
    recorder, data = LossRecorder(), _data(tmp_path)
    _trainer(tmp_path, max_steps=6, callbacks=[recorder], check_val_every_n_epoch=100).fit(module, datamodule=data)
    assert module.reference_mode == mode
    assert (module.reference is not None) == (mode == "model")
    if mode == "adapters_off":
        assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in module.model.parameters())
    if mode == "none":
        assert recorder.losses[0] != pytest.approx(math.log(2), abs=1e-3)
    else:
        assert recorder.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    distinct = {k for loader in (data.train_dataloader(), data.val_dataloader()) for b in loader
                for k in pair_keys(b).tolist()}
    assert len(module.reference_cache) == (len(distinct) if mode == "precomputed" else 0)  # train + eval pairs
    assert sum(recorder.losses[-2:]) < sum(recorder.losses[:2])


def test_precomputed_reference_trains_exactly_as_a_reference_copy(tmp_path):
    """Same seed, same data: caching the starting policy's log-probs changes nothing but the cost."""
    runs = {}
    for precompute in (False, True):
        seed_everything(0)
        module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2),
                           precompute_reference=precompute)
        recorder = LossRecorder()
        trainer = _trainer(tmp_path, max_steps=5, limit_val_batches=0, callbacks=[recorder])
        trainer.fit(module, datamodule=_data(tmp_path))
        runs[precompute] = recorder.losses
    assert runs[True] == pytest.approx(runs[False], abs=1e-6)


def test_precomputed_reference_runs_no_forward_twice_around_a_validation_before_fit(tmp_path):
    """validate then fit (the pipeline's order) with ``precompute_reference``: before training the policy is the
    reference, so validation runs one forward per batch (not two), and the precomputation at the start of fit
    runs the training batches only (the validation pairs are cached already). Same numbers as a reference copy."""
    results, forwards = {}, {}
    for precompute in (False, True):
        seed_everything(0)
        module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2),
                           precompute_reference=precompute)
        module.configure_model()
        calls = []
        module.model.register_forward_hook(lambda *args: calls.append(1))
        data = _data(tmp_path)
        trainer = _trainer(tmp_path, max_steps=1, check_val_every_n_epoch=100)
        results[precompute] = trainer.validate(module, datamodule=data, verbose=False)[0]
        before_fit = len(calls)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, datamodule=data)
        forwards[precompute] = (before_fit, len(calls) - before_fit)
        # max_steps=1 trains on one batch: precomputation's cost over every training pair is said, with the way out
        said = [str(w.message) for w in caught if "precompute_reference=True) computes" in str(w.message)]
        assert len(said) == int(precompute) and (not said or "but this run trains on 1 " in said[0]), said
    val_batches, train_batches = len(data.val_dataloader()), len(data.train_dataloader())
    assert results[True] == pytest.approx(results[False], abs=1e-6)
    assert results[True]["val/rewards/accuracies"] == 0.5 and 0 < results[True]["val/logps/accuracies"] < 1
    assert forwards[True] == (val_batches, train_batches + 1)  # precompute the training pairs, then one step


def test_fit_logs_trl_metrics_and_exports_the_policy(tmp_path):
    seed_everything(0)
    module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2))
    logger = TensorBoardLogger(str(tmp_path), name="dpo", version=0)
    trainer = _trainer(tmp_path, max_steps=6, val_check_interval=3, logger=logger, log_every_n_steps=1,
                       callbacks=[HFExportCallback(dirpath=str(tmp_path / "hf"))])
    trainer.fit(module, datamodule=_data(tmp_path))
    tags = set(read_events(logger.log_dir).Tags()["scalars"])
    expected = {f"{split}/{name}" for split in ("train", "val") for name in ("loss", *DPO_METRICS.values())}
    assert expected <= tags, sorted(expected - tags)
    assert "train/rewards/accuracies" in tags and "val/logps/rejected" in tags
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "final")
    batch = _batch(tmp_path)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch["chosen_input_ids"]).logits,
                                   module(batch["chosen_input_ids"], torch.ones_like(batch["chosen_input_ids"])),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("precompute", [False, True])
def test_resume_from_checkpoint_continues_with_the_same_next_loss(tmp_path, precompute):
    """One batch per epoch (all training pairs), checkpoint each epoch; resuming from epoch 1's checkpoint gives
    the uninterrupted run's next losses and step count. With precomputation the cache comes from the checkpoint
    (recomputing it from the trained policy would change the loss)."""
    data = lambda: _data(tmp_path, task_size=40, split="0,1,0", batch_size=64)  # noqa: E731

    def run(ckpt_path=None):
        seed_everything(0)
        module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2),
                           precompute_reference=precompute)
        recorder = LossRecorder()
        checkpoints = ModelCheckpoint(dirpath=tmp_path / f"ckpt-{precompute}", every_n_epochs=1, save_top_k=-1,
                                      filename="{epoch}")
        trainer = _trainer(tmp_path, max_epochs=4, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=[recorder, checkpoints])
        trainer.fit(module, datamodule=data(), ckpt_path=ckpt_path)
        return recorder.losses, trainer.global_step

    full, steps = run()
    resumed, resumed_steps = run(tmp_path / f"ckpt-{precompute}" / "epoch=1.ckpt")
    assert len(full) == 4 and resumed_steps == steps == 4
    assert resumed == pytest.approx(full[2:], abs=1e-6)


def test_bad_settings_are_refused_with_the_reason(tmp_path):
    path = str(tiny_folder(tmp_path))
    with pytest.raises(ValueError, match="'ipo' takes no label_smoothing"):
        DPOModule(path, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reference-free"):
        DPOModule(path, loss_type="simpo", precompute_reference=True)
    with pytest.raises(ValueError, match="precompute_reference computes"):
        DPOModule(path, reference=path, precompute_reference=True)
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'"):
        DPOModule(path, loss_type="dpo")
    with pytest.raises(ValueError, match="beta must be > 0"):
        DPOModule(path, beta=0.0)


def test_precomputed_cache_miss_after_training_is_an_error(tmp_path):
    seed_everything(0)
    module = DPOModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2),
                       precompute_reference=True)
    _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, datamodule=_data(tmp_path))
    other = _data(tmp_path, task=None, seed=7, task_size=50)  # other pairs, never precomputed
    other.setup()
    with pytest.raises(RuntimeError, match="no precomputed reference log-probs"):
        module.compute_loss(next(iter(other.val_dataloader())))
