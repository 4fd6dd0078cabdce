"""Generation throughput: the generation switch vs plain ZeRO-3 ``generate`` vs an unsharded copy; with ``--model``,
one process's decode speed as a fraction of the machine's limit (``benchmarks/decode_limit.py``)::

    python benchmarks/generation.py --model <hf-folder> --batch 32 --new-tokens 64 --json OUT

Run on 2 ranks (CPU/gloo, or GPUs/NCCL when CUDA is present)::

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 benchmarks/generation.py

Same model (Llama, randomly initialised from a config), same prompts and lengths for every method;
each rank generates for its own batch and the time is the slowest rank's. Methods:

- ``zero3``: ``engine.module.generate`` on the ZeRO-3 partitioned model (layers re-gathered by
  DeepSpeed's hooks on every forward of every new token);
- ``switch tp=N``: ``generation_mode(model, inference_tp_size=N)``, timing the whole context:
  gathering the shards into the replica (every call, as after each optimizer step) plus ``generate``;
- ``unsharded copy``: ``generate`` of an ordinary hook-free copy of the same weights, as it runs in a
  ZeRO-3 process (DeepSpeed replaces ``torch.nn.functional.linear`` process-wide with a slower
  memory-saving version; the switch runs with PyTorch's own);
- ``copy, plain F.linear``: the same copy with PyTorch's own ``F.linear``: the true ceiling.

Generation is greedy with ``min_new_tokens = max_new_tokens`` so every method does the same work,
and the tokens of every method are checked to be identical to the unsharded copy's.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

from lightning_rlhf.strategies.generation import GenerationStats, generation_mode
from lightning_rlhf.strategies.generation_replica import unpatched_linear


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="prompts per rank")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    parser.add_argument("--tp-sizes", default="1,2", help="inference_tp_size values of the switch")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16/float16 (CUDA default fp16)")
    parser.add_argument("--model", default=None, help="a Hugging Face folder: measure HF generate vs the fast "
                        "decode in this one process against the machine's limit (decode_limit.py)")
    parser.add_argument("--threads", type=int, default=2, help="with --model: torch threads")
    parser.add_argument("--json", default=None, help="with --model: write the result here")
    parser.add_argument("--profile", action="store_true", help="with --model: add the fast decode's costliest "
                        "operators in one call (torch.profiler)")
    return parser.parse_args()


def build_model(args: argparse.Namespace, dtype: torch.dtype) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama", hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=args.vocab,
        max_position_embeddings=args.prompt_len + args.new_tokens + 8, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def timed(methods: dict, device: torch.device, repeats: int) -> dict[str, tuple[float, torch.Tensor]]:
    """Median seconds (slowest rank) and output of each method, after one warm-up each.

    The methods take turns in every repeat, so a change of load on a shared machine hits them alike.
    """
    outputs = {name: fn() for name, fn in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times[name].append(elapsed.item())
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}


def main() -> None:
    args = parse_args()
    if args.model:
        import decode_limit

        decode_limit.main(args)
        return
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if cuda else torch.float32)
    model = build_model(args, dtype).to(device)
    unsharded = copy.deepcopy(model).eval()
    config = {"train_micro_batch_size_per_gpu": args.batch, "zero_optimization": {"stage": 3},
              "zero_allow_untested_optimizer": True, "fp16": {"enabled": dtype == torch.float16},
              "bf16": {"enabled": dtype == torch.bfloat16}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
                                      config=config)
    engine.module.eval()
    gen = torch.Generator().manual_seed(1000 + dist.get_rank())
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    @torch.no_grad()
    def plain_zero3():
        return engine.module.generate(input_ids=ids, attention_mask=mask, synced_gpus=True, **kwargs)

    @torch.no_grad()
    def plain_copy():
        return unsharded.generate(input_ids=ids, attention_mask=mask, **kwargs)

    def ceiling():
        with unpatched_linear():
            return plain_copy()

    def switch(tp: int, stats: GenerationStats):
        def run():
            with generation_mode(engine.module, inference_tp_size=tp, stats=stats) as policy:
                return policy.generate(ids, mask, **kwargs)
        return run

    methods = {"unsharded copy": plain_copy, "copy, plain F.linear": ceiling, "plain ZeRO-3": plain_zero3}
    stats = {}
    for tp in map(int, args.tp_sizes.split(",")):
        stats[tp] = GenerationStats()
        methods[f"switch tp={tp}"] = switch(tp, stats[tp])
    results = timed(methods, device, args.repeats)
    reference = results["unsharded copy"][1]
    report(args, results, reference, stats, device)


def report(args, results: dict, reference: torch.Tensor, stats: dict, device: torch.device) -> None:
    same = {}
    for name, (_, out) in results.items():
        flag = torch.tensor([int(torch.equal(out, reference))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        same[name] = bool(flag.item())
    if dist.get_rank() != 0:
        return
    tokens = args.batch * args.new_tokens
    base = results["plain ZeRO-3"][0]
    copy_s, ceiling_s = results["unsharded copy"][0], results["copy, plain F.linear"][0]
    print(f"\nLlama {args.layers} layers, hidden {args.hidden}, {dist.get_world_size()} ranks on {device.type}, "
          f"batch {args.batch}/rank, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"median of {args.repeats}")
    print(f"{'method':<22}{'seconds':>9}{'tokens/s':>10}{'vs ZeRO-3':>11}{'vs copy':>9}{'vs ceiling':>12}"
          "  same tokens")
    for name, (seconds, _) in results.items():
        print(f"{name:<22}{seconds:>9.3f}{tokens / seconds:>10.1f}{base / seconds:>10.2f}x"
              f"{copy_s / seconds:>9.0%}{ceiling_s / seconds:>12.0%}  {same[name]}")
    for tp, s in stats.items():
        calls = max(s.calls, 1)
        print(f"switch tp={tp}: per call gather {s.gather_s / calls:.3f}s, generate {s.generate_s / calls:.3f}s "
              f"(rank 0 stats, {s.calls} calls incl. warm-up)")


if __name__ == "__main__":
    main()
