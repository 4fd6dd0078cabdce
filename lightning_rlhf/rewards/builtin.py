"""Built-in reward functions with TRL's signature (docs/rewards.md), for tasks with a checkable answer. The
``answer`` column's last number counts (GSM8K's ``"... #### 72"`` works); an answer without one gets ``None``.

Standard library only, on purpose: ``benchmarks/grpo_vs_trl.py`` loads this file by path in TRL's environment
(which has no Lightning) so that both systems run the very same functions. Names that need the package
(reasoning-gym's verifiers) are added in ``rewards/resolve.py``.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Callable, Mapping, Sequence


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
ANSWER_ONLY_PATTERN = r"\s*-?\d[\d,]*(?:\.\d+)?\.?\s*"


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, a message's or the last message's ``content``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be text or chat messages with 'content', got {type(completion).__name__}")


def _numbers(text: str) -> list[float]:
    return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def _expected(answer: Any) -> float | None:
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return float(answer)
    found = _numbers(str(answer)) if answer is not None else []
    return found[-1] if found else None


def answer_match(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any
                 ) -> list[float | None]:
    """1.0 where the completion's last number equals the ``answer`` column's number, else 0.0.

    ``completions`` are text or chat messages, ``answer`` text or numbers; ``prompts`` and other columns are unused.
    """
    rewards: list[float | None] = []
    for completion, reference in zip(completions, answer):
        expected = _expected(reference)
        found = _numbers(completion_text(completion))
        rewards.append(None if expected is None else float(bool(found) and found[-1] == expected))
    return rewards


def answer_match_shaped(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any
                        ) -> list[float | None]:
    """1.0 last number right, 0.5 right number elsewhere, ``0.25 * max(0, 1 - |x - a| / max(1, |a|))`` for a last
    number ``x`` near the answer ``a``, 0.0 for no number: a group of near-misses still has a best answer.
    """
    rewards: list[float | None] = []
    for completion, reference in zip(completions, answer):
        expected = _expected(reference)
        found = _numbers(completion_text(completion))
        if expected is None:
            rewards.append(None)
        elif not found:
            rewards.append(0.0)
        elif found[-1] == expected:
            rewards.append(1.0)
        elif expected in found:
            rewards.append(0.5)
        else:
            rewards.append(0.25 * max(0.0, 1.0 - abs(found[-1] - expected) / max(1.0, abs(expected))))
    return rewards


def exact_answer(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any
                 ) -> list[float | None]:
    """1.0 where the completion is the answer's number alone (``" 42."`` for 42), else 0.0: a format reward paid
    only for correct answers, so the policy keeps the words it computes with until it is right (docs/grpo.md)."""
    matches = answer_match(prompts, completions, answer)
    formats = answer_only_format(prompts, completions)
    return [None if match is None else match * fmt for match, fmt in zip(matches, formats)]


def brevity(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """``1 / words``: 1.0 for a one-word answer, 0.25 for "The answer is 12.", 0.0 for an empty one. A dense path
    from the sentences a chat model answers in to the answer alone that verifiers want; collected by any short text,
    so use it with ``reward_gate`` after a correctness reward, which then pays it only for right answers."""
    counts = [len(completion_text(c).split()) for c in completions]
    return [1.0 / n if n else 0.0 for n in counts]


class FormatReward:
    """1.0 where the whole completion matches a regular expression, else 0.0; a class so that it pickles.

    Args:
        pattern: the regular expression the whole completion must match.
        name: the curve's name.
    """

    def __init__(self, pattern: str, name: str = "format") -> None:
        self.pattern = re.compile(pattern, re.DOTALL)
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return [float(self.pattern.fullmatch(completion_text(c)) is not None) for c in completions]


answer_only_format = FormatReward(ANSWER_ONLY_PATTERN, name="answer_only_format")


def math_verify_match(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any
                      ) -> list[float | None]:
    """1.0 where ``math_verify`` (as TRL's ``accuracy_reward``) finds the answer mathematically equal to ``answer``,
    else 0.0; ``None`` where the reference does not parse. Needs ``pip install math-verify``.
    """
    from math_verify import parse, verify

    rewards: list[float | None] = []
    for completion, reference in zip(completions, answer):
        gold = parse(str(reference))
        rewards.append(float(verify(gold, parse(completion_text(completion)))) if gold else None)
    return rewards


math_verify_match.requires = "math_verify"  # type: ignore[attr-defined]


def check_requirements(function: Callable[..., Any], source: str) -> None:
    """Fail at construction if ``function`` needs a missing module (its ``requires``; ``install``: what to install)."""
    module = getattr(function, "requires", None)
    if isinstance(module, str) and importlib.util.find_spec(module) is None:
        install = getattr(function, "install", module.replace("_", "-"))
        raise ImportError(f"reward function {source!r} needs the {module!r} module, which is not installed; "
                          f"pip install {install}, or drop the function from reward_funcs")


BUILTIN_REWARD_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "answer_match": answer_match,
    "answer_match_shaped": answer_match_shaped,
    "answer_only_format": answer_only_format,
    "brevity": brevity,
    "exact_answer": exact_answer,
    "math_verify_match": math_verify_match,
}
