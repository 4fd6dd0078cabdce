"""Decode speed as a fraction of the machine's limit: HF ``generate`` vs ``generation_backend="fast"``, one process.

    python benchmarks/generation.py --model <hf-folder> --batch 32 --new-tokens 64 --json OUT [--threads 2]

Same prompts (``--batch`` chat prompts, left-padded), greedy, no stop token, so every method decodes the same
``batch x new_tokens`` tokens; the methods take turns in every repeat and the median is reported. The limit is the
call's floor from rates measured in the same run: the prefill's multiply-adds at the GEMM rate, plus each decode
step's time at the slower of its multiply-adds at the GEMM rate and its weight bytes at the memory bandwidth.
``limit_tok_s`` is ``batch x new_tokens`` over that floor. ``vllm_tok_s`` is ``generation_backend="vllm"``'s engine
(in this process, fed the model's weights in memory), null where vLLM is not installed (it has its own environment:
``scripts/test_vllm.sh`` builds ``.venv-vllm``; run this script with that environment's python).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


def gemm_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Float32 GEMM rate of a square ``size`` multiply (best of ``repeats``): PyTorch's ``torch.mm`` and, where this
    build has it, oneDNN with the weight packed (on some CPUs twice ``torch.mm``'s rate); ``best`` is the limit's."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    rates = {"torch_mm": _best_rate(lambda: torch.mm(a, b), size, repeats)}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
        rates["onednn_packed"] = _best_rate(
            lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), size, repeats)
    return {**rates, "best": max(rates.values())}


def _best_rate(multiply: Callable[[], Any], size: int, repeats: int) -> float:
    multiply()
    return 2 * size**3 / min(_seconds(multiply) for _ in range(repeats)) / 1e9


def bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth of a large copy, read plus write (best of ``repeats``)."""
    src = torch.empty(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def sampling_ms(rows: int, model: nn.Module, repeats: int = 20) -> dict[str, float]:
    """Milliseconds to draw one token per row from a ``(rows, vocabulary)`` distribution: ``torch.multinomial``
    (``generate``'s) against the fast decode's :func:`~lightning_rlhf.models.fast_decode.sample_tokens`."""
    from lightning_rlhf.models.fast_decode import sample_tokens

    probs = torch.randn(rows, model.get_output_embeddings().weight.shape[0]).softmax(-1)
    draws = {"multinomial": lambda: torch.multinomial(probs, 1), "inverse_cdf": lambda: sample_tokens(probs)}
    return {name: round(1e3 * statistics.median(_seconds(draw) for _ in range(repeats)), 2)
            for name, draw in draws.items()}


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def limit_seconds(model: nn.Module, rows: int, prompt_tokens: int, new_tokens: int, gflops: float,
                  gbs: float) -> float:
    """The floor of one ``generate`` call: prefill plus ``new_tokens`` decode steps at the measured rates."""
    linear = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)]
    head = model.get_output_embeddings().weight.numel()
    body = sum(linear) - head
    weight_bytes = sum(linear) * 4
    prefill = 2 * (prompt_tokens * body + rows * head) / (gflops * 1e9)
    step = max(2 * rows * (body + head) / (gflops * 1e9), weight_bytes / (gbs * 1e9))
    return prefill + (new_tokens - 1) * step


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from lightning_rlhf.models.fast_decode import FastDecoder

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig()  # only the call's arguments apply, as in rollouts
    questions = [f"Tell me about the number {i} in a few sentences." for i in range(args.batch)]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in questions]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=[],
                  pad_token_id=tokenizer.pad_token_id)
    fast = FastDecoder(model)
    methods = {"hf_generate": lambda: model.generate(input_ids=ids, attention_mask=mask, **kwargs),
               "fast": lambda: fast.generate(ids, mask, **kwargs)}
    engine = vllm_engine(model)
    if engine is not None:
        methods["vllm"] = lambda: engine.generate(ids, mask, **kwargs)
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in methods.items()}  # warm-up (packs the weights)
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(_seconds(fn))
    rates, gbs, sampling = gemm_gflops(args.threads), bandwidth_gbs(), sampling_ms(args.batch, model)
    gflops = rates["best"]
    tokens = args.batch * args.new_tokens
    floor = limit_seconds(model, args.batch, int(mask.sum()), args.new_tokens, gflops, gbs)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": Path(args.model).name, "batch": args.batch, "new_tokens": args.new_tokens,
        "prompt_tokens": int(mask.sum()), "threads": args.threads, "repeats": args.repeats,
        "limit_tok_s": round(tokens / floor, 1),
        "hf_generate_tok_s": round(tokens / seconds["hf_generate"], 1),
        "compiled_tok_s": round(tokens / seconds["fast"], 1),
        "vllm_tok_s": round(tokens / seconds["vllm"], 1) if "vllm" in seconds else None,
        "vllm_same_greedy_tokens": (bool(torch.equal(outputs["vllm"], outputs["hf_generate"])) if "vllm" in outputs
                                    else None),
        "vllm_sync_s": round(engine.last_sync_s, 3) if engine is not None else None,
        "fast_vs_hf_generate": round(seconds["hf_generate"] / seconds["fast"], 2),
        "fast_fraction_of_limit": round(floor / seconds["fast"], 3),
        "hf_generate_fraction_of_limit": round(floor / seconds["hf_generate"], 3),
        "same_greedy_tokens": bool(torch.equal(outputs["fast"], outputs["hf_generate"])),
        "gemm_gflops": round(gflops, 1), "gemm_gflops_by_kernel": {k: round(v, 1) for k, v in rates.items()
                                                                   if k != "best"},
        "bandwidth_gbs": round(gbs, 1), "sampling_ms_per_step": sampling,
        "seconds": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "fast_decode": {"compiled_step": fast.compile, "packed_weights": fast.packed is not None},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **({"fast_profile_self_ms": profile(methods["fast"])} if getattr(args, "profile", False) else {}),
    }


def profile(fn: Callable[[], Any], top: int = 6) -> dict[str, float]:
    """The operators that took the most CPU time (their own, in ms) in one call of ``fn`` under ``torch.profiler``."""
    with torch.inference_mode(), torch.profiler.profile() as prof:
        fn()
    ops = sorted(prof.key_averages(), key=lambda op: op.self_cpu_time_total, reverse=True)[:top]
    return {op.key: round(op.self_cpu_time_total / 1e3, 1) for op in ops}


def vllm_engine(model: nn.Module) -> Any:
    """``generation_backend="vllm"``'s decoder on ``model``, its weights loaded; None without vLLM."""
    from lightning_rlhf.models.vllm_decode import VLLMDecoder, vllm_missing

    if vllm_missing():
        return None
    engine = VLLMDecoder(model)
    engine.sync()
    return engine


def main(args: argparse.Namespace) -> None:
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
