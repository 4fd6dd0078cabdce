"""DPO on CPU, side by side: our ``DPOModule`` (Lightning, one process) vs TRL's ``DPOTrainer`` (latest release).

Run from the repository root; TRL may live in its own environment (``--trl-python``; ``<trl-venv>`` is that
environment's folder, made as benchmarks/README.md describes)::

    python benchmarks/dpo_vs_trl.py --trl-python <trl-venv>/bin/python        # tiny Llama (default)
    python benchmarks/dpo_vs_trl.py --model checkpoints/smollm2-135m-instruct ...     # a real model folder
    python benchmarks/dpo_vs_trl.py --steps 2 --repeats 1 --hidden 32 --layers 2 --vocab 320  # smoke

Both systems get the same policy folder (by default a randomly initialised tiny Llama with a tokenizer trained
on the HH-RLHF file's dialogues), the same preference pairs as token ids (HH-RLHF harmless-base when the file
is present, else the built-in task; prompts cut to their last ``--max-prompt`` tokens, responses to their first
``--max-response`` tokens ending in EOS), in the same order (no shuffling), the same batch of pairs, steps
and DPO settings: ``sigmoid`` loss, ``beta`` 0.1, summed response log-probs, a frozen reference copy of the
policy run every step, AdamW (0.9, 0.999), no weight decay, a linear decay to 0, no gradient clipping,
dropout off, float32 without gradient checkpointing (TRL's ``DPOConfig`` defaults to bf16 autocast and
gradient checkpointing, on CPU too: both are turned off, and the TRL run reports what its trainer used). TRL
receives the token ids as they are (its ``_prepare_dataset``, which tokenizes text, is passed through and its
sampler is sequential), so neither side tokenizes or truncates during the run.

Each measurement runs in a fresh interpreter with ``--threads`` threads; the systems take turns, the order
alternating per repeat, so load changes on a shared machine hit them alike; the throughput ratio is reported
per repeat and as the median. Time is the training loop only (Lightning's ``on_train_start`` to
``on_train_end``, TRL's ``on_train_begin`` to ``on_train_end``; models already loaded). Both record the loss
and ``rewards/accuracies`` of every step; their means over repeats are drawn to a PNG (same model, data and
order: the curves should lie on top of each other).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HH_RLHF, TRL_FP32_NO_RECOMPUTE, add_comparison_arguments, chosen_systems, corpus_texts, interleaved_runs, machine,
    median, report_result, set_threads, trl_effective_settings,
)

SYSTEMS = ("ours", "trl")
RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"ours": "lightning-rlhf DPOModule", "trl": "TRL DPOTrainer"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a Hugging Face causal-LM folder (default: build a tiny Llama)")
    p.add_argument("--layers", type=int, default=4, help="tiny Llama: blocks")
    p.add_argument("--hidden", type=int, default=128, help="tiny Llama: width")
    p.add_argument("--heads", type=int, default=4, help="tiny Llama: attention heads")
    p.add_argument("--vocab", type=int, default=2500, help="tiny Llama: tokenizer size")
    p.add_argument("--max-prompt", type=int, default=64, help="prompt tokens kept (the last ones)")
    p.add_argument("--max-response", type=int, default=32, help="response tokens kept (the first ones, EOS last)")
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per run")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (linear decay to 0)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--no-packed-linears", action="store_true", help="ours: DPOModule(packed_linears=False), the "
                   "frozen reference's linear layers on PyTorch's own GEMM")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per system")
    add_comparison_arguments(p, SYSTEMS, RESULTS / "dpo_vs_trl.json", RESULTS / "dpo_vs_trl.png",
                             "trl's DPOTrainer")
    return p.parse_args(argv)


# -- assets (built once, in this interpreter) -----------------------------------------------------------------
def preference_texts(count: int) -> list[dict[str, str]]:
    """``count`` records with ``prompt``, ``chosen``, ``rejected``: HH-RLHF when present, else the built-in task."""
    if HH_RLHF.is_file():
        from lightning_rlhf.data.sources import load_records

        records, _ = load_records(str(HH_RLHF), "hh_rlhf", on_bad_record="skip")
    else:
        from lightning_rlhf.data.task import SyntheticTask

        records = SyntheticTask(seed=0).records(count)
    if len(records) < count:
        raise ValueError(f"--steps x --batch asks for {count} pairs, but only {len(records)} exist")
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records[:count]]


def tokenize_pairs(tokenizer: Any, records: list[dict[str, str]], max_prompt: int,
                   max_response: int) -> list[list[list[int]]]:
    """``[prompt_ids, chosen_ids, rejected_ids]`` per record: the prompt's last tokens, each response's first
    ``max_response - 1`` tokens and EOS."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eos = tokenizer.eos_token_id
    return [[ids(r["prompt"])[-max_prompt:], ids(r["chosen"])[: max_response - 1] + [eos],
             ids(r["rejected"])[: max_response - 1] + [eos]] for r in records]


