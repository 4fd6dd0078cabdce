"""The docs site: ``mkdocs build --strict`` passes, the generated reference covers the classes, the
DeepSpeed-Chat flag table covers every flag of its step 1-3 scripts, and the figure script reads real
TensorBoard files."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# Every flag of DeepSpeed-Chat's training scripts (deepspeedai/DeepSpeedExamples,
# applications/DeepSpeed-Chat/training/step{1,2,3}_*/main.py, read from their argparse at commit
# 45b4b715; step 1 also from a newer version that adds the NVMe offload and AIO flags), its
# e2e_rlhf.py, and deepspeed.add_config_arguments.
COMMON_1_2 = [
    "--data_path", "--data_split", "--data_output_path", "--model_name_or_path", "--per_device_train_batch_size",
    "--per_device_eval_batch_size", "--max_seq_len", "--learning_rate", "--weight_decay", "--num_train_epochs",
    "--gradient_accumulation_steps", "--lr_scheduler_type", "--num_warmup_steps", "--output_dir", "--seed",
    "--local_rank", "--gradient_checkpointing", "--dropout", "--offload", "--dtype", "--zero_stage", "--lora_dim",
    "--lora_module_name", "--only_optimize_lora", "--lora_learning_rate", "--compute_fp32_loss",
    "--enable_tensorboard", "--tensorboard_path", "--add_eot_token",
]
STEP1_ONLY = [
    "--sft_only_data_path", "--eot_token", "--print_loss",
    "--offload_optimizer_device", "--offload_optimizer_nvme_path", "--offload_optimizer_pin_memory",
    "--offload_optimizer_ratio", "--offload_optimizer_buffer_count", "--offload_optimizer_fast_init",
    "--offload_param_device", "--offload_param_nvme_path", "--offload_param_pin_memory", "--offload_param_buffer_size",
    "--offload_param_buffer_count", "--offload_param_max_in_cpu", "--aio_block_size", "--aio_queue_depth",
    "--aio_intra_op_parallelism", "--aio_single_submit", "--aio_overlap_events", "--aio_use_gds",
]
STEP2_ONLY = ["--num_padding_at_beginning", "--eval_interval", "--eval_iters"]
STEP3 = [
    "--data_path", "--data_split", "--data_output_path", "--unsupervised_dataset_name",
    "--unsupervised_dataset_config_name", "--unsup_coef", "--actor_model_name_or_path", "--critic_model_name_or_path",
    "--num_padding_at_beginning", "--per_device_generation_batch_size", "--per_device_training_batch_size",
    "--generation_batches", "--ppo_epochs", "--max_prompt_seq_len", "--max_answer_seq_len", "--actor_learning_rate",
    "--critic_learning_rate", "--actor_weight_decay", "--critic_weight_decay", "--num_train_epochs",
    "--lr_scheduler_type", "--gradient_accumulation_steps", "--num_warmup_steps", "--output_dir", "--seed",
    "--preprocessing_num_workers", "--local_rank", "--enable_hybrid_engine", "--unpin_actor_parameters",
    "--release_inference_cache", "--inference_tp_size", "--tp_gather_partition_size", "--offload", "--dtype",
    "--offload_reference_model", "--offload_reward_model", "--actor_zero_stage", "--critic_zero_stage",
    "--actor_gradient_checkpointing", "--critic_gradient_checkpointing", "--actor_dropout", "--critic_dropout",
    "--actor_lora_dim", "--actor_lora_module_name", "--critic_lora_dim", "--critic_lora_module_name",
    "--only_optimize_lora", "--actor_lora_learning_rate", "--critic_lora_learning_rate", "--enable_ema",
    "--enable_mixed_precision_lora", "--compute_fp32_loss", "--enable_tensorboard", "--tensorboard_path",
    "--add_eot_token", "--align_overflow", "--print_answers", "--print_answers_interval", "--enable_test_mode",
    "--test_stop_step",
]
E2E = ["--step", "--actor-model", "--reward-model", "--actor-zero-stage", "--reward-zero-stage", "--output-dir",
       "--deployment-type"]
DEEPSPEED = ["--deepspeed", "--deepspeed_config", "--deepscale", "--deepscale_config"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the Markdown tables under the ``## <section>`` heading of deepspeed-chat.md."""
    text = (DOCS / "deepspeed-chat.md").read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"deepspeed-chat.md has no section {section!r}"
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in match.group(1).splitlines() if line.startswith("| `--")]
    for row in rows:
        assert len(row) >= 3 and row[-2].strip(), f"row without an option or a reason: {row}"
    return rows


