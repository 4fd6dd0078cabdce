"""Training and generation throughput of HybridDeepSpeedStrategy on a GPU, in tokens/s and model TFLOPs.

A randomly initialised model of OPT-125m or Llama shape (no download), bf16. Training: causal-LM steps on random
tokens under ``HybridDeepSpeedStrategy`` (ZeRO stage from ``--stage``), timed after warm-up steps. Generation:
the trained module is switched with the generation switch, once per backend (``native``: PyTorch + transformers
``generate``; ``deepspeed``: DeepSpeed's fused inference kernels), greedy with a fixed number of new tokens.

Model FLOPs use the usual estimate (6 x parameters per trained token, 2 x parameters per generated token,
attention not counted), so they are comparable across runs, not exact hardware FLOPs::

    python -m torch.distributed.run --nproc_per_node=1 benchmarks/gpu_training.py --family opt
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoConfig, AutoModelForCausalLM

import lightning_rlhf  # noqa: F401
from lightning_rlhf.strategies import HybridDeepSpeedStrategy
from lightning_rlhf.strategies.generation import GenerationStats, generation_mode

SHAPES = {
    "opt": dict(model_type="opt", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                word_embed_proj_dim=768, vocab_size=50272),
    "llama": dict(model_type="llama", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, intermediate_size=2048, vocab_size=32000),
}


class CausalLM(LightningModule):
    def __init__(self, family: str, max_positions: int):
        super().__init__()
        shape = dict(SHAPES[family])
        self.config = AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=max_positions,
                                           pad_token_id=1, bos_token_id=2, eos_token_id=2, **shape)

    def configure_model(self):
        if not hasattr(self, "model"):
            self.model = AutoModelForCausalLM.from_config(self.config)

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self.model(input_ids=tokens).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-4)


class Timer(Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        if self.start is not None:
            self.steps += 1

    def seconds(self) -> float:
        torch.cuda.synchronize()
        return time.perf_counter() - self.start


def count_parameters(model: torch.nn.Module) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def time_generation(model, backend: str, args) -> tuple[float, float]:
    prompts = torch.randint(3, 1000, (args.gen_batch, args.prompt_len), device="cuda")
    mask = torch.ones_like(prompts)
    stats = GenerationStats()
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    with generation_mode(model, backend=backend, stats=stats) as replica:
        replica.generate(prompts, mask, **kwargs)  # warm-up (kernel selection, caches)
    times = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with generation_mode(model, backend=backend, stats=stats) as replica:
            out = replica.generate(prompts, mask, **kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    new_tokens = (out.shape[1] - args.prompt_len) * args.gen_batch
    best = sorted(times)[len(times) // 2]
    return new_tokens / best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(SHAPES), default="opt")
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="native,deepspeed")
    args = parser.parse_args()

    tokens = torch.randint(3, 1000, (args.batch * (args.steps + args.warmup), args.seq_len))
    module = CausalLM(args.family, max_positions=max(args.seq_len, args.prompt_len + args.new_tokens) + 2)
    timer = Timer(args.warmup)
    trainer = Trainer(strategy=HybridDeepSpeedStrategy(stage=args.stage), accelerator="cuda", devices=1,
                      precision="bf16-mixed", max_steps=args.steps + args.warmup, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, callbacks=[timer])
    trainer.fit(module, DataLoader(TensorDataset(tokens), batch_size=args.batch))
    params = count_parameters(module.model)
    seconds = timer.seconds()
    trained = args.batch * args.seq_len * timer.steps
    print(f"model: {args.family} shape, {params / 1e6:.1f}M parameters, bf16, ZeRO-{args.stage}, "
          f"{torch.cuda.get_device_name()}")
    print(f"training: {trained / seconds:,.0f} tokens/s, {6 * params * trained / seconds / 1e12:.1f} model TFLOPs "
          f"(batch {args.batch} x {args.seq_len} tokens, {timer.steps} timed steps)")
    module.model.eval()
    for backend in args.backends.split(","):
        try:
            tokens_per_s, seconds = time_generation(module.model, backend, args)
        except Exception as err:  # report and go on: one backend failing must not hide the other's figure
            print(f"generation [{backend}]: FAILED: {type(err).__name__}: {str(err)[:300]}")
            continue
        print(f"generation [{backend}]: {tokens_per_s:,.0f} new tokens/s, "
              f"{2 * params * tokens_per_s / 1e12:.2f} model TFLOPs ({args.gen_batch} prompts x {args.prompt_len} "
              f"tokens, {args.new_tokens} new tokens, {seconds:.2f} s incl. the switch)")


if __name__ == "__main__":
    main()
