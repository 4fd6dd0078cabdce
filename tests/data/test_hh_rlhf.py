"""The real HH-RLHF sample through the ``hh_rlhf`` adapter: extraction on real rows, every row accounted for."""

from __future__ import annotations

from collections import Counter

import pytest

from lightning_rlhf.data import RLHFDataModule, RecordError, load_records, split_dialogue
from tests.data.conftest import HH_ROWS

ASSISTANT = "\n\nAssistant:"


def test_real_rows_split_into_shared_prompt_and_responses(hh_file, hh_rows):
    records, report = load_records(str(hh_file), on_bad_record="skip")
    assert report.format == "hh_rlhf" and report.rows == len(hh_rows) == HH_ROWS
    assert len(records) > 0.95 * HH_ROWS
    for record in records:
        raw = hh_rows[record["record"] - 1]
        # the prompt plus each response gives back the original dialogue, and the prompt opens an assistant turn
        assert record["prompt"] + record["chosen"] == raw["chosen"]
        assert record["prompt"] + record["rejected"] == raw["rejected"]
        assert record["prompt"].startswith("\n\nHuman:") and record["prompt"].endswith(ASSISTANT)
        assert record["response"] == record["chosen"] and record["chosen"] != record["rejected"]
        # the prompt runs through the LAST assistant turn: no turn marker is left inside a response
        assert ASSISTANT not in record["chosen"] and ASSISTANT not in record["rejected"]


def test_first_real_row_by_hand(hh_rows):
    row = hh_rows[0]
    prompt, chosen, rejected = split_dialogue(row["chosen"], row["rejected"])
    last = row["chosen"].rfind(ASSISTANT)
    assert prompt.count("\n\nHuman:") == row["chosen"].count("\n\nHuman:")
    assert prompt == row["chosen"][: last + len(ASSISTANT)]
    assert prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert chosen == row["chosen"][last + len(ASSISTANT):] and chosen.startswith(" ")


def test_bad_real_rows_are_named_or_counted(hh_file):
    with pytest.raises(RecordError) as info:
        load_records(str(hh_file))
    assert str(hh_file) in str(info.value) and info.value.field in ("chosen", "rejected")
    assert "further dialogue turn" in str(info.value)
    _, report = load_records(str(hh_file), on_bad_record="skip")
    assert report.dropped["chosen: empty response after the last 'Assistant:'"] == 2  # rows 385 and 691


def test_all_rows_accounted_for_across_stages(hh_file, tiny_tokenizer, tmp_path):
    reports = {}
    for stage in ("sft", "reward", "rl"):
        dm = RLHFDataModule(tiny_tokenizer, stage=stage, sources=[str(hh_file)], on_bad_record="skip",
                                  max_prompt_length=256, max_length=512, cache_dir=str(tmp_path), eval_fraction=0.05)
        dm.setup("fit")
        reports[stage] = dm.report
    source = reports["sft"]["sources"][0]
    assert source.rows == HH_ROWS and source.kept + sum(source.dropped.values()) == HH_ROWS
    split = reports["sft"]["split"]
    assert sum(n for parts in split.values() for n in parts.values()) == source.kept
    dropped = Counter(source.dropped)
    kept = 0
    for stage, report in reports.items():
        assert report["split"] == split  # the split is the same whichever stage is built
        for part in ("train", "eval"):
            tokenized = report["tokenized"][part]
            assert tokenized["kept"] + sum(tokenized["dropped"].values()) == split[stage][part]
            kept += tokenized["kept"]
            dropped.update(tokenized["dropped"])
    assert kept + sum(dropped.values()) == HH_ROWS
    assert dropped["prompt longer than max_prompt_length"] > 0 and kept > 0
    print(f"\nHH-RLHF {HH_ROWS} rows: kept {kept}; dropped {dict(dropped)}")


def test_ppo_prompts_are_the_dialogue_prefix(hh_file, tiny_tokenizer, tmp_path):
    dm = RLHFDataModule(tiny_tokenizer, stage="rl", sources=[str(hh_file)], on_bad_record="skip",
                              max_prompt_length=128, max_length=256, cache_dir=str(tmp_path), batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    for ids, mask, prompt in zip(batch["prompt_input_ids"], batch["prompt_attention_mask"], batch["prompts"]):
        assert mask[-1] == 1  # left padded: the last position is always a real token
        assert tiny_tokenizer.decode(ids[mask.bool()]) == prompt and prompt.endswith(ASSISTANT)
