"""Pretrained models with real-model traits load partitioned under ZeRO-3 and equal their checkpoint (2 CPU ranks).

The tiny llama has SmolLM2's traits (pad id 3 with its own embedding row, tied embeddings, grouped-query
attention, 3 heads); see ``tests/models/scripts/zero3_load_worker.py`` for the cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from tests.helpers.distributed import run_distributed
from tests.models.fixtures import task_tokenizer, tiny_folder

WORKER = Path(__file__).parent / "scripts" / "zero3_load_worker.py"


def no_pad_tokenizer(path: Path) -> Path:
    """The task tokenizer with neither pad nor unk token (like Llama 3's): loading it adds ``<pad>`` as a new row."""
    tokenizer = task_tokenizer()
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str().replace('"<pad>"', '"<|reserved_0|>"'))
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tokenizer.bos_token,
                            eos_token=tokenizer.eos_token).save_pretrained(path)
    return path


@pytest.mark.distributed
def test_zero3_loads_real_model_traits_equal_to_the_checkpoint(tmp_path):
    model = tiny_folder(tmp_path, "llama", hidden_size=48, num_heads=3)
    config = json.loads((model / "config.json").read_text())
    assert config["pad_token_id"] == 3 and config["tie_word_embeddings"] and config["num_key_value_heads"] == 1
    run_distributed(WORKER, str(model), str(no_pad_tokenizer(tmp_path / "no-pad")), str(tmp_path), timeout=900)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"result-rank{rank}.json").read_text())
        errors = {name: r["error"] for name, r in results.items() if "error" in r}
        assert not errors, f"rank {rank}: {errors}\n{[r.get('traceback') for r in results.values()]}"
        for name, result in results.items():
            assert result["partitioned"], name
            assert result["max_abs_diff"] == 0.0, f"{name}: loaded weights differ from the checkpoint"
        assert results["sft"]["compared"] == results["sft"]["checkpoint"]  # every saved tensor, lm_head tied
        assert results["reward"]["compared"] == results["reward"]["checkpoint"]  # the tied head is not saved
        assert results["reward"]["head_max_abs"] == 0.0  # a fresh value head starts at zero
        assert results["resize"]["rows"] == results["sft"]["rows"] + 1  # the added <pad> row


def test_local_partition_leaves_out_the_uninitialised_tail_of_a_short_zero3_partition():
    """DeepSpeed allocates a rank's partition with torch.empty, rounded up to the world size, and fills only the
    parameter's elements: the EMA averaged (and the replica fingerprinted) that tail, NaN included (a CI run saved
    a NaN EMA shard, 2026-12-03). What a rank holds is the filled part; an unpartitioned tensor is itself."""
    import math

    import torch

    from lightning_rlhf.callbacks.ema import EMACallback
    from lightning_rlhf.models.zero3 import local_partition
    from lightning_rlhf.strategies.replica_refresh import fingerprint

    param = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves in param.data
    param.ds_id, param.ds_numel = 0, 3  # 3 elements on 1 rank, partition padded to 4 (as for a world of 4)
    param.ds_tensor = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    assert local_partition(param).tolist() == [1.0, 2.0, 3.0]
    assert all(math.isfinite(x) for x in fingerprint([param]).tolist())
    plain = torch.nn.Parameter(torch.ones(2))
    assert local_partition(plain).data_ptr() == plain.data_ptr() and local_partition(plain).shape == (2,)

    module = torch.nn.Module()
    module.weight = param
    ema = EMACallback(decay=0.5, model_attr="model")
    holder = torch.nn.Module()
    holder.model = module
    ema.on_fit_start(None, holder)
    ema.update(holder, 0.5)
    assert ema.shadow["weight"].tolist() == [1.0, 2.0, 3.0]
