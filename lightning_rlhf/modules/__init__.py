"""What is learned: the LightningModules of the pipeline steps (SFT, reward, PPO, DPO)."""

from lightning_rlhf.modules._common import OptimizerArgs
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule

__all__ = ["OptimizerArgs", "RewardModule", "SFTModule"]

from lightning_rlhf.modules.ppo import GenerationArgs, PPOModule  # noqa: E402  (PPO exports)

__all__ += ["GenerationArgs", "PPOModule"]

from lightning_rlhf.modules.dpo import DPOModule  # noqa: E402

__all__ += ["DPOModule"]
