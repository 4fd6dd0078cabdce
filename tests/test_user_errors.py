"""Every mistake a new user makes on the way through the CLI gets an error that says what is wrong and what to do."""

from __future__ import annotations

import logging
import shutil

import pytest

from lightning_rlhf.commands.main import main
from lightning_rlhf.data import RLHFDataModule, RecordError
from tests.data.conftest import write_jsonl

SIZES = dict(hidden_size=32, num_layers=1, num_heads=2)
PAIR = {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}


def _sft(model, root, *extra: str) -> list[str]:
    return ["sft", "fit", "--model.model", str(model), "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", "1", "--data.max_prompt_length", "16", "--data.max_length", "24",
            "--data.cache_dir", str(root / "cache"), *extra]


def test_a_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "runs" / "sft" / "hf" / "final"
    with pytest.raises(FileNotFoundError, match=rf"the tokenizer folder {missing} does not exist .*run the step"):
        main(_sft(missing, tmp_path))


def test_a_folder_without_tokenizer_files_says_where_to_point(tmp_path, tiny_model_factory):
    model = tmp_path / "weights_only"
    shutil.copytree(tiny_model_factory("llama", **SIZES), model)
    for path in model.iterdir():
        if path.name not in ("config.json", "model.safetensors", "generation_config.json"):
            path.unlink()
    with pytest.raises(FileNotFoundError, match=r"the tokenizer folder .*weights_only has no tokenizer files "
                                                r"\(none of tokenizer.json, .*\); point .*model.tokenizer"):
        main(_sft(model, tmp_path))


def test_an_empty_data_file_is_named(tmp_path, tiny_model_factory):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = RLHFDataModule(str(tiny_model_factory("llama", **SIZES)), sources=[str(empty)])
    with pytest.raises(RecordError, match=rf"{empty}: holds no records \(an empty file or table\)"):
        data.setup()


def test_a_step_left_without_training_records_is_explained(tmp_path, tiny_model_factory):
    only_sft = write_jsonl(tmp_path / "sft_only.jsonl", [{"prompt": "2+2=", "response": " 4"}] * 10)
    data = RLHFDataModule(str(tiny_model_factory("llama", **SIZES)), stage="reward", sources=[str(only_sft)],
                                cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=rf"no reward training records from {only_sft} \(split '2,4,4' gave reward "
                                         r"\{'train': 3, 'eval': 1\}.*no preference pair"):
        data.setup()


def test_several_devices_under_ddp_point_to_hybrid_deepspeed(tiny_model_factory, tmp_path):
    actor, reward = tiny_model_factory("llama", **SIZES), tiny_model_factory("llama", "value", **SIZES)
    with pytest.raises(ValueError, match=r"`lightning-rlhf ppo` on 2 processes needs --trainer.strategy "
                                         r"hybrid_deepspeed .*DDP \(trainer.strategy 'auto'\)"):
        main(["ppo", "fit", "--model.actor", str(actor), "--model.reward_model", str(reward),
              "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path)])


def test_a_typo_suggests_a_real_command(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "fit", "--model.kl_coeff", "0.1"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --model.kl_coeff" in err
    assert "run: lightning-rlhf ppo fit --help" in err


def test_truncated_prompts_are_counted_and_logged(tmp_path, tiny_model_factory, caplog):
    long_prompt = {**PAIR, "prompt": "What is " + "two plus two and " * 8 + "2+2="}
    source = write_jsonl(tmp_path / "long.jsonl", [long_prompt] * 6 + [PAIR] * 14)
    data = RLHFDataModule(str(tiny_model_factory("llama", **SIZES)), stage="rl", sources=[str(source)],
                                split="0,0,1", eval_fraction=0.0, max_prompt_length=12, max_length=24,
                                long_prompt_policy="truncate", cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        data.setup()
    assert data.report["tokenized"]["train"]["truncated"] == 6
    assert "[data] rl train: 20 kept, dropped none, 6 prompts left-truncated to max_prompt_length" in caplog.text
    assert all(len(row["prompt_input_ids"]) <= 12 for row in data.datasets["train"])


def test_an_empty_eval_split_after_skipping_bad_records_warns(tmp_path, tiny_model_factory):
    rows = [PAIR] * 3 + [{"prompt": "2+2="}] * 7  # 7 records without an answer, skipped
    source = write_jsonl(tmp_path / "mostly_bad.jsonl", rows)
    data = RLHFDataModule(str(tiny_model_factory("llama", **SIZES)), stage="sft", sources=[str(source)],
                                on_bad_record="skip", cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match=rf"the sft eval split from {source} is empty .*validation will not run"):
        data.setup()
    assert len(data.datasets["train"]) == 1 and len(data.datasets["eval"]) == 0
