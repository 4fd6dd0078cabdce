"""The torch RNG states a checkpoint carries, so a resumed run samples what the uninterrupted run would."""

from __future__ import annotations

from typing import Any

import torch


def rng_states() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and CUDA's), as tensors so ``weights_only`` checkpoint loads keep them."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Set what :func:`rng_states` returned (CUDA states only when this process sees as many devices)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
