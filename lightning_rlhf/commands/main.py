"""The ``lightning-rlhf`` command: dispatches to a step's LightningCLI, ``pipeline``, ``generate`` or ``evaluate``
(see USAGE).

``python -m lightning_rlhf.commands`` is the same program, for ``torchrun -m`` and ``deepspeed --module``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, MutableMapping, Sequence

import lightning_rlhf
from lightning_rlhf.commands.log_noise import show_repeated_warnings_once
from lightning_rlhf.commands.stages import STAGE_CLIS

USAGE = """usage: lightning-rlhf {sft,reward,ppo,dpo,grpo,pipeline,generate,evaluate} ... | --version

  sft {fit,validate} [--config FILE] [...]                  step 1: supervised fine-tuning
  reward {fit,validate} [--config FILE] [...]               step 2: reward model
  ppo {fit,validate} [--config FILE] [...]                  step 3: PPO
  dpo {fit,validate} [--config FILE] [...]                  step 2': DPO (and IPO, SLiC, SimPO) on pairs
  grpo {fit,validate} [--config FILE] [...]                 GRPO, DAPO, RLOO, REINFORCE++ with reward functions
  pipeline [--config FILE] [--steps sft,reward,ppo] [...]   steps 1 -> 2 -> 3, each feeding the next
  generate MODEL_DIR [--prompts FILE.jsonl] [...]           answers from an exported model (stdin if no file)
  evaluate MODEL_DIR [...] [--tasks '["TASK", ...]'] [...]  greedy accuracy and pass@k on tasks, per task

Add --help after a command for all its options, e.g. `lightning-rlhf ppo fit --help`.
With no --config, `lightning-rlhf pipeline` runs the built-in tiny task on CPU in a few minutes."""


def adapt_deepspeed_launcher(argv: Sequence[str], environ: MutableMapping[str, str]) -> list[str]:
    """Make a process started by DeepSpeed's launcher look like one Lightning understands.

    Drops the ``--local_rank=N`` it appends (``LOCAL_RANK`` holds it) and sets ``NODE_RANK = RANK // LOCAL_SIZE`` in
    ``environ`` when neither ``NODE_RANK`` nor ``GROUP_RANK`` is set.
    """
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            continue
        elif arg in ("--local_rank", "--local-rank"):
            skip_next = True
        else:
            kept.append(arg)
    if "RANK" in environ and "LOCAL_SIZE" in environ and not ({"NODE_RANK", "GROUP_RANK"} & set(environ)):
        environ["NODE_RANK"] = str(int(environ["RANK"]) // max(1, int(environ["LOCAL_SIZE"])))
    return kept


def main(argv: Sequence[str] | None = None) -> Any:
    """Run a ``lightning-rlhf`` command on ``argv`` (None: ``sys.argv[1:]``); returns the CLI or pipeline results."""
    args = adapt_deepspeed_launcher(list(sys.argv[1:] if argv is None else argv), os.environ)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if args[0] in ("-V", "--version"):
        print(f"lightning-rlhf {lightning_rlhf.__version__}")
        return None
    show_repeated_warnings_once()
    command, rest = args[0], args[1:]
    if command == "pipeline":
        from lightning_rlhf.commands.pipeline import pipeline_main

        return pipeline_main(rest)
    if command == "generate":
        from lightning_rlhf.commands.generate import generate_main

        return generate_main(rest)
    if command == "evaluate":
        from lightning_rlhf.commands.evaluate import evaluate_main

        return evaluate_main(rest)
    if command not in STAGE_CLIS:
        print(USAGE, file=sys.stderr)
        raise SystemExit(f"lightning-rlhf: unknown command {command!r}; choose one of sft, reward, ppo, dpo, grpo, "
                         f"pipeline, generate, evaluate")
    return STAGE_CLIS[command](args=rest)


def console_main() -> None:
    """The console script: :func:`main` without its return value, which the wrapper would pass to ``sys.exit``."""
    main()


if __name__ == "__main__":
    console_main()
