"""Answer projections for answer guidance (``GRPOModule(answer_projection=...)``, docs/grpo.md): functions that map a
sampled answer to the form the rewards want, with the reward functions' signature
``f(prompts, completions, **columns) -> list[str | None]`` (None: no projection for that row)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from lightning_rlhf.rewards.reasoning_gym import final_answer
from lightning_rlhf.rewards.resolve import import_callable
from lightning_rlhf.rewards.scoring import completion_text

Projection = Callable[..., Sequence[Any]]


def final_answer_alone(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                       **kwargs: Any) -> list[str | None]:
    """The answer part that the flexible verifiers read (:func:`~lightning_rlhf.rewards.final_answer`: ``<answer>``
    tags, ``\\boxed{}``, ``####``, "the answer is X", or the last number where the record's ``answer`` is a number),
    alone: "7 * 8 = 56" projects to "56". None where nothing is left."""
    references = list(answer) if answer is not None else [None] * len(completions)
    projected = [final_answer(completion_text(c), r) for c, r in zip(completions, references)]
    return [text or None for text in projected]


#: projections by name, for ``answer_projection`` in a YAML file
BUILTIN_PROJECTIONS: dict[str, Projection] = {"final_answer": final_answer_alone}


def resolve_projection(spec: str | Projection) -> Projection:
    """A projection from a built-in name, an import path ``package.module:function`` or a callable."""
    if callable(spec):
        return spec
    if spec in BUILTIN_PROJECTIONS:
        return BUILTIN_PROJECTIONS[spec]
    return import_callable(str(spec), "answer_projection", f"neither a built-in ({', '.join(BUILTIN_PROJECTIONS)}) "
                                                           "nor ")


__all__ = ["BUILTIN_PROJECTIONS", "Projection", "final_answer_alone", "resolve_projection"]
