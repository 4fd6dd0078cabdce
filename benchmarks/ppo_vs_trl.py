"""PPO on CPU, side by side: our ``PPOModule`` (Lightning, one process) vs TRL 1.12.0's PPO trainer.

Run from the repository root, in an environment with the ``bench`` extra (``trl==1.12.0``, matplotlib)::

    python benchmarks/ppo_vs_trl.py                       # full comparison (see benchmarks/README.md)
    python benchmarks/ppo_vs_trl.py --steps 2 --repeats 1 --epochs 1 --hidden 32 --layers 2  # smoke

Both systems get the same tiny Llama policy, critic and reward model (randomly initialised, saved with
``save_pretrained``), the same prompt token ids, response length, batch size (one mini-batch), PPO epochs,
PPO constants (KL 0.05 k1, clip 0.2/0.2, gamma 1, lambda 0.95, whitened advantages, no reward whitening,
no gradient clipping, AdamW (0.9, 0.999) with a linear decay, sampling at temperature 1) and the same number
of PPO steps. Each measurement runs in a fresh interpreter with ``torch.set_num_threads`` threads, and the
systems take turns (the order alternates per repeat), so load changes on a shared machine hit them alike;
the ratio is reported per repeat and as the median.

Systems: ``ours`` (PPOModule, single-device strategy), ``trl`` (as shipped) and ``trl-compute`` (TRL with
the ``gc.collect()`` calls of its PPO loop made no-ops, patched in ``trl.experimental.ppo.ppo_trainer``'s
namespace only). Time is the training loop only: first training batch to the end of training, models
already loaded. The rewards (mean reward-model score per PPO step) of both are drawn to a PNG.

Quality mode, ``--task addition`` (implemented in ``benchmarks/quality.py``, which takes the remaining
arguments): an SFT policy and a *trained* reward model from our pipeline's steps 1-2 on the built-in addition
task, then PPO in both systems over several seeds, with per-step reward curves and the held-out task
success of the final policies (``python benchmarks/ppo_vs_trl.py --task addition --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TRL_FP32_NO_RECOMPUTE, Assets, add_comparison_arguments, build_assets, machine, median, report_result, run_ours,
    run_worker, set_threads, timed, trl_effective_settings, trl_unavailable,
)

SYSTEMS = ("ours", "trl", "trl-compute")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["none", "addition"], default="none",
                   help="addition: the quality comparison on the built-in task (see benchmarks/quality.py)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2500, help="tokenizer size (2500 gives a 1.3M-parameter policy)")
    p.add_argument("--prompts", type=int, default=256, help="prompts per run (episodes = prompts)")
    p.add_argument("--min-prompt", type=int, default=8)
    p.add_argument("--max-prompt", type=int, default=15)
    p.add_argument("--response", type=int, default=16, help="response length in tokens")
    p.add_argument("--batch", type=int, default=8, help="prompts per PPO step (one mini-batch)")
    p.add_argument("--steps", type=int, default=None, help="PPO steps per run (default: prompts / batch)")
    p.add_argument("--epochs", default="1,4", help="PPO epochs settings, comma-separated")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate of policy and critic (both systems)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per system and setting")
    add_comparison_arguments(p, SYSTEMS, RESULTS / "ppo_vs_trl.json", RESULTS / "ppo_vs_trl.png", "trl==1.12.0")
    p.add_argument("--ppo-epochs", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- workers (one measurement in a fresh interpreter) ---------------------------------------------------------
def worker_ours(args: argparse.Namespace, assets: Assets) -> dict[str, Any]:
    from lightning_rlhf.modules.optim import OptimizerArgs
    from lightning_rlhf.modules.generation_args import GenerationArgs

    optimizer = OptimizerArgs(learning_rate=args.lr, betas=(0.9, 0.999), scheduler="linear")
    kwargs = dict(actor_optimizer=optimizer, critic_optimizer=optimizer, max_grad_norm=None,
                  generation=GenerationArgs(max_new_tokens=args.response, do_sample=True, temperature=1.0),
                  train_batch_size=args.batch, update_epochs=args.ppo_epochs, kl_coef=0.05, kl_estimator="k1",
                  clip_range=0.2, clip_range_value=0.2, gamma=1.0, lam=0.95, whiten_advantages=True,
                  clip_reward_value=1e6, missing_eos_penalty=0.0)
    return run_ours(assets, kwargs, args.batch, args.steps)


def worker_trl(args: argparse.Namespace, assets: Assets, compute_only: bool) -> dict[str, Any]:
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    if compute_only:  # only TRL's PPO loop sees the no-op; the interpreter's gc module is untouched
        trl_ppo.gc = types.SimpleNamespace(collect=lambda *a, **k: 0)
    generation = {"s": 0.0}
    trl_ppo.batch_generation = timed(trl_ppo.batch_generation, generation)

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = self.cpu_start = self.cpu_end = None
            self.scores: list[float] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_log(self, args_: Any, state: Any, control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "objective/scores" in logs:
                self.scores.append(float(logs["objective/scores"]))

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer, padding_side="left")
    dataset = Dataset.from_dict({"input_ids": assets.prompts[: args.steps * args.batch]})
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-ppo-"), report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        num_mini_batches=1, num_ppo_epochs=args.ppo_epochs, total_episodes=args.steps * args.batch,
        response_length=args.response, temperature=1.0, stop_token="eos", learning_rate=args.lr,
        lr_scheduler_type="linear", kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
        gamma=1.0, lam=0.95, whiten_rewards=False, num_sample_generations=0, use_cpu=True,
        dataloader_num_workers=0, **TRL_FP32_NO_RECOMPUTE,
    )
    recorder = Recorder()
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=AutoModelForCausalLM.from_pretrained(assets.actor),
        ref_model=AutoModelForCausalLM.from_pretrained(assets.actor),
        reward_model=AutoModelForSequenceClassification.from_pretrained(assets.reward_model),
        value_model=AutoModelForSequenceClassification.from_pretrained(assets.critic),
        train_dataset=dataset, eval_dataset=dataset, callbacks=[recorder],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback), trainer.remove_callback(ProgressCallback)  # no per-step printing
    torch.manual_seed(0)
    trainer.train()
    loop_s = recorder.end - recorder.start
    episodes = args.steps * args.batch
    return {"episodes": episodes, "loop_s": loop_s, "episodes_per_s": episodes / loop_s,
            "loop_cpu_s": recorder.cpu_end - recorder.cpu_start, "generation_s": generation["s"],
            "scores": recorder.scores, "settings": trl_effective_settings(trainer)}


def worker_main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    assets = Assets.load(args.assets)
    if args.worker == "ours":
        result = worker_ours(args, assets)
    else:
        result = worker_trl(args, assets, compute_only=args.worker == "trl-compute")
    report_result({"system": args.worker, "ppo_epochs": args.ppo_epochs, **result})


# -- the comparison ------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, assets_path: Path, systems: list[str], save: Any) -> list[dict[str, Any]]:
    """Every (repeat, PPO epochs, system) run, systems interleaved with the order alternating per repeat.

    Repeats are the outer loop and ``save(runs)`` is called after every run, so a run cut short still
    leaves complete pairs of every setting on disk.
    """
    script, runs = Path(__file__).resolve(), []
    common = ["--assets", str(assets_path), "--threads", str(args.threads), "--steps", str(args.steps),
              "--batch", str(args.batch), "--response", str(args.response), "--lr", str(args.lr)]
    for repeat in range(args.repeats):
        for epochs in map(int, args.epochs.split(",")):
            for system in (systems if repeat % 2 == 0 else systems[::-1]):
                python = args.trl_python if system.startswith("trl") else sys.executable
                run = run_worker(script, ["--worker", system, "--ppo-epochs", str(epochs), *common], python)
                run["repeat"] = repeat
                runs.append(run)
                save(runs)
                print(f"  repeat={repeat} epochs={epochs} {system:<12} {run['episodes_per_s']:7.2f} episodes/s "
                      f"({run['episodes'] / run['loop_cpu_s']:.2f} per CPU-s)", flush=True)
    return runs


def report(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """Print episodes/s per system, the per-repeat ratios ours / TRL and their medians, and the time split."""
    summary: dict[str, Any] = {}
    for epochs in sorted({r["ppo_epochs"] for r in runs}):
        by = {s: {r["repeat"]: r for r in runs if r["system"] == s and r["ppo_epochs"] == epochs} for s in systems}
        print(f"\nPPO epochs = {epochs}")
        row: dict[str, Any] = {}
        for system in systems:
            eps = [r["episodes_per_s"] for r in by[system].values()]
            if not eps:
                continue
            row[system] = median(eps)
            print(f"{system:<12} episodes/s median {median(eps):7.2f}  runs " + " ".join(f"{e:.2f}" for e in eps)
                  + f"  | per CPU-s {median([r['episodes'] / r['loop_cpu_s'] for r in by[system].values()]):.2f}")
        if by.get("ours"):
            ours = list(by["ours"].values())
            gen, train, other = (median([r[k] / r["loop_s"] for r in ours]) for k in ("generation_s", "training_s",
                                                                                      "other_s"))
            print(f"ours time split: generation {gen:.0%}, training {train:.0%}, scoring + rest {other:.0%}")
            row["ours_split"] = {"generation": gen, "training": train, "other": other}
            for other_system in (s for s in systems if s != "ours"):
                pairs = [(by["ours"][i], by[other_system][i]) for i in sorted(by["ours"]) if i in by[other_system]]
                if not pairs:
                    continue
                ratios = [a["episodes_per_s"] / b["episodes_per_s"] for a, b in pairs]
                cpu_ratios = [b["loop_cpu_s"] / a["loop_cpu_s"] for a, b in pairs]
                row[f"ratio_vs_{other_system}"] = median(ratios)
                row[f"cpu_ratio_vs_{other_system}"] = median(cpu_ratios)
                print(f"ratio ours / {other_system:<11} per pair " + " ".join(f"{x:.2f}" for x in ratios)
                      + f"  median {median(ratios):.2f}x  (CPU time: {median(cpu_ratios):.2f}x)")
        for system in (s for s in systems if s.startswith("trl") and by[s]):
            share = median([r["generation_s"] / r["loop_s"] for r in by[system].values()])
            print(f"{system} generation share {share:.0%}")
        summary[str(epochs)] = row
    return summary


def plot(runs: list[dict[str, Any]], systems: list[str], path: Path) -> None:
    """Mean reward-model score per PPO step (mean over repeats), one panel per PPO-epochs setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["ppo_epochs"] for r in runs})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    names = {"ours": "lightning-rlhf PPOModule", "trl": "TRL 1.12.0 PPO"}
    if "trl" not in systems:  # compute-only TRL follows the same trajectory; draw it only when it is alone
        names["trl-compute"] = "TRL 1.12.0 PPO (gc no-op)"
    for ax, epochs in zip(axes[0], settings):
        for system in (s for s in systems if names.get(s)):
            curves = [r["scores"] for r in runs if r["system"] == system and r["ppo_epochs"] == epochs]
            if not curves:
                continue
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(min(map(len, curves)))]
            ax.plot(range(1, len(mean) + 1), mean, label=names[system])
        ax.set(title=f"{epochs} PPO epoch{'s' if epochs > 1 else ''}", xlabel="PPO step",
               ylabel="mean reward-model score")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"reward curves: {path}")


