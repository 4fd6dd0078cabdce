"""KL estimators and controllers against plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, get_kl_estimator
from tests.algorithms.conftest import randn


def loop_k(name, lp, ref, clamp=10.0):
    r = lp - ref
    if name == "k1":
        v = r
    elif name == "k2":
        v = 0.5 * r * r
    else:
        v = math.exp(-r) - 1 + r
    return max(-clamp, min(clamp, v))


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_estimators_match_loop(case, name):
    gen, shape, _, _ = case
    lp, ref = randn(gen, shape, 2.0), randn(gen, shape, 2.0)
    out = KL_ESTIMATORS[name](lp, ref)
    for i in range(shape[0]):
        for j in range(shape[1]):
            want = loop_k(name, float(lp[i, j]), float(ref[i, j]))
            assert out[i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_k3_nonnegative_and_unbiased():
    """Sampled from p, k1 and k3 both average to KL(p || q); k3 is never negative."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=gen), 0)
    q = torch.softmax(torch.randn(6, generator=gen), 0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, lq = p.log()[samples], q.log()[samples]
    exact = float((p * (p.log() - q.log())).sum())
    assert (KL_ESTIMATORS["k3"](lp, lq) >= 0).all()
    for name in ("k1", "k3"):
        assert KL_ESTIMATORS[name](lp, lq).mean().item() == pytest.approx(exact, rel=0.05)


def test_clamp_and_no_overflow():
    lp = torch.tensor([0.0, 0.0], requires_grad=True)
    ref = torch.tensor([1000.0, -1000.0])
    out = KL_ESTIMATORS["k3"](lp, ref)
    assert out.tolist() == [10.0, 10.0]
    out.sum().backward()
    assert torch.isfinite(lp.grad).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k9'"):
        get_kl_estimator("k9")


def test_adaptive_controller_matches_formula():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    value = 0.1
    for kl in [12.0, 3.0, 6.6, 0.0]:
        err = min(max(kl / 6.0 - 1, -0.2), 0.2)
        value *= 1 + err * 256 / 10000
        assert ctl.update(kl, n_steps=256) == pytest.approx(value)
    restored = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 1000) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=1)


def test_adaptive_kl_from_zero_is_refused():
    """A coefficient of 0 would never adapt (the controller multiplies it); say so instead of running unpenalised."""
    with pytest.raises(ValueError, match="needs an initial kl_coef > 0"):
        AdaptiveKLController(0.0, target=6.0, horizon=10000)
