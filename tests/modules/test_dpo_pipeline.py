"""DPO's learning claim on the built-in task: tokenizer -> tiny llama -> SFT -> DPO lifts held-out task success.

The same run as ``PYTHONPATH=. python tests/modules/scripts/dpo_pipeline.py OUTDIR`` (prints every number).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.scripts import load_script
from tests.helpers.seeds import SEEDS, SeededRuns, median_clears

SCRIPT = Path(__file__).parent / "scripts" / "dpo_pipeline.py"

#: thresholds set from the measured seed spread (see the test's docstring)
MIN_SUCCESS_LIFT = 0.1
MIN_PAIR_ACCURACY = 0.75


@pytest.mark.slow
def test_dpo_lifts_heldout_task_success_above_sft(tmp_path):
    """SFT once (its own claim is tested in test_sft), then DPO from that start on three seeds (each seed its own
    split of the pairs and order); greedy answers to the held-out prompts are checked by the task.

    Measured (2-core machine shared with other jobs, 2026-12-01; SFT 8 epochs, DPO 40 steps of 32 pairs, lr 3e-4,
    beta 0.5): SFT success 0.433; after DPO 0.700 / 0.633 / 0.667 (lifts +0.27 / +0.20 / +0.23, median +0.23);
    held-out pair accuracy 0.867 / 0.860 / 0.847. The thresholds are half the worst seed's lift and 0.1 under
    its accuracy. At beta 0.1, lr 1e-4 the lifts were +0.20 / +0.23 / +0.17.
    """
    script = load_script(SCRIPT)
    sft = script.run_sft(tmp_path)
    runs = SeededRuns(lambda seed: script.run_dpo(sft, tmp_path / f"seed{seed}", seed))
    before = runs[SEEDS[0]]["success_before"]
    print(f"held-out task success of the SFT policy: {before:.3f}")
    assert median_clears("DPO lift of held-out task success",
                         lambda seed: runs[seed]["success_after"] - runs[seed]["success_before"], MIN_SUCCESS_LIFT)
    assert median_clears("held-out implicit-reward accuracy after DPO",
                         lambda seed: runs[seed]["val"]["val/rewards/accuracies"], MIN_PAIR_ACCURACY)
    for seed, run in runs.done.items():
        assert run["val"]["val/rewards/margins"] > 0, f"seed {seed}: chosen not above rejected on held-out pairs"
        assert (tmp_path / f"seed{seed}" / "dpo" / "final" / "model.safetensors").exists()
