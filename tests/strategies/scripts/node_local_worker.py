"""One rank of a 2-node run whose checkpoint folder is node-local on node 1 (the test masks it with a tmpfs in a
mount namespace of its own). Usage: node_local_worker.py OUTDIR; writes OUTDIR/result-rank<R>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rlhf.strategies import HybridDeepSpeedStrategy

sys.path.insert(0, str(Path(__file__).parent))
from strategy_worker import Regressor, loader  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["NODE_RANK"])
    trainer = Trainer(strategy=HybridDeepSpeedStrategy(stage=2, process_group_timeout_s=60), accelerator="cpu",
                      devices=1, num_nodes=2, max_steps=4, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(out),
                      callbacks=[ModelCheckpoint(dirpath=str(out / "ckpts"), every_n_train_steps=2)])
    result = {"error": None}
    try:
        trainer.fit(Regressor(), loader(2))
    except RuntimeError as err:
        result["error"] = str(err)
    result["saved"] = sorted(p.name for p in (out / "ckpts").iterdir())
    (out / f"result-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
