"""mkdocs hooks: generate the configuration reference page from the code on every build."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File, Files

GENERATOR = Path(__file__).resolve().parent / "gen_reference.py"


def _render() -> str:
    spec = importlib.util.spec_from_file_location("lightning_rlhf_docs_gen_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render()


def on_files(files: Files, config) -> Files:
    """Add ``reference.md``, rendered by ``gen_reference.render()`` from the installed package."""
    files.append(File.generated(config, "reference.md", content=_render()))
    return files
