"""Hook-free inference replicas of a (ZeRO-3 partitioned, LoRA-wrapped) causal LM, optionally tensor-parallel.

ZeRO-3's hooks re-gather every layer for every generated token; a plain module of the same class, built on
``meta`` and filled from the gathered shards (split per rank when tensor-parallel), generates at ordinary speed.
LoRA deltas are added to the replica's copy, never merged into the model.
"""

from __future__ import annotations

import copy
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lightning_rlhf.models.loading import unwrap_model
from lightning_rlhf.strategies.lora_refresh import GroupSources
from lightning_rlhf.strategies.replica_refresh import ChangedParameters
from lightning_rlhf.strategies.tp_plans import (
    FamilyTPPlan,
    Split,
    check_divisible,
    layout_modules,
    pattern_regex,
    resolve_tp_plan,
)

_LORA_SEGMENT = re.compile(r"(^|\.)lora_[^.]*(\.|$)")


def is_zero3_param(param: nn.Parameter) -> bool:
    """Whether ``param`` is partitioned by DeepSpeed ZeRO-3."""
    return hasattr(param, "ds_id")


def replica_name(source_name: str) -> str | None:
    """Name of a source parameter/module in the plain replica (peft's own submodules removed), or None."""
    if _LORA_SEGMENT.search(source_name) or ".original_module." in f".{source_name}.":
        return None
    name = re.sub(r"(^|\.)base_layer(\.|$)", r"\1", source_name)
    name = re.sub(r"(^|\.)modules_to_save\.[^.]+(\.|$)", r"\1", name)
    return name.rstrip(".")


def lora_delta(module: nn.Module) -> torch.Tensor | None:
    """Sum of the active, unmerged LoRA adapters' weight deltas of a peft layer, float32 (None if not LoRA)."""
    if not hasattr(module, "get_delta_weight") or getattr(module, "disable_adapters", False):
        return None
    delta = None
    merged = set(getattr(module, "merged_adapters", ()))
    for adapter in module.active_adapters:
        if adapter in merged or adapter not in {*module.lora_A, *getattr(module, "lora_embedding_A", {})}:
            continue
        if getattr(module, "use_dora", {}).get(adapter) or getattr(module, "lora_bias", {}).get(adapter):
            raise NotImplementedError(
                f"generation_mode cannot merge DoRA or LoRA-bias adapter {adapter!r} of {type(module).__name__}; "
                f"use plain LoRA adapters"
            )
        step = _float32_delta(module, adapter)
        delta = step if delta is None else delta + step
    return delta


@dataclass(frozen=True)
class RefreshCount:
    """What one :meth:`InferenceReplica.refresh` did.

    Attributes:
        groups_refreshed: gather groups whose parameters changed and were refreshed.
        groups: gather groups of the replica.
        bytes_gathered: bytes of ZeRO-3 partitioned parameters all-gathered (the full tensors' size).
        groups_adapters_only: of ``groups_refreshed``, those refreshed from the LoRA adapters alone.
    """

    groups_refreshed: int
    groups: int
    bytes_gathered: int
    groups_adapters_only: int = 0


def _float32_delta(module: nn.Module, adapter: str) -> torch.Tensor:
    """One adapter's ``B @ A * scaling`` in float32 (peft's ``get_delta_weight`` rounds it to the layer's dtype)."""
    if adapter in getattr(module, "lora_embedding_A", {}):
        a, b, transposed = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter], True
    else:
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        transposed = getattr(module, "fan_in_fan_out", False)
    if a.dim() != 2 or b.dim() != 2:  # convolutions: peft's own product, in the layer's dtype
        return module.get_delta_weight(adapter).float()
    delta = b.float() @ a.float()
    return (delta.t() if transposed else delta) * module.scaling[adapter]


