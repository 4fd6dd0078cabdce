"""Fixtures for the data tests: a tokenizer trained on the built-in task, the real HH-RLHF file, writers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers.shared_data import require_shared_file, shared_file

HH_FILE = shared_file()  # <repo root>/../shared/data, or $LIGHTNING_RLHF_SHARED_DATA
HH_ROWS = 1712


@pytest.fixture(scope="session")
def task_tokenizer():
    """A tiny BPE tokenizer trained on the synthetic task's corpus (as the demo pipeline does)."""
    from lightning_rlhf.data import default_task
    from lightning_rlhf.models.tiny import train_tokenizer

    return train_tokenizer(default_task().corpus(), vocab_size=300)


@pytest.fixture(scope="session")
def task_tokenizer_dir(tmp_path_factory, task_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("task_tokenizer")
    task_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hh_file() -> Path:
    """The real HH-RLHF sample; missing, it fails under CI and skips elsewhere, saying where it looked."""
    return require_shared_file()


@pytest.fixture(scope="session")
def hh_rows(hh_file) -> list[dict]:
    with gzip.open(hh_file, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw ``bytes`` lines written verbatim) as JSON lines."""
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(row if isinstance(row, bytes) else json.dumps(row).encode("utf-8"))
            handle.write(b"\n")
    return path
