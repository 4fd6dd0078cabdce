"""The step commands ``lightning-rlhf sft|reward|ppo|dpo|grpo``: one LightningCLI per RLHF step.

Beyond LightningCLI: ``data.stage`` is fixed to the step and fed the module's tokenizer, and an ``export`` section
always writes ``<trainer.default_root_dir>/hf/final`` for the next step.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_rlhf.callbacks.export import HFExportCallback
from lightning_rlhf.data import RLHFDataModule


def stage_trainer_defaults(stage: str) -> dict[str, Any]:
    """Trainer defaults of one step: logs and exports under ``runs/<stage>``, one epoch, CPU friendly."""
    return {
        "default_root_dir": f"runs/{stage}",
        "max_epochs": 1,
        "log_every_n_steps": 5,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        # validate-then-fit on one Trainer: no inference-tensor metric states that fit's validation cannot update
        "inference_mode": False,
    }


def _tokenizer_source(model: Any, tokenizer: Any) -> Any:
    return tokenizer if tokenizer is not None else model


class StageCLI(LightningCLI):
    """LightningCLI over one step's module and :class:`~lightning_rlhf.data.RLHFDataModule`; subclasses set the step.

    Args:
        args: command-line arguments (list), or a config ``dict`` / ``Namespace`` (None: ``sys.argv``).
        run: run the subcommand (``fit``, ...) right away; with False, only build the objects.
        parse_only: only parse and check ``args`` (build nothing): see :meth:`check_config`.
        **kwargs: any other :class:`~lightning.pytorch.cli.LightningCLI` argument.
    """

    stage: ClassVar[str] = ""
    module_path: ClassVar[str] = ""  # ``package.module.Class`` of the step's LightningModule
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
        super().__init__(self.module_class(), RLHFDataModule, args=args, run=run, **kwargs)

    @classmethod
    def module_class(cls) -> type[LightningModule]:
        """The step's LightningModule, imported from :attr:`module_path` on first use."""
        module, _, name = cls.module_path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the modules have no test or predict step (answers: ``generate``)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Parse and check a step config without building anything; raises ValueError naming what is wrong."""
        parser_kwargs = {"default_env": False, "prog": f"lightning-rlhf {cls.stage}", "exit_on_error": False}
        try:
            cls(args=config, run=False, parse_only=True, parser_kwargs=parser_kwargs)
        except ArgumentError as err:
            raise ValueError(str(err)) from None

    def _set_seed(self) -> None:
        if not self.parse_only:  # checking a config seeds nothing (and prints no "Seed set to")
            super()._set_seed()

    def instantiate_classes(self) -> None:
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
        """Parse ``args`` without LightningCLI's warning about ``args`` beside ``sys.argv`` (passed on purpose)."""
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        """Refuse a wrong ``data.stage`` or ``model.seed``; turn checkpointing on for a checkpoint callback."""
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
        """Whether the module has a ``seed`` of its own (the online modules' mini-batch shuffle), declared by the
        class or a base of this package it forwards ``**kwargs`` to."""
        return any("seed" in inspect.signature(owner.__init__).parameters for owner in cls.module_class().__mro__
                   if "__init__" in owner.__dict__ and owner.__module__.startswith("lightning_rlhf"))

    @classmethod
    def batch_stage(cls) -> str:
        return cls.data_stage or cls.stage


class OnlineStageCLI(StageCLI):
    """A step that trains an actor on its own samples from prompt batches, and exports the actor."""

    data_stage = "rl"
    model_path_arg = "actor"
    export_model_attr = "actor"


def _adds_checkpoint_callback(callbacks: Any) -> bool:
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
    """Processes a Trainer's ``devices`` x ``num_nodes`` start (``auto`` and ``-1`` count as 1)."""
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
    module_path = "lightning_rlhf.modules.sft.SFTModule"


class RewardCLI(StageCLI):
    """``lightning-rlhf reward``: :class:`~lightning_rlhf.modules.reward.RewardModule` (step 2)."""

    stage = "reward"
    module_path = "lightning_rlhf.modules.reward.RewardModule"


class PPOCLI(OnlineStageCLI):
    """``lightning-rlhf ppo``: :class:`~lightning_rlhf.modules.ppo.PPOModule` (step 3)."""

    stage = "ppo"
    module_path = "lightning_rlhf.modules.ppo.PPOModule"

    def before_instantiate_classes(self) -> None:
        """Also refuse several DDP processes: DDP cannot wrap the actor's and critic's separate optimizers."""
        super().before_instantiate_classes()
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        strategy = trainer.strategy if isinstance(trainer.strategy, str) else None
        if strategy in ("auto", "ddp", "ddp_spawn") and _process_count(trainer.devices, trainer.num_nodes) > 1:
            raise ValueError(
                f"`lightning-rlhf ppo` on {_process_count(trainer.devices, trainer.num_nodes)} processes needs "
                f"--trainer.strategy hybrid_deepspeed (or a hybrid_deepspeed_* preset): PPO steps the actor and the "
                f"critic with separate optimizers, which DDP (trainer.strategy {strategy!r}) cannot wrap"
            )


class DPOCLI(StageCLI):
    """``lightning-rlhf dpo``: :class:`~lightning_rlhf.modules.dpo.DPOModule` (step 2') on the reward step's pairs."""

    stage = "dpo"
    module_path = "lightning_rlhf.modules.dpo.DPOModule"
    data_stage = "reward"


class GRPOCLI(OnlineStageCLI):
    """``lightning-rlhf grpo``: :class:`~lightning_rlhf.modules.grpo.GRPOModule` (GRPO and its family)."""

    stage = "grpo"
    module_path = "lightning_rlhf.modules.grpo.GRPOModule"


STAGE_CLIS: dict[str, type[StageCLI]] = {"sft": SFTCLI, "reward": RewardCLI, "ppo": PPOCLI, "dpo": DPOCLI,
                                         "grpo": GRPOCLI}
