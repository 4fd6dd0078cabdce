"""The replica's change check: fingerprints find a changed element without a whole-parameter float64 copy."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from lightning_rlhf.strategies.replica_refresh import FINGERPRINT_CHUNK, ChangedParameters, fingerprint


def largest_allocation(fn) -> int:
    """The largest single CPU allocation ``fn`` makes, in bytes (torch's memory profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((event.cpu_memory_usage for event in prof.events() if event.cpu_memory_usage > 0), default=0)


def test_a_fingerprint_allocates_chunks_not_a_float64_copy_of_the_parameter():
    """At every generation entry under ZeRO 0-2 the check made two float64 copies of each whole parameter (about
    8 GB transient for an 8B model's embedding); it now works through chunks."""
    weight = torch.nn.Parameter(torch.randn(4 * FINGERPRINT_CHUNK))  # 16 MB in float32, 32 MB in float64
    largest = largest_allocation(lambda: fingerprint([weight]))
    assert largest <= 2 * 8 * FINGERPRINT_CHUNK, f"{largest / 2**20:.0f} MiB in one allocation"
    exact = torch.stack([weight.detach().double().sum(), weight.detach().double().square().sum()])
    torch.testing.assert_close(fingerprint([weight]), exact, rtol=1e-9, atol=1e-6)


def test_one_changed_element_of_a_large_parameter_is_found():
    params = [torch.nn.Parameter(torch.randn(3 * FINGERPRINT_CHUNK + 5)), torch.nn.Parameter(torch.randn(7))]
    changes = ChangedParameters()
    assert changes.changed([params], torch.device("cpu")) == [[True, True]]  # nothing seen yet
    changes.refreshed()
    with torch.no_grad():
        params[0][2 * FINGERPRINT_CHUNK + 3] += 0.5
    assert changes.changed([params], torch.device("cpu")) == [[True, False]]
    changes.refreshed()
    assert changes.changed([params], torch.device("cpu")) == [[False, False]]
    changes.forget()  # e.g. the LoRA adapters were switched off: every parameter counts as changed
    assert changes.changed([params], torch.device("cpu")) == [[True, True]]
