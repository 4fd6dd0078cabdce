"""Linear layers run from weights pre-packed for oneDNN while a CPU decode loop runs.

Why: a decode step multiplies a few dozen rows by every weight matrix, a shape where PyTorch's default CPU GEMM
reaches a fraction of what the same multiply reaches with the weight packed once into oneDNN's blocked layout
(``benchmarks/generation.py`` measures both). Packing costs one pass over the weights, so the packed copies are kept
in a :class:`PackedWeights` and a layer is packed again only when its weight was written since (its version counter
moved: the generation replica's refresh writes in place, and under LoRA only the adapted layers).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


def packing_available(model: nn.Module) -> bool:
    """Whether ``model``'s linear layers can run packed: float32 weights on the CPU, and oneDNN in this build."""
    param = next(model.parameters(), None)
    return (param is not None and param.device.type == "cpu" and param.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _forward(layer: nn.Linear, packed: Tensor, x: Tensor) -> Tensor:
    shape = x.shape
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), packed, layer.bias, "none", [], "")
    return out.reshape(*shape[:-1], out.shape[-1])


class PackedWeights:
    """The packed weights of one model's plain ``nn.Linear`` layers, made on first use and made again for a layer
    whose weight was written in place since (or for all after :meth:`invalidate`: a weight swapped for another
    tensor, or written through ``.data``, which the version counter does not see)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._packed: dict[int, tuple[int, Tensor]] = {}
        #: layers packed (again) by the last :meth:`active`
        self.repacked = 0

    def invalidate(self) -> None:
        """Forget every packed copy: the next :meth:`active` packs the current weights again."""
        self._packed.clear()

    @contextmanager
    def active(self) -> Iterator[int]:
        """Within the block, every plain ``nn.Linear`` runs from its packed weight (inference only: no gradient);
        yields their number. Layers of subclasses (LoRA, quantised) keep their own forward."""
        layers = [m for m in self.model.modules() if type(m) is nn.Linear and "forward" not in vars(m)]
        self.repacked = 0
        for layer in layers:
            version, packed = self._packed.get(id(layer), (None, None))
            if packed is None or version != layer.weight._version:
                packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), None)
                self._packed[id(layer)] = (layer.weight._version, packed)
                self.repacked += 1
            layer.forward = lambda x, layer=layer, packed=packed: _forward(layer, packed, x)
        try:
            yield len(layers)
        finally:
            for layer in layers:
                del layer.forward
