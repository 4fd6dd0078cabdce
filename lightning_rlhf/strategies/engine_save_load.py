"""Saving and loading a ``HybridDeepSpeedStrategy`` checkpoint: every engine's shards plus Lightning's state.

The directory format lives in :mod:`lightning_rlhf.strategies.checkpoint_folder`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Union

from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lightning_rlhf.strategies.checkpoint_folder import (
    consolidated_state_dict,
    interrupted_publish,
    load_lightning_state,
    load_rank_callbacks,
    publish,
    read_marker,
    save_lightning_state,
    save_rank_callbacks,
    staging_path,
)
from lightning_rlhf.strategies.environment import ranks_with

PARAM_GROUPS_KEY = "hybrid_deepspeed_param_groups"


def save(
    strategy: Any, checkpoint: dict, filepath: Union[str, Path], save_single: Callable[[dict, Path], None]
) -> None:
    """Write ``checkpoint`` as a complete-or-absent directory at ``filepath`` (collective: every rank calls it)."""
    final = Path(strategy.broadcast(str(filepath)))
    staging = staging_path(final)
    if strategy.is_global_zero:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    strategy.barrier("hybrid_deepspeed.save_checkpoint.start")
    check_staging_shared(strategy, staging)
    trained = strategy.trainable_engines()
    if strategy.engines:
        state = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        state[PARAM_GROUPS_KEY] = {name: _hyperparameters(e.optimizer) for name, e in trained.items()}
        for name, engine in trained.items():
            engine.save_checkpoint(
                str(staging), tag=name, client_state={}, save_latest=False,
                exclude_frozen_parameters=strategy.exclude_frozen_parameters,
            )
        if strategy.is_global_zero:
            save_lightning_state(staging, state)
    else:
        save_single(checkpoint, staging)
    if "callbacks" in checkpoint:
        save_rank_callbacks(staging, strategy.global_rank, checkpoint["callbacks"])
    strategy.barrier("hybrid_deepspeed.save_checkpoint.written")
    if strategy.is_global_zero:
        publish(staging, final, {"layout": "several" if strategy.engines else "single", "engines": list(trained),
                                 "zero_stage": strategy.zero_stage, "world_size": strategy.world_size})
    strategy.barrier("hybrid_deepspeed.save_checkpoint.published")


def check_staging_shared(strategy: Any, staging: Path) -> None:
    """Refuse, on every rank at once, a checkpoint folder some rank cannot see (node-local storage): its shards
    would land in a folder rank 0 never publishes."""
    blind = not staging.is_dir()
    blind_ranks = ranks_with(strategy, blind)
    if blind_ranks:
        if strategy.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        here = " (this rank among them)" if blind else ""
        raise RuntimeError(
            f"{blind_ranks} rank(s){here} cannot see the checkpoint folder {staging} that rank 0 created: "
            f"HybridDeepSpeedStrategy checkpoints need a file system every node shares (each rank writes its shards "
            f"into one folder). Point the checkpoint dirpath (or trainer.default_root_dir) at shared storage."
        )


def load(strategy: Any, checkpoint_path: Union[str, Path], load_single: Callable[[Path], dict]) -> dict[str, Any]:
    """Load a directory written by :func:`save` into the strategy's engines; returns Lightning's state."""
    path = Path(strategy.broadcast(str(checkpoint_path)))
    recovered = interrupted_publish(path)
    if recovered is not None:
        rank_zero_warn(f"Checkpoint {path} is missing: a save was killed while replacing it; loading the complete "
                       f"checkpoint it left, {recovered}")
        path = recovered
    state = _load_engines(strategy, path, load_single)
    own = load_rank_callbacks(path, strategy.global_rank)
    if own is not None:
        state["callbacks"] = own
    return state


def _load_engines(strategy: Any, path: Path, load_single: Callable[[Path], dict]) -> dict[str, Any]:
    marker = read_marker(path, accept_lightning_deepspeed=True)
    expected = "several" if strategy.engines else "single"
    if marker.get("layout") == "single" and expected == "several":
        raise ValueError(one_engine_into_several(strategy, path, marker))
    if marker.get("layout") != expected:
        raise ValueError(
            f"Checkpoint {path} holds a {marker.get('layout')!r}-engine layout but this module uses a "
            f"{expected!r}-engine layout; it was saved from a different LightningModule."
        )
    module = strategy.lightning_module
    fitting = module.trainer.state.fn == TrainerFn.FITTING
    saved_world = marker.get("world_size")
    if fitting and int(marker.get("zero_stage", 0)) >= 1 and saved_world not in (None, strategy.world_size):
        raise ValueError(
            f"Checkpoint {path} was saved by {saved_world} ranks at ZeRO-{marker['zero_stage']}, this run has "
            f"{strategy.world_size}: the optimizer shards are per rank. Resume on {saved_world} ranks, or load only "
            "the weights (lightning_rlhf.strategies.consolidated_state_dict) into a fresh run."
        )
    if not strategy.engines:
        return load_single(path)
    if not fitting:
        _load_weights_for_evaluation(strategy, path, marker.get("engines", []), int(marker.get("zero_stage", 0)))
        state = load_lightning_state(path)
        state.pop(PARAM_GROUPS_KEY, None)
        return state
    trained = strategy.trainable_engines()
    names = list(trained)
    if sorted(marker.get("engines", [])) != sorted(names):
        raise ValueError(f"Checkpoint {path} holds engines {marker.get('engines')}, this module has {names}.")
    for name, engine in trained.items():
        loaded, _ = engine.load_checkpoint(
            str(path), tag=name, load_optimizer_states=True, load_lr_scheduler_states=False,
            load_module_strict=module.strict_loading,
        )
        if loaded is None:
            raise ValueError(f"Checkpoint {path}: DeepSpeed could not load engine {name!r} from {path / name}.")
    state = load_lightning_state(path)
    # ZeRO optimizers do not restore the param groups' learning rates
    saved_groups = state.pop(PARAM_GROUPS_KEY, {})
    for name, engine in trained.items():
        for group, saved in zip(engine.optimizer.param_groups, saved_groups.get(name, [])):
            group.update(saved)
    return state


def one_engine_into_several(strategy: Any, path: Path, marker: dict[str, Any]) -> str:
    """Why a one-engine checkpoint (Lightning's ``DeepSpeedStrategy``) cannot resume a module split per child, and
    what to do instead."""
    module = strategy.lightning_module
    lightning = bool(marker.get("written_by"))
    writer = "Lightning's DeepSpeedStrategy" if lightning else "a single-engine run"
    weights = (f"`lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict({str(path)!r}, "
               f"'weights.ckpt')` then `torch.load('weights.ckpt')['state_dict']`" if lightning else
               f"`lightning_rlhf.strategies.consolidated_state_dict({str(path)!r})`")
    return (
        f"Checkpoint {path} holds one DeepSpeed engine over the whole {type(module).__name__} ({writer}), but "
        f"HybridDeepSpeedStrategy gives each child its own engine ({', '.join(sorted(strategy.engines))}). ZeRO "
        f"keeps the optimizer state (and, at stage 3, the weights) as flat partitions of all the module's "
        f"parameters together, which cannot be re-split into per-child engines, so the optimizer state cannot "
        f"carry over. Either resume it under strategy='deepspeed', or start a new fit from its weights: {weights} "
        f"gives the whole module's fp32 state dict; load it with `module.load_state_dict(...)` in configure_model "
        f"after building the children, and fit without ckpt_path (the optimizer starts afresh)."
    )


def _load_weights_for_evaluation(strategy: Any, path: Path, saved: list[str], saved_stage: int) -> None:
    """validate/test/predict: load each saved engine's weights into the inference-only engine of the same child.

    Not ``engine.load_checkpoint``: its module-only ZeRO-3 load wants a ``latest`` tag this layout does not write.
    """
    import deepspeed

    missing = sorted(set(saved) - set(strategy.engines))
    if missing:
        raise ValueError(
            f"Checkpoint {path} holds engines {saved}, but this module has no child {missing} "
            f"(its children are {sorted(strategy.engines)}); it was saved from a different LightningModule."
        )
    strict = strategy.lightning_module.strict_loading
    for name in saved:
        child = strategy.engines[name].module
        partitioned = [p for p in child.parameters() if hasattr(p, "ds_id")]
        # ZeRO-3: rank 0 reads the consolidated weights; leaving the gather re-partitions them onto every rank
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0, enabled=bool(partitioned)):
            if strategy.is_global_zero or not partitioned:
                state = consolidated_state_dict(path, name)
                try:
                    child.load_state_dict(state, strict=strict)
                except RuntimeError as err:
                    raise ValueError(f"Checkpoint {path}: engine {name!r} (saved at ZeRO-{saved_stage}) does not fit "
                                     f"the module's {name!r}: {err}") from err


def _hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    """The scalar hyperparameters (lr, betas, weight decay, ...) of each param group, without the parameters."""
    return [
        {k: v for k, v in group.items() if isinstance(v, (int, float, bool, tuple)) and k != "params"}
        for group in optimizer.param_groups
    ]
