"""Each rank reports which rank the pipeline and the warning filter think it is, with ``RANK=0`` in every rank's
environment, as a rank started by Lightning's launcher after an earlier DeepSpeed step in the same pipeline has it."""

import os
import sys

import torch.distributed as dist

from lightning_rlhf.commands import pipeline
from lightning_rlhf.commands.ranks import process_rank

dist.init_process_group("gloo")
os.environ["RANK"] = "0"
out = sys.argv[1]
with open(f"{out}.{dist.get_rank()}", "w") as f:
    f.write(f"{process_rank()} {int(pipeline._is_rank_zero())}")
dist.barrier()
dist.destroy_process_group()
