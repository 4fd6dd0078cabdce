"""2-rank worker: PPO's reduced rollout curves equal those of the concatenated batch (Lightning's DDPStrategy, gloo)."""

from __future__ import annotations

import math

import torch
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from lightning_rlhf.algorithms import kl_penalized_rewards
from lightning_rlhf.modules.online_logging import reduce_metrics
from lightning_rlhf.modules.ppo_logging import rollout_metrics


def rollout(rows: int, tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """A rollout of ``rows`` responses with ``tokens`` real tokens each (response width 5), values set by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, 5, dtype=torch.bool)
    mask[:, :tokens] = True
    logprobs, ref = torch.randn(rows, 5, generator=gen), torch.randn(rows, 5, generator=gen)
    scores = torch.randn(rows, generator=gen) * (1 + seed) + seed
    rewards, stats = kl_penalized_rewards(scores, logprobs, ref, mask, 0.1)
    values = torch.randn(rows, 5, generator=gen) + seed
    returns = values + torch.randn(rows, 5, generator=gen)
    return dict(raw_scores=scores, rewards=rewards, kl=stats["kl"], entropy=torch.rand(rows, 5, generator=gen) * seed,
                values=values, advantages=returns - values, returns=returns, response_mask=mask,
                eos_found=torch.arange(rows) % 2 == 0)


def metrics_of(part: dict[str, torch.Tensor]) -> dict:
    return rollout_metrics(part["raw_scores"], part["rewards"], part["kl"], 0.1, part["entropy"], part["values"],
                           part["advantages"], part["returns"], part["response_mask"], part["eos_found"])


def main() -> None:
    strategy = DDPStrategy(accelerator=CPUAccelerator(), parallel_devices=[torch.device("cpu")] * 2,
                           cluster_environment=TorchElasticEnvironment(), process_group_backend="gloo")
    strategy.setup_environment()
    rank = strategy.global_rank
    parts = [rollout(1, 2, seed=0), rollout(3, 5, seed=3)]  # rank 0: 2 tokens, rank 1: 15 tokens
    got = reduce_metrics(strategy, metrics_of(parts[rank]))
    whole = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "kl"}
    whole["kl"] = (parts[0]["kl"] * 1 + parts[1]["kl"] * 3) / 4  # the mean KL per sequence of all 4 rows
    single = SingleDeviceStrategy(device=torch.device("cpu"), accelerator=CPUAccelerator())
    expected = reduce_metrics(single, metrics_of(whole))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert math.isclose(got[name], value, rel_tol=1e-6, abs_tol=1e-9), (name, got[name], value)
    # what a mean of the per-rank statistics gives instead (the curves before): visibly different here
    per_rank = [reduce_metrics(single, metrics_of(p)) for p in parts]
    for name in ("ppo/reward_std", "ppo/entropy", "ppo/return_mean", "ppo/value_mean", "ppo/advantage_mean"):
        naive = (per_rank[0][name] + per_rank[1][name]) / 2
        assert not math.isclose(naive, expected[name], rel_tol=1e-2), (name, naive, expected[name])
    print(f"ok rank {rank}", flush=True)
    strategy.teardown()


if __name__ == "__main__":
    main()
