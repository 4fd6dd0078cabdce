"""How often a model samples each answer form on the addition task, at several temperatures.

Why: GRPO can only reinforce what the policy samples. Before choosing rewards and a temperature for
``grpo.yaml``, this counts, per sampling setting, the answers that end with the right number, the bare numbers
(the format ``answer_only_format`` pays), the right bare numbers, and the answers with no number at all
(off-topic text). Plain ``transformers``: works on the converted SmolLM2 folder or on an exported policy.

    python examples/smollm2_grpo/sample_forms.py --model checkpoints/smollm2-135m-instruct
    python examples/smollm2_grpo/sample_forms.py --model runs/smollm2_grpo/hf/final --greedy --prompts 100

``--greedy`` answers every prompt once without sampling: the check of an exported policy in plain ``transformers``.
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.rewards.builtin import _numbers, answer_match, answer_only_format

SETTINGS = {  # name -> generate() sampling arguments
    "t0.7": {"temperature": 0.7},
    "t1.0": {"temperature": 1.0},
    "t1.0_p0.9": {"temperature": 1.0, "top_p": 0.9},
    "t1.3_k20": {"temperature": 1.3, "top_k": 20},
}


def count_forms(answers: list[str], sums: list[int]) -> dict[str, float]:
    """Shares of ``answers`` that end with the right number, are a bare number, both, or hold no number: the first
    two as ``answer_match`` and ``answer_only_format`` pay them."""
    prompts = [""] * len(answers)
    right = answer_match(prompts, answers, sums)
    bare = answer_only_format(prompts, answers)
    counts = {"right": sum(right), "bare": sum(bare), "right_bare": sum(r * b for r, b in zip(right, bare)),
              "no_number": sum(not _numbers(answer) for answer in answers)}
    return {name: count / max(len(answers), 1) for name, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/smollm2-135m-instruct", help="Hugging Face folder")
    parser.add_argument("--prompts", type=int, default=40, help="distinct sums asked (operands 0-9)")
    parser.add_argument("--samples", type=int, default=8, help="answers sampled per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="one greedy answer per prompt instead of the settings")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(args.seed).shuffle(pairs)
    pairs = pairs[:args.prompts]
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"What is {a} + {b}? Answer with the number only."}],
        tokenize=False, add_generation_prompt=True) for a, b in pairs]
    samples = 1 if args.greedy else args.samples
    sums = [a + b for a, b in pairs for _ in range(samples)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    settings = {"greedy": {"do_sample": False}} if args.greedy else {
        name: {"do_sample": True, "top_k": 0, **sampling} for name, sampling in SETTINGS.items()}
    for name, generate_args in settings.items():
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=args.max_new_tokens, num_return_sequences=samples,
                                 **generate_args)
        answers = tokenizer.batch_decode(out[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
        shares = count_forms(answers, sums)
        print(name, " ".join(f"{key} {value:.2f}" for key, value in shares.items()), flush=True)


if __name__ == "__main__":
    main()
