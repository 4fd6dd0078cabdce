"""Our PPO step on the configuration DeepSpeed-Chat's step 3 was measured with on this CPU (issue 8).

Run from the repository root::

    python benchmarks/ppo_deepspeed_chat_config.py                  # 8 interleaved runs of each setting
    python benchmarks/ppo_deepspeed_chat_config.py --runs 1 --steps 2   # smoke
    python benchmarks/ppo_deepspeed_chat_config.py --ds-chat-dir <ds-chat-dir>   # + DeepSpeed-Chat, same runs

The configuration (DeepSpeed-Chat's step 3, hybrid engine off): tiny OPT actor and critic (2 layers, hidden
128, vocabulary 512, 32 positions: 467K parameters), a reward model of the same shape, batch 8 (one
generation batch = one training batch), prompts of exactly 16 tokens, 16 greedy answer tokens, one PPO
epoch, DeepSpeed-Chat's PPO constants (KL 0.1 k1, reward clip 5, clip 0.2/0.2, gamma 1, lambda 0.95, no
advantage whitening, actor lr 9.65e-6, critic lr 5e-6), one process, ``torch.set_num_threads`` threads.

Settings, interleaved run by run so load changes hit them alike: ``HybridDeepSpeedStrategy(stage=0)``
and Lightning's single-device strategy, each in fp32 (``32-true``) and ``bf16-mixed``. Each run trains
``--steps`` PPO steps; the figure is episodes / training-loop seconds (first training batch to the end
of ``fit``; model loading and engine set-up excluded), median over ``--runs`` runs; the median per-step
figure and episodes per process CPU-second (all threads; barely moved by other processes' load) are
printed beside it.

With ``--ds-chat-dir`` (``<ds-chat-dir>`` above: a checkout of DeepSpeedExamples' ``applications/DeepSpeed-Chat``,
made as benchmarks/README.md describes), DeepSpeed-Chat's
own step-3 engine and trainer (``deepspeed_chat_step3.py``: what runs, and its CPU patches) join the
interleaving as a ``ds-chat`` setting in fp32 and bf16, on the same model folders, prompts (same batches,
same order per run) and threads, timed the same way; then every measurement, ours included, runs in a
fresh interpreter so no DeepSpeed or torch state carries over, and the table gives ours / DS-Chat per
precision from these runs (ratio of medians, and the median of the run-by-run ratios) beside the
figure quoted in issue 8. Without it the script behaves as before (in-process runs, quoted figure only).

Measure on a quiet machine (load well under the core count): when other processes hold the cores, the
threads of one run wait for each other and 2-thread figures, bf16 above all, drop several-fold (seen at
load 2.8 on 2 cores: DeepSpeed-Chat bf16 at 12 episodes/s with 1 thread, 1.8 with 2). The JSON keeps the
load average before each run (``load_before``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Assets, build_assets, machine, median, report_result, run_ours, run_worker, set_threads,
)
from deepspeed_chat_step3 import DTYPES  # noqa: E402

#: DeepSpeed-Chat step 3 on this CPU as quoted in issue 8 (median of 8, training loop only); --ds-chat-dir measures it
DS_CHAT_QUOTED = {"32-true": 84.8, "bf16-mixed": 66.5}
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8, help="runs per setting (median reported)")
    p.add_argument("--steps", type=int, default=16, help="PPO steps per run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--answer", type=int, default=16, help="greedy answer tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--strategies", default="deepspeed0,single", help="deepspeed0 and/or single")
    p.add_argument("--precisions", default="32-true,bf16-mixed")
    p.add_argument("--out", type=Path, default=RESULTS / "ppo_deepspeed_chat_config.json", help="JSON of every run")
    p.add_argument("--report-only", action="store_true", help="print the table from --out without measuring")
    p.add_argument("--ds-chat-dir", type=Path, default=None,
                   help="applications/DeepSpeed-Chat checkout: also run its step 3 (fp32 and bf16), interleaved")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of our runs, in this process
    p.add_argument("--assets", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_strategy(name: str) -> Any:
    if name == "single":
        return "auto"
    if name == "deepspeed0":
        from lightning_rlhf.strategies import HybridDeepSpeedStrategy

        return HybridDeepSpeedStrategy(stage=0)
    raise SystemExit(f"unknown strategy {name!r}: use deepspeed0 or single")


def module_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """DeepSpeed-Chat's step-3 constants as PPOModule arguments."""
    from lightning_rlhf.modules.generation_args import GenerationArgs

    return dict(generation=GenerationArgs(max_new_tokens=args.answer, do_sample=False), generation_batch_size=None,
                train_batch_size=args.batch, update_epochs=1, kl_coef=0.1, kl_estimator="k1", clip_reward_value=5.0,
                clip_range=0.2, clip_range_value=0.2, gamma=1.0, lam=0.95, whiten_advantages=False)


