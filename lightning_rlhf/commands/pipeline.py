"""``lightning-rlhf pipeline``: the steps in one command, each step's exported model feeding the next.

Each step section (``sft``, ``reward``, ``ppo``, ``dpo``, ``grpo``) is that step command's config; the pipeline
fills in what connects them (model folders, output folders, the shared ``data`` section, the seed). Without
``--config`` it runs the built-in tiny task on CPU (``configs/tiny_pipeline.yaml``).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from lightning.pytorch.utilities import rank_zero_info

from lightning_rlhf.commands.stages import STAGE_CLIS
from lightning_rlhf.commands.pipeline_resume import bare_resume_flag, finished_step_record, write_step_record
from lightning_rlhf.commands.pipeline_summary import (
    SUMMARY_METRICS,
    FitValidation,
    StepResult,
    format_summary,
    merge_summary,
)
from lightning_rlhf.commands.ranks import process_rank
from lightning_rlhf.strategies.engines import deep_merge

STEPS = ("sft", "reward", "ppo", "dpo", "grpo")
DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "tiny_pipeline.yaml"
EXPORT_SUBDIR = Path("hf") / "final"



@dataclass
class TinyModelArgs:
    """A model built from scratch when ``base_model`` is None (no download, trains on a CPU).

    Attributes:
        family: model family: ``llama``, ``opt``, ``gpt2`` or ``gpt_neox``.
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        max_positions: longest sequence in tokens.
        vocab_size: size of the byte-level BPE tokenizer trained on the data's texts.
        corpus_size: records of ``data.sources`` the tokenizer trains on (the built-in task gives its whole corpus).
        seed: initialisation seed.
    """

    family: Literal["llama", "opt", "gpt2", "gpt_neox"] = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 128
    vocab_size: int = 320
    corpus_size: int = 5000
    seed: int = 0


@dataclass
class PipelineConfig:
    """Settings of ``lightning-rlhf pipeline``.

    Attributes:
        output_dir: where everything goes: ``base/``, ``<step>/hf/final``, ``<step>/lightning_logs``, ``summary.json``.
        steps: steps to run (comma-separated or a list), always in the order sft, reward, ppo, dpo, grpo.
        seed: ``seed_everything``, ``data.seed`` and each module's ``seed`` unless its section sets them.
        base_model: Hugging Face folder of the pretrained policy (SFT starts here); None builds a tiny model (``tiny``).
        reward_base_model: folder the reward model starts from; None: ``base_model``; ``sft``: step 1's export.
        tiny: the model built when ``base_model`` is None.
        evaluate_before: validate each step's starting model before training, for the summary.
        num_threads: PyTorch CPU threads (``torch.set_num_threads``); None keeps PyTorch's choice.
        data: ``RLHFDataModule`` arguments shared by every step; a step's own ``data`` overrides them.
        sft: config of step 1, as for ``lightning-rlhf sft fit`` (``model``, ``data``, ``trainer``, ``export``).
        reward: config of step 2, as for ``lightning-rlhf reward fit``.
        ppo: config of step 3, as for ``lightning-rlhf ppo fit``.
        dpo: config of step 2' (DPO from the SFT model), as for ``lightning-rlhf dpo fit``.
        grpo: config of the GRPO step (from the SFT model), as for ``lightning-rlhf grpo fit``.
        resume: continue in ``output_dir``: reuse finished steps, resume the first unfinished one from ``last*.ckpt``.
    """

    output_dir: str = "runs/pipeline"
    steps: str | list[str] = "sft,reward,ppo"
    seed: int = 0
    base_model: str | None = None
    reward_base_model: str | None = None
    tiny: TinyModelArgs = field(default_factory=TinyModelArgs)
    evaluate_before: bool = True
    num_threads: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    dpo: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)


def _generation_stats(trainer: Any) -> Any:
    return getattr(trainer.strategy, "generation_stats", None)


def parse_steps(steps: str | Sequence[str]) -> list[str]:
    """``"sft,reward"`` or ``["sft", "reward"]`` -> ordered, validated step names."""
    names = [s.strip() for s in (steps.split(",") if isinstance(steps, str) else steps) if s.strip()]
    unknown = [s for s in names if s not in STEPS]
    if unknown or not names:
        raise ValueError(f"pipeline steps must be a non-empty subset of {list(STEPS)}, got {names}")
    return [s for s in STEPS if s in names]


def _is_rank_zero() -> bool:
    return process_rank() == 0


def _tokenizer_corpus(config: PipelineConfig) -> list[str]:
    """Texts to train the tiny tokenizer on: the built-in task's corpus, or records of ``data.sources``."""
    sources = config.data.get("sources")
    if not sources:
        from lightning_rlhf.data import SyntheticTask

        return SyntheticTask(seed=config.data.get("seed", config.seed)).corpus()
    from lightning_rlhf.data import load_records

    texts: list[str] = []
    for source in sources:
        records, _ = load_records(source, config.data.get("format", "auto"), on_bad_record="skip")
        for record in records[: config.tiny.corpus_size]:
            texts.extend(str(record.get(k, "")) for k in ("prompt", "response", "chosen", "rejected"))
    return texts