def build_assets(args: argparse.Namespace, root: Path) -> Path:
    """The policy folder (``--model`` or a tiny Llama), its tokenizer, and the pairs; written to ``assets.json``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error(), hf_logging.disable_progress_bar()
    if args.model is None:
        from lightning_rlhf.models.tiny import save_tiny_model, train_tokenizer

        tokenizer = train_tokenizer(corpus_texts(), vocab_size=args.vocab)
        policy = str(save_tiny_model(root / "policy", "llama", tokenizer, head="causal_lm", seed=0,
                                     hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                                     max_positions=args.max_prompt + args.max_response + 8))
    else:
        policy = args.model
        tokenizer = AutoTokenizer.from_pretrained(policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = tokenize_pairs(tokenizer, preference_texts(args.steps * args.batch), args.max_prompt,
                           args.max_response)
    params = AutoModelForCausalLM.from_pretrained(policy).num_parameters()
    tokens = sum(len(p) * 2 + len(c) + len(r) for p, c, r in pairs)
    path = root / "assets.json"
    path.write_text(json.dumps({"policy": policy, "pad_id": pad_id, "pairs": pairs, "params": params,
                                "tokens": tokens}))
    return path


# -- workers (one measurement in a fresh interpreter) ---------------------------------------------------------
def worker_ours(args: argparse.Namespace, assets: dict[str, Any]) -> dict[str, Any]:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader

    from lightning_rlhf.data.collate import RewardCollator
    from lightning_rlhf.modules import DPOModule, OptimizerArgs

    class Recorder(Callback):
        def __init__(self) -> None:
            self.start = self.end = self.cpu_start = self.cpu_end = self.step_start = None
            self.steps: list[float] = []
            self.curves: dict[str, list[float]] = {"loss": [], "accuracy": []}

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_batch_start(self, *a: Any) -> None:
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *a: Any) -> None:
            self.steps.append(time.perf_counter() - self.step_start)
            self.curves["loss"].append(float(trainer.callback_metrics["train/loss"]))
            self.curves["accuracy"].append(float(trainer.callback_metrics["train/rewards/accuracies"]))

        def on_train_end(self, *a: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    seed_everything(0, verbose=False)
    examples = [{"chosen_input_ids": p + c, "rejected_input_ids": p + r, "prompt_length": len(p)}
                for p, c, r in assets["pairs"]]
    loader = DataLoader(examples, batch_size=args.batch, shuffle=False, collate_fn=RewardCollator(assets["pad_id"]))
    module = DPOModule(assets["policy"], loss_type="sigmoid", beta=args.beta, dropout=0.0,
                       optimizer=OptimizerArgs(learning_rate=args.lr, betas=(0.9, 0.999), scheduler="linear"),
                       packed_linears=not args.no_packed_linears)
    recorder = Recorder()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, log_every_n_steps=1, callbacks=[recorder])
    trainer.fit(module, train_dataloaders=loader)
    torch.set_grad_enabled(True)
    return {"loop_s": recorder.end - recorder.start, "loop_cpu_s": recorder.cpu_end - recorder.cpu_start,
            "step_s": recorder.steps, **recorder.curves}


def worker_trl(args: argparse.Namespace, assets: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    class TokenIdsDPOTrainer(DPOTrainer):
        """DPOTrainer fed token ids as they are, in order (the same ids and order as our side)."""

        def _prepare_dataset(self, dataset: Any, *a: Any, **k: Any) -> Any:
            return dataset

        def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
            return SequentialSampler(self.train_dataset)

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = self.cpu_start = self.cpu_end = self.step_start = None
            self.steps: list[float] = []
            self.curves: dict[str, list[float]] = {"loss": [], "accuracy": []}

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.step_start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.steps.append(time.perf_counter() - self.step_start)

        def on_log(self, args_: Any, state: Any, control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "rewards/accuracies" in logs:
                self.curves["loss"].append(float(logs["loss"]))
                self.curves["accuracy"].append(float(logs["rewards/accuracies"]))

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    pairs = assets["pairs"]
    dataset = Dataset.from_dict({"prompt_ids": [p for p, _, _ in pairs], "chosen_ids": [c for _, c, _ in pairs],
                                 "rejected_ids": [r for _, _, r in pairs]})
    tokenizer = AutoTokenizer.from_pretrained(assets["policy"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = assets["pad_id"]
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"), report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=0.0, beta=args.beta, loss_type=["sigmoid"],
        max_length=None, precompute_ref_log_probs=False, disable_dropout=True, use_cpu=True,
        dataloader_num_workers=0, **TRL_FP32_NO_RECOMPUTE,
    )
    recorder = Recorder()
    trainer = TokenIdsDPOTrainer(model=AutoModelForCausalLM.from_pretrained(assets["policy"]),
                                 ref_model=AutoModelForCausalLM.from_pretrained(assets["policy"]), args=config,
                                 train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder])
    trainer.remove_callback(PrinterCallback), trainer.remove_callback(ProgressCallback)
    torch.manual_seed(0)
    trainer.train()
    return {"loop_s": recorder.end - recorder.start, "loop_cpu_s": recorder.cpu_end - recorder.cpu_start,
            "step_s": recorder.steps, "settings": trl_effective_settings(trainer), **recorder.curves}


def worker_main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    assets = json.loads(Path(args.assets).read_text())
    result = worker_ours(args, assets) if args.worker == "ours" else worker_trl(args, assets)
    pairs = args.steps * args.batch
    report_result({"system": args.worker, "pairs": pairs, "pairs_per_s": pairs / result["loop_s"],
                   "step_pairs_per_s": args.batch / median(result["step_s"]), **result})


def trl_unavailable(python: str) -> str | None:
    """None when ``python`` imports TRL's DPOTrainer, else the reason it does not."""
    proc = subprocess.run([python, "-c", "import trl; from trl import DPOConfig, DPOTrainer; print(trl.__version__)"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["unknown error"])[-1]


def trl_version(python: str) -> str:
    return subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                          text=True).stdout.strip()


