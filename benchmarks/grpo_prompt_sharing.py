"""What sharing each prompt's forward across its group saves: GRPO's rollout ``generate`` and its update's
forward + backward, with ``share_prompt_prefix`` on and off, interleaved in one process.

Run from the repository root (``<smollm2-hf-dir>``: SmolLM2-135M-Instruct as a Hugging Face folder, made once by
``python examples/smollm2_cpu/convert_gguf.py --output <smollm2-hf-dir>``)::

    python benchmarks/grpo_prompt_sharing.py --model <smollm2-hf-dir>          # SmolLM2-135M-Instruct + LoRA r8
    python benchmarks/grpo_prompt_sharing.py --repeats 1                        # tiny Llama smoke run

The rollout is ``GRPOModule.generate`` on ``--prompts`` chat prompts of the addition task x ``--generations``
answers of at most ``--response`` tokens (sampling, log-probabilities streamed, as in training); the update is
one mini-batch holding the whole rollout: the actor's log-probabilities with their gradient, a backward pass
of their sum, gradients cleared. Both settings run on the same module (the flag is flipped between calls) and
the same sampled rollout, alternating per repeat; the medians and their ratio are printed and saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a Hugging Face causal-LM folder; default: a tiny randomly initialised Llama")
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts per rollout")
    p.add_argument("--generations", type=int, default=4, help="answers per prompt (the group size)")
    p.add_argument("--response", type=int, default=16, help="most new tokens per answer")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on q_proj/v_proj (0: full fine-tuning)")
    p.add_argument("--repeats", type=int, default=4, help="measurements per setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpo_prompt_sharing.json")
    return p.parse_args(argv)


def build_module(args: argparse.Namespace, root: Path) -> Any:
    from lightning.pytorch import Trainer

    from lightning_rlhf.models import LoraArgs
    from lightning_rlhf.modules.grpo import GRPOModule
    from lightning_rlhf.modules.generation_args import GenerationArgs

    path = args.model
    if path is None:
        from lightning_rlhf.data.task import SyntheticTask
        from lightning_rlhf.models.tiny import save_tiny_model, train_tokenizer

        tokenizer = train_tokenizer(SyntheticTask(style="chat").corpus(), vocab_size=400)
        path = str(save_tiny_model(root / "actor", "llama", tokenizer, hidden_size=128, num_layers=4, num_heads=4))
    lora = LoraArgs(rank=args.lora_rank, alpha=2.0 * args.lora_rank, target_modules=["q_proj", "v_proj"]) \
        if args.lora_rank else None
    module = GRPOModule(actor=path, reward_funcs=["answer_match"], actor_lora=lora, num_generations=args.generations,
                        generation=GenerationArgs(max_new_tokens=args.response), train_batch_size=args.prompts)
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
    module.configure_model()
    return module


def prompt_batch(module: Any, count: int) -> dict[str, Any]:
    """``count`` distinct chat prompts of the addition task, rendered and left-padded as the data module does."""
    from lightning_rlhf.data.task import SyntheticTask

    tokenizer = module.tokenizer
    questions = SyntheticTask(seed=0, style="chat").prompts()[:count]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) if tokenizer.chat_template else q
             for q in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    return {"prompt_input_ids": enc["input_ids"], "prompt_attention_mask": enc["attention_mask"]}


def time_generate(module: Any, batch: dict[str, Any], generations: int) -> tuple[float, Any]:
    from lightning_rlhf.modules.rollout import repeat_groups

    batch = repeat_groups(batch, generations)  # the group layout, as the rollout builds it before generate
    start = time.perf_counter()
    generated = module.generate(batch, greedy=False, with_logprobs=True, group_size=generations)
    return time.perf_counter() - start, generated


def time_update(module: Any, generated: Any) -> float:
    from lightning_rlhf.models.forward import policy_logprobs

    length = generated.response_mask.shape[1]
    start = time.perf_counter()
    logprobs, _ = policy_logprobs(module.actor, generated.sequences, generated.attention_mask, length,
                                  share_prompts=module.hparams.share_prompt_prefix)
    (logprobs * generated.response_mask).sum().backward()
    module.actor.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="prompt-sharing-") as tmp:
        module = build_module(args, Path(tmp))
        batch = prompt_batch(module, args.prompts)
        module.actor.train()
        times: dict[str, dict[str, list[float]]] = {s: {"generate_s": [], "update_s": []} for s in ("full", "shared")}
        torch.manual_seed(0)
        _, rollout = time_generate(module, batch, args.generations)  # warm-up; the update's rollout
        for repeat in range(args.repeats):
            for setting in (("full", "shared") if repeat % 2 == 0 else ("shared", "full")):
                module.hparams.share_prompt_prefix = setting == "shared"
                torch.manual_seed(repeat)
                seconds, _ = time_generate(module, batch, args.generations)
                times[setting]["generate_s"].append(seconds)
                times[setting]["update_s"].append(time_update(module, rollout))
    summary = {s: {k: median(v) for k, v in t.items()} for s, t in times.items()}
    ratios = {k: summary["full"][k] / summary["shared"][k] for k in ("generate_s", "update_s")}
    width = batch["prompt_input_ids"].shape[1]
    print(f"{machine()} | {args.model or 'tiny llama'}: {args.prompts} prompts of {width} tokens x "
          f"{args.generations} answers, {args.response} new tokens, LoRA r{args.lora_rank}, {args.threads} threads")
    for key in ("generate_s", "update_s"):
        print(f"{key:<11} full {summary['full'][key]:6.2f} s  shared {summary['shared'][key]:6.2f} s  "
              f"-> {ratios[key]:.2f}x  (full " + " ".join(f"{x:.2f}" for x in times["full"][key]) + "; shared "
              + " ".join(f"{x:.2f}" for x in times["shared"][key]) + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                                    "argv": sys.argv[1:] if argv is None else argv, "prompt_tokens": width,
                                    "times": times, "median": summary, "speedup": ratios}, indent=1))


if __name__ == "__main__":
    main()
