"""What the PPO benchmarks share: tiny models and prompts on disk, a loop timer, our PPO run, statistics.

Why one place: ``ppo_vs_trl.py`` and ``ppo_deepspeed_chat_config.py`` build the same kind of assets
(a locally trained tokenizer, randomly initialised policy / critic / reward folders, fixed prompt token
ids) and time ``PPOModule`` the same way (training loop only, from the first training batch to the end of
``fit``, model loading excluded).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


def shared_data_dir() -> Path:
    """``$LIGHTNING_RLHF_SHARED_DATA`` when set, else the shared folder beside the checkout (``<repo>/../shared/data``).

    The same computation as ``tests/helpers/shared_data.py`` (benchmarks do not import test code).
    """
    override = os.environ.get("LIGHTNING_RLHF_SHARED_DATA")
    return Path(override).expanduser() if override else Path(__file__).resolve().parents[2] / "shared" / "data"


#: the HH-RLHF harmless-base test sample; the benchmarks fall back to the built-in task when it is missing
HH_RLHF = shared_data_dir() / "hh-rlhf-harmless-base-test-a.jsonl.gz"


# -- assets ---------------------------------------------------------------------------------------------
@dataclass
class Assets:
    """Folders and prompts every system of one benchmark reads (written by :func:`build_assets`)."""

    tokenizer: str
    actor: str
    critic: str
    reward_model: str
    prompts: list[list[int]]
    params: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> "Assets":
        return cls(**json.loads(Path(path).read_text()))


def corpus_texts(path: Path = HH_RLHF, limit: int = 2000) -> list[str]:
    """Texts to train the tokenizer and draw prompts from: HH-RLHF dialogues when present, else the built-in task."""
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return [json.loads(line)["chosen"].strip() for line, _ in zip(handle, range(limit))]
    from lightning_rlhf.data.task import SyntheticTask

    records = SyntheticTask(seed=0).records(limit)
    # several records per line so prompts of 8+ tokens exist
    return [" ".join(r["prompt"] + r["chosen"] for r in records[i : i + 4]) for i in range(0, len(records), 4)]


def sample_prompts(tokenizer: Any, texts: Sequence[str], count: int, min_len: int, max_len: int,
                   seed: int = 0) -> list[list[int]]:
    """``count`` prompt token-id lists with lengths drawn uniformly from ``[min_len, max_len]`` (text prefixes)."""
    rng = random.Random(seed)
    prompts: list[list[int]] = []
    pool = [ids for ids in (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts) if len(ids) >= min_len]
    if not pool:
        raise ValueError(f"no corpus text has {min_len}+ tokens to cut prompts from")
    while len(prompts) < count:
        ids = pool[len(prompts) % len(pool)]
        prompts.append(ids[: rng.randint(min_len, min(max_len, len(ids)))])
    return prompts


def build_assets(root: Path, family: str, vocab_size: int, num_prompts: int, prompt_len: tuple[int, int],
                 seed: int = 0, **sizes: int) -> Assets:
    """Tokenizer, policy (seed), critic (seed + 2) and reward model (seed + 1) folders, and the prompts."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from lightning_rlhf.models.tiny import save_tiny_model, train_tokenizer

    hf_logging.set_verbosity_error(), hf_logging.disable_progress_bar()

    root.mkdir(parents=True, exist_ok=True)
    texts = corpus_texts()
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    paths = {
        "actor": save_tiny_model(root / "actor", family, tokenizer, head="causal_lm", seed=seed, **sizes),
        "reward_model": save_tiny_model(root / "reward", family, tokenizer, head="value", seed=seed + 1, **sizes),
        "critic": save_tiny_model(root / "critic", family, tokenizer, head="value", seed=seed + 2, **sizes),
    }
    params = {"actor": AutoModelForCausalLM.from_pretrained(paths["actor"]).num_parameters(),
              "critic": AutoModelForSequenceClassification.from_pretrained(paths["critic"]).num_parameters(),
              "backbone": AutoModel.from_pretrained(paths["actor"]).num_parameters(),
              "vocab": len(tokenizer)}
    prompts = sample_prompts(tokenizer, texts, num_prompts, *prompt_len, seed=seed)
    assets = Assets(str(paths["actor"]), str(paths["actor"]), str(paths["critic"]), str(paths["reward_model"]),
                    prompts, params)
    assets.save(root / "assets.json")
    return assets


