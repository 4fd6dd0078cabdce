"""Scoring answers with reasoning-gym's own verifiers: one reward function for every task, which rebuilds each row's
entry from the columns the ``reasoning_gym:`` data source writes (``task``, ``task_config``, ``metadata``, ``answer``,
``question``) and calls that task's ``score_answer``. Needs ``pip install 'lightning-rlhf[reasoning-gym]'``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Callable, Sequence

from lightning_rlhf.rewards.scoring import completion_text

INSTALL = "'lightning-rlhf[reasoning-gym]'"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"

Scorer = Callable[[Any, dict], Any]


def import_reasoning_gym() -> Any:
    """The ``reasoning_gym`` package, or an ImportError saying how to install it."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(f"the reasoning-gym rewards need the 'reasoning_gym' package, which is not installed; "
                          f"pip install {INSTALL}") from exc
    return reasoning_gym


def _restore(obj: dict[str, Any]) -> Any:
    # the tagged forms the data source writes for what JSON has not: tuples, sets, dicts with non-string keys
    if len(obj) == 1:
        if "__tuple__" in obj:
            return tuple(obj["__tuple__"])
        if "__set__" in obj:
            return set(obj["__set__"])
        if "__items__" in obj:
            return {key: value for key, value in obj["__items__"]}
    return obj


def decode_metadata(metadata: Any) -> Any:
    """A ``metadata`` column (JSON text from the data source, or already a dict) as reasoning-gym wrote it."""
    return json.loads(metadata, object_hook=_restore) if isinstance(metadata, str) else metadata


@functools.lru_cache(maxsize=None)
def _scorer(task: str, config: str) -> Scorer:
    rg = import_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise ValueError(f"the 'task' column holds {task!r}, which is not a reasoning-gym task; the reasoning-gym "
                         f"rewards are for records of a 'reasoning_gym:TASK' data source")
    settings = json.loads(config) if config else {}
    try:  # the task's settings matter: some verifiers read their config (decimal places, board formats)
        return rg.create_dataset(task, **settings).score_answer
    except Exception as exc:
        raise ValueError(f"reasoning-gym task {task!r} rejects the settings {settings} of the 'task_config' column: "
                         f"{type(exc).__name__}: {exc}") from exc


def _config_key(config: Any) -> str:
    if config is None or config == "":
        return ""
    settings = json.loads(config) if isinstance(config, str) else config
    return json.dumps(settings, sort_keys=True)


def _verified(score: Scorer, text: str, entry: dict[str, Any]) -> float:
    try:
        return float(score(text, entry))
    except Exception:
        # a verifier that fails on the completion but accepts the reference answer has seen a wrong answer;
        # one that fails on the reference too means a broken record or setting: let that fail the step
        if entry["answer"] is not None:
            score(entry["answer"], entry)
        return 0.0


def _column(values: Sequence[Any] | None, rows: int) -> list[Any]:
    return [None] * rows if values is None else list(values)


def _score(completions: Sequence[Any], extract: Callable[[str, Any], str], task: Sequence[Any] | None,
           metadata: Sequence[Any] | None, answer: Sequence[Any] | None, question: Sequence[Any] | None,
           task_config: Sequence[Any] | None) -> list[float | None]:
    rows = len(completions)
    columns = zip(_column(task, rows), _column(metadata, rows), _column(answer, rows), _column(question, rows),
                  _column(task_config, rows))
    rewards: list[float | None] = []
    for completion, (name, meta, reference, asked, config) in zip(completions, columns):
        if not name or meta is None:
            rewards.append(None)  # not a reasoning-gym record
            continue
        entry = {"question": asked or "", "answer": reference, "metadata": decode_metadata(meta)}
        score = _scorer(str(name), _config_key(config))
        rewards.append(_verified(score, extract(completion_text(completion), reference), entry))
    return rewards


_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+)$", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(text: str, reference: Any = None) -> str:
    """The answer part of a worked completion: the last ``<answer>...</answer>``, else the last ``\\boxed{...}``,
    else what follows the last ``####``, else the last non-empty line (what follows "answer is" in it, quotes and a
    final period dropped); stripped. Where the ``reference`` answer is a number and that part is not, the last number
    of the whole text, as GSM8K's flexible extraction reads it ("7 * 8 = 56" answers 56)."""
    found = _answer_part(text)
    if reference is not None and _NUMBER.fullmatch(str(reference).strip()) and not _NUMBER.fullmatch(found):
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else found
    return found


def _answer_part(text: str) -> str:
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    start = text.rfind(_BOXED)
    if start >= 0:
        depth, begin = 1, start + len(_BOXED)
        for end in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[begin:end].strip()
    if "####" in text:
        return text.rpartition("####")[2].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    stated = _ANSWER_IS.findall(last)  # "The (final) answer is: X." as instruct models say it
    return stated[-1].strip().strip("\"'`*").rstrip(".").strip("\"'`*").strip() if stated else last


def reasoning_gym_score(prompts: Sequence[Any], completions: Sequence[Any], task: Sequence[Any] | None = None,
                        metadata: Sequence[Any] | None = None, answer: Sequence[Any] | None = None,
                        question: Sequence[Any] | None = None, task_config: Sequence[Any] | None = None,
                        **kwargs: Any) -> list[float | None]:
    """The task's own ``score_answer`` of the whole completion, stripped (in [0, 1]; partial credit where the task
    gives it); ``None`` for rows without the ``task`` and ``metadata`` columns of a ``reasoning_gym:`` source."""
    return _score(completions, lambda text, reference: text.strip(), task, metadata, answer, question, task_config)


def reasoning_gym_score_flexible(prompts: Sequence[Any], completions: Sequence[Any],
                                 task: Sequence[Any] | None = None, metadata: Sequence[Any] | None = None,
                                 answer: Sequence[Any] | None = None, question: Sequence[Any] | None = None,
                                 task_config: Sequence[Any] | None = None, **kwargs: Any) -> list[float | None]:
    """As :func:`reasoning_gym_score`, of the completion's :func:`final_answer` (``<answer>`` tags, ``\\boxed{}``,
    ``####``, the last line, or the last number where the answer is a number), for policies that work before they
    answer."""
    return _score(completions, final_answer, task, metadata, answer, question, task_config)


for _function in (reasoning_gym_score, reasoning_gym_score_flexible):
    _function.requires = "reasoning_gym"  # type: ignore[attr-defined]
    _function.install = INSTALL  # type: ignore[attr-defined]
