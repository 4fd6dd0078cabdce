"""Checkpoint directories that are either complete or visibly not, and their consolidation.

Every rank writes into ``<name>.partial``; rank 0 then writes a marker and renames it into place. Loading
refuses a directory without the marker, except one of Lightning's own ``DeepSpeedStrategy`` (docs/concepts.md).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch

MARKER_FILE = "lightning_rlhf_checkpoint.json"
LIGHTNING_STATE_FILE = "lightning_state.pt"
RANK_CALLBACKS_DIR = "callback_states"  # every rank's own callback state: rank<R>.pt
LATEST_FILE = "latest"  # DeepSpeed's pointer to the newest tag of a checkpoint directory
FORMAT_VERSION = 1


def staging_path(final: Path) -> Path:
    """Where the shards of ``final`` are written before the directory is complete."""
    return final.with_name(final.name + ".partial")


def publish(staging: Path, final: Path, metadata: dict[str, Any]) -> None:
    """Mark ``staging`` complete and move it to ``final`` (rank 0 only, after every rank has written).

    An existing ``final`` is deleted only once the new one is in place, so a complete checkpoint always exists.
    """
    marker = {"format_version": FORMAT_VERSION, "saved_at": time.time(), **metadata}
    (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2))
    previous = final.with_name(final.name + ".old")
    if final.exists():
        if previous.exists():
            shutil.rmtree(previous)
        final.rename(previous)
    staging.rename(final)
    if previous.exists():
        shutil.rmtree(previous)


def interrupted_publish(final: Path) -> Path | None:
    """The complete checkpoint a save of ``final`` left when killed between :func:`publish`'s two renames (None if
    ``final`` exists or nothing is left): the staging folder when its marker is written (the newer), else ``.old``."""
    final = Path(final)
    if final.exists():
        return None
    staging, previous = staging_path(final), final.with_name(final.name + ".old")
    if (staging / MARKER_FILE).is_file():
        return staging
    return previous if (previous / MARKER_FILE).is_file() else None


def read_marker(path: Path, accept_lightning_deepspeed: bool = False) -> dict[str, Any]:
    """Validate a checkpoint directory and return its marker (``accept_lightning_deepspeed``: also theirs)."""
    path = Path(path)
    if not path.exists():
        partial = staging_path(path)
        hint = f" A staging directory {partial} exists: the save was interrupted." if partial.exists() else ""
        raise FileNotFoundError(f"Checkpoint {path} does not exist.{hint}")
    if not path.is_dir():
        raise ValueError(
            f"Checkpoint {path} is a file, but HybridDeepSpeedStrategy checkpoints are directories of ZeRO shards. "
            "A single-file checkpoint can be loaded with HybridDeepSpeedStrategy(load_full_weights=True)."
        )
    marker_path = path / MARKER_FILE
    if not marker_path.is_file():
        if accept_lightning_deepspeed and (path / LATEST_FILE).is_file():
            return lightning_deepspeed_marker(path)
        raise ValueError(
            f"Checkpoint {path} is incomplete or corrupt: it has no {MARKER_FILE}, which is written last, once "
            "every rank has saved its shards. Resume from an earlier checkpoint."
        )
    try:
        return json.loads(marker_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"Checkpoint {path} is corrupt: {marker_path} is not valid JSON ({err}).") from err


def lightning_deepspeed_marker(path: Path) -> dict[str, Any]:
    """The marker of a checkpoint that Lightning's ``DeepSpeedStrategy`` wrote, built from what it holds.

    Checked instead of a marker: ``latest`` names a tag whose model states exist, and every rank's shard is there.
    """
    tag = (path / LATEST_FILE).read_text().strip()
    tag_dir = path / tag
    # rank 0's model states: ZeRO-3 names them per rank, stages 0-2 write one file
    states = [tag_dir / name for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
              if (tag_dir / name).is_file()]
    if not states:
        raise ValueError(
            f"Checkpoint {path} has no {MARKER_FILE} and is not a complete DeepSpeedStrategy checkpoint either: "
            f"its 'latest' file names tag {tag!r}, but {tag_dir} holds no rank-0 model states "
            "(mp_rank_00_model_states.pt or zero_pp_rank_0_mp_rank_00_model_states.pt). "
            "Resume from an earlier checkpoint."
        )
    # mmap: the metadata is read without loading the module's weights stored in the same file
    saved = torch.load(states[0], map_location="cpu", mmap=True, weights_only=False)
    world = int(saved.get("dp_world_size", 1))
    stage = int(((saved.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
    expected = []
    if stage >= 1:
        expected += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    if stage == 3:
        expected += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    present = {f.name.removeprefix("bf16_") for f in tag_dir.iterdir()}
    missing = [name for name in expected if name not in present]
    if missing:
        raise ValueError(
            f"Checkpoint {path} (written by Lightning's DeepSpeedStrategy, ZeRO-{stage}, {world} ranks) is "
            f"incomplete: {tag_dir} lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}. "
            "Resume from an earlier checkpoint."
        )
    return {"layout": "single", "engines": [], "zero_stage": stage, "world_size": world,
            "written_by": "lightning.pytorch.strategies.DeepSpeedStrategy", "tag": tag}


def save_lightning_state(directory: Path, state: dict[str, Any]) -> None:
    """Lightning's loop, callback and scheduler state, written once by rank 0 beside the engines' shards."""
    torch.save(state, directory / LIGHTNING_STATE_FILE)


def save_rank_callbacks(directory: Path, rank: int, callbacks: dict[str, Any]) -> None:
    """Write this rank's callback states beside the shards: Lightning keeps rank 0's only (wrong for a ZeRO-3 EMA)."""
    folder = directory / RANK_CALLBACKS_DIR
    folder.mkdir(exist_ok=True)
    torch.save(callbacks, folder / f"rank{rank}.pt")


def load_rank_callbacks(directory: Path, rank: int) -> Optional[dict[str, Any]]:
    """This rank's callback states saved by :func:`save_rank_callbacks`; None if the checkpoint has none for it."""
    path = Path(directory) / RANK_CALLBACKS_DIR / f"rank{rank}.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def load_lightning_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / LIGHTNING_STATE_FILE
    if not path.is_file():
        raise ValueError(f"Checkpoint {directory} is corrupt: {LIGHTNING_STATE_FILE} is missing.")
    # DeepSpeed's shards beside it are pickles too: the trust boundary is the checkpoint directory.
    return torch.load(path, map_location="cpu", weights_only=False)


