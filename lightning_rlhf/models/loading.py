"""Loading causal LMs, value models and tokenizers, with LoRA, gradient checkpointing and dropout control.

Weights load as safetensors or ``weights_only`` pickles; ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from lightning_rlhf.models.zero3 import num_embeddings, partition_aware_loading, resize_embeddings
from lightning_rlhf.models.zero3 import zero3_loading  # noqa: F401  (re-exported: modules and strategy use it)

# LoRA targets for ``target_modules="auto"``: the attention projections DeepSpeed-Chat and peft use.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neo": ["q_proj", "v_proj"],
    "falcon": ["query_key_value"],
}

# Config fields holding dropout probabilities that do not end in ``dropout`` / ``pdrop``.
_EXTRA_DROPOUT_FIELDS = ("layerdrop",)


@dataclass
class LoraArgs:
    """LoRA adapter settings (peft), applied when a model is loaded.

    Attributes:
        rank: rank ``r`` of the low-rank update (DeepSpeed-Chat's ``--lora_dim``).
        alpha: scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA branch input.
        target_modules: module names to adapt, or ``"auto"`` for the family's attention projections.
        only_lora: train only the LoRA weights (and a value model's head); if False, every weight trains.
        modules_to_keep_trainable: further module names (e.g. ``lm_head``) kept trainable when ``only_lora``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "auto"
    only_lora: bool = True
    modules_to_keep_trainable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"LoraArgs.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraArgs.dropout must be in [0, 1), got {self.dropout}")

    def resolve_targets(self, model_type: str) -> list[str]:
        """The target module names for a model of ``model_type`` (resolving ``"auto"``)."""
        if self.target_modules != "auto":
            return [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)
        if model_type not in LORA_TARGETS:
            raise ValueError(
                f"LoraArgs.target_modules='auto' has no default for model type {model_type!r}; "
                f"pass target_modules explicitly (known: {sorted(LORA_TARGETS)})"
            )
        return LORA_TARGETS[model_type]


LoraConfigArgs = LoraArgs  # the name used in CONTRACTS.md

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_local_folder(path: str | Path, what: str, files: tuple[str, ...], setting: str) -> None:
    """Refuse a missing folder, or one without ``files``, before transformers reports it obscurely (hub ids pass)."""
    folder = Path(path)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in files):
            raise FileNotFoundError(
                f"the {what} folder {path} has no {what} files (none of {', '.join(files)}); point {setting} to a "
                f"folder that has them, or save the {what} into {path}"
            )
        return
    hub_like = _HUB_ID.match(str(path)) and not folder.is_absolute() and not Path(folder.parts[0]).is_dir()
    if not hub_like:
        raise FileNotFoundError(
            f"the {what} folder {path} does not exist (relative to {Path.cwd()}); check {setting}, or run the step "
            f"that writes it first"
        )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token distinct from EOS: ``unk`` where it differs, else a new ``<pad>``.

    Args:
        path: a Hugging Face folder (or hub id already in the local cache).
        trust_remote_code: allow custom tokenizer code shipped with the folder.
    """
    check_local_folder(path, "tokenizer", TOKENIZER_FILES, "the tokenizer setting (model.tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        rank_zero_info(f"tokenizer {path}: pad token set to {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")
    return tokenizer


def dropout_overrides(config: PretrainedConfig, dropout: float) -> dict[str, float]:
    """The config fields holding dropout probabilities, each mapped to ``dropout``."""
    names = [
        k for k, v in config.to_dict().items()
        if isinstance(v, float) and (k.endswith("dropout") or k.endswith("pdrop") or k in _EXTRA_DROPOUT_FIELDS)
    ]
    return {name: dropout for name in names}


def set_dropout(model: nn.Module, dropout: float) -> None:
    """Set every dropout probability of ``model`` (config and modules); PPO uses 0 so rollout and update agree."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in dropout_overrides(config, dropout).items():
            setattr(config, name, value)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
            continue
        for name, value in vars(module).items():  # layers applying functional dropout keep a float
            if isinstance(value, float) and (name.endswith("dropout") or name.endswith("pdrop")):
                setattr(module, name, dropout)


def _load_config(path: str, dropout: float | None, trust_remote_code: bool, **overrides: Any) -> PretrainedConfig:
    check_local_folder(path, "model", ("config.json",), "the model path")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if dropout is not None:
        overrides.update(dropout_overrides(config, dropout))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _has_safetensors(path: str) -> bool:
    folder = Path(path)
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _from_pretrained(auto_cls: Any, path: str, config: PretrainedConfig, torch_dtype: Any, trust: bool) -> Any:
    kwargs: dict[str, Any] = dict(config=config, trust_remote_code=trust, weights_only=True)
    if torch_dtype is not None:
        kwargs["dtype"] = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    if _has_safetensors(path):
        kwargs["use_safetensors"] = True
    return auto_cls.from_pretrained(path, **kwargs)