# -- the comparison ------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, assets: Path, systems: list[str], save: Any) -> list[dict[str, Any]]:
    """Every (repeat, system) run, the order alternating per repeat; ``save(runs)`` after every run."""
    common = ["--assets", str(assets), "--threads", str(args.threads), "--steps", str(args.steps), "--batch",
              str(args.batch), "--lr", str(args.lr), "--beta", str(args.beta),
              *(["--no-packed-linears"] if args.no_packed_linears else [])]
    return interleaved_runs(Path(__file__).resolve(), systems, args.repeats, common, args.trl_python, save,
                            lambda run: f"{run['pairs_per_s']:7.2f} pairs/s ({run['pairs'] / run['loop_cpu_s']:.2f} "
                                        f"per CPU-s), final loss {run['loss'][-1]:.4f}")


def report(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """Print pairs/s per system, the per-repeat ratios ours / TRL and their median; return the numbers."""
    by = {s: {r["repeat"]: r for r in runs if r["system"] == s} for s in systems}
    summary: dict[str, Any] = {}
    for system in systems:
        rates = [r["pairs_per_s"] for r in by[system].values()]
        if not rates:
            continue
        summary[system] = median(rates)
        step_rates = median([r["step_pairs_per_s"] for r in by[system].values()])
        print(f"{system:<5} pairs/s median {median(rates):7.2f}  runs " + " ".join(f"{x:.2f}" for x in rates)
              + f"  | per-step median {step_rates:.2f} | per CPU-s "
              + f"{median([r['pairs'] / r['loop_cpu_s'] for r in by[system].values()]):.2f}")
    pairs = [(by["ours"][i], by["trl"][i]) for i in sorted(by.get("ours", {})) if i in by.get("trl", {})]
    if pairs:
        ratios = [a["pairs_per_s"] / b["pairs_per_s"] for a, b in pairs]
        cpu = [b["loop_cpu_s"] / a["loop_cpu_s"] for a, b in pairs]
        summary.update(ratio=median(ratios), cpu_ratio=median(cpu))
        print("ratio ours / trl per pair " + " ".join(f"{x:.2f}" for x in ratios)
              + f"  median {median(ratios):.2f}x  (CPU time: {median(cpu):.2f}x)")
        gap = max(abs(x - y) for a, b in pairs for x, y in zip(a["loss"], b["loss"]))
        summary["max_loss_gap"] = gap
        print(f"largest per-step loss difference ours vs trl (same repeat): {gap:.2e}")
    for system in systems:
        curves = [r for r in by[system].values()]
        if curves:
            print(f"{system:<5} loss first {curves[0]['loss'][0]:.4f} last "
                  f"{median([c['loss'][-1] for c in curves]):.4f}  accuracy last "
                  f"{median([c['accuracy'][-1] for c in curves]):.3f}")
    return summary


def plot(runs: list[dict[str, Any]], systems: list[str], path: Path, title: str) -> None:
    """Loss and ``rewards/accuracies`` per step (mean over repeats), one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in zip(axes, ("loss", "accuracy"), ("DPO loss", "rewards/accuracies (batch)")):
        for system, style in zip(systems, ("-", "--")):
            curves = [r[key] for r in runs if r["system"] == system]
            if curves:
                mean = [sum(c[i] for c in curves) / len(curves) for i in range(min(map(len, curves)))]
                ax.plot(range(1, len(mean) + 1), mean, style, label=NAMES[system])
        ax.set(xlabel="optimizer step", ylabel=label, title=title if key == "loss" else "")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"curves: {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return worker_main(args)
    systems = chosen_systems(args.systems, SYSTEMS)
    if args.report_only:
        saved = json.loads(args.out.read_text())
        print(f"{saved['date']} | {saved['machine']} | trl {saved['trl']}\nargs: {' '.join(saved['argv'])}")
        report(saved["runs"], systems)
        return plot(saved["runs"], systems, args.plot, saved["title"])
    missing = trl_unavailable(args.trl_python) if "trl" in systems else None
    if missing:
        print(f"TRL skipped: {args.trl_python} cannot import trl's DPOTrainer ({missing}); pass --trl-python")
        systems = [s for s in systems if s != "trl"]
    version = trl_version(args.trl_python) if "trl" in systems else None
    started, host = time.strftime("%Y-%m-%d %H:%M"), machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dpo-vs-trl-") as tmp:
        assets_path = build_assets(args, Path(tmp))
        assets = json.loads(assets_path.read_text())
        model = args.model or f"tiny Llama {args.layers} layers, hidden {args.hidden}"
        title = f"{model} ({assets['params'] / 1e6:.2f}M), batch {args.batch}"
        print(f"{started} | {host} | trl {version}\n{model}: {assets['params'] / 1e6:.2f}M parameters; "
              f"{args.steps * args.batch} pairs ({'HH-RLHF' if HH_RLHF.is_file() else 'built-in task'}, "
              f"{assets['tokens'] / (args.steps * args.batch):.0f} tokens per pair, prompt <= {args.max_prompt}, "
              f"responses <= {args.max_response}), batch {args.batch}, {args.steps} steps, {args.threads} threads, "
              f"{args.repeats} interleaved repeats")

        def save(runs: list[dict[str, Any]]) -> None:
            args.out.write_text(json.dumps({"date": started, "machine": host, "trl": version, "argv": sys.argv[1:],
                                            "title": title, "params": assets["params"], "runs": runs}, indent=1))

        runs = measure(args, assets_path, systems, save)
    report(runs, systems)
    plot(runs, systems, args.plot, title)


if __name__ == "__main__":
    main()
