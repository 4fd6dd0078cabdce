"""How fast plain supervised learning teaches a model the bare answers of a built-in arithmetic task.

The question behind ``GRPOModule(answer_replay=...)``: when imitation of guided answers made the bare form win but not
the bare answers, was the model unable to learn them, or did it see too few of them? This script fine-tunes the
recipe's LoRA on every distinct question of the task with its bare answer (prompt in the chat template, the number
and EOS as the target), ``--batch`` questions a step at the recipe's learning rate, and prints the greedy share of
bare answers that are right on those questions every ``--every`` steps. One process, one thread per core given.

    python benchmarks/sft_bare_answers.py --actor <smollm2-hf-dir> --operation - --steps 60 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.data.task import SyntheticTask


def bare_accuracy(model, tokenizer, prompts: list[str], answers: list[str]) -> float:
    """The share of greedy answers (4 new tokens) that are the bare answer."""
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(prompts), 32):
            chunk = prompts[start:start + 32]
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**encoded, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for answer, ids in zip(answers[start:start + 32], out[:, encoded.input_ids.shape[1]:]):
                right += tokenizer.decode(ids, skip_special_tokens=True).strip() == answer
    model.train()
    return right / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actor", required=True, help="a Hugging Face model folder")
    parser.add_argument("--operation", default="-", choices=["+", "-", "*"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16, help="questions per step")
    parser.add_argument("--every", type=int, default=10, help="evaluate every this many steps")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the curve here")
    args = parser.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.actor)
    tokenizer.padding_side = "left"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.actor),
                           LoraConfig(r=8, lora_alpha=16, target_modules=args.targets.split(",")))
    task = SyntheticTask(operation=args.operation, style="chat")
    questions = task.prompts()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in questions]
    answers = [task.answer(q) for q in questions]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    curve = [(0, bare_accuracy(model, tokenizer, prompts, answers))]
    print(f"{len(questions)} questions; step 0: bare answers right {curve[-1][1]:.3f}", flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        chosen = random.sample(range(len(prompts)), min(args.batch, len(prompts)))
        rows = [(tokenizer(prompts[i], add_special_tokens=False).input_ids,
                 tokenizer(answers[i] + tokenizer.eos_token, add_special_tokens=False).input_ids) for i in chosen]
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            ids[i, width - len(p) - len(a):] = torch.tensor(p + a)
            labels[i, width - len(a):] = torch.tensor(a)
            mask[i, width - len(p) - len(a):] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.every == 0:
            curve.append((step, bare_accuracy(model, tokenizer, prompts, answers)))
            print(f"step {step}: loss {loss.item():.3f}, bare answers right {curve[-1][1]:.3f}", flush=True)
    result = {"settings": vars(args), "questions": len(questions), "curve": curve,
              "train_seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
