"""Launch a test script on several CPU processes (gloo), as ``torch.distributed.run`` would.

Why a launcher rather than ``mp.spawn`` inside pytest: Lightning and DeepSpeed read the torchelastic
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) exactly as they do in a user's run, and a hung rank is killed
by the timeout instead of freezing the suite. The ranks are forked from a zygote that has the heavy libraries
imported already (``tests.helpers.zygote``: about 27 CPU-seconds of imports saved per 2-rank launch);
``LIGHTNING_RLHF_TEST_LAUNCHER=torchrun`` launches every script with ``torch.distributed.run`` itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tests.helpers.zygote import IMPORT_TIME_ENV, Zygote


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_zygote(env: dict) -> bool:
    """Fork the ranks from the preloaded zygote unless told otherwise or the launch changes import-time state."""
    if os.environ.get("LIGHTNING_RLHF_TEST_LAUNCHER", "zygote") == "torchrun":
        return False
    return not set(env) & set(IMPORT_TIME_ENV)


def run_distributed(
    script: str | Path, *args: str, nprocs: int = 2, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nprocs`` processes; fail the test with both ranks' output if any rank fails."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    repo_root = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, full_env.get("PYTHONPATH")]))
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nprocs}",
        "--master_addr=127.0.0.1", f"--master_port={port}", str(script), *map(str, args),
    ]
    zygote = use_zygote(env or {})
    if zygote:
        proc = Zygote.get(full_env).launch(cmd, str(script), list(map(str, args)), nprocs, full_env, timeout, port)
    else:
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        how = " (ranks forked from the test zygote; LIGHTNING_RLHF_TEST_LAUNCHER=torchrun runs this)" if zygote else ""
        raise AssertionError(
            f"distributed run failed (exit {proc.returncode}): {' '.join(cmd)}{how}\n"
            f"--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    return proc


def run_once(tmp_path_factory, name: str, produce: Callable[[Path], None]) -> Path:
    """``produce(folder)`` once per test session, even when the tests that read ``folder`` run on several
    pytest-xdist workers; returns ``folder``.

    Why: several tests that check the cases of one 2-process launch (each launch pays the start-up of two
    DeepSpeed processes, 30-40 CPU-seconds) share it through a module fixture, but ``--dist load`` may hand them
    to both workers. The first worker to get here runs the launch under a file lock in the session's shared
    temporary folder; the others wait (the launch keeps both cores busy meanwhile) and read what it wrote. A
    launch that fails leaves no ``.done`` marker, so every test that needs it fails with its own error.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <session>/popen-gwN
    folder, done = shared / name, shared / name / ".done"
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            produce(folder)
            done.write_text("ok")
    return folder
