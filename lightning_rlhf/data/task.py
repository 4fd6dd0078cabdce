"""The built-in synthetic task: small additions (or products or differences: ``operation``), learnable from scratch on
a CPU in minutes and checkable by rule.

The SFT demonstrations mostly drop the carry while the preference pairs always prefer the right sum, so RLHF has
something to add (docs/quickstart.md). A response succeeds when, stripped, it is exactly the sum: ``" 12"``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

_PROMPT = re.compile(r"(\d+)\s*([-+*])\s*(\d+)\s*(?:=|\?)")
CHAT_PROMPT = "What is {a} {op} {b}? Answer with the number only."
#: the ``tool`` style: the question and the tag protocol of ``lightning_rlhf.environments.calculator:calc``
TOOL_PROMPT = ("What is {a} {op} {b}? You have a calculator: write <tool>calc(EXPRESSION)</tool> and its "
               "<result> comes back. Then answer with the number only.")
#: a ``tool`` style demonstration: the call, the result the environment appends, the answer
TOOL_DEMONSTRATION = "<tool>calc({a} {op} {b})</tool>\n<result>{c}</result>\n{c}"
#: the operations of ``SyntheticTask.operation``; a difference keeps ``a >= b`` (answers are never negative)
OPERATIONS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b, "-": lambda a, b: a - b}


@dataclass(frozen=True)
class SyntheticTask:
    """Deterministic generator and checker of the addition task.

    Args:
        seed: seed of the record generator; the same seed gives the same records everywhere.
        max_operand: operands are drawn from ``min_operand..max_operand`` (0..9 gives 100 distinct prompts).
        easy_error_rate: probability that a demonstration of a sum without carry is a mistake.
        hard_error_rate: probability that a demonstration of a sum with a carry drops the carry.
        style: ``plain`` prompts (``"3+4="``, for tiny models from scratch), ``chat`` questions (instruct models) or
            ``tool`` questions that offer a calculator tool, whose demonstrations (``response``) call it and are
            always right (docs/environments.md; the error rates apply to the other styles).
        operation: ``+`` (the addition task), or ``*`` / ``-``: a sibling task in the same wording, for checking that
            a recipe holds beyond the task it was tuned on (``-`` draws ``a >= b``).
        min_operand: the smallest operand (10 with ``max_operand=99``: two-digit numbers).
    """

    seed: int = 0
    max_operand: int = 9
    easy_error_rate: float = 0.2
    hard_error_rate: float = 0.6
    style: Literal["plain", "chat", "tool"] = "plain"
    operation: Literal["+", "*", "-"] = "+"
    min_operand: int = 0

    def __post_init__(self) -> None:
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {self.max_operand}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(f"min_operand must be in [0, max_operand={self.max_operand}], got {self.min_operand}")
        for name in ("easy_error_rate", "hard_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.style not in ("plain", "chat", "tool"):
            raise ValueError(f"style must be 'plain', 'chat' or 'tool', got {self.style!r}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {self.operation!r}")

    def prompts(self) -> list[str]:
        span = range(self.min_operand, self.max_operand + 1)
        return [self.question(a, b) for a in span for b in span if self.operation != "-" or a >= b]

    def question(self, a: int, b: int) -> str:
        op = self.operation
        if self.style == "plain":
            return f"{a}{op}{b}="
        return (CHAT_PROMPT if self.style == "chat" else TOOL_PROMPT).format(a=a, op=op, b=b)

    def result(self, a: int, b: int) -> int:
        """``a`` op ``b``."""
        return OPERATIONS[self.operation](a, b)

    @staticmethod
    def operands(prompt: str) -> tuple[int, int] | None:
        """The two operands of ``prompt``'s last question (raw, formatted or chat), or ``None``."""
        found = _PROMPT.findall(prompt)
        return (int(found[-1][0]), int(found[-1][2])) if found else None

    def answer(self, prompt: str) -> str | None:
        """The correct answer text (no leading space) for ``prompt``, or ``None``."""
        ops = self.operands(prompt)
        return None if ops is None else str(self.result(*ops))

    def check(self, prompt: str, response: str) -> bool:
        """Whether ``response`` (decoded without special tokens) is exactly the answer to ``prompt``."""
        expected = self.answer(prompt)
        return expected is not None and response.strip() == expected

    def success_rate(self, prompts: Sequence[str], responses: Sequence[str]) -> float:
        """Fraction of ``responses`` that :meth:`check` accepts for the matching ``prompts``."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return 0.0
        return sum(self.check(p, r) for p, r in zip(prompts, responses)) / len(prompts)

    @staticmethod
    def mistakes(a: int, b: int) -> list[str]:
        """The wrong answers for ``a+b``: dropped carry first, off-by-one, echoed operand, repeated sum."""
        total = a + b
        wrong = {str(total + 1), str(max(total - 1, 0)), str(a), str(b)} - {str(total)}
        options = [f" {w}" for w in sorted(wrong)] + [f" {total} {total}"]
        if total >= 10:
            options.insert(0, f" {total % 10}")
        return options

    def wrong_answers(self, a: int, b: int) -> list[str]:
        """:meth:`mistakes` for the addition task; for the others: off-by-one, echoed operand, repeated result."""
        if self.operation == "+":
            return self.mistakes(a, b)
        result = self.result(a, b)
        wrong = {str(result + 1), str(max(result - 1, 0)), str(a), str(b)} - {str(result)}
        return [f" {w}" for w in sorted(wrong)] + [f" {result} {result}"]

    def _mistake(self, a: int, b: int, rng: random.Random, prefer_carry: float) -> str:
        options = self.wrong_answers(a, b)
        carry = self.operation == "+" and a + b >= 10
        if carry and rng.random() < prefer_carry:
            return options[0]
        return rng.choice(options[1:] if carry else options)

    def records(self, n: int) -> list[dict[str, str]]:
        """``n`` records, prompts drawn with replacement: ``prompt``, ``response`` (a demonstration), ``chosen``,
        ``rejected`` and ``columns`` (the reference ``answer`` as JSON, as prompt-only data carries it)."""
        rng = random.Random(self.seed)
        operand = range(self.min_operand, self.max_operand + 1)
        out = []
        for _ in range(n):
            a, b = rng.choice(operand), rng.choice(operand)
            if self.operation == "-" and a < b:
                a, b = b, a
            correct = f" {self.result(a, b)}"
            hard = self.operation == "+" and a + b >= 10
            if self.style == "tool":
                response = TOOL_DEMONSTRATION.format(a=a, op=self.operation, b=b, c=correct.strip())
            elif rng.random() < (self.hard_error_rate if hard else self.easy_error_rate):
                response = self._mistake(a, b, rng, prefer_carry=1.0)
            else:
                response = correct
            rejected = self._mistake(a, b, rng, prefer_carry=0.5)
            out.append({"prompt": self.question(a, b), "response": response, "chosen": correct, "rejected": rejected,
                        "columns": json.dumps({"answer": correct.strip()})})
        return out

    def corpus(self) -> list[str]:
        """Every text a tokenizer for this task must cover."""
        texts = []
        for prompt in self.prompts():
            a, b = self.operands(prompt)  # type: ignore[misc]
            for answer in [f" {self.result(a, b)}", *self.wrong_answers(a, b)]:
                texts.append(f"Human: {prompt} Assistant:{answer}")
        return texts


def default_task() -> SyntheticTask:
    """The task used when no data source is given."""
    return SyntheticTask()
