"""The built-in synthetic task: single-digit addition with mixed-quality demonstrations.

Why this task: the embedded default pipeline trains a tiny model *from scratch* on a laptop CPU, so
the task must be learnable in minutes (short prompts ``"3+4="``, one- or two-digit answers, a
vocabulary of digits and a few words), checkable by rule (so PPO can report a task success rate
beside the learned reward), and built so that RLHF has something to add, as in InstructGPT:

* the SFT demonstrations (``response``) are of mixed quality. Sums without a carry are demonstrated
  correctly most of the time (``easy_error_rate`` wrong), but sums with a carry are demonstrated with
  the carry dropped most of the time (``hard_error_rate`` wrong, e.g. ``"5+7="`` -> ``" 2"``). An SFT
  policy that imitates them well still fails on the carry prompts, even with greedy decoding;
* the preference pairs always prefer the correct answer (``chosen``) over a mistake (``rejected``:
  the dropped carry, an off-by-one, an echoed operand, or an off-format repeated answer), so a reward
  model learns the rule and PPO can push success up.

A response succeeds when, stripped of surrounding whitespace (and decoded without special tokens),
it is exactly the decimal sum: ``" 12"`` passes, ``" 2"``, ``" 12 12"`` and ``" 12 Human:"`` fail.

``style="chat"`` asks the same sums as an instruction for chat models (``"What is 3 + 4? Answer with the number
only."``), the form GRPO with reward functions trains a pretrained instruct model on. Every record also carries
its ``answer`` as a reference column, which reward functions (``answer_match``, ...) receive by name.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

#: ``a+b=`` (plain) or ``What is a + b?`` (chat)
_PROMPT = re.compile(r"(\d+)\s*\+\s*(\d+)\s*(?:=|\?)")
#: the chat style's question
CHAT_PROMPT = "What is {a} + {b}? Answer with the number only."


@dataclass(frozen=True)
class SyntheticTask:
    """Deterministic generator and checker of the addition task.

    Args:
        seed: seed of the record generator; the same seed gives the same records everywhere.
        max_operand: operands are drawn from ``0..max_operand`` (9 gives 100 distinct prompts).
        easy_error_rate: probability that a demonstration of a sum without carry is a mistake.
        hard_error_rate: probability that a demonstration of a sum with a carry drops the carry.
        style: ``plain`` prompts (``"3+4="``, for tiny models trained from scratch) or ``chat`` instructions
            (``"What is 3 + 4? Answer with the number only."``, for instruct models).
    """

    seed: int = 0
    max_operand: int = 9
    easy_error_rate: float = 0.2
    hard_error_rate: float = 0.6
    style: Literal["plain", "chat"] = "plain"

    def __post_init__(self) -> None:
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {self.max_operand}")
        for name in ("easy_error_rate", "hard_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.style not in ("plain", "chat"):
            raise ValueError(f"style must be 'plain' or 'chat', got {self.style!r}")

    # -- prompts and answers -------------------------------------------------------------------
    def prompts(self) -> list[str]:
        """Every distinct prompt of the task, in a fixed order."""
        span = range(self.max_operand + 1)
        return [self.question(a, b) for a in span for b in span]

    def question(self, a: int, b: int) -> str:
        """The prompt asking ``a + b`` in this task's style."""
        return CHAT_PROMPT.format(a=a, b=b) if self.style == "chat" else f"{a}+{b}="

    @staticmethod
    def operands(prompt: str) -> tuple[int, int] | None:
        """The two operands of ``prompt`` (raw ``"3+4="``, formatted ``"Human: 3+4= Assistant:"``, or chat).

        Returns ``None`` when the prompt holds no ``a+b=`` question. The last question wins, so a
        dialogue prompt is read at its final turn.
        """
        found = _PROMPT.findall(prompt)
        return (int(found[-1][0]), int(found[-1][1])) if found else None

    def answer(self, prompt: str) -> str | None:
        """The correct answer text (without the leading space) for ``prompt``, or ``None``."""
        ops = self.operands(prompt)
        return None if ops is None else str(ops[0] + ops[1])

    def check(self, prompt: str, response: str) -> bool:
        """Whether ``response`` is the correct, well-formatted answer to ``prompt``.

        Args:
            prompt: the prompt, raw or formatted.
            response: the generated continuation, decoded without special tokens.
        """
        expected = self.answer(prompt)
        return expected is not None and response.strip() == expected

    def success_rate(self, prompts: Sequence[str], responses: Sequence[str]) -> float:
        """Fraction of ``responses`` that :meth:`check` accepts for the matching ``prompts``.

        Args:
            prompts: prompts, one per response.
            responses: generated responses.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return 0.0
        return sum(self.check(p, r) for p, r in zip(prompts, responses)) / len(prompts)

    # -- demonstrations and mistakes --------------------------------------------------------------
    @staticmethod
    def mistakes(a: int, b: int) -> list[str]:
        """Every kind of wrong answer the task produces for ``a+b`` (each with a leading space)."""
        total = a + b
        wrong = {str(total + 1), str(max(total - 1, 0)), str(a), str(b)} - {str(total)}
        options = [f" {w}" for w in sorted(wrong)] + [f" {total} {total}"]
        if total >= 10:
            options.insert(0, f" {total % 10}")
        return options

    def _mistake(self, a: int, b: int, rng: random.Random, prefer_carry: float) -> str:
        options = self.mistakes(a, b)
        if a + b >= 10 and rng.random() < prefer_carry:
            return options[0]  # the dropped carry
        return rng.choice(options[1:] if a + b >= 10 else options)

    def records(self, n: int) -> list[dict[str, str]]:
        """``n`` records with ``prompt``, ``response`` (a demonstration), ``chosen``, ``rejected`` and ``columns``
        (the reference ``answer``, JSON, as prompt-only data carries it).

        Args:
            n: number of records; prompts are drawn uniformly with replacement.
        """
        rng = random.Random(self.seed)
        operand = range(self.max_operand + 1)
        out = []
        for _ in range(n):
            a, b = rng.choice(operand), rng.choice(operand)
            correct = f" {a + b}"
            hard = a + b >= 10
            if rng.random() < (self.hard_error_rate if hard else self.easy_error_rate):
                response = self._mistake(a, b, rng, prefer_carry=1.0)
            else:
                response = correct
            rejected = self._mistake(a, b, rng, prefer_carry=0.5)
            out.append({"prompt": self.question(a, b), "response": response, "chosen": correct, "rejected": rejected,
                        "columns": json.dumps({"answer": str(a + b)})})
        return out

    def corpus(self) -> list[str]:
        """Every text a tokenizer for this task must cover: formatted prompts with all answers."""
        texts = []
        for prompt in self.prompts():
            a, b = self.operands(prompt)  # type: ignore[misc]
            for answer in [f" {a + b}", *self.mistakes(a, b)]:
                texts.append(f"Human: {prompt} Assistant:{answer}")
        return texts


def default_task() -> SyntheticTask:
    """The task used when no data source is given (seed 0, operands 0..9)."""
    return SyntheticTask()
