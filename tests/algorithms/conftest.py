"""Random masked tensors for the algorithm tests (several seeds and shapes, with all-masked rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHAPES = [(1, 1), (3, 7), (5, 12)]
SEEDS = [0, 1, 2]


@pytest.fixture(params=[(s, shape) for s in SEEDS for shape in SHAPES], ids=lambda p: f"seed{p[0]}-{p[1][0]}x{p[1][1]}")
def case(request):
    """``(generator, shape, random_mask, right_padded_mask)``; row 0 of both masks is all false when batch > 1."""
    seed, shape = request.param
    gen = torch.Generator().manual_seed(seed)
    random_mask = torch.rand(shape, generator=gen) > 0.3
    lengths = torch.randint(0, shape[1] + 1, (shape[0],), generator=gen)
    right_padded = torch.arange(shape[1]).expand(shape) < lengths.unsqueeze(1)
    if shape[0] > 1:
        random_mask[0] = False
        right_padded[0] = False
    return gen, shape, random_mask, right_padded


def randn(gen: torch.Generator, shape, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def selected(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The selected entries as a Python list, in row-major order (plain loop)."""
    out = []
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if mask[i, j]:
                out.append(float(values[i, j]))
    return out


@pytest.fixture(scope="session")
def whiten_worker_output() -> str:
    """Stdout of ``scripts/whiten_worker.py`` on 2 gloo ranks, launched once for every whitening test."""
    from tests.helpers.distributed import run_distributed

    return run_distributed(Path(__file__).parent / "scripts" / "whiten_worker.py").stdout