def add_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` summed in float32 and cast once: two bf16 roundings made the first PPO ratio differ from 1."""
    return (weight.float() + delta).to(weight.dtype)


@dataclass
class _Slot:
    """Where one gathered source parameter goes in the replica, and how it is reshaped on the way."""

    source: nn.Parameter
    target: nn.Parameter
    lora_owner: nn.Module | None  # the peft layer whose delta is added (weights only)
    transpose: bool  # GPT-2 Conv1D -> Linear
    blocks: int  # fused [q|k|v] blocks to interleave per rank
    local_dim: int | None = None  # a bare parameter (attention sinks) sliced along this dim per rank
    base: torch.Tensor | None = None  # this rank's shard of the frozen weight, kept to re-merge new adapters


class InferenceReplica:
    """A plain (hook-free) copy of a causal LM, refreshed from the trained model on demand.

    Args:
        model: the trained model (DeepSpeed engine, peft model or transformers model; may be ZeRO-3).
        device: where the replica lives.
        tp_mesh: a 1-D ``DeviceMesh`` over this rank's tensor-parallel group, or None for no split.
        tp_plan: explicit ``module pattern -> style`` plan (see :mod:`.tp_plans`); None picks the family's.
        gather_partition_size: layers gathered at once when refreshing from ZeRO-3 shards.
        keep_lora_base: keep this rank's shard of every LoRA-targeted ZeRO-3 weight, so later refreshes gather
            only the adapters (worth its memory only for a replica refreshed again).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        tp_mesh=None,
        tp_plan: dict[str, str] | None = None,
        gather_partition_size: int = 8,
        keep_lora_base: bool = False,
    ) -> None:
        self.base = unwrap_model(model)  # only during construction: the cache must not keep the model alive
        self.device = torch.device(device)
        self.tp_mesh = tp_mesh
        self.tp_size = tp_mesh.size() if tp_mesh is not None else 1
        self.tp_rank = tp_mesh.get_local_rank() if tp_mesh is not None else 0
        self.gather_partition_size = gather_partition_size
        self.keep_lora_base = keep_lora_base
        plan = None
        self._converted: set[str] = set()  # GPT-2 Conv1D layers
        self._blocks: dict[str, int] = {}
        self._local_dims: dict[str, int] = {}
        if self.tp_size > 1:
            check_divisible(self.base.config, self.tp_size)
            plan = resolve_tp_plan(self.base.config, tp_plan)
        with torch.inference_mode(False):  # see refresh: no inference tensors in the replica, even under validate
            self.module = self._build(plan)
        self.slots = self._map_parameters(plan)
        self.groups = self._gather_groups()
        self._sources = [GroupSources.of(group) for group in self.groups]
        self._changed = ChangedParameters()
        self._adapters_seen: tuple | None = None
        self.last_refresh = RefreshCount(0, len(self.groups), 0)
        del self.base

    def _build(self, plan: FamilyTPPlan | None) -> nn.Module:
        base = self.base
        with torch.device("meta"):
            replica = type(base)(copy.deepcopy(base.config))
        replica.eval().requires_grad_(False)
        sources = {replica_name(n): p for n, p in base.named_parameters()}
        for name, param in replica.named_parameters():
            source = sources.get(name)
            if source is not None and source.dtype != param.dtype:
                param.data = param.data.to(source.dtype)
        if plan is not None:
            self._shard(replica, plan)
        replica.to_empty(device=self.device)
        replica.tie_weights()
        self._copy_tensors(replica)
        if plan is not None and plan.prepare is not None:
            plan.prepare(replica, self.tp_rank, self.tp_size)
        replica.generation_config = copy.deepcopy(base.generation_config)
        return replica

    def _shard(self, replica: nn.Module, plan: FamilyTPPlan) -> None:
        from torch.distributed.tensor.parallel import parallelize_module

        for name, module in list(replica.named_modules()):
            for pattern, attrs in plan.divide.items():
                if pattern_regex(pattern).search(name):
                    for attr in attrs:
                        setattr(module, attr, getattr(module, attr) // self.tp_size)
        family = getattr(replica.config, "model_type", "?")
        layout = layout_modules(replica, plan, family)
        if not layout.splits and not layout.kept_whole:
            raise ValueError(f"the tensor-parallel plan {sorted(plan.styles)} matched no module of "
                             f"{type(replica).__name__}; check the module patterns")
        if not layout.splits:
            warnings.warn(f"tensor parallelism: nothing of {family!r} is split (its plan only names layers kept "
                          f"whole); every rank of the group holds the whole replica", stacklevel=2)
        styles = {}
        for name, split in layout.splits.items():
            module = replica.get_submodule(name)
            if type(module).__name__ == "Conv1D":
                module = _conv1d_to_linear(replica, name, module)
            styles[name] = parallel_style(split, isinstance(module, nn.Embedding))
        if styles:
            parallelize_module(replica, self.tp_mesh, styles)
        for name, dim in layout.param_shards.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = replica.get_submodule(owner_name)
            local = getattr(owner, leaf).chunk(self.tp_size, dim=dim)[self.tp_rank]
            setattr(owner, leaf, nn.Parameter(torch.empty_like(local), requires_grad=False))
        self._local_dims = dict(layout.param_shards)
        self._converted = {n for n, m in replica.named_modules() if getattr(m, "_from_conv1d", False)}
        self._blocks = {n: b for n, _ in replica.named_modules() for p, b in plan.fused_blocks.items()
                        if pattern_regex(p).search(n)}
        self._blocks.update({n: s.packed for n, s in layout.splits.items() if s.packed > 1})

    def _copy_tensors(self, replica: nn.Module) -> None:
        """Buffers (rotary frequencies, masks) and plain tensor attributes come from the model as they are."""
        sources = {replica_name(n): m for n, m in self.base.named_modules()}
        with torch.no_grad():
            for name, module in replica.named_modules():
                source = sources.get(name)
                if source is None:
                    continue
                for key, buf in module.named_buffers(recurse=False):
                    buf.copy_(getattr(source, key))
                for key, value in list(vars(module).items()):
                    if isinstance(value, torch.Tensor) and value.is_meta:
                        setattr(module, key, getattr(source, key).detach().clone().to(self.device))

    def _map_parameters(self, plan: FamilyTPPlan | None) -> list[_Slot]:
        targets = dict(self.module.named_parameters())
        converted, blocks = self._converted, self._blocks
        modules = dict(self.base.named_modules())
        slots, seen = [], set()
        for name, param in self.base.named_parameters():
            target_name = replica_name(name)
            if target_name is None:
                continue
            if target_name not in targets:
                raise ValueError(f"parameter {name!r} of {type(self.base).__name__} has no counterpart "
                                 f"{target_name!r} in the inference replica")
            module_name, _, leaf = name.rpartition(".")
            owner = modules[module_name.removesuffix(".base_layer")] if module_name.endswith("base_layer") else None
            target_module = target_name.rpartition(".")[0]
            slots.append(_Slot(param, targets[target_name], owner if leaf == "weight" else None,
                               target_module in converted and leaf == "weight", blocks.get(target_module, 1),
                               self._local_dims.get(target_name)))
            seen.add(target_name)
        missing = set(targets) - seen
        if missing:
            raise ValueError(f"inference replica parameters {sorted(missing)[:5]} have no source in the model")
        return slots

    def _gather_groups(self) -> list[list[_Slot]]:
        """Slots grouped by ``gather_partition_size`` decoder layers (embeddings and head in their own group)."""
        layers = max((m for m in self.base.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
        layer_of = {}
        if layers is not None:
            for index, layer in enumerate(layers):
                for p in layer.parameters():
                    layer_of[id(p)] = 1 + index // self.gather_partition_size
        grouped: dict[int, list[_Slot]] = {}
        for slot in self.slots:
            grouped.setdefault(layer_of.get(id(slot.source), 0), []).append(slot)
        return [grouped[k] for k in sorted(grouped)]

    @torch.inference_mode(False)
    @torch.no_grad()
    def refresh(self) -> "RefreshCount":
        """Copy the model's current weights (LoRA merged) into the replica, gathering ZeRO-3 shards by groups.

        Only changed groups are refreshed (:mod:`.replica_refresh`), from the adapters alone where only they changed
        (:mod:`.lora_refresh`). Collective under ZeRO-3. Runs outside ``torch.inference_mode``, whose tensors a
        later refresh could not update in place.
        """
        adapters = self._adapter_state()
        if adapters != self._adapters_seen:  # adapters switched off or on: the merged weights change, not the params
            self._changed.forget()
        flags = self._changed.changed([sources.params for sources in self._sources], self.device)
        gathered = refreshed = adapters_only = 0
        for group, sources, changed in zip(self.groups, self._sources, flags):
            if not any(changed):
                continue
            refreshed += 1
            merge = sources.adapter_only(changed, [slot.base is not None for slot in group])
            params = sources.params if merge is None else sources.adapters_of(merge)
            adapters_only += merge is not None
            partitioned = [p for p in params if is_zero3_param(p)]
            gathered += sum(p.ds_numel * p.element_size() for p in partitioned)
            with _gathered(partitioned):
                if merge is None:
                    for slot in group:
                        self._copy(slot)
                else:
                    for index in merge:
                        self._write(group[index], group[index].base)
        self._changed.refreshed()
        self._adapters_seen = adapters
        self.last_refresh = RefreshCount(refreshed, len(self.groups), gathered, adapters_only)
        return self.last_refresh

    def _adapter_state(self) -> tuple:
        """Each LoRA layer's on/off switch and active adapters, as the merge reads them."""
        return tuple((bool(getattr(s.lora_owner, "disable_adapters", False)),
                      tuple(getattr(s.lora_owner, "active_adapters", ()) or ())) for s in self.slots
                     if s.lora_owner is not None)

    def _copy(self, slot: _Slot) -> None:
        """Copy one gathered source into the replica (LoRA merged), keeping its base shard if ``keep_lora_base``."""
        base = self._local(slot, slot.source.data)
        if slot.lora_owner is not None and self.keep_lora_base and is_zero3_param(slot.source):
            slot.base = base.clone(memory_format=torch.contiguous_format)  # a view of the gathered tensor otherwise
        self._write(slot, base)

    def _write(self, slot: _Slot, base: torch.Tensor) -> None:
        """Write ``base`` (this rank's shard of the slot's weight) plus the shard of the current LoRA delta."""
        delta = lora_delta(slot.lora_owner) if slot.lora_owner is not None else None
        target = slot.target.to_local() if getattr(slot.target, "placements", None) is not None else slot.target
        target.copy_(base if delta is None else add_delta(base, self._local(slot, delta)))

    def _local(self, slot: _Slot, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-size tensor shaped like the slot's source, laid out as the replica's target."""
        if slot.transpose:
            full = full.t()
        if slot.blocks > 1:
            # [q | k | v] -> [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] so that rank r's contiguous shard holds its heads
            rest = full.shape[1:]
            full = full.reshape(slot.blocks, self.tp_size, -1, *rest).transpose(0, 1).reshape(-1, *rest)
        if slot.local_dim is not None:
            full = full.chunk(self.tp_size, dim=slot.local_dim)[self.tp_rank]
        placements = getattr(slot.target, "placements", None)
        if placements is not None and placements[0].is_shard():
            full = full.chunk(self.tp_size, dim=placements[0].dim)[self.tp_rank]
        return full


def parallel_style(split: Split, embedding: bool):
    """PyTorch's ``ColwiseParallel`` / ``RowwiseParallel`` for one :class:`~.tp_plans.Split`.

    A row-wise embedding takes a replicated input: the default ``Shard(-1)`` would all-gather the token ids.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if split.kind == "colwise":
        return ColwiseParallel(output_layouts=Replicate()) if split.gather_output else ColwiseParallel()
    if split.replicated_input or embedding:
        return RowwiseParallel(input_layouts=Replicate())
    return RowwiseParallel()


def _conv1d_to_linear(root: nn.Module, name: str, conv: nn.Module) -> nn.Linear:
    """Swap a (meta) transformers ``Conv1D`` (weight ``(in, out)``) for an equivalent ``nn.Linear``."""
    n_in, n_out = conv.weight.shape
    linear = nn.Linear(n_in, n_out, bias=conv.bias is not None, device="meta", dtype=conv.weight.dtype)
    linear.requires_grad_(False)
    linear._from_conv1d = True
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, linear)
    return linear


def _gathered(params: list[nn.Parameter]):
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