def _flags(rows: list[list[str]]) -> list[str]:
    return [row[0].strip().strip("`") for row in rows]


def test_flag_table_covers_steps_1_and_2():
    rows = _table_rows("Steps 1 and 2 (SFT and reward model)")
    by_step = {"1": set(), "2": set()}
    for row in rows:
        for step in row[1].replace(" ", "").split(","):
            by_step[step].add(row[0].strip("`"))
    assert set(COMMON_1_2 + STEP1_ONLY) - by_step["1"] == set()
    assert set(COMMON_1_2 + STEP2_ONLY) - by_step["2"] == set()
    assert len(_flags(rows)) == len(set(_flags(rows))), "a flag is listed twice"


@pytest.mark.parametrize(
    "section, expected",
    [("Step 3 (PPO)", STEP3), ("e2e_rlhf.py", E2E), ("DeepSpeed's own arguments", DEEPSPEED)],
)
def test_flag_table_covers_step_3_e2e_and_deepspeed(section, expected):
    flags = _flags(_table_rows(section))
    assert set(expected) - set(flags) == set()
    assert sorted(flags) == sorted(set(flags)), "a flag is listed twice"


def test_unsupported_flags_say_why():
    for section in ("Steps 1 and 2 (SFT and reward model)", "Step 3 (PPO)"):
        for row in _table_rows(section):
            if "**unsupported**" in " ".join(row[-2:]):
                assert len(row[-1].strip()) > 20 or len(row[-2]) > 40, f"{row[0]}: unsupported without a reason"


def test_reference_documents_every_argument_of_the_user_facing_classes():
    page = _load("gen_reference").render()
    for name in ("SFTModule", "RewardModule", "PPOModule", "DPOModule", "GRPOModule", "RLHFDataModule",
                 "HybridDeepSpeedStrategy",
                 "HFExportCallback", "PipelineConfig", "OptimizerArgs", "LoraArgs", "GenerationArgs"):
        assert f"### {name}" in page
    from lightning_rlhf.modules.grpo import GRPOModule
    from lightning_rlhf.modules.online import OnlineRLModule
    from lightning_rlhf.modules.ppo import PPOModule
    import inspect

    for module in (PPOModule, GRPOModule, OnlineRLModule):  # the modules' own arguments and the shared ones
        for arg, param in inspect.signature(module.__init__).parameters.items():
            if arg != "self" and param.kind != param.VAR_KEYWORD:
                assert f"| `{arg}` |" in page, f"{module.__name__}.{arg} missing from the reference"


def test_ppo_figure_is_drawn_from_a_real_event_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs"))
    for step in range(5):
        writer.add_scalar("ppo/reward_mean", 0.1 * step, step)
        writer.add_scalar("ppo/kl", 0.01 * step, step)
    writer.close()
    figure = _load("make_tensorboard_figure")
    assert figure.read_scalars(tmp_path / "logs")["ppo/reward_mean"][-1][1] == pytest.approx(0.4)
    out = figure.draw(tmp_path / "logs", tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        figure.draw(tmp_path / "nothing", tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no PPO scalars"):
        figure.draw(tmp_path / "empty", tmp_path / "x.png")
    assert (DOCS / "images" / "ppo_curves.png").exists(), "the TensorBoard page's picture is committed"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reference = (tmp_path / "reference" / "index.html").read_text()
    assert "PPOModule" in reference and "kl_coef" in reference
    assert (tmp_path / "images" / "ppo_curves.png").exists()
    assert "--tp_gather_partition_size" in (tmp_path / "deepspeed-chat" / "index.html").read_text()
