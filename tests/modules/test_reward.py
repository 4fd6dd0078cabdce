"""RewardModule: last-token pairwise loss, metrics, reward_stats.json, export, built-in task and HH-RLHF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from transformers import AutoModelForSequenceClassification

from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.models import LoraArgs, sequence_scores
from lightning_rlhf.modules import OptimizerArgs, RewardModule
from lightning_rlhf.modules.reward import stack_pairs
from tests.helpers.seeds import median_clears
from tests.helpers.shared_data import require_shared_file
from tests.models.fixtures import random_batches, task_tokenizer, tiny_folder

def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def test_stack_pairs_pads_to_a_shared_width():
    _, reward = random_batches(length=10)
    batch = next(iter(reward))  # rejected is 2 tokens shorter
    ids, mask = stack_pairs(batch, pad_id=0)
    assert ids.shape == (8, 10)
    assert torch.equal(mask[4:, 8:], torch.zeros(4, 2, dtype=mask.dtype))
    assert torch.equal(ids[:4], batch["chosen_input_ids"])


def test_pair_scores_are_last_real_token_values(tmp_path):
    module = RewardModule(str(tiny_folder(tmp_path, head="value")))
    module.configure_model()
    batch = next(iter(random_batches()[1]))
    chosen, rejected = module.score_pairs(batch)
    expected = sequence_scores(module.model, batch["chosen_input_ids"], batch["chosen_attention_mask"])
    torch.testing.assert_close(chosen, expected, atol=1e-5, rtol=0)
    assert chosen.shape == rejected.shape == (4,)
    with pytest.raises(KeyError, match="rejected_input_ids"):
        module.score_pairs({"chosen_input_ids": batch["chosen_input_ids"]})


def test_fit_logs_metrics_and_exports_stats_and_matching_scores(tmp_path):
    seed_everything(0)
    _, reward = random_batches()
    module = RewardModule(str(tiny_folder(tmp_path)), lora=LoraArgs(rank=2),
                          optimizer=OptimizerArgs(learning_rate=2e-2))
    trainer = _trainer(tmp_path, max_steps=6, callbacks=[HFExportCallback(dirpath=str(tmp_path / "hf"))])
    trainer.fit(module, reward, reward)
    metrics = trainer.callback_metrics
    assert {"val/accuracy", "val/chosen_reward", "val/rejected_reward", "val/margin"} <= set(metrics)
    torch.testing.assert_close(metrics["val/margin"], metrics["val/chosen_reward"] - metrics["val/rejected_reward"])
    folder = tmp_path / "hf" / "final"
    stats = json.loads((folder / "reward_stats.json").read_text())
    module.eval()
    with torch.no_grad():
        rewards = torch.cat([torch.cat(module.score_pairs(b)) for b in reward])
    assert stats["count"] == rewards.numel() == 16
    assert stats["mean"] == pytest.approx(rewards.mean().item(), abs=1e-5)
    assert stats["std"] == pytest.approx(rewards.std(unbiased=False).item(), abs=1e-5)
    loaded = AutoModelForSequenceClassification.from_pretrained(folder)
    batch = next(iter(reward))
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_scores(loaded, batch["chosen_input_ids"], batch["chosen_attention_mask"]),
            module(batch["chosen_input_ids"], batch["chosen_attention_mask"]), atol=1e-5, rtol=0)


def _fit_reward(tmp_path, data, steps: int, lr: float, model: Path | None = None, seed: int = 0, **sizes) -> dict:
    seed_everything(seed)
    module = RewardModule(str(model or tiny_folder(tmp_path, **sizes)), tokenizer=data.tokenizer,
                          optimizer=OptimizerArgs(learning_rate=lr, warmup_steps=10))
    trainer = _trainer(tmp_path, max_steps=steps, check_val_every_n_epoch=1000)
    trainer.fit(module, datamodule=data)
    return trainer.validate(module, datamodule=data, verbose=False)[0]


@pytest.mark.slow
def test_reward_model_on_builtin_task_reaches_90_percent_heldout_accuracy(tmp_path):
    """Median over seeds (model initialisation and data order) of the held-out pair accuracy."""
    from lightning_rlhf.data import RLHFDataModule

    from lightning_rlhf.data.task import default_task
    from lightning_rlhf.models import save_tiny_model, train_tokenizer

    records = default_task().records(2000)
    tokenizer = train_tokenizer([r["prompt"] + r[k] for k in ("chosen", "rejected") for r in records], vocab_size=300)
    data = RLHFDataModule(tokenizer, stage="reward", task_size=2000, batch_size=16, eval_fraction=0.1,
                                max_length=64, max_prompt_length=32, cache_dir=str(tmp_path / "cache"))

    def accuracy(seed: int) -> float:
        model = save_tiny_model(tmp_path / f"rm-init-{seed}", "llama", tokenizer, seed=seed, hidden_size=64,
                                num_layers=2, num_heads=4)
        metrics = _fit_reward(tmp_path, data, steps=900, lr=5e-4, model=model, seed=seed)
        print(f"seed {seed}: held-out accuracy {metrics['val/accuracy']:.3f}, margin {metrics['val/margin']:.2f}")
        return metrics["val/accuracy"]

    assert median_clears("built-in task reward model, held-out accuracy", accuracy, 0.9)


@pytest.mark.slow
def test_reward_model_on_hh_rlhf_trains_and_reports_accuracy(tmp_path):
    import gzip

    from lightning_rlhf.data import RLHFDataModule
    from lightning_rlhf.models import train_tokenizer

    hh_rlhf = require_shared_file()  # <repo>/../shared/data or $LIGHTNING_RLHF_SHARED_DATA; fails in CI if missing
    with gzip.open(hh_rlhf, "rt") as handle:
        texts = [json.loads(line)["chosen"] for _, line in zip(range(2000), handle)]
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    data = RLHFDataModule(tokenizer, stage="reward", sources=[str(hh_rlhf)], split="0,1,0", eval_fraction=0.1,
                                batch_size=16, max_length=128, max_prompt_length=96, long_prompt_policy="truncate",
                                on_bad_record="skip",
                                cache_dir=str(tmp_path / "cache"))
    metrics = _fit_reward(tmp_path, data, steps=150, lr=1e-3, hidden_size=64, num_heads=4, max_positions=256)
    print(f"HH-RLHF reward model: eval accuracy {metrics['val/accuracy']:.3f} on {data.report['split']['reward']['eval']} pairs")
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and torch.isfinite(torch.tensor(metrics["val/loss"]))
