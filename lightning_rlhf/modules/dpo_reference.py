"""DPO's reference modes and the cache of precomputed reference log-probs.

The cache is keyed by a hash of each pair's tokens, not its position: right in any sampler order, rank, epoch or resume.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

#: where the reference log-probs come from (docs/dpo.md, "The reference")
ReferenceMode = Literal["model", "adapters_off", "precomputed", "none"]


def pair_keys(batch: dict[str, Tensor]) -> Tensor:
    """``(batch,)`` int64 content keys: a hash of each pair's real chosen and rejected tokens (padding ignored)."""
    keys = []
    for row in range(batch["chosen_input_ids"].shape[0]):
        digest = hashlib.blake2b(digest_size=8)
        for side in ("chosen", "rejected"):
            ids = batch[f"{side}_input_ids"][row][batch[f"{side}_attention_mask"][row].bool()]
            digest.update(ids.to(device="cpu", dtype=torch.int64).numpy().tobytes())
            digest.update(b"|")
        keys.append(int.from_bytes(digest.digest(), "little", signed=True))
    return torch.tensor(keys, dtype=torch.int64)


def in_fixed_order(loader: Any) -> Any:
    """``loader``'s shard in a fixed order: iterating ``loader`` itself would draw a shuffle from its generator."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler = DistributedSampler(loader.dataset, sampler.num_replicas, sampler.rank, shuffle=False)
    else:
        sampler = SequentialSampler(loader.dataset)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


def gather_rows(tensor: Tensor, all_gather: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Every rank's rows of ``tensor`` (counts may differ) concatenated; ``all_gather`` is None in one process."""
    if all_gather is None:
        return tensor
    counts = all_gather(torch.tensor([tensor.shape[0]], device=tensor.device)).reshape(-1).tolist()
    width = max(counts)
    padded = torch.nn.functional.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, width - tensor.shape[0]])
    stacked = all_gather(padded)
    return torch.cat([stacked[rank, :count] for rank, count in enumerate(counts)])


class ReferenceLogpsCache:
    """Reference log-probs ``(chosen, rejected)`` of preference pairs, by :func:`pair_keys`."""

    def __init__(self) -> None:
        self._values: dict[int, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def add(self, keys: Tensor, chosen: Tensor, rejected: Tensor) -> None:
        """Store the log-probs of the pairs ``keys`` (``(n,)`` each)."""
        for key, c, r in zip(keys.tolist(), chosen.tolist(), rejected.tolist()):
            self._values[int(key)] = (float(c), float(r))

    def missing(self, keys: Tensor) -> int:
        """How many of ``keys`` are not cached."""
        return sum(int(k) not in self._values for k in keys.tolist())

    def lookup(self, keys: Tensor, device: Any) -> tuple[Tensor, Tensor]:
        """``(chosen, rejected)`` reference log-probs ``(n,)`` of cached pairs, on ``device``."""
        values = torch.tensor([self._values[int(k)] for k in keys.tolist()], dtype=torch.float32, device=device)
        return values[:, 0], values[:, 1]

    def state_dict(self) -> dict[str, Tensor]:
        """Keys ``(n,)`` and values ``(n, 2)`` as tensors (checkpoint-friendly)."""
        keys = torch.tensor(list(self._values), dtype=torch.int64)
        values = torch.tensor(list(self._values.values()), dtype=torch.float32).reshape(-1, 2)
        return {"keys": keys, "values": values}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self._values = {}
        self.add(state["keys"], state["values"][:, 0], state["values"][:, 1])
