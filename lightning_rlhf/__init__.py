"""lightning-rlhf: the InstructGPT / DeepSpeed-Chat pipeline for PyTorch Lightning.

Importing the package registers the ``"hybrid_deepspeed"`` strategy presets with Lightning's
strategy registry, so ``Trainer(strategy="hybrid_deepspeed")`` works after ``import lightning_rlhf``.
"""

__version__ = "0.1.0"

from lightning_rlhf.strategies import HybridDeepSpeedStrategy, register_strategies

register_strategies()

__all__ = ["HybridDeepSpeedStrategy", "__version__"]
