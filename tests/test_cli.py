"""The ``lightning-rlhf`` command: ``--print_config`` and a tiny real ``fit`` for each step, launcher handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_rlhf.commands.main import adapt_deepspeed_launcher, main
from lightning_rlhf.commands.stages import STAGE_CLIS


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo", "grpo"])
def test_print_config_shows_every_section_with_the_stage_fixed(capsys, stage):
    config = _print_config(capsys, stage, "fit", "--data.batch_size", "3", "--trainer.max_steps", "7")
    assert {"model", "data", "trainer", "export", "seed_everything"} <= set(config)
    # DPO reads the reward step's pairs; PPO and GRPO the prompt batches of the data stage "rl"
    assert config["data"]["stage"] == {"dpo": "reward", "ppo": "rl", "grpo": "rl"}.get(stage, stage)
    assert config["data"]["batch_size"] == 3 and config["trainer"]["max_steps"] == 7
    assert config["trainer"]["default_root_dir"] == f"runs/{stage}"
    assert config["export"]["model_attr"] == ("actor" if stage in ("ppo", "grpo") else None)
    assert "tokenizer" not in config["data"], "data.tokenizer is linked from the model, not set by the user"


def test_print_config_round_trips_through_a_config_file(capsys, tmp_path):
    first = _print_config(capsys, "ppo", "fit", "--model.actor", "/models/sft", "--model.reward_model", "/models/rm",
                          "--model.kl_coef", "0.25", "--trainer.strategy", "hybrid_deepspeed")
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(first))
    second = _print_config(capsys, "ppo", "fit", "--config", str(path))
    assert second == first
    assert second["model"]["kl_coef"] == 0.25 and second["trainer"]["strategy"] == "hybrid_deepspeed"


def test_a_foreign_data_stage_is_refused(tiny_model_factory, tmp_path):
    model = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"`lightning-rlhf sft` feeds 'sft' batches, but data.stage is 'reward'"):
        main(["sft", "fit", "--model.model", str(model), "--data.stage", "reward",
              "--trainer.default_root_dir", str(tmp_path)])


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_printed(capsys, flag):
    import lightning_rlhf

    assert main([flag]) is None
    assert capsys.readouterr().out.strip() == f"lightning-rlhf {lightning_rlhf.__version__}"


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit, match="unknown command 'train'; choose one of sft, reward, ppo, dpo, grpo, pipeline, "
                                         "generate, evaluate"):
        main(["train"])
    assert main([]) is None
    assert "lightning-rlhf {sft,reward,ppo,dpo,grpo,pipeline,generate,evaluate}" in capsys.readouterr().out


def _fit_args(root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.task_size", "200", "--data.batch_size", "4",
        "--data.max_prompt_length", "16", "--data.max_length", "24", "--data.cache_dir", str(root / "cache"), *extra,
    ]


def _assert_exported(root: Path) -> Path:
    final = root / "hf" / "final"
    assert (final / "config.json").exists() and (final / "model.safetensors").exists()
    assert (final / "tokenizer.json").exists()
    assert json.loads((final / "export_info.json").read_text())["global_step"] >= 2
    events = list((root / "lightning_logs").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {root}"
    return final


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_tiny_fit_trains_and_exports(stage, tiny_model_factory, tmp_path):
    model = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    cli = main([stage, *_fit_args(tmp_path, "--model.model", str(model))])
    assert isinstance(cli, STAGE_CLIS[stage])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.stage == stage
    assert Path(cli.datamodule._tokenizer_arg) == model, "the data module's tokenizer is linked to model.model"
    final = _assert_exported(tmp_path)
    assert (final / "reward_stats.json").exists() == (stage == "reward")


@pytest.mark.parametrize("lora", [False, True])
def test_tiny_ppo_fit_trains_the_actor_and_exports_it(tiny_model_factory, tmp_path, lora):
    actor = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    reward = tiny_model_factory("llama", head="value", hidden_size=32, num_layers=1, num_heads=2)
    lora_args = ["--model.actor_lora.rank", "4", "--model.critic_lora.rank", "4"] if lora else []
    cli = main(["ppo", *_fit_args(tmp_path, "--model.actor", str(actor), "--model.reward_model", str(reward),
                                  "--model.generation.max_new_tokens", "3", "--trainer.max_epochs", "1",
                                  "--trainer.limit_train_batches", "1", *lora_args)])
    assert cli.trainer.global_step >= 2  # one PPO iteration = an actor and a critic optimizer step
    if lora:  # LoRA from the command line reaches the models (LightningCLI keeps hparams as plain dicts)
        assert any("lora_A" in name for name, _ in cli.model.actor.named_parameters())
    assert {"ppo/reward_mean", "ppo/kl", "ppo/policy_loss"} <= set(cli.trainer.logged_metrics)
    final = _assert_exported(tmp_path)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(final).architectures == ["LlamaForCausalLM"], "PPO exports the actor"


@pytest.mark.parametrize("extra", [[], ["--model.lora.rank", "4", "--model.precompute_reference", "true"],
                                   ["--model.loss_type", "simpo", "--model.beta", "2.0"]])
def test_tiny_dpo_fit_trains_the_policy_and_exports_it(tiny_model_factory, tmp_path, extra):
    model = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    cli = main(["dpo", *_fit_args(tmp_path, "--model.model", str(model), "--model.optimizer.learning_rate", "1e-3",
                                  *extra)])
    assert isinstance(cli, STAGE_CLIS["dpo"]) and cli.trainer.global_step == 2
    assert cli.datamodule.stage == "reward"
    assert {"train/loss", "train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen"} <= set(
        cli.trainer.logged_metrics)
    if extra[:1] == ["--model.lora.rank"]:  # LoRA from the command line: the reference is the adapter-free policy
        assert cli.model.reference_mode == "precomputed" and len(cli.model.reference_cache) > 0
        assert any("lora_A" in name for name, _ in cli.model.model.named_parameters())
    _assert_exported(tmp_path)
    with pytest.raises(ValueError, match=r"`lightning-rlhf dpo` feeds 'reward' batches, but data.stage is 'sft'"):
        main(["dpo", *_fit_args(tmp_path / "wrong", "--model.model", str(model), "--data.stage", "sft")])


def test_deepspeed_launcher_arguments_and_node_rank():
    env = {"RANK": "11", "LOCAL_RANK": "3", "LOCAL_SIZE": "8", "WORLD_SIZE": "16"}
    args = adapt_deepspeed_launcher(["ppo", "fit", "--local_rank=3", "--config", "x.yaml"], env)
    assert args == ["ppo", "fit", "--config", "x.yaml"]
    assert env["NODE_RANK"] == "1"
    env = {"RANK": "11", "LOCAL_SIZE": "8", "NODE_RANK": "5"}
    assert adapt_deepspeed_launcher(["--local_rank", "3", "sft"], env) == ["sft"]
    assert env["NODE_RANK"] == "5", "an explicit node rank is kept"
    env = {}
    assert adapt_deepspeed_launcher(["sft", "fit"], env) == ["sft", "fit"] and env == {}


def test_console_script_exits_zero_and_prints_no_python_objects():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from lightning_rlhf.commands.main import console_main; console_main()",
                           "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pipeline" in proc.stdout and "StepResult" not in proc.stdout + proc.stderr


# step configs only: a file with ``steps:`` is a pipeline (examples/calculator_tool/grpo.yaml), parsed in
# tests/test_pipeline_examples.py
STEP_EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("*/*.yaml")
                       if p.stem in STAGE_CLIS and "steps" not in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", STEP_EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_step_example_parses_and_weights_each_reward(capsys, path):
    """A user's first command is an example's: each step YAML under examples/ parses as its step's config, and
    where it weights reward functions it gives one weight to each."""
    config = _print_config(capsys, path.stem, "fit", "--config", str(path))
    model = config["model"]
    if model.get("reward_weights") is not None:
        assert len(model["reward_weights"]) == len(model["reward_funcs"]), (path, model["reward_funcs"])
