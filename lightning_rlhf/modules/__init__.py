"""What is learned: the LightningModules of the three pipeline steps."""

from lightning_rlhf.modules._common import OptimizerArgs
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule

__all__ = ["OptimizerArgs", "RewardModule", "SFTModule"]
