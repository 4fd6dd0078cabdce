"""What is learned: the LightningModules of the pipeline steps (SFT, reward, PPO, GRPO, DPO)."""

from lightning_rlhf.modules.dpo import DPOModule
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.grpo import GRPOModule
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.ppo import PPOModule
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule

__all__ = ["DPOModule", "GRPOModule", "GenerationArgs", "OptimizerArgs", "PPOModule", "RewardModule", "SFTModule"]
