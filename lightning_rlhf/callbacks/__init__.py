"""Callbacks shared by every step: HF export, EMA of weights, sample logging, checkpoints by iteration, and the
generation engine's check."""

from lightning_rlhf.callbacks.iteration_checkpoint import IterationCheckpoint
from lightning_rlhf.callbacks.ema import EMACallback
from lightning_rlhf.callbacks.engine_check import GenerationEngineCheck
from lightning_rlhf.callbacks.export import HFExportCallback
from lightning_rlhf.callbacks.samples import SampleLoggingCallback

__all__ = ["EMACallback", "GenerationEngineCheck", "HFExportCallback", "IterationCheckpoint", "SampleLoggingCallback"]
