"""Timings behind three choices in the PPO step, on the DeepSpeed-Chat configuration's tiny OPT (CPU).

Run from the repository root::

    python benchmarks/ppo_step_parts.py            # 1 thread (the figures quoted in the code)

What it times, each as the median of ``--repeats`` blocks (one interpreter, warmed up first):

- AdamW's step over the 467K-parameter OPT with the single-tensor loop, ``foreach`` and ``fused`` kernels
  (why ``modules/optim.py::fastest_adamw_kind`` picks fused);
- ``generate`` of 16 tokens for 8 prompts of 16 tokens under ``torch.no_grad`` and ``torch.inference_mode``
  (why ``PPOModule.generate`` decodes in inference mode);
- Lightning's ``self.log_dict`` of the 18 PPO curves in a real ``Trainer`` loop, per call and per key
  (why ``modules/ppo_logging.py::log_iteration`` bypasses it);
- a 256x128 @ 128x512 product (one training batch through one of the OPT's linear layers) in fp32 and bf16,
  as ``F.linear`` and ``matmul`` (why ``HybridDeepSpeedStrategy`` warns about bf16 on CPUs without bf16
  instructions).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_assets, machine, set_threads  # noqa: E402


def per_call_ms(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of the mean milliseconds per call of ``fn`` (after a warm-up)."""
    for _ in range(3):
        fn()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(blocks)


def adamw_kernels(actor: str, repeats: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(actor)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    kinds = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    return {name: per_call_ms(torch.optim.AdamW(model.parameters(), lr=1e-5, **kw).step, 100, repeats)
            for name, kw in kinds.items()}


def generate_modes(actor: str, repeats: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(actor).eval()
    ids = torch.randint(3, 500, (8, 16))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                  pad_token_id=1, eos_token_id=2)

    def call(mode: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with mode():
                model.generate(input_ids=ids, **kwargs)
        return run

    # the two modes take turns block by block, so drift in the machine's speed hits both alike
    modes = {"no_grad": call(torch.no_grad), "inference_mode": call(torch.inference_mode)}
    blocks: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            blocks[name].append(per_call_ms(fn, 10, 1))
    return {name: statistics.median(b) for name, b in blocks.items()}


def bf16_products(repeats: int) -> dict[str, float]:
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(256, 128, dtype=dtype), torch.randn(512, 128, dtype=dtype)
        name = str(dtype).removeprefix("torch.")
        out[f"{name} linear"] = per_call_ms(lambda: torch.nn.functional.linear(x, w), 20, repeats)
        out[f"{name} matmul"] = per_call_ms(lambda: x @ w.T, 5, repeats)
    return out


def lightning_log_dict(repeats: int) -> dict[str, float]:
    import torch
    from lightning.pytorch import LightningModule, Trainer

    from lightning_rlhf.modules.ppo_logging import PPO_TAGS

    times: list[float] = []

    class Logs(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            metrics = {tag: float(batch_idx) for tag in PPO_TAGS}
            start = time.perf_counter()
            self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=8)
            times.append((time.perf_counter() - start) * 1e3)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.zeros(50 * repeats, 1), batch_size=1)
    Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1).fit(Logs(), loader)
    call = statistics.median(times[5:])
    return {"per_call": call, "per_key": call / len(PPO_TAGS), "keys": len(PPO_TAGS)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per measurement (median reported)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ppo-step-parts-") as tmp:
        assets = build_assets(Path(tmp), "opt", 512, 8, (16, 16), hidden_size=128, num_layers=2, num_heads=4,
                              max_positions=32)
        print(f"{time.strftime('%Y-%m-%d %H:%M')} | {machine()} | {args.threads} thread(s)")
        adam = adamw_kernels(assets.actor, args.repeats)
        print("AdamW step, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in adam.items()))
        gen = generate_modes(assets.actor, args.repeats)
        print("generate 8x16 -> +16 tokens, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in gen.items()))
    print("256x128 @ 128x512, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in bf16_products(args.repeats).items()))
    logs = lightning_log_dict(args.repeats)
    print(f"Lightning log_dict of {logs['keys']} curves: {logs['per_call']:.2f} ms per call, "
          f"{logs['per_key']:.3f} ms per key")


if __name__ == "__main__":
    main()
