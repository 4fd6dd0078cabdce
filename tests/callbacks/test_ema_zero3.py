"""EMA under ZeRO-3 on 2 ranks with the default persistence threshold: validation and export see every EMA weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed

WORKER = Path(__file__).parent / "scripts" / "ema_zero3_worker.py"


@pytest.mark.distributed
def test_validation_and_export_under_ema_equal_a_plain_model_with_the_ema_weights(tmp_path):
    """Norms and small projections stay gathered in ``param.data`` (persistent); the swap wrote only the shards, so
    validation and the export mixed EMA matrices with trained norms. In the order a fit uses them (validate after a
    step, export after the last one), both now equal a plain model loaded with the gathered EMA weights."""
    run_distributed(WORKER, str(tmp_path), nprocs=2, timeout=900)
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["persistent"]) == 5 and len(result["partitioned"]) == 6, result
    assert result["trained_shard_differs"]  # the EMA is not the trained weights, so the test can tell them apart
    assert result["missing"] in ([], ["lm_head.weight"]) and not result["unexpected"]
    assert result["val_vs_plain"] < 1e-5, result
    assert set(result["export_diff"]) >= set(result["persistent"]) | set(result["partitioned"]) - {"lm_head.weight"}
    assert max(result["export_diff"].values()) < 1e-6, result["export_diff"]
