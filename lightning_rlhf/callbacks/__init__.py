"""Callbacks shared by every step: HF export, EMA of weights, sample logging."""

from lightning_rlhf.callbacks.ema import EMACallback
from lightning_rlhf.callbacks.export import HFExportCallback
from lightning_rlhf.callbacks.samples import SampleLoggingCallback

__all__ = ["EMACallback", "HFExportCallback", "SampleLoggingCallback"]