def measure(args: argparse.Namespace, assets: Path, setting: tuple[str, str], seed: int) -> dict[str, Any]:
    """One run of ``setting`` in a fresh interpreter: ours via ``--worker``, DS-Chat's step 3 via its harness."""
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--answer", str(args.answer),
              "--threads", str(args.threads), "--assets", str(assets), "--seed", str(seed)]
    if setting[0] == "ds-chat":
        return run_worker(HERE / "deepspeed_chat_step3.py", ["--ds-chat-dir", str(args.ds_chat_dir), "--dtype",
                                                            DTYPES[setting[1]], "--prompt", str(args.prompt), *common])
    return run_worker(Path(__file__), ["--worker", "--strategies", setting[0], "--precisions", setting[1], *common])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        set_threads(args.threads)
        result = run_ours(Assets.load(args.assets), module_kwargs(args), args.batch, args.steps,
                          strategy=make_strategy(args.strategies), precision=args.precisions, seed=args.seed)
        report_result(result)
        return
    if args.report_only:
        saved = json.loads(args.out.read_text())
        print(f"{saved['date']} | {saved['machine']}\nargs: {' '.join(saved['argv'])}")
        if saved.get("ds_chat_commit"):
            print(f"DeepSpeed-Chat: DeepSpeedExamples {saved['ds_chat_commit']}")
        report({tuple(k.split("/")): v for k, v in saved["runs"].items() if v})
        return
    set_threads(args.threads)
    started, host = time.strftime("%Y-%m-%d %H:%M"), machine()
    settings = [(s, p) for s in args.strategies.split(",") for p in args.precisions.split(",")]
    if args.ds_chat_dir is not None:
        unknown = [p for p in args.precisions.split(",") if p not in DTYPES]
        if unknown:
            raise SystemExit(f"DeepSpeed-Chat runs in {sorted(DTYPES)} only, not {unknown}")
        if not (args.ds_chat_dir / "dschat" / "rlhf" / "ppo_trainer.py").is_file():
            raise SystemExit(f"{args.ds_chat_dir} is not an applications/DeepSpeed-Chat checkout (no dschat/rlhf)")
        settings += [("ds-chat", p) for p in args.precisions.split(",")]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {setting: [] for setting in settings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ppo-dschat-") as tmp:
        assets = build_assets(Path(tmp), "opt", 512, args.steps * args.batch, (args.prompt, args.prompt),
                              hidden_size=128, num_layers=2, num_heads=4, max_positions=args.prompt + args.answer)
        print(f"{started} | {host}\nOPT 2 layers, hidden 128: actor {assets.params['actor'] / 1e3:.0f}K, critic "
              f"{assets.params['critic'] / 1e3:.0f}K parameters; batch {args.batch}, {args.prompt}-token prompts, "
              f"{args.answer} greedy tokens, 1 PPO epoch, {args.steps} steps per run, {args.threads} threads")
        extra: dict[str, Any] = {}
        for run in range(args.runs):
            for setting in (settings if run % 2 == 0 else settings[::-1]):
                if args.ds_chat_dir is None:
                    result = run_ours(assets, module_kwargs(args), args.batch, args.steps,
                                      strategy=make_strategy(setting[0]), precision=setting[1], seed=run)
                else:
                    load = os.getloadavg()[0]
                    result = {**measure(args, Path(tmp) / "assets.json", setting, seed=run), "load_before": load}
                    extra.update(ds_chat_dir=str(args.ds_chat_dir), fresh_interpreters=True)
                    if setting[0] == "ds-chat":
                        extra["ds_chat_commit"] = result.get("ds_chat_commit")
                runs[setting].append(result)
                args.out.write_text(json.dumps({"date": started, "machine": host, "argv": sys.argv[1:],
                                                "params": assets.params, **extra,
                                                "runs": {f"{s}/{p}": r for (s, p), r in runs.items()}}, indent=1))
                dropped = f", {result['dropped']} dropped" if "dropped" in result else ""
                print(f"  run {run} {setting[0]:<10} {setting[1]:<10} {result['episodes_per_s']:7.2f} episodes/s, "
                      f"{result['episodes'] / result['loop_cpu_s']:7.2f} per CPU-s "
                      f"(response length {median(result['response_length']):.1f}{dropped})", flush=True)
    if extra.get("ds_chat_commit"):
        print(f"DeepSpeed-Chat: DeepSpeedExamples {extra['ds_chat_commit']}")
    report(runs)


def report(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Median episodes/s per setting; ours / DS-Chat measured in the same runs, and / the quoted figure.

    ``ratio`` divides medians; ``paired`` is the median over runs of ours / DS-Chat of the same run index
    (measured back to back, so a load change between runs cancels out).
    """
    measured = {p: rs for (s, p), rs in runs.items() if s == "ds-chat"}
    print(f"\n{'strategy':<11}{'precision':<12}{'episodes/s':>11}{'per step':>10}{'per CPU-s':>10}"
          f"{'DS-Chat (run)':>15}{'ratio':>7}{'paired':>8}{'DS-Chat (quoted)':>18}{'ratio':>7}  split gen/train/rest")
    summary = {}
    for (strategy, precision), results in runs.items():
        eps = median([r["episodes_per_s"] for r in results])
        step = median([r["step_episodes_per_s"] for r in results])
        cpu = median([r["episodes"] / r["loop_cpu_s"] for r in results])
        quoted = DS_CHAT_QUOTED.get(precision)
        split = [median([r[k] / r["loop_s"] for r in results]) for k in ("generation_s", "training_s", "other_s")]
        same = measured.get(precision) if strategy != "ds-chat" else None
        ds_eps = median([r["episodes_per_s"] for r in same]) if same else None
        paired = median([a["episodes_per_s"] / b["episodes_per_s"] for a, b in zip(results, same)]) if same else None
        summary[f"{strategy}/{precision}"] = {"episodes_per_s": eps, "step_episodes_per_s": step,
                                              "episodes_per_cpu_s": cpu, "ds_chat_measured": ds_eps,
                                              "ratio_measured": eps / ds_eps if ds_eps else None,
                                              "ratio_paired": paired, "ds_chat_quoted": quoted, "split": split}
        cells = [f"{ds_eps:>15.1f}{eps / ds_eps:>6.2f}x{paired:>7.2f}x" if ds_eps else f"{'-':>15}{'-':>7}{'-':>8}",
                 f"{quoted:>18.1f}{eps / quoted:>6.2f}x" if quoted else f"{'-':>18}{'-':>7}"]
        print(f"{strategy:<11}{precision:<12}{eps:>11.1f}{step:>10.1f}{cpu:>10.1f}{''.join(cells)}  "
              + "/".join(f"{x:.0%}" for x in split))
    print("answers, mean tokens up to and including EOS per step (min-max):")
    for (strategy, precision), results in runs.items():
        lengths = [x for r in results for x in r["response_length"]]
        line = f"  {strategy:<11}{precision:<12}{min(lengths):.2f}-{max(lengths):.2f}"
        if strategy == "ds-chat":
            line += (f", {sorted({w for r in results for w in r['answer_width']})} positions generated, "
                     f"{sum(r['dropped'] for r in results)} of {sum(r['episodes'] for r in results)} answers dropped "
                     "by DS-Chat (<= 1 token)")
        print(line)
    return summary


if __name__ == "__main__":
    main()
