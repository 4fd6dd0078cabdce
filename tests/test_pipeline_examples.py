"""Every example config parses against the real classes (arguments exist, types match), without running it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_rlhf.commands.stages import STAGE_CLIS
from lightning_rlhf.commands.pipeline import STEPS, PipelineConfig, build_parser, step_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: every example config of ``lightning-rlhf pipeline`` (a top-level ``steps``), whatever its file name
PIPELINES = sorted(p for p in EXAMPLES.glob("*/*.yaml") if "steps" in (yaml.safe_load(p.read_text()) or {}))


class _Parsed(Exception):
    """Raised right after parsing, so nothing is instantiated (no models, no GPUs)."""


def parse_only(stage: str, config: dict) -> dict:
    """The validated config of ``lightning-rlhf <stage>`` for ``config`` (a dict, as the pipeline passes it)."""

    class ParseOnly(STAGE_CLIS[stage]):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            raise _Parsed(self.config)

    with pytest.raises(_Parsed) as parsed:
        ParseOnly(args=config, run=False)
    return parsed.value.args[0]


def test_every_example_is_covered():
    names = {p.parent.name for p in PIPELINES}
    assert {"tiny_cpu", "hh_rlhf", "smollm2_cpu", "opt_1.3b_1gpu", "opt_13b_8gpu", "llama2_7b_lora",
            "hh_rlhf_dpo", "calculator_tool"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.parent.name)
def test_example_pipeline_parses_and_each_step_validates(path, tmp_path):
    text = path.read_text()
    assert "Takes:" in text or path.parent.name == "tiny_cpu", f"{path} must say how long it takes"
    namespace = build_parser().parse_args(["--config", str(path)])
    raw = yaml.safe_load(text)
    config_fields = {k: namespace[k] for k in ("output_dir", "seed", "base_model", "reward_base_model", "data")}
    config = PipelineConfig(**{**config_fields, "output_dir": str(tmp_path), "reward_base_model": None,
                               **{s: raw.get(s, {}) for s in STEPS}})
    for fake in ("sft", "reward"):  # PPO's inputs are earlier exports; pretend they exist
        (tmp_path / fake / "hf" / "final").mkdir(parents=True)
        (tmp_path / fake / "hf" / "final" / "config.json").write_text("{}")
    for stage in STEPS:
        parsed = parse_only(stage, step_config(config, stage, Path("base")))
        assert parsed.data.stage == STAGE_CLIS[stage].batch_stage()  # dpo reads the reward step's pairs


def test_the_opt_13b_ppo_step_config_parses():
    parsed = parse_only("ppo", yaml.safe_load((EXAMPLES / "opt_13b_8gpu" / "ppo.yaml").read_text()))
    assert parsed.trainer.strategy.init_args.inference_tp_size == 2
    checkpoint = parsed.trainer.callbacks[0]
    assert checkpoint.class_path == "lightning_rlhf.callbacks.IterationCheckpoint", "the long run can resume"


def test_the_smollm2_grpo_config_parses_with_its_reward_functions_and_chat_task():
    parsed = parse_only("grpo", yaml.safe_load((EXAMPLES / "smollm2_grpo" / "grpo.yaml").read_text()))
    assert parsed.model.reward_funcs == ["lightning_rlhf.rewards.builtin:answer_match",
                                         "lightning_rlhf.rewards.builtin:answer_only_format"]
    task = parsed.data.task.init_args if hasattr(parsed.data.task, "init_args") else parsed.data.task
    # the measured runs of docs/grpo.md: single-digit sums in chat form, 100 rollouts, the entropy bonus on
    assert task.style == "chat" and task.max_operand == 9 and parsed.trainer.limit_train_batches == 100
    assert parsed.model.entropy_coef == 0.1
    assert parsed.trainer.strategy.init_args.stage == 3


def test_the_reasoning_gym_recipe_parses_with_a_task_source_given_on_the_command_line():
    config = yaml.safe_load((EXAMPLES / "reasoning_gym" / "grpo.yaml").read_text())
    config["data"]["sources"] = ["reasoning_gym:chain_sum?size=10"]
    parsed = parse_only("grpo", config)
    assert parsed.model.reward_gate is True and parsed.model.entropy_target == 0.6
    assert parsed.model.reward_funcs == ["reasoning_gym_score_flexible", "reasoning_gym_score", "brevity"]
    assert parsed.data.task is None and parsed.trainer.strategy.init_args.stage == 3


def test_the_smollm2_ppo_config_with_reward_functions_and_no_reward_model_parses():
    parsed = parse_only("ppo", yaml.safe_load((EXAMPLES / "smollm2_grpo" / "ppo.yaml").read_text()))
    assert parsed.model.reward_model is None and len(parsed.model.reward_funcs) == 2
