"""The ``lightning-rlhf`` command: one LightningCLI per RLHF step, and the three-step pipeline.

::

    lightning-rlhf sft fit --config sft.yaml          # step 1: SFTModule + PreferenceDataModule
    lightning-rlhf reward fit --config reward.yaml    # step 2: RewardModule
    lightning-rlhf ppo fit --config ppo.yaml          # step 3: PPOModule
    lightning-rlhf dpo fit --config dpo.yaml          # step 2': DPOModule (instead of reward + PPO)
    lightning-rlhf grpo fit --config grpo.yaml        # GRPO and its family with reward functions (no critic)
    lightning-rlhf pipeline [--config pipeline.yaml] [--steps sft,reward,ppo]
    lightning-rlhf generate runs/pipeline/ppo/hf/final [--prompts prompts.jsonl]   # answers, as trained

Each step command is a plain :class:`~lightning.pytorch.cli.LightningCLI` (subcommands ``fit`` and
``validate``; ``--print_config``; every argument of the module, the data module,
the trainer, the strategy and callbacks settable from YAML or flags). On top of LightningCLI it:

- fixes the data module's ``stage`` to the step and feeds it the module's tokenizer (``link_arguments``);
- always adds an :class:`~lightning_rlhf.callbacks.HFExportCallback` (section ``export``), so a run
  ends with a Hugging Face folder at ``<trainer.default_root_dir>/hf/final`` that the next step loads;
- sets trainer defaults that suit a first run on a CPU (one epoch, no sanity validation, frequent logs).

``python -m lightning_rlhf.cli`` is the same program (what ``torchrun -m`` and ``deepspeed --module``
launch). Under DeepSpeed's launcher the ``--local_rank=N`` argument it appends is dropped and the node
rank derived (see :func:`adapt_deepspeed_launcher`).
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, ClassVar, MutableMapping, Sequence

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_rlhf  # noqa: F401  (registers the "hybrid_deepspeed" strategies)
from lightning_rlhf.callbacks.export import HFExportCallback
from lightning_rlhf.data import PreferenceDataModule
from lightning_rlhf.log_noise import show_repeated_warnings_once

USAGE = """usage: lightning-rlhf {sft,reward,ppo,dpo,grpo,pipeline,generate} ... | --version

  sft {fit,validate} [--config FILE] [...]                  step 1: supervised fine-tuning
  reward {fit,validate} [--config FILE] [...]               step 2: reward model
  ppo {fit,validate} [--config FILE] [...]                  step 3: PPO
  dpo {fit,validate} [--config FILE] [...]                  step 2': DPO (and IPO, SLiC, SimPO) on pairs
  grpo {fit,validate} [--config FILE] [...]                 GRPO, DAPO, RLOO, REINFORCE++ with reward functions
  pipeline [--config FILE] [--steps sft,reward,ppo] [...]   steps 1 -> 2 -> 3, each feeding the next
  generate MODEL_DIR [--prompts FILE.jsonl] [...]           answers from an exported model (stdin if no file)