# -- our side -------------------------------------------------------------------------------------------
def collate_prompts(rows: list[list[int]], pad_id: int) -> dict[str, Any]:
    """One PPO prompt batch: ``prompt_input_ids``/``prompt_attention_mask`` left-padded, empty ``prompts`` texts."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return {"prompt_input_ids": ids, "prompt_attention_mask": mask, "prompts": [""] * len(rows)}


def prompt_loader(prompts: list[list[int]], pad_id: int, batch_size: int, seed: int = 0) -> Any:
    """A shuffled DataLoader of PPO prompt batches (see :func:`collate_prompts`)."""
    import functools

    import torch
    from torch.utils.data import DataLoader

    return DataLoader(prompts, batch_size=batch_size, shuffle=True, drop_last=True,
                      collate_fn=functools.partial(collate_prompts, pad_id=pad_id),
                      generator=torch.Generator().manual_seed(seed))


#: the curves :func:`loop_timer` keeps for PPO
PPO_TIMER_KEYS = ("ppo/score_mean", "ppo/reward_mean", "time/generation_s", "time/training_s", "ppo/response_length")


def loop_timer(keys: Sequence[str] = PPO_TIMER_KEYS) -> Any:
    """A Lightning callback timing the training loop (first training batch to the end of ``fit``).

    It keeps, per iteration, the step seconds and the logged values of ``keys`` (PPO's score, reward,
    generation / training seconds and response length by default); and the process CPU seconds of the loop
    (all threads), a measure of work that load from other processes barely changes.
    """
    from lightning.pytorch import Callback

    class LoopTimer(Callback):
        def __init__(self) -> None:
            self.start = self.end = self.step_start = self.cpu_start = self.cpu_end = None
            self.steps: list[float] = []
            self.metrics: dict[str, list[float]] = {k: [] for k in keys}

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.step_start = time.perf_counter()
            if self.start is None:
                self.start, self.cpu_start = self.step_start, time.process_time()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.steps.append(time.perf_counter() - self.step_start)
            for k in keys:
                self.metrics[k].append(float(trainer.callback_metrics[k]))

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    return LoopTimer()


def run_ours(assets: Assets, module_kwargs: dict[str, Any], batch_size: int, steps: int,
             strategy: Any = "auto", precision: str = "32-true", seed: int = 0) -> dict[str, Any]:
    """Train ``PPOModule`` for ``steps`` PPO iterations of ``batch_size`` prompts; time the loop.

    Returns episodes/s over the loop, the median per-step episodes/s, the generation / training /
    rest (scoring, advantages, Lightning) split in seconds, and the per-step curves.
    """
    import torch
    from lightning.pytorch import Trainer, seed_everything

    from lightning_rlhf.modules.ppo import PPOModule

    seed_everything(seed, verbose=False)
    module = PPOModule(actor=assets.actor, critic=assets.critic, reward_model=assets.reward_model,
                       tokenizer=assets.tokenizer, num_samples_to_log=0, **module_kwargs)
    loader = prompt_loader(assets.prompts, module.tokenizer.pad_token_id, batch_size, seed)
    timer = loop_timer()
    trainer = Trainer(accelerator="cpu", devices=1, strategy=strategy, precision=precision, max_epochs=1,
                      limit_train_batches=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    loop_s = timer.end - timer.start
    episodes = batch_size * len(timer.steps)
    generation_s, training_s = sum(timer.metrics["time/generation_s"]), sum(timer.metrics["time/training_s"])
    del trainer, module
    torch.set_grad_enabled(True)
    return {"episodes": episodes, "loop_s": loop_s, "episodes_per_s": episodes / loop_s,
            "loop_cpu_s": timer.cpu_end - timer.cpu_start, "step_episodes_per_s": batch_size / statistics.median(timer.steps),
            "generation_s": generation_s, "training_s": training_s, "other_s": loop_s - generation_s - training_s,
            "scores": timer.metrics["ppo/score_mean"], "response_length": timer.metrics["ppo/response_length"]}


def trl_unavailable(python: str) -> str | None:
    """None when ``python`` imports trl 1.12.0's PPO trainer, else the reason it does not."""
    code = "import trl, trl.experimental.ppo; assert trl.__version__ == '1.12.0', trl.__version__"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True,
                          env={"TRL_EXPERIMENTAL_SILENCE": "1", "PATH": "/usr/bin:/bin"})
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["unknown error"])[-1]


# TRL's configs (DPOConfig, GRPOConfig, 1.12's PPOConfig) default to bf16 autocast and gradient checkpointing,
# both on CPU too; our side runs fp32 without recomputation. Every TRL side of a comparison passes these, and
# reports what its trainer ended up with (``trl_effective_settings``), so a changed default cannot slip in.
TRL_FP32_NO_RECOMPUTE = {"bf16": False, "fp16": False, "gradient_checkpointing": False}


