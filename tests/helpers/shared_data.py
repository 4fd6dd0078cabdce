"""Shared data found relative to the checkout: ``<repo root>/../shared/data``, or ``$LIGHTNING_RLHF_SHARED_DATA``.

The shared folder lies beside the checkout (``../shared``), wherever the checkout is; no absolute path of one
machine. ``benchmarks/_common.py`` computes the same folder itself (benchmarks do not import test code).

A test that needs a shared file calls :func:`require_shared_file`: when the file is missing it fails under CI
(``CI=true``), naming where it looked and how to point to it, and skips with that reason elsewhere (or always,
for a test that is explicitly optional).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: names the folder holding the shared data files (overrides ``<repo root>/../shared/data``)
ENV = "LIGHTNING_RLHF_SHARED_DATA"
#: the Anthropic HH-RLHF harmless-base test sample (1,712 dialogues)
HH_RLHF_NAME = "hh-rlhf-harmless-base-test-a.jsonl.gz"


def shared_data_dir() -> Path:
    """``$LIGHTNING_RLHF_SHARED_DATA`` when set, else ``<repo root>/../shared/data``."""
    override = os.environ.get(ENV)
    return Path(override).expanduser() if override else REPO.parent / "shared" / "data"


def shared_file(name: str = HH_RLHF_NAME) -> Path:
    """Where the shared file ``name`` is looked for (it may not exist)."""
    return shared_data_dir() / name


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_message(path: Path) -> str:
    source = f"${ENV}" if os.environ.get(ENV) else f"<repo root>/../shared/data; ${ENV} is not set"
    return (f"shared data file {path.name} not found at {path} (looked in {source}); put the shared folder at "
            f"../shared beside the checkout or set {ENV}=<folder holding {path.name}>")


def require_shared_file(name: str = HH_RLHF_NAME, optional: bool = False) -> Path:
    """The shared file ``name``; missing, fail under CI (unless ``optional``), else skip, saying where it looked."""
    path = shared_file(name)
    if path.is_file():
        return path
    message = missing_message(path)
    if in_ci() and not optional:
        pytest.fail(message + " (CI=true: a missing shared file fails instead of skipping)", pytrace=False)
    pytest.skip(message)