def prepare_base_model(config: PipelineConfig) -> Path:
    """The starting model folder: ``base_model``, or a tiny model built once into ``<output_dir>/base``."""
    if config.base_model is not None:
        return Path(config.base_model)
    path = Path(config.output_dir) / "base"
    marker = path / "config.json"
    if not marker.exists() and _is_rank_zero():
        from lightning_rlhf.models.tiny import save_tiny_model, train_tokenizer

        tiny = config.tiny
        tokenizer = train_tokenizer(_tokenizer_corpus(config), vocab_size=tiny.vocab_size)
        save_tiny_model(
            path, tiny.family, tokenizer, seed=tiny.seed, hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers, num_heads=tiny.num_heads, max_positions=tiny.max_positions,
        )
        rank_zero_info(f"pipeline: built a tiny {tiny.family} model and a {len(tokenizer)}-token tokenizer in {path}")
    while not marker.exists():  # other ranks wait for rank 0's build
        time.sleep(1.0)
    return path


def _export_dir(config: PipelineConfig, step: str) -> Path:
    return Path(config.output_dir) / step / EXPORT_SUBDIR


def _require(path: Path, step: str, what: str, key: str, check: bool = True) -> str:
    if check and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"pipeline step {step!r} needs {what} at {path}, which does not exist; run that step first "
            f"(--steps) or set `{step}.model.{key}` in the pipeline config"
        )
    return str(path)


def step_config(config: PipelineConfig, step: str, base: Path, require_exports: bool = True) -> dict[str, Any]:
    """``step``'s LightningCLI config: its section plus the pipeline's wiring (explicit values win)."""
    check = require_exports
    section = copy.deepcopy(getattr(config, step))
    section.pop("ckpt_path", None)  # a fit argument, not part of the step's LightningCLI config (see run_step)
    section.setdefault("seed_everything", config.seed)
    section["data"] = {**copy.deepcopy(config.data), **section.get("data", {})}
    section["data"].setdefault("seed", config.seed)
    trainer = section.setdefault("trainer", {})
    trainer.setdefault("default_root_dir", str(Path(config.output_dir) / step))
    section.setdefault("export", {})["dirpath"] = str(Path(config.output_dir) / step / "hf")
    model = section.setdefault("model", {})
    if STAGE_CLIS[step].module_takes_seed():  # PPO's shuffle seed: Lightning refuses a `seed` hparam with two values
        model.setdefault("seed", section["data"]["seed"])
    if step == "sft":
        model.setdefault("model", str(base))
    elif step == "dpo":
        if "model" not in model:
            model["model"] = _require(_export_dir(config, "sft"), step, "the SFT model", "model", check)
    elif step == "grpo":
        if "actor" not in model:
            model["actor"] = _require(_export_dir(config, "sft"), step, "the SFT model", "actor", check)
    elif step == "reward":
        if "model" in model:
            pass
        elif config.reward_base_model == "sft":
            model["model"] = _require(_export_dir(config, "sft"), step, "the SFT model", "model", check)
        else:
            model["model"] = config.reward_base_model or str(base)
    else:
        if "actor" not in model:
            model["actor"] = _require(_export_dir(config, "sft"), step, "the SFT model", "actor", check)
        if "reward_model" not in model:
            model["reward_model"] = _require(_export_dir(config, "reward"), step, "the reward model", "reward_model",
                                             check)
    return section


def _metrics(results: list[dict[str, Any]], step: str) -> dict[str, float]:
    merged = {k: float(v) for r in results for k, v in r.items()}
    wanted = {name for name, _ in SUMMARY_METRICS[step]}
    return {k: v for k, v in merged.items() if k in wanted}


