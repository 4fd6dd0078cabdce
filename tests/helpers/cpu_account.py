"""Per-test CPU seconds of the whole process tree, for deciding what to cut when the suite is too slow.

Wall-clock durations (``--durations``) mislead on 2 cores: a test that waits on a timeout looks as long as one
that keeps both cores busy. With ``LIGHTNING_RLHF_TEST_CPU_LOG=FILE`` each test (setup, call and teardown)
appends one JSON line ``{"test", "wall_s", "cpu_s"}`` to FILE, where ``cpu_s`` counts the pytest worker itself,
every child it waited for (``torchrun``, console scripts) and the test zygote with the ranks it forked and
reaped (``/proc/<zygote>/stat``: utime, stime, cutime, cstime). Summarise with
``python -m tests.helpers.cpu_account FILE``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

ENV = "LIGHTNING_RLHF_TEST_CPU_LOG"
TICK = os.sysconf("SC_CLK_TCK")


def _zygote_cpu() -> float:
    from tests.helpers.zygote import Zygote

    zygote = Zygote._instance
    if zygote is None or zygote.proc.poll() is not None:
        return 0.0
    try:
        fields = Path(f"/proc/{zygote.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / TICK  # utime stime cutime cstime


def tree_cpu() -> float:
    """CPU seconds used so far by this process, its reaped children and the test zygote's tree."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + _zygote_cpu()


def _plugin(path: str):
    """The pytest plugin: each test's whole protocol (setup, call, teardown) timed, one JSON line appended."""
    import pytest

    class _Plugin:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            start_wall, start_cpu = time.monotonic(), tree_cpu()
            yield
            record = {"test": item.nodeid, "wall_s": round(time.monotonic() - start_wall, 2),
                      "cpu_s": round(tree_cpu() - start_cpu, 2)}
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")

    return _Plugin()


def register(config) -> None:
    """Add the plugin when ``LIGHTNING_RLHF_TEST_CPU_LOG`` names a file."""
    path = os.environ.get(ENV)
    if path:
        config.pluginmanager.register(_plugin(path), "lightning_rlhf_cpu_account")


def summary(path: str, top: int = 40) -> str:
    """The total and the ``top`` tests by CPU-seconds, from a log written by the plugin."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: -r["cpu_s"])
    total = sum(r["cpu_s"] for r in records)
    lines = [f"{len(records)} tests, {total:.0f} CPU-s in all, {sum(r['wall_s'] for r in records):.0f} test-wall-s"]
    lines += [f"{r['cpu_s']:8.1f} {r['wall_s']:8.1f}  {r['test']}" for r in records[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))
