"""``python -m lightning_rlhf.commands``: ``lightning-rlhf`` for ``torchrun -m`` and ``deepspeed --module``."""

from lightning_rlhf.commands.main import console_main

if __name__ == "__main__":
    console_main()
