"""Generate the configuration reference (docs page ``reference.md``) from the classes' signatures and docstrings.

Run by the mkdocs hook (``docs/hooks.py``) on every ``mkdocs build``, so the page cannot drift from
the code. ``python docs/gen_reference.py`` prints the page.

Each entry documents one class: where it is configured (the YAML section of ``lightning-rlhf``),
its summary, and a table of its arguments (type, default, the ``Args:`` / ``Attributes:`` text).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, NamedTuple

from docstring_parser import parse


class Entry(NamedTuple):
    """One documented class: import path and where users configure it."""

    path: str
    where: str


SECTIONS: list[tuple[str, list[Entry]]] = [
    ("Modules (the `model:` section)", [
        Entry("lightning_rlhf.modules.sft.SFTModule", "`model:` of `lightning-rlhf sft`, pipeline section `sft.model`"),
        Entry("lightning_rlhf.modules.reward.RewardModule",
              "`model:` of `lightning-rlhf reward`, pipeline section `reward.model`"),
        Entry("lightning_rlhf.modules.ppo.PPOModule", "`model:` of `lightning-rlhf ppo`, pipeline section `ppo.model`"),
        Entry("lightning_rlhf.modules.dpo.DPOModule", "`model:` of `lightning-rlhf dpo`, pipeline section `dpo.model`"),
        Entry("lightning_rlhf.modules.grpo.GRPOModule",
              "`model:` of `lightning-rlhf grpo`, pipeline section `grpo.model`"),
    ]),
    ("Nested settings", [
        Entry("lightning_rlhf.modules.optim.OptimizerArgs",
              "`model.optimizer` (SFT, reward, DPO), `model.actor_optimizer` (PPO, GRPO) / `model.critic_optimizer` (PPO)"),
        Entry("lightning_rlhf.models.loading.LoraArgs", "`model.lora` (SFT, reward, DPO), `model.actor_lora` (PPO, GRPO) / "
              "`model.critic_lora` (PPO)"),
        Entry("lightning_rlhf.modules.generation_args.GenerationArgs", "`model.generation` (PPO, GRPO)"),
    ]),
    ("Data (the `data:` section)", [
        Entry("lightning_rlhf.data.RLHFDataModule",
              "`data:` of every step (`stage` and `tokenizer` are set by the command); pipeline section `data`"),
        Entry("lightning_rlhf.data.task.SyntheticTask", "`data.task` (the built-in task when `data.sources` is null)"),
    ]),
    ("Strategy (`trainer.strategy`)", [
        Entry("lightning_rlhf.strategies.HybridDeepSpeedStrategy",
              "`trainer.strategy: hybrid_deepspeed` (a preset name), or `class_path: "
              "lightning_rlhf.strategies.HybridDeepSpeedStrategy` with `init_args`"),
    ]),
    ("Callbacks", [
        Entry("lightning_rlhf.callbacks.export.HFExportCallback", "`export:` of every step (always on)"),
        Entry("lightning_rlhf.callbacks.ema.EMACallback", "`trainer.callbacks` (`class_path` + `init_args`)"),
        Entry("lightning_rlhf.callbacks.samples.SampleLoggingCallback", "`trainer.callbacks`"),
        Entry("lightning_rlhf.callbacks.iteration_checkpoint.IterationCheckpoint", "`trainer.callbacks`"),
    ]),
    ("Pipeline (`lightning-rlhf pipeline`)", [
        Entry("lightning_rlhf.commands.pipeline.PipelineConfig", "top level of the pipeline YAML"),
        Entry("lightning_rlhf.commands.pipeline.TinyModelArgs", "`tiny:` of the pipeline YAML"),
    ]),
]


def load(path: str) -> type:
    """Import ``package.module.Class``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "").replace("|", "\\|")


def _default_text(default: Any) -> str:
    if default is inspect.Parameter.empty or default is dataclasses.MISSING:
        return "required"
    return f"`{default!r}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def constructor_parameters(cls: type) -> list[tuple[inspect.Parameter, type]]:
    """The constructor's parameters with the class whose docstring documents each: a ``**kwargs`` forwarded to
    one of this package's base classes (``PPOModule`` -> ``OnlineRLModule``) stands for the base's parameters not
    named already; forwarded to another package's class (Lightning's ``DeepSpeedStrategy``) it stays one row."""
    params: list[tuple[inspect.Parameter, type]] = []
    owners = [c for c in cls.__mro__ if "__init__" in c.__dict__]
    for index, owner in enumerate(owners):
        taken = {p.name for p, _ in params}
        forwards = None
        for param in inspect.signature(owner.__init__).parameters.values():
            if param.kind == param.VAR_KEYWORD:
                forwards = param
            elif param.name != "self" and param.kind != param.VAR_POSITIONAL and param.name not in taken:
                params.append((param, owner))
        base = owners[index + 1] if index + 1 < len(owners) else None
        if forwards is None or base is None or not base.__module__.startswith("lightning_rlhf"):
            if forwards is not None:
                params.append((forwards, owner))
            break
    return params


def arguments(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` for each constructor argument (or dataclass field) of ``cls``."""
    docs = {p.arg_name: p.description or "" for p in parse(inspect.getdoc(cls) or "").params}
    rows = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            factory = f.default_factory
            default = f.default if factory is dataclasses.MISSING else factory()  # type: ignore[misc]
            rows.append((f.name, _type_text(f.type), _default_text(default), docs.get(f.name, "")))
        return rows
    for param, owner in constructor_parameters(cls):
        if param.kind == param.VAR_KEYWORD:
            rows.append((f"**{param.name}", "", "", docs.get(param.name, "")))
            continue
        owner_docs = docs if owner is cls else {p.arg_name: p.description or ""
                                                for p in parse(inspect.getdoc(owner) or "").params}
        rows.append((param.name, _type_text(param.annotation), _default_text(param.default),
                     owner_docs.get(param.name, "")))
    return rows


def render_class(entry: Entry) -> str:
    """The Markdown of one class: heading, where it is configured, summary, argument table."""
    cls = load(entry.path)
    doc = parse(inspect.getdoc(cls) or "")
    missing = [name for name, _, _, text in arguments(cls) if not text and not name.startswith("**")]
    if missing:
        raise ValueError(f"{entry.path}: arguments without a docstring entry: {missing}")
    lines = [f"### {cls.__name__}", "", f"`{entry.path}`. Configured at: {entry.where}.", ""]
    for part in (doc.short_description, doc.long_description):
        if part:
            lines += [part, ""]
    lines += ["| argument | type | default | description |", "|---|---|---|---|"]
    for name, type_text, default, text in arguments(cls):
        lines.append(f"| `{name}` | {type_text} | {default} | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference page."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the classes' signatures and docstrings on every docs build "
        "(`docs/gen_reference.py`), so it matches the code. Every argument is a YAML key of the section "
        "named under each class, and a command-line flag: `lightning-rlhf ppo fit --model.kl_coef 0.05`. "
        "Nested settings are YAML mappings (`--model.actor_optimizer.learning_rate 1e-5`). "
        "`lightning-rlhf <step> fit --help` lists the same options, and `--print_config` prints a full config "
        "to start from. The `trainer:` section is Lightning's `Trainer` (see its documentation).",
        "",
    ]
    for title, entries in SECTIONS:
        out += [f"## {title}", ""]
        out += [render_class(entry) for entry in entries]
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
