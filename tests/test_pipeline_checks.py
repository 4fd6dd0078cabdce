"""``lightning-rlhf pipeline`` checks every section before training, keeps ``ckpt_path``, and re-running a step
keeps the earlier results (summary rows of the other steps, the previous export as ``final-vN``)."""

from __future__ import annotations

import inspect
import json

import pytest
import yaml

from lightning_rlhf.commands.main import main
from lightning_rlhf.commands.stages import STAGE_CLIS
from lightning_rlhf.commands.pipeline import STEPS, PipelineConfig, step_config
from tests.test_pipeline import ONE_PROCESS, QUICK

NO_BAR = [f"--{s}.trainer.enable_progress_bar=false" for s in ("sft", "reward", "ppo")]


def test_a_typo_in_the_ppo_section_is_reported_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match=r"the `ppo` section is invalid: Group 'model' does not accept option "
                                         r"'kl_coeff'. Nothing has been trained"):
        main(["pipeline", "--output_dir", str(tmp_path / "out"), "--ppo.model.kl_coeff", "0.2"])
    assert not (tmp_path / "out").exists(), "not even the base model was built"


def test_the_pipeline_seed_reaches_every_steps_data_and_module_seed(tmp_path):
    """``--seed 1`` crashed PPO at fit ("Error while merging hparams ... seed"): data.seed became 1, PPO's own shuffle
    seed stayed 0, and Lightning refuses one hparam name with two values."""
    base = tmp_path / "base"
    for step in STEPS:
        section = step_config(PipelineConfig(output_dir=str(tmp_path), seed=1), step, base, require_exports=False)
        assert section["seed_everything"] == 1 and section["data"]["seed"] == 1, step
        if "seed" in inspect.signature(STAGE_CLIS[step].module_class()).parameters:  # PPO's mini-batch shuffle
            assert section["model"]["seed"] == 1, step
        STAGE_CLIS[step].check_config(section)
    own = PipelineConfig(output_dir=str(tmp_path), seed=1, ppo={"data": {"seed": 5}})
    assert step_config(own, "ppo", base, require_exports=False)["model"]["seed"] == 5, "a section's data seed"
    with pytest.raises(ValueError, match=r"the `ppo` section is invalid: .*model.seed is 0 but data.seed is 1; .*"
                                         r"--model.seed 1\). Nothing has been trained"):
        main(["pipeline", "--output_dir", str(tmp_path / "out"), "--seed", "1", "--ppo.model.seed", "0"])


def test_print_config_shows_section_flags_and_ckpt_path(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--print_config", "--ppo.ckpt_path", "/runs/ppo/last.ckpt", "--ppo.model.kl_coef", "0.2"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ppo"]["ckpt_path"] == "/runs/ppo/last.ckpt"
    assert printed["ppo"]["model"]["kl_coef"] == 0.2
    assert printed["ppo"]["model"]["train_batch_size"] == 16, "the rest of the embedded section is kept"


def test_a_steps_ckpt_path_reaches_its_fit(tmp_path):
    missing = tmp_path / "no.ckpt"
    with pytest.raises(FileNotFoundError, match="no.ckpt"):
        main(["pipeline", "--output_dir", str(tmp_path), "--steps", "sft", "--tiny.hidden_size", "32",
              "--evaluate_before", "false", "--sft.ckpt_path", str(missing), *QUICK, *ONE_PROCESS, *NO_BAR])


def test_rerunning_ppo_keeps_the_other_summary_rows_and_the_previous_export(tmp_path):
    args = ["pipeline", "--output_dir", str(tmp_path), "--tiny.hidden_size", "32", "--evaluate_before", "false",
            *QUICK, *ONE_PROCESS, *NO_BAR]
    main(args)
    first = json.loads((tmp_path / "summary.json").read_text())
    first_weights = (tmp_path / "ppo" / "hf" / "final" / "model.safetensors").read_bytes()
    # another actor learning rate: the first iteration's KL to the reference is 0, so kl_coef alone changes nothing
    main([*args, "--steps", "ppo", "--ppo.model.actor_optimizer.learning_rate", "0.003"])
    second = json.loads((tmp_path / "summary.json").read_text())
    assert [row["step"] for row in second] == ["sft", "reward", "ppo"]
    assert second[:2] == first[:2], "the sft and reward rows are the first run's"
    assert second[2] != first[2]
    assert (tmp_path / "ppo" / "hf" / "final-v1" / "model.safetensors").read_bytes() == first_weights
    assert (tmp_path / "ppo" / "hf" / "final" / "model.safetensors").read_bytes() != first_weights
