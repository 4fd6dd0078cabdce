"""mkdocs hooks: generate the configuration reference page from the code on every build."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).parent))


def on_files(files: Files, config) -> Files:
    """Add ``reference.md``, rendered by ``gen_reference.render()``."""
    from gen_reference import render

    files.append(File.generated(config, "reference.md", content=render()))
    return files
