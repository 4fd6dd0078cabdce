"""What keeping the generation replica between rollouts costs and saves (``release_inference_cache`` both ways).

A CPU proxy of the OPT-1.3B example's actor: OPT's 1.3B layer shape (hidden 2048, FFN 8192, 32 heads) with fewer
decoder layers (``--layers``) and random weights, the SmolLM2 tokenizer. GRPO iterations under
``HybridDeepSpeedStrategy``; per rank it reports:

- ``replica_bytes_while_training``: bytes the generation cache holds through backward and the optimizer step (the
  replica and, with LoRA under ZeRO-3, the kept shards of the LoRA-targeted weights), read after each update;
- ``peak_rss_bytes``: the process's peak resident memory (``VmHWM``), everything included;
- ``gather_s_per_later_rollout`` and ``bytes_gathered_per_later_rollout``: the switch's cost after the first rollout
  (which builds the replica either way).

    python benchmarks/replica_residency.py --tokenizer <smollm2-hf-dir> --out benchmarks/results/replica_residency.json

Each configuration runs in its own processes (``--one`` is the worker entry).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFIGS = [  # (ZeRO stage, ranks, LoRA, release_inference_cache)
    (stage, ranks, lora, release)
    for stage, ranks in ((2, 1), (3, 2)) for lora in (False, True) for release in (False, True)
]


def build_proxy(folder: Path, tokenizer: str, layers: int) -> None:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = OPTConfig(vocab_size=len(tok), hidden_size=2048, ffn_dim=8192, num_attention_heads=32,
                       num_hidden_layers=layers, word_embed_proj_dim=2048, max_position_embeddings=2048,
                       pad_token_id=tok.pad_token_id or 0, bos_token_id=tok.bos_token_id or 1,
                       eos_token_id=tok.eos_token_id or 2)
    OPTForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cache_bytes() -> int:
    from lightning_rlhf.strategies.generation import _CACHE

    total = 0
    for entry in list(_CACHE.values()):
        replica = entry.replica
        total += sum(p.numel() * p.element_size() for p in replica.module.parameters())
        total += sum(s.base.numel() * s.base.element_size() for s in replica.slots if s.base is not None)
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    from lightning import Callback, Trainer, seed_everything

    from lightning_rlhf.data import RLHFDataModule
    from lightning_rlhf.models.loading import LoraArgs
    from lightning_rlhf.modules import GRPOModule
    from lightning_rlhf.modules.generation_args import GenerationArgs
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    class Measure(Callback):
        def __init__(self) -> None:
            self.during_training: list[int] = []
            self.after_first: tuple[float, int] | None = None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.during_training.append(cache_bytes())
            if self.after_first is None:  # the first switch builds the replica; later ones refresh it
                stats = trainer.strategy.generation_stats
                self.after_first = (stats.gather_s, stats.bytes_gathered)

    seed_everything(0)
    lora = LoraArgs(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]) if args.lora else None
    # the entropy bonus gives every update a gradient although a random model earns no reward: every weight moves
    module = GRPOModule(args.proxy, reward_funcs=["answer_match"], actor_lora=lora, num_generations=2,
                        entropy_coef=0.01, train_batch_size=4,
                        generation=GenerationArgs(max_new_tokens=8, temperature=0.7))
    data = RLHFDataModule(args.proxy, stage="rl", split="0,0,1", task_size=64, batch_size=2, eval_fraction=0,
                          max_prompt_length=48, max_length=64)
    strategy = HybridDeepSpeedStrategy(stage=args.stage, release_inference_cache=args.release)
    measure = Measure()
    trainer = Trainer(accelerator="cpu", devices=args.ranks, strategy=strategy, max_steps=args.iterations,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[measure], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    stats = trainer.strategy.generation_stats
    later = max(1, args.iterations - 1)
    first_s, first_bytes = measure.after_first
    out = {"rank": trainer.global_rank, "replica_bytes_while_training": max(measure.during_training),
           "peak_rss_bytes": peak_rss(), "gather_s_first": round(first_s, 3),
           "gather_s_per_later_rollout": round((stats.gather_s - first_s) / later, 3),
           "bytes_gathered_per_later_rollout": (stats.bytes_gathered - first_bytes) // later,
           "actor_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in module.actor.parameters())}
    Path(args.result).with_suffix(f".rank{trainer.global_rank}.json").write_text(json.dumps(out))
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a Hugging Face folder whose tokenizer the proxy uses (required)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", help="the JSON to write (required)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lora", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--release", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.lora, args.release = bool(args.lora), bool(args.release)
        return worker(args)
    if not args.tokenizer or not args.out:
        parser.error("--tokenizer and --out are required")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proxy = Path(tmp) / "opt-proxy"
        build_proxy(proxy, args.tokenizer, args.layers)
        for stage, ranks, lora, release in CONFIGS:
            result = Path(tmp) / f"s{stage}_l{int(lora)}_r{int(release)}"
            command = [sys.executable, __file__, "--one", "--proxy", str(proxy), "--stage", str(stage), "--ranks",
                       str(ranks), "--lora", str(int(lora)), "--release", str(int(release)), "--iterations",
                       str(args.iterations), "--result", str(result)]
            status = subprocess.call(command, env=os.environ | {"OMP_NUM_THREADS": str(max(1, 2 // ranks))})
            ranks_out = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob(f"{result.name}.rank*.json"))]
            row: dict[str, Any] = {"stage": stage, "ranks": ranks, "lora": lora,
                                   "release_inference_cache": release, "status": status, "per_rank": ranks_out}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/replica_residency.py --tokenizer "
                                          f"<smollm2-hf-dir> --layers {args.layers} --iterations {args.iterations}",
                                          "layers": args.layers, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
