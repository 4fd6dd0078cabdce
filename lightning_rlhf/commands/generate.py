"""``lightning-rlhf generate``: answers from an exported folder, prompted and stopped exactly as in training.

A policy answers well only in the format it learned, so prompts go through the training ``Encoder``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

import torch

from lightning_rlhf.data.tokenization import Encoder, TokenizeSettings
from lightning_rlhf.modules.generation_args import GenerationArgs


def read_prompts(path: str | Path) -> list[str]:
    """The ``prompt`` of every record of a JSON-lines file (a line may also be a bare JSON string)."""
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        prompt = record if isinstance(record, str) else record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str):
            raise ValueError(f"{path}, line {number}: expected a JSON string or an object with a 'prompt' string")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path} holds no prompts; write one JSON object with a 'prompt' per line")
    return prompts


class Generator:
    """A model folder with its tokenizer, answering prompts formatted as in training.

    Args:
        model: a Hugging Face folder (an export of any step, or any causal LM).
        generation: sampling settings (``do_sample=False`` decodes greedily, as validation does).
        use_chat_template: as ``RLHFDataModule(use_chat_template=...)`` in training.
        batch_size: prompts per ``generate`` call.
    """

    def __init__(self, model: str, generation: GenerationArgs, use_chat_template: bool = True,
                 batch_size: int = 8) -> None:
        from lightning_rlhf.models import load_causal_lm, load_tokenizer
        from lightning_rlhf.models.context import max_positions

        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, tokenizer=self.tokenizer).eval()
        self.generation = generation
        self.batch_size = batch_size
        positions = (max_positions(self.model.config) or (1 << 20, ""))[0]
        if positions <= generation.max_new_tokens + 1:
            raise ValueError(f"max_new_tokens ({generation.max_new_tokens}) leaves no room for a prompt in the "
                             f"model's {positions} positions; lower --max_new_tokens")
        prompt_limit = positions - generation.max_new_tokens
        settings = TokenizeSettings(max_prompt_length=prompt_limit, max_length=positions,
                                    long_prompt_policy="truncate", add_eos=False, use_chat_template=use_chat_template)
        self.encoder = Encoder(self.tokenizer, settings)

    @torch.no_grad()
    def answer(self, prompts: Sequence[str]) -> list[str]:
        """The responses to ``prompts`` (decoded without special tokens), in order."""
        from lightning_rlhf.data.collate import pad
        from lightning_rlhf.models.sampling import sampling_from_policy
        from lightning_rlhf.modules.rollout import response_mask_from_tokens

        answers = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, mask = pad([self.encoder.prompt_ids(p)[0] for p in chunk], self.tokenizer.pad_token_id, left=True)
            with sampling_from_policy(self.model, self.tokenizer) as stop_ids:
                kwargs = self.generation.generate_kwargs(self.tokenizer.pad_token_id, stop_ids)
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            responses = out[:, ids.shape[1]:]
            keep, _ = response_mask_from_tokens(responses, stop_ids)
            answers += [self.tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(responses, keep)]
        return answers


def _interactive(generator: Generator, lines: Iterable[str], out: TextIO) -> None:
    for line in lines:
        if line.strip():
            print(generator.answer([line.rstrip("\n")])[0], file=out, flush=True)


def _records(prompts: Sequence[str], answers: Sequence[str]) -> Iterator[str]:
    for prompt, answer in zip(prompts, answers):
        yield json.dumps({"prompt": prompt, "response": answer})


def build_parser() -> Any:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning-rlhf generate", default_env=False,
                            description="Answer prompts with an exported model, formatted as in training.")
    parser.add_argument("model", type=str, help="the model folder (e.g. runs/pipeline/ppo/hf/final)")
    parser.add_argument("--prompts", type=str | None, default=None,
                        help="JSON-lines file of prompts ({'prompt': ...} per line); none: read stdin line by line")
    parser.add_argument("--output", type=str | None, default=None,
                        help="write {'prompt', 'response'} JSON lines here (default: stdout)")
    parser.add_argument("--generation", type=GenerationArgs, default=GenerationArgs(max_new_tokens=64, do_sample=False),
                        help="sampling settings (default: greedy, 64 new tokens)")
    parser.add_argument("--max_new_tokens", type=int | None, default=None,
                        help="shortcut for --generation.max_new_tokens")
    parser.add_argument("--use_chat_template", type=bool, default=True,
                        help="format prompts with the tokenizer's chat template (as the data module did in training)")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling")
    return parser


def generate_main(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> list[str]:
    """Run ``lightning-rlhf generate`` on ``argv``; returns the answers of a prompts file (none when interactive)."""
    parser = build_parser()
    args = parser.instantiate_classes(parser.parse_args(list(argv)))
    generation = args.generation
    if args.max_new_tokens is not None:
        generation = GenerationArgs(**{**vars(generation), "max_new_tokens": args.max_new_tokens})
    torch.manual_seed(args.seed)
    generator = Generator(args.model, generation, args.use_chat_template, args.batch_size)
    out = stdout or sys.stdout
    if args.prompts is None:
        _interactive(generator, stdin or sys.stdin, out)
        return []
    prompts = read_prompts(args.prompts)
    answers = generator.answer(prompts)
    text = "\n".join(_records(prompts, answers)) + "\n"
    if args.output is None:
        out.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return answers
