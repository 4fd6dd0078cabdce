"""SFTModule: response-only loss, perplexity falls on the built-in task, export matches the module, LoRA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from transformers import AutoModelForCausalLM

from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.models import LoraArgs
from lightning_rlhf.modules import OptimizerArgs, SFTModule
from tests.helpers.seeds import median_clears
from tests.models.fixtures import random_batches, task_tokenizer, tiny_folder


def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def test_loss_counts_response_tokens_only(tmp_path):
    module = SFTModule(str(tiny_folder(tmp_path)))
    module.configure_model()
    batch = next(iter(random_batches()[0]))
    logits = module(batch["input_ids"], batch["attention_mask"])
    targets = batch["labels"][:, 1:]
    counted = targets != -100
    manual = F.cross_entropy(logits[:, :-1][counted], targets[counted])
    torch.testing.assert_close(module.compute_loss(batch), manual)
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][:, 1:4] = 7  # prompt targets: their labels are -100, only the context changes
    assert not torch.isclose(module.compute_loss(changed), manual)
    with pytest.raises(KeyError, match="labels"):
        module.compute_loss({"input_ids": batch["input_ids"]})


def test_fit_exports_a_folder_with_the_modules_logits(tmp_path):
    seed_everything(0)
    sft, _ = random_batches()
    module = SFTModule(str(tiny_folder(tmp_path)), optimizer=OptimizerArgs(learning_rate=1e-2, warmup_steps=1))
    export = HFExportCallback(dirpath=str(tmp_path / "hf"), monitor="val/loss")
    trainer = _trainer(tmp_path, max_steps=4, callbacks=[export], num_sanity_val_steps=0)
    trainer.fit(module, sft, sft)
    assert (tmp_path / "hf" / "best" / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "final")
    batch = next(iter(sft))
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                   module(batch["input_ids"], batch["attention_mask"]), atol=1e-5, rtol=0)


def test_lora_sft_trains_only_adapters_and_exports_merged(tmp_path):
    sft, _ = random_batches()
    path = tiny_folder(tmp_path)
    module = SFTModule(str(path), lora=LoraArgs(rank=4, alpha=8), optimizer=OptimizerArgs(learning_rate=5e-2))
    _trainer(tmp_path, max_steps=3, callbacks=[HFExportCallback(dirpath=str(tmp_path / "hf"))]).fit(module, sft)
    original = AutoModelForCausalLM.from_pretrained(path)
    base = module.model.get_base_model()
    torch.testing.assert_close(base.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "final")
    assert not torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight)
    ids = next(iter(sft))["input_ids"]
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, module.model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_sft_on_builtin_task_cuts_eval_perplexity(tmp_path):
    """Median over seeds of the eval perplexity ratio before / after 120 steps (measured 96-108x on 3 seeds)."""
    from lightning_rlhf.data import RLHFDataModule

    tokenizer = task_tokenizer()
    data = RLHFDataModule(tokenizer, stage="sft", task_size=2000, batch_size=16, eval_fraction=0.1,
                                max_length=64, max_prompt_length=32, cache_dir=str(tmp_path / "cache"))

    def perplexity_cut(seed: int) -> float:
        seed_everything(seed)
        module = SFTModule(str(tiny_folder(tmp_path, seed=seed, hidden_size=64, num_heads=4)), tokenizer=tokenizer,
                           optimizer=OptimizerArgs(learning_rate=3e-3, warmup_steps=10))
        trainer = _trainer(tmp_path, max_steps=120, num_sanity_val_steps=0, check_val_every_n_epoch=1000)
        before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/perplexity"]
        trainer.fit(module, datamodule=data)
        after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/perplexity"]
        print(f"seed {seed}: SFT eval perplexity {before:.1f} -> {after:.2f}")
        return before / after

    assert median_clears("SFT eval perplexity cut (before / after)", perplexity_cut, 20, strict=True)


def test_packed_frozen_layers_train_lora_as_pytorchs_own_layers(tmp_path):
    # packed_linears (the default) against PyTorch's own layers: the same adapters after three steps
    sft, _ = random_batches()
    trained = {}
    for packed in (True, False):
        seed_everything(0)
        module = SFTModule(str(tiny_folder(tmp_path)), lora=LoraArgs(rank=4, alpha=8), packed_linears=packed,
                           optimizer=OptimizerArgs(learning_rate=5e-2))
        _trainer(tmp_path, max_steps=3).fit(module, sft)
        trained[packed] = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        assert bool(module._packed_layers) == packed, "the packed copies are made only with packed_linears"
        assert all("forward" not in vars(m) for m in module.modules()), "the layers' own forward is back"
    assert trained[True].keys() == trained[False].keys() and trained[True]
    assert any(v.abs().sum() > 0 for n, v in trained[True].items() if "lora_B" in n), "the adapters trained"
    for name, value in trained[False].items():
        torch.testing.assert_close(trained[True][name], value, rtol=1e-4, atol=1e-5, msg=name)
