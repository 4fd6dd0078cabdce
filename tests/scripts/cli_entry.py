"""``lightning-rlhf`` as a script path, for launchers that start a file (``torch.distributed.run``)."""

from lightning_rlhf.commands.main import console_main

if __name__ == "__main__":
    console_main()
