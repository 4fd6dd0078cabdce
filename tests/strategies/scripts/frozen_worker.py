"""Where ZeRO-3 puts a frozen child's partitions, built inside or outside ``frozen_models``; run by torchrun (CPU).

Usage: frozen_worker.py OUTDIR. Each rank writes OUTDIR/frozen-rank<R>.json: per child, the ``remote_device`` of
the ``zero.Init`` that partitioned its parameters (read from DeepSpeed's own partition closure), the devices of
its partitions, whether it is partitioned, plus the frozen engines' offload config and the fit's losses.
"""

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningModule, Trainer, seed_everything

import lightning_rlhf  # noqa: F401
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_rlhf.models.zero3 import resize_embeddings
from lightning_rlhf.strategies import HybridDeepSpeedStrategy, MultiEngineBackwardMixin, frozen_models

sys.path.insert(0, str(Path(__file__).parent))
from strategy_worker import gathered, loader, mlp  # noqa: E402


TINY_LLAMA = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)


class WithReference(MultiEngineBackwardMixin, LightningModule):
    """A policy, a reference built in ``frozen_models`` (as PPOModule builds it) and a frozen child built outside."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.losses = []

    def configure_model(self):
        if hasattr(self, "policy"):
            return
        self.policy = mlp(0)
        with frozen_models(self.trainer.strategy):
            self.reference = mlp(1).requires_grad_(False)
            # a frozen model whose embeddings grow for a tokenizer without pad (what the loaders do)
            self.resized = LlamaForCausalLM(TINY_LLAMA)
            resize_embeddings(self.resized, TINY_LLAMA.vocab_size + 8)
            self.resized.requires_grad_(False)
        self.elsewhere = mlp(2).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        with torch.no_grad():
            baseline = self.reference(x) + self.elsewhere(x)
            self.resized(input_ids=torch.arange(4).unsqueeze(0))
        loss = F.mse_loss(self.policy(x) + 0.1 * baseline, y)
        self.manual_backward(loss, opt)
        opt.step()
        opt.zero_grad()
        self.losses.append(loss.item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.policy.parameters(), lr=0.1)


def init_of(param):
    """The ``zero.Init`` that partitioned ``param``: DeepSpeed's ``param.partition`` closes over it."""
    (init,) = [c.cell_contents for c in param.partition.__closure__ if type(c.cell_contents).__name__ == "Init"]
    return init


def placement(child, policy) -> dict:
    params = list(child.parameters())
    inits = {id(init_of(p)): init_of(p) for p in params}
    return {"remote_device": sorted(f"{type(i.remote_device).__name__}:{i.remote_device}" for i in inits.values()),
            "same_init_as_policy": set(inits) == {id(init_of(p)) for p in policy.parameters()},
            "partition_devices": sorted({p.ds_tensor.device.type for p in params}),
            "partitioned": sum(p.ds_tensor.numel() for p in params) < sum(p.ds_numel for p in params)}


seed_everything(0)
world = int(os.environ["WORLD_SIZE"])
# persistence threshold 0: ZeRO keeps parameters below it whole on the accelerator, and these are tiny
config = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "train_micro_batch_size_per_gpu": 4, "zero_allow_untested_optimizer": True}
model = WithReference()
trainer = Trainer(strategy=HybridDeepSpeedStrategy(offload_frozen_models=True, config=config), accelerator="cpu",
                  devices=world, max_steps=3, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                  enable_model_summary=False)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(model, loader(world))
engines = trainer.strategy.engines
out = {name: placement(getattr(model, name), model.policy)
       for name in ("policy", "reference", "elsewhere", "resized")}
out["resized_embedding"] = placement(model.resized.get_input_embeddings(), model.policy)
out["resized_rows"] = int(model.resized.get_input_embeddings().weight.ds_shape[0])
out["offload"] = {name: engines[name].zero_offload_param() is not None
                  for name in ("reference", "elsewhere", "resized")}
out["losses"] = model.losses
out["rank"] = dist.get_rank()
out["offload_warnings"] = [str(w.message) for w in caught if "offload_frozen_models" in str(w.message)]
with torch.no_grad():
    x = loader(world).dataset.tensors[0][:4]
    full = mlp(1)
    out["reference_weights_intact"] = gathered(model.reference) == [p.flatten().tolist() for p in full.parameters()]
    out["reference_output_matches"] = torch.allclose(model.reference(x), full(x), atol=1e-6)
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
(Path(sys.argv[1]) / f"frozen-rank{dist.get_rank()}.json").write_text(json.dumps(out))
dist.barrier()
dist.destroy_process_group()