Add --help after a command for all its options, e.g. `lightning-rlhf ppo fit --help`.
With no --config, `lightning-rlhf pipeline` runs the built-in tiny task on CPU in a few minutes."""


def stage_trainer_defaults(stage: str) -> dict[str, Any]:
    """Trainer defaults of one step: logs and exports under ``runs/<stage>``, one epoch, CPU friendly.

    Args:
        stage: ``sft``, ``reward``, ``ppo``, ``dpo`` or ``grpo``.
    """
    return {
        "default_root_dir": f"runs/{stage}",
        "max_epochs": 1,
        "log_every_n_steps": 5,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        # validate-then-fit on one Trainer (what the pipeline does) must not leave metric states as
        # inference tensors, which the validation inside fit (run under no_grad) cannot update
        "inference_mode": False,
    }


def _tokenizer_source(model: Any, tokenizer: Any) -> Any:
    """The data module's tokenizer: the module's explicit tokenizer, else its model folder."""
    return tokenizer if tokenizer is not None else model


class StageCLI(LightningCLI):
    """LightningCLI over one step's module and :class:`~lightning_rlhf.data.PreferenceDataModule`.

    Subclasses set :attr:`stage`, :attr:`model_path_arg` and :meth:`module_class` (and :attr:`data_stage` when
    the step reads another step's batches).

    Args:
        args: command-line arguments (list), or a config ``dict`` / ``Namespace`` (None: ``sys.argv``).
        run: run the subcommand (``fit``, ...) right away; with False, only build the objects.
        parse_only: only parse and check ``args`` (build nothing): see :meth:`check_config`.
        **kwargs: any other :class:`~lightning.pytorch.cli.LightningCLI` argument.
    """

    stage: ClassVar[str] = ""
    data_stage: ClassVar[str | None] = None  # the data module's stage (None: ``stage``)
    model_path_arg: ClassVar[str] = "model"
    export_model_attr: ClassVar[str | None] = None

    def __init__(self, args: Any = None, run: bool = True, parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only
        kwargs.setdefault("trainer_defaults", stage_trainer_defaults(self.stage))
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)  # the modules build their own optimizers
        # prog: the usage and the "run ... --help" tip name a real command (not `lightning-rlhf fit`)
        kwargs.setdefault("parser_kwargs", {"default_env": False, "prog": f"lightning-rlhf {self.stage}"})
        super().__init__(self.module_class(), PreferenceDataModule, args=args, run=run, **kwargs)

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        """The LightningModule of this step."""
        raise NotImplementedError

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the modules define no ``test_step`` / ``predict_step``, so Lightning's
        ``test`` and ``predict`` would fail; answers come from ``lightning-rlhf generate``."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Parse and check a step config (unknown keys, types, the data stage) without building any object.

        Args:
            config: the step's config, as ``args`` takes it.

        Raises:
            ValueError: what is wrong, as jsonargparse words it (an unknown key, a wrong type).
        """
        parser_kwargs = {"default_env": False, "prog": f"lightning-rlhf {cls.stage}", "exit_on_error": False}
        try:
            cls(args=config, run=False, parse_only=True, parser_kwargs=parser_kwargs)
        except ArgumentError as err:
            raise ValueError(str(err)) from None

    def _set_seed(self) -> None:
        if not self.parse_only:  # checking a config seeds nothing (and prints no "Seed set to")
            super()._set_seed()

    def instantiate_classes(self) -> None:
        """Build the objects (nothing when ``parse_only``)."""
        if not self.parse_only:
            super().instantiate_classes()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``export`` callback section, fix ``data.stage`` and link the tokenizer to the data module."""
        parser.add_lightning_class_args(HFExportCallback, "export")
        defaults: dict[str, Any] = {"data.stage": self.batch_stage()}
        if self.export_model_attr is not None:
            defaults["export.model_attr"] = self.export_model_attr
        parser.set_defaults(defaults)
        parser.link_arguments(
            (f"model.{self.model_path_arg}", "model.tokenizer"), "data.tokenizer", compute_fn=_tokenizer_source
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` into ``self.config``, without LightningCLI's warning about ``args`` beside ``sys.argv``.

        ``lightning-rlhf <step> ...`` and the pipeline pass the arguments on purpose, so the warning
        would only confuse users.
        """
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        """Refuse a data ``stage`` that is not this step's (it would feed the wrong batch format); turn
        checkpointing on when the config adds a checkpoint callback (the default is off); refuse a module ``seed``
        that differs from ``data.seed`` before anything is built (Lightning would fail at ``fit``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        stage, wanted = config.data.stage, self.batch_stage()
        if stage != wanted:
            raise ValueError(
                f"`lightning-rlhf {self.stage}` feeds {wanted!r} batches, but data.stage is {stage!r}; "
                f"remove data.stage from the config or set it to {wanted!r}"
            )
        if config.trainer.enable_checkpointing is False and _adds_checkpoint_callback(config.trainer.callbacks):
            config.trainer.enable_checkpointing = True
        if self.module_takes_seed() and config.model.seed != config.data.seed and config.trainer.logger is not False:
            raise ValueError(
                f"`lightning-rlhf {self.stage}`: model.seed is {config.model.seed} but data.seed is "
                f"{config.data.seed}; "
                f"Lightning logs the module's and the data module's hyperparameters together and refuses one name "
                f"with two values, so set both to the same seed (e.g. --model.seed {config.data.seed})"
            )

    @classmethod
    def module_takes_seed(cls) -> bool:
        """Whether the module has a ``seed`` of its own (PPO's mini-batch shuffle); it must equal ``data.seed``."""
        return "seed" in inspect.signature(cls.module_class()).parameters

    @classmethod
    def batch_stage(cls) -> str:
        """The ``PreferenceDataModule`` stage whose batches this step reads."""
        return cls.data_stage or cls.stage


def _adds_checkpoint_callback(callbacks: Any) -> bool:
    """Whether a config's ``trainer.callbacks`` holds a ``ModelCheckpoint`` (or a subclass)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []:
        class_path = getattr(callback, "class_path", None)
        if isinstance(callback, ModelCheckpoint):
            return True
        if isinstance(class_path, str):
            module, _, name = class_path.rpartition(".")
            cls = getattr(__import__(module, fromlist=[name]), name, None)
            if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
                return True
    return False


def _process_count(devices: Any, num_nodes: Any) -> int:
    """Processes a Trainer's ``devices`` x ``num_nodes`` start (``auto`` and ``-1`` count as 1: unknown here)."""
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            count = max(int(devices), 1)
        except (TypeError, ValueError):
            count = 1
    return count * max(int(num_nodes or 1), 1)


class SFTCLI(StageCLI):
    """``lightning-rlhf sft``: :class:`~lightning_rlhf.modules.sft.SFTModule` (step 1)."""

    stage = "sft"
    model_path_arg = "model"

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        from lightning_rlhf.modules.sft import SFTModule

        return SFTModule


class RewardCLI(StageCLI):
    """``lightning-rlhf reward``: :class:`~lightning_rlhf.modules.reward.RewardModule` (step 2)."""

    stage = "reward"
    model_path_arg = "model"

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        from lightning_rlhf.modules.reward import RewardModule

        return RewardModule


class PPOCLI(StageCLI):
    """``lightning-rlhf ppo``: :class:`~lightning_rlhf.modules.ppo.PPOModule` (step 3); exports the actor."""

    stage = "ppo"
    model_path_arg = "actor"
    export_model_attr = "actor"

    def before_instantiate_classes(self) -> None:
        """Also refuse several processes under DDP, which cannot train actor and critic with separate optimizers."""
        super().before_instantiate_classes()
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        strategy = trainer.strategy if isinstance(trainer.strategy, str) else None
        if strategy in ("auto", "ddp", "ddp_spawn") and _process_count(trainer.devices, trainer.num_nodes) > 1:
            raise ValueError(
                f"`lightning-rlhf ppo` on {_process_count(trainer.devices, trainer.num_nodes)} processes needs "
                f"--trainer.strategy hybrid_deepspeed (or a hybrid_deepspeed_* preset): PPO steps the actor and the "
                f"critic with separate optimizers, which DDP (trainer.strategy {strategy!r}) cannot wrap"
            )

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        from lightning_rlhf.modules.ppo import PPOModule

        return PPOModule


class DPOCLI(StageCLI):
    """``lightning-rlhf dpo``: :class:`~lightning_rlhf.modules.dpo.DPOModule` (step 2') on the reward step's pairs."""

    stage = "dpo"
    data_stage = "reward"
    model_path_arg = "model"

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        from lightning_rlhf.modules.dpo import DPOModule

        return DPOModule


class GRPOCLI(StageCLI):
    """``lightning-rlhf grpo``: :class:`~lightning_rlhf.modules.grpo.GRPOModule` on prompt batches; exports the actor."""

    stage = "grpo"
    data_stage = "ppo"
    model_path_arg = "actor"
    export_model_attr = "actor"

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        from lightning_rlhf.modules.grpo import GRPOModule

        return GRPOModule


STAGE_CLIS: dict[str, type[StageCLI]] = {"sft": SFTCLI, "reward": RewardCLI, "ppo": PPOCLI, "dpo": DPOCLI,
                                         "grpo": GRPOCLI}


def adapt_deepspeed_launcher(argv: Sequence[str], environ: MutableMapping[str, str]) -> list[str]:
    """Make a process started by DeepSpeed's launcher look like one Lightning understands.

    DeepSpeed's launcher appends ``--local_rank=N`` to every process's arguments (LightningCLI would
    reject it; ``LOCAL_RANK`` holds the same value) and sets ``RANK``, ``LOCAL_SIZE`` but no node rank,
    which Lightning reads from ``NODE_RANK``. Drops the argument and sets ``NODE_RANK = RANK // LOCAL_SIZE``
    when neither ``NODE_RANK`` nor ``GROUP_RANK`` is set.

    Args:
        argv: the command-line arguments after the program name.
        environ: the environment to complete (``os.environ``).

    Returns:
        ``argv`` without ``--local_rank`` arguments.
    """
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            continue
        elif arg in ("--local_rank", "--local-rank"):
            skip_next = True
        else:
            kept.append(arg)
    if "RANK" in environ and "LOCAL_SIZE" in environ and not ({"NODE_RANK", "GROUP_RANK"} & set(environ)):
        environ["NODE_RANK"] = str(int(environ["RANK"]) // max(1, int(environ["LOCAL_SIZE"])))
    return kept


def main(argv: Sequence[str] | None = None) -> Any:
    """Run a ``lightning-rlhf`` command (what the console script calls; tests call it to get the result).

    Args:
        argv: arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        The stage CLI object, or the pipeline's summary for ``pipeline``.
    """
    args = adapt_deepspeed_launcher(list(sys.argv[1:] if argv is None else argv), os.environ)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if args[0] in ("-V", "--version"):
        print(f"lightning-rlhf {lightning_rlhf.__version__}")
        return None
    show_repeated_warnings_once()
    command, rest = args[0], args[1:]
    if command == "pipeline":
        from lightning_rlhf.pipeline import pipeline_main

        return pipeline_main(rest)
    if command == "generate":
        from lightning_rlhf.generate import generate_main

        return generate_main(rest)
    if command not in STAGE_CLIS:
        print(USAGE, file=sys.stderr)
        raise SystemExit(f"lightning-rlhf: unknown command {command!r}; choose one of sft, reward, ppo, dpo, grpo, "
                         f"pipeline, generate")
    return STAGE_CLIS[command](args=rest)


def console_main() -> None:
    """The ``lightning-rlhf`` console script: :func:`main` without its return value, which a console-script
    wrapper would hand to ``sys.exit`` (printing it and exiting with status 1)."""
    main()


if __name__ == "__main__":
    console_main()