def trl_effective_settings(trainer: Any) -> dict[str, Any]:
    """What a TRL trainer actually runs with: its accelerator's mixed precision (the autocast it wraps the model's
    forward in: ``"no"``, ``"bf16"`` or ``"fp16"``) and whether the model recomputes activations."""
    models = [trainer.model, getattr(trainer.model, "base_model", None), getattr(trainer.model, "policy", None)]
    return {"mixed_precision": str(trainer.accelerator.mixed_precision),
            "gradient_checkpointing": any(bool(getattr(m, "is_gradient_checkpointing", False)) for m in models if m)}


def timed(function: Any, totals: dict[str, float], key: str = "s") -> Any:
    """``function`` wrapped so that every call adds its wall seconds to ``totals[key]`` (a peer's generation time)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def save_figure(fig: Any, path: Path, what: str) -> None:
    """Write ``fig`` to ``path`` (folders made) and say where ``what`` went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"{what}: {path}")


def add_comparison_arguments(parser: Any, systems: Sequence[str], out: Path, plot: Path, trl_python: str) -> None:
    """The arguments every side-by-side script shares (each adds its own ``--repeats``): threads, systems, TRL's
    interpreter, outputs, and the hidden ones of a worker (one measurement in a fresh interpreter)."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(systems), help="which systems to run")
    parser.add_argument("--trl-python", default=sys.executable,
                        help=f"interpreter with {trl_python} for the TRL workers")
    parser.add_argument("--out", type=Path, default=out, help="JSON of every run")
    parser.add_argument("--plot", type=Path, default=plot)
    parser.add_argument("--report-only", action="store_true", help="print the report and redraw the PNG from --out")
    parser.add_argument("--worker", choices=systems, help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)


# -- processes and statistics ---------------------------------------------------------------------------
def interleaved_runs(script: Path, systems: Sequence[str], repeats: int, worker_args: list[str], trl_python: str,
                     save: Callable[[list[dict[str, Any]]], None],
                     describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Every (repeat, system) run of ``script --worker SYSTEM *worker_args`` in a fresh interpreter (TRL's
    systems in ``trl_python``), the order alternating per repeat; ``save(runs)`` and one printed line
    (``describe(run)``) after every run, so a comparison cut short keeps its complete pairs."""
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for system in (list(systems) if repeat % 2 == 0 else list(systems)[::-1]):
            python = trl_python if system.startswith("trl") else sys.executable
            runs.append({**run_worker(script, ["--worker", system, *worker_args], python), "repeat": repeat})
            save(runs)
            print(f"  repeat={repeat} {system:<5} {describe(runs[-1])}", flush=True)
    return runs


def chosen_systems(spec: str, known: Sequence[str]) -> list[str]:
    """The systems of a comma-separated ``--systems`` value, refusing unknown names."""
    systems = [s for s in spec.split(",") if s]
    unknown = sorted(set(systems) - set(known))
    if unknown:
        raise SystemExit(f"--systems: unknown {unknown}; choose from {tuple(known)}")
    return systems



def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (set before heavy imports via the environment, and in torch)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


RESULT_FILE_ENV = "LIGHTNING_RLHF_BENCH_RESULT"


def run_worker(script: Path, args: list[str], python: str | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh interpreter and return the JSON object it reports.

    The worker hands its result over in a file (``report_result``), not on stdout: a worker that runs a several-rank
    Lightning fit has every rank execute the worker's code (Lightning's launcher starts the other ranks by running
    the same command again), so stdout carries one result per rank, and two long lines written at once can
    interleave into one that is not JSON (a CI run failed on exactly that)."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        result_file = Path(folder) / "result.json"
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
               RESULT_FILE_ENV: str(result_file)}
        proc = subprocess.run([python or sys.executable, str(script), *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if proc.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"worker {script.name} {' '.join(args)} failed (exit {proc.returncode}"
                               f"{'' if proc.returncode else ', no result reported'}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return json.loads(result_file.read_text())


def report_result(result: dict[str, Any]) -> None:
    """A worker's last act, on the first rank only: print ``result`` as JSON and write it where ``run_worker``
    reads it (the file named by ``$LIGHTNING_RLHF_BENCH_RESULT``; written whole, then renamed into place).

    The rank is ``LOCAL_RANK`` before ``RANK``: Lightning's launcher starts the other ranks with ``LOCAL_RANK`` set
    and the parent's environment otherwise, so a ``RANK=0`` already in that environment (left by an earlier
    in-process DeepSpeed run, as in the test suite) would make every rank the first one."""
    if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) != 0:
        return
    text = json.dumps(result)
    print(text, flush=True)
    target = os.environ.get(RESULT_FILE_ENV)
    if target:
        partial = Path(f"{target}.partial")
        partial.write_text(text)
        partial.replace(target)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def machine() -> str:
    """One line describing this machine: CPU model, cores, load, torch version."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f}, torch {torch.__version__}"
