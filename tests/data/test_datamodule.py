"""RLHFDataModule end to end on one process: stages, sources, caching, skips, CLI construction."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_rlhf.data import RLHFDataModule, SyntheticTask
from tests.data.conftest import write_jsonl


def _module(tokenizer, tmp_path, **kwargs):
    return RLHFDataModule(tokenizer, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_builtin_task_feeds_every_stage_with_contract_batches(task_tokenizer_dir, tmp_path):
    expected = {
        "sft": {"input_ids", "attention_mask", "labels"},
        "reward": {"chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask",
                   "prompt_lengths"},
        "rl": {"prompt_input_ids", "prompt_attention_mask", "prompts", "columns"},
    }
    for stage, keys in expected.items():
        dm = _module(str(task_tokenizer_dir), tmp_path, stage=stage, task_size=500, batch_size=4, eval_batch_size=5)
        dm.prepare_data()
        dm.setup("fit")
        train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
        assert set(train) == set(val) == keys
        first = sorted(keys - {"columns"})[0]
        assert len(train[first]) == 4 and len(val[first]) == 5
        assert dm.report["split"] == {"sft": {"train": 95, "eval": 5}, "reward": {"train": 190, "eval": 10},
                                      "rl": {"train": 190, "eval": 10}}
        assert isinstance(dm.task, SyntheticTask)
    # PPO: prompts the task can check, and an SFT loader for the pretraining mix
    assert all(dm.task.answer(p) is not None for p in train["prompts"])
    # the reference answer column reward functions read, row by row
    assert train["columns"]["answer"] == [dm.task.answer(p) for p in train["prompts"]]
    ptx = next(iter(dm.ptx_dataloader(batch_size=2)))
    assert set(ptx) == expected["sft"] and ptx["input_ids"].shape[0] == 2


def test_ppo_eval_prompts_are_held_out(task_tokenizer, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(200)]
    dm = _module(task_tokenizer, tmp_path, stage="rl", sources=[str(write_jsonl(tmp_path / "d.jsonl", rows))],
                 eval_fraction=0.1)
    dm.setup()
    train, held_out = set(dm.datasets["train"]["record"]), set(dm.datasets["eval"]["record"])
    ptx = set(dm.datasets["ptx"]["record"])
    assert len(held_out) == 8 and not train & held_out and not ptx & (train | held_out)
    assert len(train | held_out | ptx) == 80 + 40 - 4  # ppo part 80, sft part 40 less its own held-out 4


def test_several_sources_are_split_each_and_concatenated(task_tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "chosen": "x", "rejected": "y"} for i in range(50)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "response": "x"} for i in range(30)])
    dm = _module(task_tokenizer, tmp_path, stage="sft", sources=[str(a), str(b)], split="1,1,0", eval_fraction=0.0)
    dm.setup()
    sources = dm.datasets["train"]["source"]
    assert sources.count(str(a)) == 25 and sources.count(str(b)) == 15
    reward = _module(task_tokenizer, tmp_path, stage="reward", sources=[str(a), str(b)], split="1,1,0",
                     eval_fraction=0.0)
    reward.setup()
    # SFT-only records cannot make pairs: dropped from the reward step and counted
    assert reward.report["tokenized"]["train"] == {"kept": 25, "dropped": {"no preference pair (SFT-only record)": 15},
                                                  "truncated": 0}


def test_skip_counts_bad_records_and_error_names_them(task_tokenizer, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "" if i % 10 == 0 else "b"} for i in range(100)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(ValueError, match=r"d.jsonl, record 1, field 'rejected': empty string"):
        _module(task_tokenizer, tmp_path, sources=[path]).setup()
    dm = _module(task_tokenizer, tmp_path, sources=[path], on_bad_record="skip")
    dm.setup()
    source = dm.report["sources"][0]
    assert (source.rows, source.kept, source.dropped) == (100, 90, {"rejected: empty string": 10})
    assert sum(n for parts in dm.report["split"].values() for n in parts.values()) == 90


def test_long_prompts_are_counted_under_both_policies(task_tokenizer, tmp_path):
    rows = [{"prompt": "1+1=" * (1 + 30 * (i % 2)), "chosen": " 2", "rejected": " 3"} for i in range(40)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    counts = {}
    for policy in ("drop", "truncate"):
        dm = _module(task_tokenizer, tmp_path, stage="reward", sources=[path], split="0,1,0", eval_fraction=0.0,
                     max_prompt_length=32, max_length=48, long_prompt_policy=policy)
        dm.setup()
        counts[policy] = dm.report["tokenized"]["train"]
    assert counts["drop"] == {"kept": 20, "dropped": {"prompt longer than max_prompt_length": 20}, "truncated": 0}
    assert counts["truncate"] == {"kept": 40, "dropped": {}, "truncated": 20}


def test_tokenized_data_is_cached_on_disk(task_tokenizer_dir, tmp_path):
    first = _module(str(task_tokenizer_dir), tmp_path, stage="reward", task_size=300)
    first.setup()
    cache_files = {f["filename"] for f in first.datasets["train"].cache_files}
    assert cache_files and all(name.startswith(str(tmp_path / "cache")) for name in cache_files)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.arrow")}
    second = _module(str(task_tokenizer_dir), tmp_path, stage="reward", task_size=300)
    second.setup()
    assert {f["filename"] for f in second.datasets["train"].cache_files} == cache_files
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.arrow")} == stamps  # reused, not rewritten
    assert second.datasets["train"]["chosen_input_ids"] == first.datasets["train"]["chosen_input_ids"]
    other = _module(str(task_tokenizer_dir), tmp_path, stage="reward", task_size=300, max_length=500)
    other.setup()
    assert {f["filename"] for f in other.datasets["train"].cache_files}.isdisjoint(cache_files)


def test_shuffling_is_seeded(task_tokenizer, tmp_path):
    def first_batch(seed):
        dm = _module(task_tokenizer, tmp_path, stage="rl", task_size=300, seed=seed, batch_size=16)
        dm.setup()
        return next(iter(dm.train_dataloader()))["prompt_input_ids"]

    assert torch.equal(first_batch(0), first_batch(0))


def test_arguments_are_validated(task_tokenizer):
    with pytest.raises(ValueError, match="stage"):
        RLHFDataModule(task_tokenizer, stage="dpo")
    with pytest.raises(ValueError, match="split"):
        RLHFDataModule(task_tokenizer, split="1,2")
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        RLHFDataModule(task_tokenizer, max_prompt_length=512, max_length=256)
    with pytest.raises(ValueError, match="on_bad_record"):
        RLHFDataModule(task_tokenizer, on_bad_record="ignore")
    with pytest.raises(RuntimeError, match="ptx_dataloader is for stage 'rl'"):
        RLHFDataModule(task_tokenizer, stage="sft").ptx_dataloader()


def test_lightning_cli_parser_builds_it_from_config(task_tokenizer_dir, tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RLHFDataModule, "data")
    config = parser.parse_args([
        f"--data.tokenizer={task_tokenizer_dir}", "--data.stage=reward", "--data.split=1,1,1",
        "--data.long_prompt_policy=truncate", "--data.task_size=90", f"--data.cache_dir={tmp_path}",
    ])
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, RLHFDataModule) and dm.hparams.split == "1,1,1"
    dm.setup()
    assert dm.report["split"]["reward"] == {"train": 28, "eval": 2}
    help_text = " ".join(parser.format_help().split())
    # every argument carries its docstring into --help
    assert "longest prompt in tokens. (type: int, default: 256)" in help_text
    assert "the count is logged either way. (type: Literal['drop', 'truncate'], default: drop)" in help_text


def test_ptx_batches_reshuffle_every_pass_and_tell_the_sampler():
    """PPO's ptx stream draws a new order each pass (itertools.cycle replayed the first pass forever)."""
    import itertools

    from torch.utils.data import DataLoader, DistributedSampler

    from lightning_rlhf.data.datamodule import reshuffled_passes

    items = list(range(16))
    torch.manual_seed(0)
    passes = list(itertools.islice(reshuffled_passes(DataLoader(items, batch_size=4, shuffle=True)), 12))
    orders = [torch.cat(passes[i:i + 4]).tolist() for i in (0, 4, 8)]
    assert all(sorted(order) == items for order in orders) and len({tuple(o) for o in orders}) == 3
    sampler = DistributedSampler(items, num_replicas=2, rank=0, shuffle=True, seed=0)
    stream = reshuffled_passes(DataLoader(items, batch_size=4, sampler=sampler))
    first, second = [torch.cat(list(itertools.islice(stream, 2))).tolist() for _ in range(2)]
    assert sampler.epoch == 1 and first != second and len(first) == len(second) == 8
    with pytest.raises(ValueError, match="yields no batch"):
        next(reshuffled_passes(DataLoader([], batch_size=4)))