def run_step(config: PipelineConfig, step: str, base: Path) -> StepResult:
    """Build one step with its LightningCLI, validate, fit (from a section's ``ckpt_path``), validate."""
    start = time.perf_counter()
    rank_zero_info(f"pipeline: step {step} ...")
    cli = STAGE_CLIS[step](args=step_config(config, step, base), run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    before = _metrics(trainer.validate(module, datamodule=data, verbose=False), step) if config.evaluate_before else {}
    stats = _generation_stats(trainer)
    if stats is not None:
        stats.reset()  # count the switch during fit only, not the validation passes around it
    fit_start = time.perf_counter()
    ckpt_path = getattr(config, step).get("ckpt_path") or ("last" if config.resume else None)
    fit_validation = FitValidation()
    trainer.callbacks.append(fit_validation)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - fit_start
    generation = asdict(stats) if stats is not None and stats.calls else None
    final = fit_validation.final_metrics(trainer)  # fit ended with a validation: not run twice
    after = _metrics([final] if final is not None else trainer.validate(module, datamodule=data, verbose=False), step)
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    result = StepResult(
        step, before, after, fit_seconds, time.perf_counter() - start, str(_export_dir(config, step)), log_dir,
        generation,
    )
    changes = ", ".join(f"{k} {before.get(k, float('nan')):.4g} -> {v:.4g}" for k, v in after.items())
    rank_zero_info(f"pipeline: step {step} done in {result.total_seconds:.0f}s ({changes}); model: {result.model_dir}")
    return result


def run_or_reuse_steps(config: PipelineConfig, steps: Sequence[str], base: Path) -> list[StepResult]:
    """Run the steps, each recording ``<step>/step_result.json``; ``resume`` reuses the finished ones at the start."""
    results: list[StepResult] = []
    reusing = config.resume
    for step in steps:
        record = finished_step_record(Path(config.output_dir) / step, _export_dir(config, step)) if reusing else None
        finished = StepResult(**record) if record is not None else None
        if finished is not None:
            rank_zero_info(f"pipeline: --resume: step {step} finished before; reusing {finished.model_dir}")
            results.append(finished)
            continue
        reusing = False
        if _is_rank_zero():
            keep_previous_export(config, step)
        result = run_step(config, step, base)
        if _is_rank_zero():
            write_step_record(Path(config.output_dir) / step, asdict(result))
        results.append(result)
    return results


def run_pipeline(config: PipelineConfig) -> list[StepResult]:
    """Run ``config.steps`` in order, print the summary and write ``<output_dir>/summary.json``."""
    steps = parse_steps(config.steps)
    if config.num_threads is not None:
        import torch

        torch.set_num_threads(config.num_threads)
    check_sections(config, steps)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = prepare_base_model(config)
    results = run_or_reuse_steps(config, steps, base)
    summary = format_summary(results, config.output_dir)
    if _is_rank_zero():
        print("\n" + summary, flush=True)
        (out / "summary.json").write_text(json.dumps(merge_summary(out / "summary.json", results, STEPS), indent=2))
    return results


def check_sections(config: PipelineConfig, steps: Sequence[str]) -> None:
    """Parse every step's section before anything trains, so a typo in ``ppo.*`` fails before SFT runs."""
    base = Path(config.base_model) if config.base_model is not None else Path(config.output_dir) / "base"
    for step in steps:
        try:
            STAGE_CLIS[step].check_config(step_config(config, step, base, require_exports=False))
        except ValueError as err:
            raise ValueError(f"lightning-rlhf pipeline: the `{step}` section is invalid: {err}. Nothing has been "
                             f"trained; fix the `{step}` section (or its --{step}.* flags) and run again") from None


def keep_previous_export(config: PipelineConfig, step: str) -> Path | None:
    """Move an existing ``<step>/hf/final`` (and ``best``) aside to ``final-vN``; returns where ``final`` went."""
    moved = None
    for name in ("final", "best"):
        current = _export_dir(config, step).parent / name
        if not current.exists():
            continue
        version = 1
        while (current.parent / f"{name}-v{version}").exists():
            version += 1
        target = current.rename(current.parent / f"{name}-v{version}")
        rank_zero_info(f"pipeline: step {step} runs again; its previous {current} is kept as {target}")
        moved = target if name == "final" else moved
    return moved


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lightning-rlhf pipeline",
        description="Run SFT -> reward model -> PPO (or SFT -> DPO), each step's exported model feeding the next. "
        f"Without --config: the built-in tiny CPU run ({DEFAULT_CONFIG.name}).",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="pipeline YAML (default: the built-in tiny run)")
    parser.add_class_arguments(PipelineConfig, as_group=False)
    return parser


SECTIONS = ("data", "sft", "reward", "ppo", "dpo", "grpo")


def split_section_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Take ``--sft.trainer.max_epochs 2`` style flags (values read as YAML) out of ``argv`` as a nested dict.

    jsonargparse would replace a whole free-form section on such a flag; the dict is deep-merged instead.
    """
    import yaml

    rest: list[str] = []
    overrides: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", False, "")
        if key.split(".")[0] not in SECTIONS or "." not in key:
            rest.append(arg)
            continue
        if not has_value:
            if not args:
                raise ValueError(f"lightning-rlhf pipeline: {arg} needs a value")
            value = args.pop(0)
        node = overrides
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return rest, overrides


def pipeline_main(argv: Sequence[str]) -> list[StepResult] | None:
    """Parse ``argv`` (the arguments after ``pipeline``) and run the pipeline."""
    argv, overrides = split_section_overrides(bare_resume_flag(argv))
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    print_config = [a for a in argv if a.split("=")[0] == "--print_config"]
    argv = [a for a in argv if a not in print_config]
    parser = build_parser()
    namespace = parser.parse_args(argv)
    for section, values in overrides.items():  # merged before --print_config, so it shows them
        namespace[section] = deep_merge(namespace[section] or {}, values)
    if print_config:
        print(parser.dump(namespace, skip_none=False), end="")
        raise SystemExit(0)
    init = parser.instantiate_classes(namespace)
    config = PipelineConfig(**{k: init[k] for k in PipelineConfig.__dataclass_fields__})
    return run_pipeline(config)
