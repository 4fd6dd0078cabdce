"""lightning-rlhf: the InstructGPT / DeepSpeed-Chat pipeline for PyTorch Lightning.

Importing the package registers the ``"hybrid_deepspeed"`` strategy presets with Lightning's
strategy registry, so ``Trainer(strategy="hybrid_deepspeed")`` works after ``import lightning_rlhf``.
"""

__version__ = "0.1.0"

try:  # the strategy lands with issue 2; the rest of the package must import without it
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy, register_strategies

    register_strategies()
except ImportError as _err:  # pragma: no cover - only while the strategy is missing
    if "lightning_rlhf.strategies" not in str(_err) and "HybridDeepSpeedStrategy" not in str(_err):
        raise
