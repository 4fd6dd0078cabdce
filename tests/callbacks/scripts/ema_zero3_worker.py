"""EMA under ZeRO-3 on 2 ranks with the default persistence threshold; run by torchrun (gloo, CPU).

Usage: ema_zero3_worker.py OUTDIR. A tiny Llama whose norms and k/v projections stay under ZeRO-3's persistence
threshold (kept gathered in ``param.data``) and whose other matrices are partitioned is fitted for 3 steps with an
EMA that validates with the EMA weights after the last step and exports them at the end of fit, as a fit orders
it. Rank 0 writes OUTDIR/result.json: the validation logits, the logits of a plain model loaded with the EMA
weights gathered from every rank's shard, and the largest difference between the export and those weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningModule, Trainer, seed_everything
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lightning_rlhf.callbacks.ema import EMACallback
from lightning_rlhf.models.zero3 import local_partition, partition_aware_loading
from lightning_rlhf.strategies import HybridDeepSpeedStrategy

CONFIG = LlamaConfig(vocab_size=320, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                     num_attention_heads=8, num_key_value_heads=1, max_position_embeddings=64,
                     tie_word_embeddings=True, pad_token_id=0)
VAL = torch.randint(1, 320, (2, 12), generator=torch.Generator().manual_seed(7))


class TinyLM(LightningModule):
    def __init__(self):
        super().__init__()
        self.model = None
        self.val_logits = None

    def configure_model(self):
        if self.model is None:
            torch.manual_seed(0)
            with partition_aware_loading():  # transformers' init under ZeRO-3's zero.Init
                self.model = AutoModelForCausalLM.from_config(CONFIG)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        logits = self.model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, CONFIG.vocab_size), ids[:, 1:].reshape(-1))

    def validation_step(self, batch, batch_idx):
        self.val_logits = self.model(input_ids=VAL.to(self.device)).logits.detach().cpu()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)


def gathered_ema(ema: EMACallback, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full EMA tensors from every rank's shard (a persistent parameter's shard is a partition too)."""
    full = {}
    for name, param in model.named_parameters():
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, ema.shadow[name].cpu())
        full[name] = torch.cat(shards)[: param.ds_numel].view(param.ds_shape)
    return full


def main() -> None:
    out = Path(sys.argv[1])
    seed_everything(0)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=__import__("tokenizers").Tokenizer(
        __import__("tokenizers").models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")), pad_token="<pad>")
    module = TinyLM()
    module.tokenizer = tokenizer
    ema = EMACallback(decay=0.5, model_attr="model", validate_with_ema=True, export_dirpath=str(out / "ema"))
    train = DataLoader(TensorDataset(torch.randint(1, 320, (6, 12), generator=torch.Generator().manual_seed(1))),
                       batch_size=1)
    val = DataLoader(TensorDataset(VAL[:1]), batch_size=1)
    trainer = Trainer(strategy=HybridDeepSpeedStrategy(stage=3, process_group_timeout_s=120), accelerator="cpu",
                      devices=2, max_steps=3, val_check_interval=3, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ema], default_root_dir=str(out))
    trainer.fit(module, train, val)
    params = dict(module.model.named_parameters())
    persistent = sorted(n for n, p in params.items() if getattr(p, "ds_persist", False))
    full = gathered_ema(ema, module.model)
    trained_shard_differs = any(not torch.equal(local_partition(p).float(), ema.shadow[n]) for n, p in params.items())
    if dist.get_rank() != 0:
        return
    plain = LlamaForCausalLM(CONFIG)
    missing, unexpected = plain.load_state_dict(full, strict=False)
    with torch.no_grad():
        plain_logits = plain(input_ids=VAL).logits
    exported = load_file(str(out / "ema" / "model.safetensors"))
    export_diff = {n: (exported[n].float() - full[n]).abs().max().item() for n in full if n in exported}
    (out / "result.json").write_text(json.dumps({
        "persistent": persistent, "partitioned": sorted(set(params) - set(persistent)),
        "missing": missing, "unexpected": unexpected, "trained_shard_differs": trained_shard_differs,
        "val_vs_plain": (module.val_logits - plain_logits).abs().max().item(),
        "export_diff": export_diff, "exported_names": sorted(exported),
    }))


if __name__ == "__main__":
    main()
