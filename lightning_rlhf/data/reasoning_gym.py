"""The ``reasoning_gym:TASK?key=value&...`` data source: prompt-only records from reasoning-gym's procedural tasks,
each carrying what the task's verifier needs as reference columns, for the ``reasoning_gym_score`` reward
(docs/tasks.md). Needs ``pip install 'lightning-rlhf[reasoning-gym]'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from lightning_rlhf.data.records import RecordError

PREFIX = "reasoning_gym:"
INSTALL = "'lightning-rlhf[reasoning-gym]'"
DEFAULT_INSTRUCTION = "Give only the final answer."
DEFAULT_SIZE = 500
DEFAULT_SEED = 0  # reasoning-gym draws a random seed when none is given; every rank must see the same records
_COMPOSITE_KEYS = {"name", "weight", "config"}


@dataclass(frozen=True)
class GymSource:
    """A parsed source: the ``task`` name, its ``settings`` (``size`` and ``seed`` included) and the
    ``instruction`` that follows each question in the prompt (empty: none)."""

    task: str
    settings: dict[str, Any]
    instruction: str = DEFAULT_INSTRUCTION


def is_reasoning_gym_source(source: str) -> bool:
    """Whether ``source`` names a reasoning-gym task rather than a file or a hub data set."""
    return source.startswith(PREFIX)


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_source(source: str) -> GymSource:
    """Parse ``reasoning_gym:TASK?key=value&...``; values are JSON where they parse (``3``, ``true``, ``[1, 2]``),
    else text; ``%XX`` escapes are decoded (``%26`` for ``&``), ``+`` is kept."""
    task, _, query = source[len(PREFIX):].partition("?")
    task = task.strip()
    if not task:
        raise RecordError(source, None, None, "names no task; write reasoning_gym:TASK or "
                                              "reasoning_gym:TASK?key=value&key=value")
    given: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, raw = part.partition("=")
        key = unquote(key).strip()
        if not eq or not key:
            raise RecordError(source, None, None, f"setting {part!r} is not key=value; write "
                                                  f"reasoning_gym:{task}?key=value&key=value")
        if key in given:
            raise RecordError(source, None, None, f"setting {key!r} is given twice; keep one")
        given[key] = unquote(raw)
    instruction = given.pop("instruction", DEFAULT_INSTRUCTION).strip()
    settings = {key: _value(raw) for key, raw in given.items()}
    settings.setdefault("size", DEFAULT_SIZE)
    settings.setdefault("seed", DEFAULT_SEED)
    for key, low in (("size", 1), ("seed", 0)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RecordError(source, None, None, f"{key} must be an integer >= {low}, got {value!r}")
    return GymSource(task, settings, instruction)


def tagged(value: Any) -> Any:
    """``value`` with what JSON would lose tagged for ``rewards/reasoning_gym.py`` to restore: tuples as
    ``{"__tuple__": [...]}``, sets as ``{"__set__": [...]}``, dicts with non-string keys as ``{"__items__": [...]}``
    (verifiers compare boards as tuples)."""
    if isinstance(value, tuple):
        return {"__tuple__": [tagged(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return {"__set__": [tagged(v) for v in items]}
    if isinstance(value, list):
        return [tagged(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: tagged(v) for key, v in value.items()}
        return {"__items__": [[tagged(key), tagged(v)] for key, v in value.items()]}
    return value


def _import(source: str) -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(f"data source {source!r} needs the 'reasoning_gym' package, which is not installed; "
                          f"pip install {INSTALL}") from exc
    return reasoning_gym


def _check_task(source: str, task: str, registry: dict[str, Any]) -> None:
    if task not in registry:
        close = difflib.get_close_matches(task, list(registry), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise RecordError(source, None, None, f"unknown reasoning-gym task {task!r}; {hint}the tasks are: "
                                              f"{', '.join(sorted(registry))}")


def _composite(source: str, settings: dict[str, Any], registry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Turn ``datasets`` (``lcm,gcd`` or a JSON list of names or ``{"name", "weight", "config"}``) into
    reasoning-gym's specs in ``settings``; each part's settings by name."""
    from reasoning_gym.composite import DatasetSpec

    raw = settings.get("datasets")
    if isinstance(raw, str):
        raw = [name.strip() for name in raw.split(",") if name.strip()]
    usage = ("composite needs datasets=NAME,NAME or a JSON list of names or "
             '{"name": ..., "weight": ..., "config": {...}} objects')
    if not isinstance(raw, list) or not raw:
        raise RecordError(source, None, None, f"{usage}, got {raw!r}")
    specs = []
    for item in raw:
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "name" not in item or set(item) - _COMPOSITE_KEYS:
            raise RecordError(source, None, None, f"{usage}, got the entry {item!r}")
        _check_task(source, item["name"], registry)
        weight, config = item.get("weight", 1.0), item.get("config") or {}
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0 or \
                not isinstance(config, dict):
            raise RecordError(source, None, None, f"{usage} with a weight > 0, got the entry {item!r}")
        specs.append(DatasetSpec(name=item["name"], weight=float(weight), config=dict(config)))
    settings["datasets"] = specs
    return {spec.name: spec.config for spec in specs}


def _create(source: str, task: str, settings: dict[str, Any], registry: dict[str, Any], rg: Any) -> Any:
    try:
        return rg.create_dataset(task, **settings)
    except Exception as exc:  # TypeError for an unknown setting, AssertionError or ValueError from validate()
        names = [f.name for f in dataclasses.fields(registry[task][1])]
        raise RecordError(source, None, None, f"reasoning-gym rejected the settings of {task!r}: "
                                              f"{type(exc).__name__}: {exc}; its settings are {names}") from None


def _config(settings: dict[str, Any]) -> str:
    # what the verifier's dataset is rebuilt with (the size and seed of the records do not matter to it)
    return json.dumps({k: v for k, v in settings.items() if k not in ("size", "seed")}, sort_keys=True)


def reasoning_gym_records(source: str) -> list[dict[str, Any]]:
    """The records of a ``reasoning_gym:`` source: ``prompt`` (the question, a space, the instruction) and the
    reference ``columns`` ``answer``, ``question``, ``task``, ``metadata`` (JSON, see :func:`tagged`) and
    ``task_config`` (JSON settings), from which ``reasoning_gym_score`` rebuilds the entry for the verifier."""
    parsed = parse_source(source)
    rg = _import(source)
    from reasoning_gym.factory import DATASETS

    _check_task(source, parsed.task, DATASETS)
    settings = dict(parsed.settings)
    parts = _composite(source, settings, DATASETS) if parsed.task == "composite" else {}
    dataset = _create(source, parsed.task, settings, DATASETS, rg)
    records = []
    for index in range(settings["size"]):
        try:
            entry = dataset[index]
        except Exception as exc:
            raise RecordError(source, index + 1, None, f"reasoning-gym failed to generate it: "
                                                       f"{type(exc).__name__}: {exc}") from exc
        metadata = entry.get("metadata") or {}
        task = metadata.get("source_dataset", parsed.task) if parts else parsed.task
        config = _config(parts.get(task, {}) if parts else settings)
        question = str(entry["question"])
        prompt = f"{question.rstrip()} {parsed.instruction}" if parsed.instruction else question
        columns = {"answer": entry.get("answer"), "question": question, "task": task,
                   "metadata": json.dumps(tagged(metadata), default=str), "task_config": config}
        records.append({"prompt": prompt, "response": None, "chosen": None, "rejected": None,
                        "columns": json.dumps(columns, default=str)})
    return records
