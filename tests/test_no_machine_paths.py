"""No absolute folder of one machine (under the root folders ``work``, ``root`` or ``home``) in the text files.

Tests, benchmarks, docs and examples find things relative to the checkout (shared data: ``../shared`` beside it,
see ``tests/helpers/shared_data.py``) and write commands with placeholders (``<bench-venv>``, ``<smollm2-hf-dir>``,
...), so they work wherever the checkout lies. Scanned: the files git tracks, plus new files it does not ignore,
whose names end in a source, config, documentation or JSON suffix (``benchmarks/results/*.json`` record the command
lines of the measurements with the same placeholders).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".ini", ".txt", ".rst", ".json"}
#: the root folders that name one machine's layout (spelt apart so that this file passes its own search)
ROOTS = ("work", "root", "home")
#: an absolute path under one of them (not a URL's or a longer path's middle, such as ``example.com/<root>/``)
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:" + "|".join(ROOTS) + r")/")


def text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout with git on PATH ({error}): the tracked files cannot be listed")
    names = sorted({name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name})
    return [REPO / name for name in names
            if Path(name).suffix in SUFFIXES and not name.startswith(".venv/") and (REPO / name).is_file()]


def test_no_absolute_machine_paths_in_text_files():
    files = text_files()
    assert len(files) > 50, f"only {len(files)} text files listed by git: is this the repository root?"
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:160]}")
    assert not hits, (
        f"{len(hits)} line(s) name an absolute folder of one machine (under /{', /'.join(ROOTS)}); find files relative "
        "to the checkout (tests/helpers/shared_data.py) or write a placeholder such as <bench-venv>:\n"
        + "\n".join(hits))


@pytest.mark.parametrize("line, found", [
    (f'HH_RLHF = Path("/{ROOTS[0]}/shared/data/x.jsonl.gz")', True),
    (f"python3 -m venv /{ROOTS[1]}/venv", True),
    (f"cd /{ROOTS[2]}/user/repo", True),
    (f"see https://example.com/{ROOTS[0]}/page and ../{ROOTS[0]}/notes, ~/{ROOTS[0]}/x", False),
    ("<bench-venv>/bin/python benchmarks/ppo_vs_trl.py", False),
])
def test_the_pattern_finds_absolute_paths_only(line, found):
    assert bool(MACHINE_PATH.search(line)) is found
