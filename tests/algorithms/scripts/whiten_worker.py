"""2-rank worker: whitening with ``sum_across`` (an all-reduce) equals whitening the concatenated batch, for
``masked_whiten`` and for the REINFORCE++ estimators built on it (one launch serves both tests)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_rlhf.algorithms import get_group_advantage_estimator, masked_whiten


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor)
    return tensor


def check_masked_whiten(rank: int) -> None:
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(3, 5, generator=gen) * 3 + 1, torch.randn(2, 5, generator=gen) - 2]  # ranks differ
    masks = [torch.rand(3, 5, generator=gen) > 0.3, torch.rand(2, 5, generator=gen) > 0.3]
    got = masked_whiten(values[rank], masks[rank], sum_across=all_reduce)
    expected = masked_whiten(torch.cat(values), torch.cat(masks))[:3] if rank == 0 else \
        masked_whiten(torch.cat(values), torch.cat(masks))[3:]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    local = masked_whiten(values[rank], masks[rank])
    assert not torch.allclose(local, expected, atol=1e-3), "the per-rank whitening should differ on these ranks"
    print(f"ok masked_whiten rank {rank}", flush=True)


def check_reinforce_pp(rank: int) -> None:
    gen = torch.Generator().manual_seed(0)
    group = 2
    # the ranks hold different numbers of groups with different score scales, so per-rank whitening differs
    scores = [torch.randn(3 * group, generator=gen) * 3 + 1, torch.randn(2 * group, generator=gen) - 2]
    masks = [torch.rand(3 * group, 5, generator=gen) > 0.3, torch.rand(2 * group, 5, generator=gen) > 0.3]
    kls = [torch.rand(3 * group, 5, generator=gen) * 0.1, torch.rand(2 * group, 5, generator=gen) * 0.1]
    rows = slice(0, 3 * group) if rank == 0 else slice(3 * group, None)
    for name in ("reinforce_pp", "reinforce_pp_baseline"):
        estimator = get_group_advantage_estimator(name)
        got = estimator(scores[rank], group, masks[rank], kl_penalty=kls[rank], sum_across=all_reduce)
        expected = estimator(torch.cat(scores), group, torch.cat(masks), kl_penalty=torch.cat(kls))[rows]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        local = estimator(scores[rank], group, masks[rank], kl_penalty=kls[rank])
        assert not torch.allclose(local, expected, atol=1e-3), f"{name}: per-rank whitening should differ here"
    print(f"ok reinforce_pp rank {rank}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    check_masked_whiten(rank)
    check_reinforce_pp(rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
