"""Planning which child module of a LightningModule becomes which DeepSpeed engine (testable without processes)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torch import nn
from torch.optim import Optimizer

# DeepSpeed config keys that only make sense for the whole run, not for one engine.
_RUN_LEVEL_KEYS = ("optimizer", "scheduler")


@dataclass
class EnginePlan:
    """What the strategy builds for one direct child of the LightningModule.

    Attributes:
        name: attribute name of the child on the LightningModule (``"actor"``).
        module: the child module itself.
        optimizer: the optimizer over exactly this child's parameters, or ``None`` for a frozen child.
        optimizer_index: position of ``optimizer`` in what ``configure_optimizers`` returned.
        config: the DeepSpeed config this engine is initialised with.
    """

    name: str
    module: nn.Module
    optimizer: Optional[Optimizer]
    optimizer_index: Optional[int]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``base`` with ``override`` merged in, recursing into nested dicts."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _owner_of_parameters(module: nn.Module) -> dict[int, str]:
    owners: dict[int, str] = {}
    for name, child in module.named_children():
        for param in child.parameters():
            owners.setdefault(id(param), name)
    return owners


def _child_of_optimizer(index: int, optimizer: Optimizer, owners: Mapping[int, str]) -> str:
    names = set()
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in owners:
                raise ValueError(
                    f"Optimizer {index} ({type(optimizer).__name__}) holds a parameter of shape "
                    f"{tuple(param.shape)} that belongs to no direct child module of the LightningModule. "
                    "With several optimizers, HybridDeepSpeedStrategy gives each direct child (e.g. self.actor, "
                    "self.critic) its own DeepSpeed engine: build every optimizer from one child's parameters."
                )
            names.add(owners[id(param)])
    if len(names) != 1:
        raise ValueError(
            f"Optimizer {index} ({type(optimizer).__name__}) spans the child modules {sorted(names)}; "
            "each optimizer must cover the parameters of exactly one child, which becomes one DeepSpeed engine "
            "(a manual-optimization module with several children gets one engine per child). To train several "
            "children with one optimizer, put them under one child module (e.g. an nn.ModuleDict)."
        )
    return names.pop()


def engine_per_child(module: nn.Module) -> bool:
    """Whether a LightningModule gets one DeepSpeed engine per parameterised child (else one around it all).

    True for a manual-optimization module with several such children, or one with ``engine_per_child = True``;
    the same in every stage, so a checkpoint's layout always matches.
    """
    if getattr(module, "engine_per_child", False):
        return True
    parameterised = [name for name, child in module.named_children() if any(True for _ in child.parameters())]
    return not getattr(module, "automatic_optimization", True) and len(parameterised) > 1


def check_engine_stages(base_config: Mapping[str, Any], engine_configs: Optional[Mapping[str, Any]]) -> None:
    """Refuse a per-engine ZeRO stage: every model of a module is built in one sharded context."""
    base_stage = (base_config.get("zero_optimization") or {}).get("stage", 0)
    for name, override in (engine_configs or {}).items():
        stage = ((override or {}).get("zero_optimization") or {}).get("stage", base_stage)
        if stage != base_stage:
            raise ValueError(
                f"engine_configs[{name!r}] sets ZeRO stage {stage}, but the strategy's stage is {base_stage}: every "
                f"model of a module is built in one sharded context (ZeRO-3 partitions them all as they are created), "
                f"so one stage serves every engine (DeepSpeed-Chat's --actor_zero_stage/--critic_zero_stage differ "
                f"there). Set the stage on the strategy, and use engine_configs for per-engine offload, batch or "
                f"precision settings."
            )


def plan_engines(
    module: nn.Module,
    optimizers: list[Optimizer],
    base_config: Mapping[str, Any],
    frozen_config: Mapping[str, Any],
    engine_configs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    inference_only: bool = False,
) -> list[EnginePlan]:
    """Map each optimizer to the child it covers and each remaining parameterised child to a frozen engine.

    ``engine_configs`` overrides are merged per child; ``inference_only`` (validate/test/predict) makes every
    child an inference engine.
    """
    for key in _RUN_LEVEL_KEYS:
        if key in base_config:
            raise ValueError(
                f"The DeepSpeed config sets {key!r}, but with several engines each optimizer and scheduler must "
                "come from LightningModule.configure_optimizers (one per child module)."
            )
    owners = _owner_of_parameters(module)
    children = dict(module.named_children())
    by_child: dict[str, int] = {}
    for index, optimizer in enumerate(optimizers):
        name = _child_of_optimizer(index, optimizer, owners)
        if name in by_child:
            raise ValueError(
                f"The child module {name!r} has parameters in optimizers {by_child[name]} and {index}; "
                "give each child exactly one optimizer (use parameter groups for different learning rates)."
            )
        by_child[name] = index
    overrides = dict(engine_configs or {})
    check_engine_stages(base_config, overrides)
    unknown = sorted(set(overrides) - set(children))
    if unknown:
        raise ValueError(
            f"engine_configs names {unknown}, which are not child modules of {type(module).__name__}; "
            f"its children are {sorted(children)}."
        )
    plans = []
    for name, child in children.items():
        params = list(child.parameters())
        if not params:
            continue
        if name in by_child:
            index = by_child[name]
            plans.append(EnginePlan(name, child, optimizers[index], index, deep_merge(base_config, overrides.get(name, {}))))
            continue
        trainable = [n for n, p in child.named_parameters() if p.requires_grad]
        if trainable and not inference_only:
            raise ValueError(
                f"The child module {name!r} has {len(trainable)} trainable parameters (e.g. {trainable[0]!r}) but "
                "no optimizer. Freeze it (requires_grad_(False)) to make it an inference-only engine, or give "
                "it an optimizer in configure_optimizers."
            )
        plans.append(EnginePlan(name, child, None, None, deep_merge(frozen_config, overrides.get(name, {}))))
    return plans


def inference_config(train_config: Mapping[str, Any], zero_stage: int, offload: bool) -> dict[str, Any]:
    """DeepSpeed config for a frozen, inference-only child: partitioned under ZeRO-3, else replicated."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train_config.get("train_micro_batch_size_per_gpu", 1),
        "gradient_accumulation_steps": 1,
    }
    for key in ("bf16", "fp16"):
        if key in train_config:
            config[key] = copy.deepcopy(train_config[key])
    if zero_stage == 3 or offload:
        zero: dict[str, Any] = {"stage": 3}
        for key in ("stage3_param_persistence_threshold", "stage3_prefetch_bucket_size", "stage3_max_live_parameters"):
            if key in train_config.get("zero_optimization", {}):
                zero[key] = train_config["zero_optimization"][key]
        if offload:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
        config["zero_optimization"] = zero
    else:
        config["zero_optimization"] = {"stage": 0}
    return config


def skip_lone_allreduce(engine: Any) -> bool:
    """Turn off a ZeRO-0 engine's gradient all-reduce when it is the only data-parallel rank; True if turned off.

    DeepSpeed otherwise bucket-copies every gradient through an all-reduce over a group of one. ZeRO-0 with the
    client optimizer only: other stages and wrapped optimizers move gradients inside that same call.
    """
    optimizer = getattr(engine, "optimizer", None)
    lone = (getattr(engine, "dp_world_size", 0) == 1 and engine.zero_optimization_stage() == 0
            and not getattr(engine, "has_moe_layers", False) and optimizer is not None
            and isinstance(optimizer, Optimizer) and type(optimizer).__module__.startswith("torch.optim"))
    if lone:
        engine.enable_backward_allreduce = False
    return lone

