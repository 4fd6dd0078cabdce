"""The suite's own helpers decide what they claim to decide."""

from __future__ import annotations

import itertools
import statistics

import pytest

from tests.helpers.seeds import SeededRuns, median_clears


@pytest.mark.parametrize("strict", [False, True])
def test_median_clears_decides_the_median_of_three_exactly_and_skips_a_seed_that_cannot_change_it(strict, capsys):
    for values in itertools.product([0.0, 1.0, 2.0], repeat=3):
        asked = []
        runs = SeededRuns(lambda seed: asked.append(seed) or values[seed])
        median = statistics.median(values)
        assert median_clears("claim", lambda s: runs[s], 1.0, strict=strict) == (median > 1.0 if strict else median >= 1.0)
        first_two_agree = (values[0] > 1.0 if strict else values[0] >= 1.0) == (
            values[1] > 1.0 if strict else values[1] >= 1.0)
        assert asked == ([0, 1] if first_two_agree else [0, 1, 2]), values
        assert sorted(runs.done) == asked and runs[0] == values[0] and asked.count(0) == 1  # memoised
    assert "not needed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="odd number of seeds"):
        median_clears("claim", float, 1.0, seeds=(0, 1))


def run_inner_pytest(tmp_path, source: str, **env: str):
    """Run ``source`` as a test file in a fresh pytest session that loads this suite's ``tests/conftest.py`` as a
    plugin, in ``tmp_path``; returns the finished process (its output as text)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "test_inner.py").write_text(source)
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           str(tmp_path / "test_inner.py")], cwd=tmp_path,
                          env={**os.environ, **env, "PYTHONPATH": str(repo)}, capture_output=True, text=True)


def test_cpu_log_counts_the_cpu_of_a_child_process_each_test_waits_for(tmp_path):
    import json

    log = tmp_path / "cpu.jsonl"
    burn = "subprocess.run([sys.executable, '-c', 'sum(i * i for i in range(40_000_000))'], check=True)"
    proc = run_inner_pytest(tmp_path, "import subprocess, sys\n"
                                      "def test_idle():\n    pass\n"
                                      f"def test_child_burns():\n    {burn}\n",
                            LIGHTNING_RLHF_TEST_CPU_LOG=str(log))
    assert proc.returncode == 0, proc.stdout[-2000:]
    records = {r["test"].rsplit("::", 1)[1]: r for r in map(json.loads, log.read_text().splitlines())}
    assert set(records) == {"test_idle", "test_child_burns"}
    assert records["test_child_burns"]["cpu_s"] > 0.8 > records["test_idle"]["cpu_s"]  # the burn is well above 0.8 CPU-s


def test_a_process_group_one_test_leaves_initialised_is_gone_before_the_next(tmp_path):
    proc = run_inner_pytest(tmp_path, "import torch.distributed as dist\n"
                                      "def test_leaves_a_group():\n"
                                      f"    dist.init_process_group('gloo', init_method='file://{tmp_path / 'rdv'}',"
                                      " rank=0, world_size=1)\n"
                                      "def test_sees_none():\n    assert not dist.is_initialized()\n")
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-2000:]


def test_the_environment_is_byte_compiled_so_no_interpreter_compiles_its_imports_again():
    """``scripts/setup_env.sh`` byte-compiles the environment: where ``PYTHONDONTWRITEBYTECODE`` is set (CI
    sandboxes set it), a module without its ``.pyc`` is compiled from source by every interpreter that imports it,
    and ``import lightning_rlhf.modules`` cost 25 CPU-seconds instead of 8.5."""
    import importlib
    import importlib.util
    from pathlib import Path

    names = ["torch", "torch._dynamo.symbolic_convert", "lightning", "lightning.pytorch.trainer.trainer",
             "transformers.modeling_utils", "deepspeed.runtime.engine", "peft", "lightning_rlhf.modules.ppo"]
    missing = [name for name in names
               if not Path(importlib.util.cache_from_source(importlib.import_module(name).__file__)).is_file()]
    assert not missing, f"no bytecode for {missing}: run bash scripts/setup_env.sh"