def _resize_for_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> None:
    if tokenizer is None:
        return
    if len(tokenizer) > num_embeddings(model):
        resize_embeddings(model, len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _finish(
    model: PreTrainedModel,
    lora: LoraArgs | None,
    gradient_checkpointing: bool,
    dropout: float | None,
    trainable_head: str | None,
) -> PreTrainedModel:
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if lora is not None:
        model = apply_lora(model, lora, trainable_head=trainable_head)
    if dropout is not None:  # after LoRA: its branch dropout too, or PPO's first ratio is not 1
        set_dropout(model, dropout)
    return model


def apply_lora(model: PreTrainedModel, lora: LoraArgs, trainable_head: str | None = None) -> PreTrainedModel:
    """Wrap ``model`` with peft LoRA adapters; ``trainable_head`` (a value model's ``score``) stays trainable."""
    from peft import LoraConfig, get_peft_model

    task_type = "CAUSAL_LM" if trainable_head is None else None
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.resolve_targets(model.config.model_type), task_type=task_type,
    )
    peft_model = get_peft_model(model, config)
    _zero_partitioned_lora_b(peft_model)
    keep = list(lora.modules_to_keep_trainable) + ([trainable_head] if trainable_head else [])
    for name, param in peft_model.named_parameters():
        if not lora.only_lora or "lora_" in name or any(f".{k}." in f".{name}" for k in keep):
            param.requires_grad_(True)
    return peft_model


def _zero_partitioned_lora_b(model: nn.Module) -> None:
    """Zero LoRA's ``B`` under ZeRO-3: peft's ``zeros_`` hits an empty local tensor and leaves random shards."""
    params = [p for n, p in model.named_parameters() if "lora_B" in n and hasattr(p, "ds_id")]
    if not params:
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
        for param in params:
            param.zero_()


def load_causal_lm(
    path_or_model: str | Path | PreTrainedModel,
    lora: LoraArgs | None = None,
    gradient_checkpointing: bool = False,
    dropout: float | None = None,
    torch_dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """Load a causal LM (policy, reference, SFT model) from a folder or take a built one.

    Args:
        path_or_model: a Hugging Face folder, or an already built ``PreTrainedModel`` (used as is).
        lora: LoRA settings, or None for full fine-tuning.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        dropout: set every dropout probability to this value (None keeps the config's).
        torch_dtype: parameter dtype (``"bfloat16"``, ``torch.float16``, ...); None keeps float32.
        trust_remote_code: allow custom modelling code from the folder (off by default).
        tokenizer: if given, embeddings are resized to its length and its pad id written to the config.
    """
    with partition_aware_loading():
        if isinstance(path_or_model, PreTrainedModel):
            model = path_or_model
        else:
            path = str(path_or_model)
            config = _load_config(path, dropout, trust_remote_code)
            model = _from_pretrained(AutoModelForCausalLM, path, config, torch_dtype, trust_remote_code)
        _resize_for_tokenizer(model, tokenizer)
    return _finish(model, lora, gradient_checkpointing, dropout, trainable_head=None)


def load_value_model(
    path_or_model: str | Path | PreTrainedModel,
    lora: LoraArgs | None = None,
    gradient_checkpointing: bool = False,
    dropout: float | None = None,
    torch_dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """Load a value model: backbone + one-output linear head (``AutoModelForSequenceClassification``).

    A causal-LM folder gets a fresh zero head, so every sequence starts with reward 0; a value folder keeps its own.

    Args:
        path_or_model: a Hugging Face folder, or an already built sequence-classification model.
        lora: LoRA settings; the head stays trainable when only LoRA trains.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        dropout: set every dropout probability to this value (None keeps the config's).
        torch_dtype: parameter dtype; None keeps float32.
        trust_remote_code: allow custom modelling code from the folder (off by default).
        tokenizer: if given, embeddings are resized to its length and its pad id written to the config.
    """
    with partition_aware_loading():
        if isinstance(path_or_model, PreTrainedModel):
            model = path_or_model
        else:
            model = _load_value_folder(str(path_or_model), dropout, torch_dtype, trust_remote_code)
        if model.config.num_labels != 1:
            raise ValueError(f"value model must have num_labels=1, got {model.config.num_labels}")
        _resize_for_tokenizer(model, tokenizer)
    return _finish(model, lora, gradient_checkpointing, dropout, trainable_head=value_head_name(model))


def _load_value_folder(path: str, dropout: float | None, torch_dtype: Any, trust: bool) -> PreTrainedModel:
    config = _load_config(path, dropout, trust, num_labels=1)
    fresh_head = not any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    with _quiet_transformers(fresh_head):  # its "score.weight MISSING" report is expected here
        model = _from_pretrained(AutoModelForSequenceClassification, path, config, torch_dtype, trust)
    if fresh_head:
        _zero_head(model)
    return model


@contextmanager
def _quiet_transformers(enabled: bool) -> Iterator[None]:
    previous = hf_logging.get_verbosity()
    if enabled:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _zero_head(model: PreTrainedModel) -> None:
    params = list(getattr(model, value_head_name(model)).parameters())
    context = nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        context = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with context, torch.no_grad():
        for param in params:
            param.zero_()


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model under a DeepSpeed engine and/or a peft wrapper (LoRA layers stay injected)."""
    model = getattr(model, "module", model) if type(model).__name__ == "DeepSpeedEngine" else model
    return unwrap_peft(model)


def value_head_name(model: nn.Module) -> str:
    """Attribute name of a value model's scalar head (``score`` for most families)."""
    base = unwrap_peft(model)
    for name in ("score", "classifier", "v_head"):
        if isinstance(getattr(base, name, None), nn.Module):
            return name
    raise ValueError(f"{type(base).__name__} has no value head (looked for score / classifier / v_head)")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (ZeRO-3 aware: uses ``ds_numel`` where present)."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", param.numel())
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total

