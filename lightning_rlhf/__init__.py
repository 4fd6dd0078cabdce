"""lightning-rlhf: the InstructGPT / DeepSpeed-Chat pipeline for PyTorch Lightning.

Importing the package registers the ``"hybrid_deepspeed"`` strategy presets with Lightning's
strategy registry, so ``Trainer(strategy="hybrid_deepspeed")`` works after ``import lightning_rlhf``.
"""

__version__ = "0.1.0"

import logging


def _drop_deepspeed_cpu_notice(record: logging.LogRecord) -> bool:
    """Drop DeepSpeed's "Setting accelerator to CPU" warning, printed to stdout by every process on import.

    Why: transformers and accelerate import DeepSpeed whenever it is installed, so on a CPU machine every rank
    of every command prints it, and it lands in the YAML that ``--print_config`` writes to stdout. Where the
    accelerator is CPU on purpose it is noise. DeepSpeed's other messages are kept.
    """
    return "Setting accelerator to CPU" not in record.getMessage()


logging.getLogger("DeepSpeed").addFilter(_drop_deepspeed_cpu_notice)

from lightning_rlhf.strategies import HybridDeepSpeedStrategy, register_strategies  # noqa: E402

register_strategies()

__all__ = ["HybridDeepSpeedStrategy", "__version__"]