def test_prompt_only_records_reach_the_batch_with_their_reference_columns(task_tokenizer, tmp_path):
    """GRPO's data: ``prompt`` plus any columns (jsonl here), the columns handed on by name, row by row."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": i + 1, "level": "easy" if i % 2 else None} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = _module(task_tokenizer, tmp_path, stage="rl", sources=[str(path)], split="0,0,1", eval_fraction=0.1,
                 batch_size=6)
    dm.setup("fit")
    assert dm.report["sources"][0].format == "prompts"
    batch = next(iter(dm.train_dataloader()))
    by_prompt = {r["prompt"]: r for r in rows}
    assert set(batch["columns"]) == {"answer", "level"}
    assert batch["columns"]["answer"] == [by_prompt[p]["answer"] for p in batch["prompts"]]
    assert batch["columns"]["level"] == [by_prompt[p]["level"] for p in batch["prompts"]]


def test_prompt_only_sources_go_to_the_rl_stage_whole_under_the_default_split(task_tokenizer, tmp_path, caplog):
    """`grpo fit --data.sources '[prompts.jsonl]'` without `--data.split 0,0,1` died inside datasets.map with a raw
    TypeError (the default split gave prompt-only records to SFT, which encoded a missing response)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) for i in range(40)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"{i}+2=", "chosen": f" {i + 2}", "rejected": " 0"})
                               for i in range(40)))
    with caplog.at_level("INFO"):
        dm = _module(task_tokenizer, tmp_path, stage="rl", sources=[str(path), str(pairs)], eval_fraction=0.1)
        dm.setup("fit")
    assert "prompt-only records: all 40 go to the rl stage" in caplog.text
    from_prompts = {r["prompt"] for r in dm.datasets["train"]} | {r["prompt"] for r in dm.datasets["eval"]}
    assert {f"{i}+1=" for i in range(40)} <= from_prompts  # every prompt-only record, none lost to sft/reward
    assert dm.report["split"]["sft"]["train"] + dm.report["split"]["sft"]["eval"] == 8  # 2/10 of the pairs only
    assert all(r["prompt"].endswith("+2=") for r in dm.datasets["ptx"])  # the ptx mix: records with responses
    with pytest.raises(ValueError, match="no sft training records"):
        _module(task_tokenizer, tmp_path, stage="sft", sources=[str(path)]).setup("fit")


def test_a_prompt_only_column_named_like_a_reward_argument_is_refused_with_its_record(task_tokenizer, tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "1+1=", "answer": 2}, {"prompt": "2+2=", "completions": 4}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"prompts.jsonl.*record 2.*completions.*rename the column"):
        _module(task_tokenizer, tmp_path, stage="rl", sources=[str(path)], split="0,0,1").setup("fit")


def test_the_chat_style_task_asks_instructions_and_checks_the_same_sums():
    task = SyntheticTask(style="chat")
    record = task.records(1)[0]
    assert record["prompt"].startswith("What is ") and record["prompt"].endswith("Answer with the number only.")
    a, b = task.operands(record["prompt"])
    assert json.loads(record["columns"]) == {"answer": str(a + b)}
    assert task.check(record["prompt"], f" {a + b}") and not task.check(record["prompt"], f"The answer is {a + b}.")
    with pytest.raises(ValueError, match="style"):
        SyntheticTask(style="poem")
