"""``lightning-rlhf generate`` answers from an export as validation does; ``test`` and ``predict`` are not offered."""

from __future__ import annotations

import io
import json

import pytest

from lightning_rlhf.commands.main import main
from tests.helpers.ppo_export import fit_and_export
from tests.modules.test_ppo import ppo_paths  # noqa: F401  (fixture)


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_test_and_predict_are_not_offered(capsys, subcommand):
    with pytest.raises(SystemExit):
        main(["sft", subcommand, "--help"])
    assert f"invalid choice: '{subcommand}'" in capsys.readouterr().err


def test_generate_from_an_export_answers_as_validation_did(tmp_path, ppo_paths):
    exported = fit_and_export(tmp_path, ppo_paths)
    batch, generated, folder = exported.batch, exported.generated, exported.folder
    length = generated.response_mask.shape[1]
    expected = exported.module.decode(generated.sequences[:, -length:], generated.response_mask)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in batch["prompts"]))
    output = tmp_path / "answers.jsonl"
    answers = main(["generate", str(folder), "--prompts", str(prompts), "--output", str(output),
                    "--max_new_tokens", str(length), "--batch_size", "3"])
    assert answers == expected
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == [{"prompt": p, "response": r} for p, r in zip(batch["prompts"], expected)]

    from lightning_rlhf.commands.generate import generate_main

    stdout = io.StringIO()
    stdin = io.StringIO("".join(p + "\n" for p in batch["prompts"][:2]) + "\n")
    generate_main([str(folder), "--max_new_tokens", str(length)], stdin=stdin, stdout=stdout)
    assert stdout.getvalue().splitlines() == expected[:2]


def test_a_prompt_file_without_prompts_is_named(tmp_path, tiny_model_factory):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "7+5="}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: expected a JSON string or an object with a 'prompt'"):
        main(["generate", str(tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)),
              "--prompts", str(bad)])