def consolidated_state_dict(checkpoint_dir: str | Path, engine: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Merge one engine's ZeRO shards from a saved checkpoint into a plain fp32 state dict, offline.

    Args:
        checkpoint_dir: a directory saved by :class:`HybridDeepSpeedStrategy`.
        engine: the child module's name (``"actor"``) for a several-engine checkpoint; ``None`` for a single-model
            checkpoint, whose keys are then the LightningModule's parameter names.
    """
    checkpoint_dir = Path(checkpoint_dir)
    marker = read_marker(checkpoint_dir)
    engines = marker.get("engines", [])
    tag = engine or "checkpoint"
    if engine is not None and engine not in engines:
        raise ValueError(f"Checkpoint {checkpoint_dir} has no engine {engine!r}; it holds {engines}.")
    stage = int(marker.get("zero_stage", 0))
    if stage == 0:
        files = sorted((checkpoint_dir / tag).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise ValueError(f"Checkpoint {checkpoint_dir / tag} holds no model states file.")
        return {k: v.float() for k, v in torch.load(files[0], map_location="cpu", weights_only=False)["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag))


def export_engine_to_hf(
    checkpoint_dir: str | Path, engine: Optional[str], base_model: str | Path, output_dir: str | Path, prefix: str = ""
) -> Path:
    """Write one engine of a checkpoint as a Hugging Face folder (safetensors, config, tokenizer).

    Args:
        checkpoint_dir: a directory saved by :class:`HybridDeepSpeedStrategy`.
        engine: the child module's name, or ``None`` for a single-model checkpoint.
        base_model: a Hugging Face folder with the same architecture (config and tokenizer are taken from it).
        output_dir: where the folder is written.
        prefix: prefix to strip from the state-dict keys (e.g. ``"model."`` for a single-model checkpoint).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    state = consolidated_state_dict(checkpoint_dir, engine)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    config = AutoConfig.from_pretrained(base_model)
    archs = config.architectures or []
    auto = AutoModelForSequenceClassification if any("SequenceClassification" in a for a in archs) else (
        AutoModelForCausalLM if any("CausalLM" in a for a in archs) else AutoModel
    )
    model = auto.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    missing = [k for k in missing if k not in tied]
    if unexpected or missing:
        raise ValueError(
            f"Engine {engine or 'model'} of {checkpoint_dir} does not match {base_model}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]} (set `prefix` to strip a wrapper's key prefix)."
        )
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    try:
        AutoTokenizer.from_pretrained(base_model).save_pretrained(output_dir)
    except (OSError, ValueError):
        pass  # a base folder without a tokenizer: the exported weights are still complete
    return output_dir
