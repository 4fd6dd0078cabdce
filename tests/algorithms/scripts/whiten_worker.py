"""2-rank worker: whitening with ``sum_across`` (an all-reduce) equals whitening the concatenated batch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_rlhf.algorithms import masked_whiten


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(3, 5, generator=gen) * 3 + 1, torch.randn(2, 5, generator=gen) - 2]  # ranks differ
    masks = [torch.rand(3, 5, generator=gen) > 0.3, torch.rand(2, 5, generator=gen) > 0.3]

    def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    got = masked_whiten(values[rank], masks[rank], sum_across=all_reduce)
    expected = masked_whiten(torch.cat(values), torch.cat(masks))[:3] if rank == 0 else \
        masked_whiten(torch.cat(values), torch.cat(masks))[3:]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    local = masked_whiten(values[rank], masks[rank])
    assert not torch.allclose(local, expected, atol=1e-3), "the per-rank whitening should differ on these ranks"
    print(f"ok rank {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
