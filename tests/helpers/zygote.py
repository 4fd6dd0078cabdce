"""Start the ranks of a test script by forking a process that has already imported the heavy libraries.

Why: every 2-rank launch through ``torch.distributed.run`` starts three interpreters (the agent and two ranks),
and each rank spends ~12 CPU-seconds importing torch, Lightning, DeepSpeed, transformers and this package
before the test does anything: about 27 CPU-seconds per launch (measured on a 2-core machine; with this and
two smaller cuts the suite's CPU time fell from 73 to 41 minutes). A zygote imports them once per pytest worker
and forks the ranks from that state: each rank is still its own process with its own gloo connection and the
torchelastic environment a real launch gives it (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, TORCHELASTIC_RUN_ID,
...), so Lightning and DeepSpeed see what they see under ``torchrun``; only the imports are shared. As ``torchrun``
does, a failing rank ends the others and a launch past its timeout is killed.

Not for launches whose environment changes what those imports decided (``DS_ACCELERATOR``,
``OMP_NUM_THREADS``, ...): ``tests.helpers.distributed.run_distributed`` sends those to ``torchrun``, as it does
for every launch when ``LIGHTNING_RLHF_TEST_LAUNCHER=torchrun``.

Protocol: the client writes one JSON request per line to the zygote's stdin and reads one JSON reply per line
from its stdout; the ranks write their output to files, never to that pipe.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Environment variables whose value the preloaded libraries read at import time.
IMPORT_TIME_ENV = ("DS_ACCELERATOR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                   "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PYTHONPATH")
PRELOAD = ("torch", "torch.distributed", "lightning.pytorch", "deepspeed", "transformers", "peft",
           "lightning_rlhf.modules", "lightning_rlhf.strategies", "lightning_rlhf.commands.main",
           # imported by every ZeRO optimizer's init (DeepSpeed 0.19), pulling in torch.compile's machinery
           "deepspeed.runtime.zero.muon.muon_optimizer")
GRACE_AFTER_FAILURE = 5.0


def import_time_env(env: dict[str, str]) -> dict[str, str | None]:
    """The part of ``env`` the preloaded imports depend on: a zygote serves only launches that agree on it."""
    return {key: env.get(key) for key in IMPORT_TIME_ENV}


class Zygote:
    """Client side: one zygote process per pytest worker, started on first use and stopped at exit."""

    _instance: "Zygote | None" = None

    def __init__(self, env: dict[str, str]) -> None:
        self.env = import_time_env(env)
        repo_root = str(Path(__file__).resolve().parents[2])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.zygote"], cwd=repo_root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        atexit.register(self.close)

    @classmethod
    def get(cls, env: dict[str, str]) -> "Zygote":
        """The running zygote if it was started with the same import-time environment, else a new one."""
        current = cls._instance
        if current is None or current.proc.poll() is not None or current.env != import_time_env(env):
            if current is not None:
                current.close()
            cls._instance = cls(env)
        return cls._instance

    def launch(self, cmd: list[str], script: str, args: list[str], nprocs: int, env: dict[str, str],
               timeout: float, port: int) -> subprocess.CompletedProcess:
        request = {"script": script, "args": args, "nprocs": nprocs, "env": env, "timeout": timeout,
                   "port": port, "cwd": os.getcwd()}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the test zygote died; rerun with LIGHTNING_RLHF_TEST_LAUNCHER=torchrun to see why")
        reply = json.loads(line)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(cmd, timeout, output=reply["stdout"], stderr=reply["stderr"])
        return subprocess.CompletedProcess(cmd, reply["returncode"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _run_rank(request: dict, rank: int, run_id: str, out: Path, err: Path) -> None:
    """In the forked child: become rank ``rank`` of a torchelastic launch and run the script as ``__main__``."""
    import atexit as child_atexit
    import runpy
    import traceback

    os.setpgrp()  # the zygote kills the rank and whatever it started as one group
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the zygote's request pipe
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        os.dup2(fout.fileno(), 1)
        os.dup2(ferr.fileno(), 2)
    nprocs = request["nprocs"]
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
        "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(nprocs),
        "ROLE_NAME": "default", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(request["port"]),
        "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "False", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"})
    os.chdir(request["cwd"])
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path.insert(0, str(Path(script).resolve().parent))
    code: int = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        child_atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _launch(request: dict, counter: int) -> dict:
    """Fork the ranks, wait for them (ending the others when one fails, everything at the timeout)."""
    import shutil
    import tempfile

    # the ranks' output files, read back below; not a TemporaryDirectory, whose exit hook a rank would run
    folder = Path(tempfile.mkdtemp(prefix="zygote-"))
    try:
        return _launch_in(request, f"zygote-{os.getpid()}-{counter}", folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _launch_in(request: dict, run_id: str, folder: Path) -> dict:
    pids, files = [], []
    for rank in range(request["nprocs"]):
        out, err = folder / f"rank{rank}.out", folder / f"rank{rank}.err"
        files.append((out, err))
        pid = os.fork()
        if pid == 0:
            try:
                _run_rank(request, rank, run_id, out, err)
            finally:
                os._exit(1)  # a rank that failed before its own exit never returns into the zygote's loop
        pids.append(pid)
    codes: dict[int, int] = {}
    deadline = time.monotonic() + request["timeout"]
    failed_at = None
    timed_out = False
    while len(codes) < len(pids):
        for pid in pids:
            if pid in codes:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
                if codes[pid] != 0 and failed_at is None:
                    failed_at = time.monotonic()
        if len(codes) == len(pids):
            break
        now = time.monotonic()
        if now > deadline or (failed_at is not None and now - failed_at > GRACE_AFTER_FAILURE):
            timed_out = now > deadline
            _kill([pid for pid in pids if pid not in codes])
            for pid in pids:
                if pid not in codes:
                    codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            break
        time.sleep(0.05)
    _kill(pids)  # whatever a rank left running in its group
    stdout = "".join(out.read_text(errors="replace") for out, _ in files)
    stderr = "".join(err.read_text(errors="replace") for _, err in files)
    failures = [code for code in (codes[pid] for pid in pids) if code != 0]
    return {"returncode": failures[0] if failures else 0, "stdout": stdout, "stderr": stderr,
            "timed_out": timed_out}


def serve() -> None:
    """Zygote side: import once, then fork the ranks of each request read from stdin."""
    import importlib

    protocol = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # nothing an import prints can corrupt the protocol
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # another release of a dependency: the ranks import it themselves
            pass
    for counter, line in enumerate(sys.stdin):
        reply = _launch(json.loads(line), counter)
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


if __name__ == "__main__":
    serve()
