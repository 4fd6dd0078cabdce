"""EMACallback, SampleLoggingCallback (real TensorBoard files read back) and HFExportCallback's best export."""

from __future__ import annotations

import json

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lightning_rlhf.callbacks import EMACallback, HFExportCallback, SampleLoggingCallback
from lightning_rlhf.modules import OptimizerArgs, SFTModule
from tests.models.fixtures import random_batches, task_tokenizer, tiny_folder


class _Recorder(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def _module(tmp_path) -> SFTModule:
    return SFTModule(str(tiny_folder(tmp_path)), tokenizer=task_tokenizer(), optimizer=OptimizerArgs(learning_rate=5e-2))


def test_ema_follows_the_recurrence_swaps_and_exports(tmp_path):
    seed_everything(0)
    sft, _ = random_batches()
    recorder, ema = _Recorder(), EMACallback(decay=0.5, export_dirpath=str(tmp_path / "ema"))
    module = _module(tmp_path)
    _trainer(tmp_path, max_steps=3, callbacks=[recorder, ema]).fit(module, sft)
    name = "model.layers.0.mlp.up_proj.weight"
    expected = recorder.weights[0][name]
    for weights in recorder.weights[1:]:
        expected = 0.5 * expected + 0.5 * weights[name]
    torch.testing.assert_close(ema.shadow[name], expected)
    trained = dict(module.model.named_parameters())[name].detach().clone()
    assert not torch.allclose(trained, expected)
    with ema.swapped(module):
        torch.testing.assert_close(dict(module.model.named_parameters())[name], expected)
    torch.testing.assert_close(dict(module.model.named_parameters())[name], trained)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "ema")
    torch.testing.assert_close(exported.model.layers[0].mlp.up_proj.weight, expected)


def test_sample_logging_writes_prompts_and_generations_to_tensorboard(tmp_path):
    sft, _ = random_batches()
    logger = TensorBoardLogger(tmp_path, name="tb")
    samples = SampleLoggingCallback(prompts=["Human: 3+4= Assistant:", "Human: 9+9= Assistant:"], max_new_tokens=5)
    trainer = _trainer(tmp_path, max_steps=2, logger=logger, callbacks=[samples], val_check_interval=2)
    trainer.fit(_module(tmp_path), sft, sft)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert "samples/text_summary" in events.Tags()["tensors"]
    logged = events.Tensors("samples/text_summary")
    text = logged[-1].tensor_proto.string_val[0].decode()
    assert logged[-1].step == 2
    assert "| prompt | response |" in text and "3+4=" in text and "9+9=" in text


def test_sample_logging_takes_prompts_from_an_sft_validation_batch(tmp_path):
    sft, _ = random_batches()
    callback = SampleLoggingCallback(num_prompts=3, max_new_tokens=4)
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[callback])
    module = _module(tmp_path)
    trainer.fit(module, sft, sft)
    pairs = callback.generate_samples(trainer, module)
    batch = next(iter(sft))
    assert len(pairs) == 3
    assert pairs[0][0] == task_tokenizer().decode(batch["input_ids"][0, :4], skip_special_tokens=True)


def test_export_callback_best_tracks_the_monitored_metric(tmp_path):
    sft, _ = random_batches()
    export = HFExportCallback(dirpath=str(tmp_path / "hf"), monitor="val/loss", mode="min", save_final=False)
    trainer = _trainer(tmp_path, max_steps=4, callbacks=[export], val_check_interval=1, check_val_every_n_epoch=None)
    trainer.fit(_module(tmp_path), sft, sft)
    info = json.loads((tmp_path / "hf" / "best" / "export_info.json").read_text())
    assert info["global_step"] == export.best_step and info["score"] == export.best_score
    assert not (tmp_path / "hf" / "final").exists()
