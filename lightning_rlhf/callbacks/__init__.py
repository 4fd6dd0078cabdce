"""Callbacks shared by every step: HF export, EMA of weights, sample logging, checkpoints by iteration."""

from lightning_rlhf.callbacks.iteration_checkpoint import IterationCheckpoint
from lightning_rlhf.callbacks.ema import EMACallback
from lightning_rlhf.callbacks.export import HFExportCallback
from lightning_rlhf.callbacks.samples import SampleLoggingCallback

__all__ = ["EMACallback", "HFExportCallback", "IterationCheckpoint", "SampleLoggingCallback"]
