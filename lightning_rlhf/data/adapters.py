"""Adapters: turn a raw row of a known data set format into a normalised record with ``prompt``, ``response``,
``chosen`` and ``rejected`` (``None`` for SFT-only data). The built-in formats are listed in docs/quickstart.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lightning_rlhf.data.records import FieldError, require_text

Row = Mapping[str, Any]
Record = dict[str, Any]
AdapterFn = Callable[[Row], Record]

#: the trainer's own keyword arguments to reward functions, so no data column may take these names
RESERVED_COLUMNS = frozenset({"prompts", "completions", "completion_ids"})

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class Adapter:
    """A format: its ``name``, ``convert`` (row -> record, raising :class:`FieldError` on bad fields) and ``detect``
    (whether a row looks like this format, for ``format="auto"``; ``None``: never detected)."""

    name: str
    convert: AdapterFn
    detect: Callable[[Row], bool] | None = None


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(
    name: str, convert: AdapterFn, detect: Callable[[Row], bool] | None = None, *, overwrite: bool = False
) -> Adapter:
    """Register a format so ``RLHFDataModule(format=name)`` (or detection) can use it.

    Args:
        name: the format name.
        convert: row -> record; read fields with :func:`~lightning_rlhf.data.records.require_text` to name bad ones.
        detect: row -> bool, consulted by ``format="auto"`` after the formats registered before it.
        overwrite: allow replacing an existing format of the same name.
    """
    if name == "auto":
        raise ValueError("'auto' is reserved for format detection")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"an adapter named {name!r} is already registered (pass overwrite=True to replace it)")
    adapter = Adapter(name, convert, detect)
    _REGISTRY[name] = adapter
    return adapter


def available_formats() -> list[str]:
    """Names of the registered formats, in detection order."""
    return list(_REGISTRY)


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name``; a clear error listing the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown format {name!r}; choose 'auto' or one of {available_formats()}")
    return _REGISTRY[name]


def detect_format(row: Row) -> Adapter | None:
    """The first registered adapter whose detector accepts ``row``, or ``None``."""
    for adapter in _REGISTRY.values():
        if adapter.detect is not None and adapter.detect(row):
            return adapter
    return None


def _has(*fields: str) -> Callable[[Row], bool]:
    return lambda row: all(f in row for f in fields)


def _pairs(row: Row) -> Record:
    prompt, chosen, rejected = (require_text(row, f) for f in ("prompt", "chosen", "rejected"))
    return {"prompt": prompt, "response": chosen, "chosen": chosen, "rejected": rejected}


def _rm_static(row: Row) -> Record:
    record = _pairs(row)
    record["response"] = require_text(row, "response")
    return record


def _sft(row: Row) -> Record:
    return {"prompt": require_text(row, "prompt"), "response": require_text(row, "response"),
            "chosen": None, "rejected": None}


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF dialogues into (prompt, chosen response, rejected response) at their last shared
    ``"Assistant:"``; a :class:`FieldError` for an empty response or one that runs on into a further turn (it would
    teach the policy to write turn markers)."""
    common = 0
    for x, y in zip(chosen, rejected):
        if x != y:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)
    if cut < 0:
        raise FieldError("chosen", "no shared '\\n\\nAssistant:' turn with 'rejected'")
    end = cut + len(ASSISTANT)
    prompt, responses = chosen[:end], {"chosen": chosen[end:], "rejected": rejected[end:]}
    for field, text in responses.items():
        if not text.strip():
            raise FieldError(field, "empty response after the last 'Assistant:'")
        if HUMAN in text or ASSISTANT in text or "Human:" in text:
            raise FieldError(field, "response runs on into a further dialogue turn")
    return prompt, responses["chosen"], responses["rejected"]


def _hh_rlhf(row: Row) -> Record:
    prompt, chosen, rejected = split_dialogue(require_text(row, "chosen"), require_text(row, "rejected"))
    return {"prompt": prompt, "response": chosen, "chosen": chosen, "rejected": rejected}


def _looks_like_hh(row: Row) -> bool:
    return "prompt" not in row and _has("chosen", "rejected")(row)


def _prompts(row: Row) -> Record:
    prompt = require_text(row, "prompt")
    columns = {key: value for key, value in row.items() if key != "prompt"}
    reserved = sorted(set(columns) & RESERVED_COLUMNS)
    if reserved:
        raise FieldError(reserved[0], f"is a name reward functions receive from the trainer "
                                      f"({sorted(RESERVED_COLUMNS)}); rename the column")
    return {"prompt": prompt, "response": None, "chosen": None, "rejected": None,
            "columns": json.dumps(columns, default=str)}


def _looks_like_prompts(row: Row) -> bool:
    return "prompt" in row and not any(field in row for field in ("response", "chosen", "rejected"))


register_adapter("rm_static", _rm_static, _has("prompt", "response", "chosen", "rejected"))
register_adapter("pairs", _pairs, _has("prompt", "chosen", "rejected"))
register_adapter("hh_rlhf", _hh_rlhf, _looks_like_hh)
register_adapter("sft", _sft, _has("prompt", "response"))
register_adapter("prompts", _prompts, _looks_like_prompts)