def task_mode(argv: list[str]) -> str:
    """The ``--task`` value of ``argv`` (``none`` when absent), read before the full parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="none")
    return pre.parse_known_args(argv)[0].task


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if task_mode(argv) == "addition":  # the quality comparison has its own arguments
        import quality

        return quality.main(argv)
    args = parse_args(argv)
    args.steps = args.steps or args.prompts // args.batch
    if args.worker:
        return worker_main(args)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; choose from {SYSTEMS}")
    if args.report_only:
        saved = json.loads(args.out.read_text())
        print(f"{saved['date']} | {saved['machine']}\nargs: {' '.join(saved['argv'])}")
        report(saved["runs"], systems)
        return plot(saved["runs"], systems, args.plot)
    missing = trl_unavailable(args.trl_python) if any(s.startswith("trl") for s in systems) else None
    if missing:
        print(f"TRL skipped: {args.trl_python} cannot import trl 1.12.0's PPO trainer ({missing}); "
              "install the bench extra (pip install -e '.[bench]')")
        systems = [s for s in systems if not s.startswith("trl")]
    started, host = time.strftime("%Y-%m-%d %H:%M"), machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as tmp:
        assets = build_assets(Path(tmp), "llama", args.vocab, args.steps * args.batch,
                              (args.min_prompt, args.max_prompt), hidden_size=args.hidden, num_layers=args.layers,
                              num_heads=args.heads, max_positions=args.max_prompt + args.response + 8)
        print(f"{started} | {host}\nLlama {args.layers} layers, hidden {args.hidden}: policy "
              f"{assets.params['actor'] / 1e6:.2f}M parameters (vocab {assets.params['vocab']}); "
              f"{args.steps * args.batch} prompts of {args.min_prompt}-{args.max_prompt} tokens, "
              f"{args.response}-token responses, batch {args.batch}, {args.steps} PPO steps, "
              f"{args.threads} threads, {args.repeats} interleaved repeats")

        def save(runs: list[dict[str, Any]]) -> None:
            args.out.write_text(json.dumps({"date": started, "machine": host, "argv": sys.argv[1:],
                                            "params": assets.params, "runs": runs}, indent=1))

        runs = measure(args, Path(tmp) / "assets.json", systems, save)
    report(runs, systems)
    plot(runs, systems, args.plot)


if __name__ == "__main__":
    main()
