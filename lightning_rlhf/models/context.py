"""How long a sequence a model can take, checked before training: past it, rollouts fail or generate garbage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(config: PretrainedConfig) -> tuple[int, str] | None:
    """The longest sequence ``config`` covers, and the config field that says so (None if none does)."""
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None


def model_config(model: Any, trust_remote_code: bool = False) -> PretrainedConfig | None:
    """The config of a Hugging Face folder or a built model (None when there is none to read)."""
    if isinstance(model, (str, Path)):
        if not (Path(model) / "config.json").is_file():
            return None  # a missing folder is reported by the loading code, with its own message
        return AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    return getattr(model, "config", None)


def check_context_length(model: Any, needed: int, what: str, lower: str, trust_remote_code: bool = False) -> None:
    """Raise a ``ValueError`` naming the settings ``lower`` when ``needed`` tokens exceed the model's positions."""
    config = model_config(model, trust_remote_code)
    found = max_positions(config) if config is not None else None
    if found is None or needed <= found[0]:
        return
    limit, field = found
    name = model if isinstance(model, (str, Path)) else type(model).__name__
    raise ValueError(
        f"{what} = {needed} tokens, but the model {name} has {limit} positions ({field}={limit}); "
        f"lower {lower} so it fits"
    )
