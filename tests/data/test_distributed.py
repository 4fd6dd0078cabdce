"""Two real processes (torchrun, gloo): each rank reads a disjoint shard of the same split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.data.conftest import write_jsonl
from tests.helpers.distributed import run_distributed

SCRIPT = Path(__file__).parent / "scripts" / "shard_worker.py"


def _assert_sharded(name: str, full: list[str], rank0: list[str], rank1: list[str]) -> None:
    padding = 2 * math.ceil(len(full) / 2) - len(full)  # DistributedSampler repeats this many to even the ranks
    assert len(rank0) == len(rank1) == math.ceil(len(full) / 2), name
    assert set(rank0) | set(rank1) == set(full), name
    assert len(set(rank0) & set(rank1)) <= padding, name


@pytest.mark.distributed
def test_two_ranks_see_disjoint_shards(tmp_path, task_tokenizer_dir):
    rows = [{"prompt": f"question {i}: {i % 10}+{i % 7}=", "chosen": f" {i % 10 + i % 7}", "rejected": " 0 0"}
            for i in range(101)]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    run_distributed(SCRIPT, str(tmp_path), str(task_tokenizer_dir), str(data), nprocs=2, timeout=300)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["full"] == r1["full"]  # the same split on every rank
    assert set(r0["full"]["train"]).isdisjoint(r0["full"]["eval"])  # held-out prompts never trained on
    assert len(r0["full"]["train"]) + len(r0["full"]["eval"]) == round(0.4 * len(rows))
    _assert_sharded("train", r0["full"]["train"], r0["seen"]["train"], r1["seen"]["train"])
    _assert_sharded("val", r0["full"]["eval"], r0["seen"]["val"], r1["seen"]["val"])
    _assert_sharded("ptx", [f"Human: {p} Assistant:" for p in r0["full"]["ptx"]],
                    [t.split(" Assistant:")[0] + " Assistant:" for t in r0["seen"]["ptx"]],
                    [t.split(" Assistant:")[0] + " Assistant:" for t in r1["seen"]["ptx"]])
