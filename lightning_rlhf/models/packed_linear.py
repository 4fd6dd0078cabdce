"""Linear layers run from weights pre-packed for oneDNN: in a CPU decode loop, and frozen layers in training.

Why: PyTorch's default CPU GEMM reaches a fraction of oneDNN's with a packed weight, for a decode step's few rows
and on some CPUs for every shape (``benchmarks/generation.py``). A layer is packed again only when its weight was
written since (its version counter moved). With ``backward=True`` frozen layers (LoRA's base weights, the output
layer) also keep their transposed weight packed: it gives the input's gradient, and they need no weight gradient.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import ExitStack, contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn


def packing_available(model: nn.Module) -> bool:
    """Whether ``model``'s linear layers can run packed: float32 on the CPU, no autocast, oneDNN in this build."""
    param = next(model.parameters(), None)
    return (param is not None and param.device.type == "cpu" and param.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@contextmanager
def frozen_layers_packed(models: Iterable[nn.Module], kept: dict[int, "PackedWeights"]) -> Iterator[int]:
    """The frozen linear layers of ``models`` run packed in the block, backward included; ``kept`` holds the copies."""
    with ExitStack() as stack:
        count = 0
        for model in models:
            if packing_available(model):
                packed = kept.setdefault(id(model), PackedWeights(model, backward=True))
                count += stack.enter_context(packed.active())
        yield count


def _linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    shape = x.shape
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, bias, "none", [], "")
    return out.reshape(*shape[:-1], out.shape[-1])


class _FrozenLinear(torch.autograd.Function):
    """``x W^T + b`` for a frozen ``W`` and ``b``; the input's gradient from ``W^T`` packed."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, packed: Tensor, transposed: Tensor, bias: Tensor | None) -> Tensor:
        ctx.transposed = transposed
        return _linear(x, packed, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return _linear(grad.contiguous(), ctx.transposed, None), None, None, None


def _packed_forward(layer: nn.Linear, packed: Tensor, transposed: Tensor | None, x: Tensor) -> Tensor:
    if transposed is not None and torch.is_grad_enabled() and x.requires_grad:
        return _FrozenLinear.apply(x, packed, transposed, layer.bias)
    return _linear(x, packed, layer.bias)


def _frozen(layer: nn.Linear) -> bool:
    """A layer whose weight (and bias) take no gradient and are held whole (not ZeRO-3 partitioned)."""
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    return all(not p.requires_grad and not hasattr(p, "ds_id") for p in params)


class PackedWeights:
    """The packed weights of one model's plain ``nn.Linear`` layers, made on first use and again after an in-place
    write or for a swapped weight (for a ``.data`` write, which the version counter misses: :meth:`invalidate`)."""

    def __init__(self, model: nn.Module, backward: bool = False) -> None:
        self.model = model
        self.backward = backward
        self._packed: dict[int, tuple[Any, int, Tensor, Tensor | None]] = {}
        #: layers packed (again) by the last :meth:`active`
        self.repacked = 0

    def invalidate(self) -> None:
        """Forget every packed copy: the next :meth:`active` packs the current weights again."""
        self._packed.clear()

    @contextmanager
    def active(self) -> Iterator[int]:
        """Within the block every plain ``nn.Linear`` (with ``backward``: every frozen one, gradients flowing to its
        input; without, inference only) runs packed; yields their number. Subclasses (LoRA) keep their forward."""
        layers = [m for m in self.model.modules() if type(m) is nn.Linear and "forward" not in vars(m)
                  and (not self.backward or _frozen(m))]
        self.repacked = 0
        for layer in layers:
            source, version, packed, transposed = self._packed.get(id(layer), (None, None, None, None))
            if packed is None or source() is not layer.weight or version != layer.weight._version:
                weight = layer.weight.detach()
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                transposed = (torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), None)
                              if self.backward else None)
                self._packed[id(layer)] = (weakref.ref(layer.weight), layer.weight._version, packed, transposed)
                self.repacked += 1
            layer.forward = functools.partial(_packed_forward, layer, packed, transposed)
        try:
            yield len(layers)
        finally:
            for layer in layers:
                del layer.forward
