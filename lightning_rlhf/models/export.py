"""Consolidated Hugging Face folders, loadable without DeepSpeed or peft, from a model under any ZeRO stage.

LoRA is merged on a CPU copy, never in the training model.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from lightning_rlhf.models.loading import unwrap_peft
from lightning_rlhf.models.zero3 import is_partitioned


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _param_groups(model: nn.Module, group_numel: int) -> Iterator[list[tuple[str, Tensor]]]:
    group: list[tuple[str, Tensor]] = []
    size = 0
    for name, param in model.named_parameters(remove_duplicate=True):
        group.append((name, param))
        size += getattr(param, "ds_numel", param.numel())
        if size >= group_numel:
            yield group
            group, size = [], 0
    if group:
        yield group


def gathered_state_dict(
    model: nn.Module, rank0_only: bool = True, group_numel: int = 50_000_000
) -> dict[str, Tensor]:
    """The full state dict of ``model`` as CPU tensors, from any ZeRO stage; every rank must call it.

    With ``rank0_only`` the other ranks get ``{}``; ZeRO-3 gathers about ``group_numel`` elements at a time.
    """
    keep = not rank0_only or _dist_rank() == 0
    full: dict[str, Tensor] = {}
    for group in _param_groups(model, group_numel):
        params = [p for _, p in group]
        context = contextlib.nullcontext()
        if any(is_partitioned(p) for p in params):
            import deepspeed

            context = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with context:
            if keep:
                full.update({name: p.detach().to("cpu", copy=True) for name, p in group})
    if not keep:
        return {}
    state = model.state_dict(keep_vars=True)  # for key names, buffers and tied aliases only
    by_id = {id(p): full[n] for n, p in model.named_parameters(remove_duplicate=True)}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if id(value) in by_id:
            out[key] = by_id[id(value)]
        else:
            out[key] = value.detach().to("cpu", copy=True)
    return out


def _cpu_copy(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A fresh CPU copy of ``model`` (peft-wrapped or plain, adapters unmerged) holding ``state``."""
    base = unwrap_peft(model)
    with torch.device("cpu"):
        fresh = type(base)(base.config)
    if base is not model:
        from peft import get_peft_model

        fresh = get_peft_model(fresh, model.peft_config[model.active_adapter])
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied_alias(fresh, k)]
    if missing or unexpected:
        raise RuntimeError(f"export: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    dtype = next(iter(state.values())).dtype if state else torch.float32
    return fresh.to(dtype)


def _is_tied_alias(model: nn.Module, key: str) -> bool:
    tied = getattr(unwrap_peft(model), "_tied_weights_keys", None) or {}
    names = tied.keys() if isinstance(tied, dict) else tied
    return any(key.endswith(name) for name in names)


def export_hf(
    model: nn.Module,
    tokenizer: Any | None,
    path: str | Path,
    merge_lora: bool = True,
    extra_files: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write ``model`` as a consolidated Hugging Face folder (safetensors, config, tokenizer); returns the path.

    Every rank must call it (ZeRO-3 gathers are collective); rank 0 writes, all return once the folder is complete.

    Args:
        model: the plain (or peft-wrapped) transformers model, e.g. ``module.model``.
        tokenizer: saved beside the weights when given.
        path: output folder (created).
        merge_lora: fold LoRA adapters into the base weights; if False, the base goes to ``path`` and the
            adapter to ``path/adapter``.
        extra_files: ``file name -> content`` written beside the model (dicts as JSON, str as text).
        chat_template: saved as the tokenizer's chat template (the format training used); None keeps its own.
    """
    path = Path(path)
    state = gathered_state_dict(model, rank0_only=True)
    if _dist_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        copy = _cpu_copy(model, state)
        del state
        if unwrap_peft(copy) is not copy:
            if not merge_lora:
                copy.save_pretrained(path / "adapter", safe_serialization=True)
            copy = copy.merge_and_unload() if merge_lora else copy.unload()
        copy.save_pretrained(path, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, path, chat_template)
        for name, content in (extra_files or {}).items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2)
            (path / name).write_text(text)
    _barrier()
    return path


def save_tokenizer(tokenizer: Any, path: Path, chat_template: str | None) -> None:
    """Save ``tokenizer`` to ``path`` with ``chat_template`` (None: its own), leaving the object unchanged."""
    own = getattr(tokenizer, "chat_template", None)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    try:
        tokenizer.save_pretrained(path)
    finally:
        tokenizer.chat_template = own


def load_exported(path: str | Path, value: bool = False) -> PreTrainedModel:
    """Load an exported folder with plain ``from_pretrained`` (what the next pipeline step does)."""
    cls = AutoModelForSequenceClassification if value else AutoModelForCausalLM
    return cls.from_pretrained(str(path), use_safetensors=True)
