"""Quality parity on the built-in addition task: our ``PPOModule`` vs TRL 1.12.0's PPO trainer, several seeds.

Run from the repository root (``ppo_vs_trl.py --task addition`` forwards here)::

    python benchmarks/ppo_vs_trl.py --task addition --seeds 3 --steps 40 --assets-dir runs/ppo_quality_assets

Assets: steps 1-2 of our pipeline (``lightning-rlhf pipeline --steps sft,reward`` with the embedded tiny
config) train an SFT policy and a reward model on the addition task; both systems start PPO from those
folders (critic initialised from the reward model, as DeepSpeed-Chat and TRL do) with the same prompt
token ids (the pipeline's PPO split). They are built once into ``--assets-dir`` and reused.

PPO settings: :func:`~lightning_rlhf.modules.tiny_presets.tiny_ppo_settings` made expressible in both systems:
one learning rate for actor and critic (TRL has one optimizer for both), constant schedule, no reward
normalisation (TRL has none) with the KL coefficient and missing-EOS penalty multiplied by the reward
model's score std instead (normalising by that std and then using 0.3 / 1.0 is the same shaped reward up
to a scale and a constant, which advantage whitening mostly removes), no gradient clipping (TRL's PPO loop
has none), no score clipping (ours clips at 5 by default, TRL never).

Recorded per PPO step: the mean raw reward-model score of the sampled responses, the same minus the
missing-EOS penalty (what TRL logs as ``objective/scores``) and the KL per response. Before and after
PPO, every policy is evaluated by one shared function (:func:`evaluate_policy`): greedy answers to the
held-out prompts of the pipeline's PPO split and to all 100 distinct sums, checked by the task's rule,
and their mean reward-model score. TRL runs compute-only (its loop's ``gc.collect()`` made no-ops):
that changes its speed, not its trajectory.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TRL_FP32_NO_RECOMPUTE, collate_prompts, machine, report_result, run_worker, set_threads, trl_effective_settings,
    trl_unavailable,
)

SYSTEMS = ("ours", "trl")
NAMES = {"ours": "lightning-rlhf PPOModule", "trl": "TRL 1.12.0 PPO (compute-only)"}
RESULTS = Path(__file__).resolve().parent / "results"
ASSETS_FILE = "quality_assets.json"


# -- assets: our pipeline's steps 1-2 -------------------------------------------------------------------------
@dataclass
class QualityAssets:
    """SFT policy, reward model (also the critic's start), tokenizer and task prompts (token ids + texts)."""

    tokenizer: str
    actor: str
    reward_model: str
    reward_stats: dict[str, float]
    train_ids: list[list[int]]
    eval_sets: dict[str, dict[str, list]]  # name -> {"ids": [[...]], "prompts": ["3+4=", ...]}
    build: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "QualityAssets":
        return cls(**json.loads(Path(path).read_text()))


def build_worker(root: Path, build: dict[str, Any]) -> dict[str, Any]:
    """Run the pipeline's sft and reward steps into ``root/pipeline`` and collect the PPO split's prompts."""
    import yaml

    from lightning_rlhf.data import RLHFDataModule, SyntheticTask
    from lightning_rlhf.commands.pipeline import DEFAULT_CONFIG, pipeline_main

    overrides = [f"--data.task_size={build['task_size']}"] if build.get("task_size") else []
    for step in ("sft", "reward"):
        if build.get(f"{step}_epochs"):
            overrides.append(f"--{step}.trainer.max_epochs={build[f'{step}_epochs']}")
    start = time.perf_counter()
    pipeline_main(["--output_dir", str(root / "pipeline"), "--steps", "sft,reward", "--evaluate_before", "false",
                   *overrides])
    seconds = time.perf_counter() - start
    sft, reward = root / "pipeline" / "sft" / "hf" / "final", root / "pipeline" / "reward" / "hf" / "final"
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data_args = {**config["data"], **({"task_size": build["task_size"]} if build.get("task_size") else {})}
    data = RLHFDataModule(tokenizer=str(sft), stage="rl", seed=config.get("seed", 0), **data_args)
    data.setup()
    task = SyntheticTask(seed=config.get("seed", 0))
    from lightning_rlhf.data.tokenization import Encoder

    encoder = Encoder(data.tokenizer, data.settings)
    every = [encoder.prompt_ids(p)[0] for p in task.prompts()]
    held_out = data.datasets["eval"]
    return {"tokenizer": str(sft), "actor": str(sft), "reward_model": str(reward),
            "reward_stats": json.loads((reward / "reward_stats.json").read_text()),
            "train_ids": [list(r) for r in data.datasets["train"]["prompt_input_ids"]],
            "eval_sets": {"held_out": {"ids": [list(r) for r in held_out["prompt_input_ids"]],
                                       "prompts": list(held_out["prompt"])},
                          "all_sums": {"ids": every, "prompts": task.prompts()}},
            "build": {**build, "seconds": seconds}}


def build_assets(root: Path, build: dict[str, Any], threads: int) -> QualityAssets:
    """The assets in ``root``: reused when built with the same settings, else built in a fresh interpreter."""
    path = root / ASSETS_FILE
    if path.is_file():
        assets = QualityAssets.load(path)
        if {k: v for k, v in assets.build.items() if k != "seconds"} == build:
            print(f"reusing the assets in {root} (built in {assets.build['seconds']:.0f}s)", flush=True)
            return assets
        print(f"{path} was built with {assets.build}; rebuilding with {build}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    print(f"building the assets (pipeline steps sft, reward) in {root} ...", flush=True)
    result = run_worker(Path(__file__).resolve(), ["--worker", "build", "--assets-dir", str(root),
                                                   "--threads", str(threads), "--build", json.dumps(build)])
    path.write_text(json.dumps(result))
    return QualityAssets.load(path)


# -- the PPO settings both systems get ----------------------------------------------------------------------
@dataclass
class Settings:
    """PPO hyper-parameters expressible in both systems (see the module docstring)."""

    steps: int
    lr: float
    kl_coef: float
    missing_eos_penalty: float
    rollout: int
    train_batch: int
    ppo_epochs: int
    response_length: int
    temperature: float
    betas: tuple[float, float]
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95


def settings_from_tiny(steps: int, lr: float | None, score_std: float, rescale: bool) -> Settings:
    """:func:`tiny_ppo_settings` in raw-score units (``rescale``: KL and EOS penalty x the score std)."""
    from lightning_rlhf.modules.tiny_presets import TINY_PPO_ROLLOUT_SIZE, tiny_ppo_settings

    tiny = tiny_ppo_settings()
    scale = score_std if rescale and tiny.get("normalize_reward") else 1.0
    return Settings(steps=steps, lr=lr or tiny["actor_optimizer"].learning_rate, kl_coef=tiny["kl_coef"] * scale,
                    missing_eos_penalty=tiny["missing_eos_penalty"] * scale, rollout=TINY_PPO_ROLLOUT_SIZE,
                    train_batch=tiny["train_batch_size"], ppo_epochs=tiny["update_epochs"],
                    response_length=tiny["generation"].max_new_tokens, temperature=tiny["generation"].temperature,
                    betas=tuple(tiny["actor_optimizer"].betas))


# -- the shared evaluation -----------------------------------------------------------------------------------
def evaluate_policy(policy: Any, reward_model: Any, tokenizer: Any, ids: list[list[int]], prompts: list[str],
                    max_new_tokens: int, batch_size: int = 128) -> dict[str, float]:
    """Greedy answers of ``policy``: task success (the task's rule) and mean reward-model score.

    Plain ``transformers`` only, so both systems' final policies go through exactly the same code.
    """
    import torch

    from lightning_rlhf.data.task import SyntheticTask

    task, pad, eos = SyntheticTask(), tokenizer.pad_token_id, tokenizer.eos_token_id
    was_training, successes, scores = policy.training, [], []
    policy.eval()
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = ids[start : start + batch_size]
            width = max(map(len, rows))
            prompt = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = (prompt != pad).long()
            out = policy.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=eos)[:, width:]
            ended = torch.cumsum((out == eos).long(), 1) - (out == eos).long() > 0  # after the first EOS
            out = out.masked_fill(ended, pad)
            for text_prompt, response in zip(prompts[start : start + batch_size], out):
                successes.append(task.check(text_prompt, tokenizer.decode(response, skip_special_tokens=True)))
            sequences = torch.cat([prompt, out], 1)
            attention = (sequences != pad).long()
            positions = (attention.cumsum(1) - 1).clamp(min=0)
            scores += reward_model(input_ids=sequences, attention_mask=attention,
                                   position_ids=positions).logits[:, 0].tolist()
    policy.train(was_training)
    return {"task_success": sum(successes) / len(successes), "reward_mean": sum(scores) / len(scores)}


def evaluate_all(policy: Any, assets: QualityAssets, settings: Settings) -> dict[str, dict[str, float]]:
    """:func:`evaluate_policy` on every evaluation set of the assets."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer)
    reward_model = AutoModelForSequenceClassification.from_pretrained(assets.reward_model).eval()
    return {name: evaluate_policy(policy, reward_model, tokenizer, s["ids"], s["prompts"], settings.response_length)
            for name, s in assets.eval_sets.items()}


# -- workers -------------------------------------------------------------------------------------------------
def rollout_batches(ids: list[list[int]], rollout: int, steps: int, seed: int) -> list[list[list[int]]]:
    """``steps`` rollouts of ``rollout`` prompts: epochs of fresh shuffles, the incomplete last batch dropped."""
    import random

    rng, batches = random.Random(seed), []
    while len(batches) < steps:
        order = list(range(len(ids)))
        rng.shuffle(order)
        batches += [[ids[i] for i in order[s : s + rollout]] for s in range(0, len(order) - rollout + 1, rollout)]
    return batches[:steps]


def worker_ours(assets: QualityAssets, s: Settings, seed: int) -> dict[str, Any]:
    """Our PPOModule on the task, seeded; per-step curves and the final actor's evaluation."""
    from lightning.pytorch import Callback, Trainer, seed_everything
    from torch.utils.data import DataLoader

    from lightning_rlhf.modules.optim import OptimizerArgs
    from lightning_rlhf.modules.ppo import PPOModule
    from lightning_rlhf.modules.generation_args import GenerationArgs

    keys = {"score": "ppo/score_mean", "kl": "ppo/kl", "eos_fraction": "ppo/eos_fraction"}

    class Curves(Callback):
        def __init__(self) -> None:
            self.curves: dict[str, list[float]] = {k: [] for k in keys}

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            for name, key in keys.items():
                self.curves[name].append(float(trainer.callback_metrics[key]))

    seed_everything(seed, verbose=False)
    optimizer = OptimizerArgs(learning_rate=s.lr, betas=s.betas, scheduler="constant")
    module = PPOModule(actor=assets.actor, reward_model=assets.reward_model, tokenizer=assets.tokenizer,
                       actor_optimizer=optimizer, critic_optimizer=optimizer, max_grad_norm=None,
                       generation=GenerationArgs(max_new_tokens=s.response_length, temperature=s.temperature),
                       train_batch_size=s.train_batch, update_epochs=s.ppo_epochs, clip_range=s.clip_range,
                       clip_range_value=s.clip_range_value, gamma=s.gamma, lam=s.lam, kl_coef=s.kl_coef,
                       kl_estimator="k1", normalize_reward=False, clip_reward_value=1e6,
                       missing_eos_penalty=s.missing_eos_penalty, num_samples_to_log=0, seed=seed)
    loader = DataLoader(rollout_batches(assets.train_ids, s.rollout, s.steps, seed), batch_size=None,
                        collate_fn=functools.partial(collate_prompts, pad_id=module.tokenizer.pad_token_id))
    curves = Curves()
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      log_every_n_steps=1, callbacks=[curves])
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    c = curves.curves
    penalised = [sc - s.missing_eos_penalty * (1 - e) for sc, e in zip(c["score"], c["eos_fraction"])]
    return {"scores": c["score"], "penalised_scores": penalised, "kl": c["kl"], "eos_fraction": c["eos_fraction"],
            "train_s": seconds, "after": evaluate_all(module.actor, assets, s)}


def worker_trl(assets: QualityAssets, s: Settings, seed: int) -> dict[str, Any]:
    """TRL 1.12.0's PPOTrainer (gc no-op) on the task, seeded; per-step curves and the final policy's evaluation."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    trl_ppo.gc = types.SimpleNamespace(collect=lambda *a, **k: 0)  # compute-only: same trajectory, less time
    reward_model = AutoModelForSequenceClassification.from_pretrained(assets.reward_model)
    raw: list[float] = []  # raw reward-model scores of the current rollout (TRL logs them after the EOS penalty)
    get_reward = trl_ppo.get_reward

    def recording_get_reward(model: Any, *a: Any, **k: Any) -> Any:
        out = get_reward(model, *a, **k)
        if model is reward_model:
            raw.extend(out[1].flatten().tolist())
        return out

    trl_ppo.get_reward = recording_get_reward
    curves: dict[str, list[float]] = {"scores": [], "penalised_scores": [], "kl": [], "eos_fraction": []}

    class Recorder(TrainerCallback):
        def on_log(self, args_: Any, state: Any, control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "objective/scores" in logs:
                curves["scores"].append(sum(raw) / len(raw))
                curves["penalised_scores"].append(float(logs["objective/scores"]))
                curves["kl"].append(float(logs["objective/kl"]))
                curves["eos_fraction"].append(float(logs["val/num_eos_tokens"]) / len(raw))
                raw.clear()

    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer, padding_side="left")
    dataset = Dataset.from_dict({"input_ids": assets.train_ids})
    config = PPOConfig(
        output_dir=f"/tmp/trl-quality-{os.getpid()}", report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=seed, per_device_train_batch_size=s.rollout, gradient_accumulation_steps=1,
        num_mini_batches=s.rollout // s.train_batch, num_ppo_epochs=s.ppo_epochs, total_episodes=s.steps * s.rollout,
        local_rollout_forward_batch_size=s.rollout, response_length=s.response_length, temperature=s.temperature,
        stop_token="eos", missing_eos_penalty=s.missing_eos_penalty, learning_rate=s.lr,
        lr_scheduler_type="constant", adam_beta1=s.betas[0], adam_beta2=s.betas[1], weight_decay=0.0,
        kl_coef=s.kl_coef, kl_estimator="k1", cliprange=s.clip_range, cliprange_value=s.clip_range_value,
        gamma=s.gamma, lam=s.lam, whiten_rewards=False, num_sample_generations=0, use_cpu=True,
        dataloader_num_workers=0, **TRL_FP32_NO_RECOMPUTE,
    )
    causal_lm, value_model = AutoModelForCausalLM.from_pretrained, AutoModelForSequenceClassification.from_pretrained
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=causal_lm(assets.actor),
                         ref_model=causal_lm(assets.actor), reward_model=reward_model,
                         value_model=value_model(assets.reward_model), train_dataset=dataset, eval_dataset=dataset,
                         callbacks=[Recorder()])
    trainer.remove_callback(PrinterCallback), trainer.remove_callback(ProgressCallback)
    torch.manual_seed(seed)
    np.random.seed(seed)  # TRL shuffles mini-batches with numpy's global RNG and never seeds it
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {**curves, "train_s": seconds, "settings": trl_effective_settings(trainer),
            "after": evaluate_all(trainer.model.policy, assets, s)}


def worker_main(args: argparse.Namespace) -> None:
    """Entry of a fresh interpreter: build the assets, or run one system with one seed."""
    set_threads(args.threads)
    if args.worker == "build":
        report_result(build_worker(Path(args.assets_dir), json.loads(args.build)))
        return
    assets = QualityAssets.load(Path(args.assets_dir) / ASSETS_FILE)
    settings = Settings(**{**json.loads(args.settings), "betas": tuple(json.loads(args.settings)["betas"])})
    from transformers import AutoModelForCausalLM

    before = evaluate_all(AutoModelForCausalLM.from_pretrained(assets.actor), assets, settings)  # the SFT start
    result = (worker_ours if args.worker == "ours" else worker_trl)(assets, settings, args.seed)
    report_result({"system": args.worker, "seed": args.seed, "before": before, **result})


# -- the comparison ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["addition"], default="addition", help="the task (the built-in addition)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per system (each run in a fresh interpreter)")
    p.add_argument("--steps", type=int, default=40, help="PPO steps (rollouts of 64 prompts) per run")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of actor AND critic in both systems (default: tiny_ppo_settings' actor lr)")
    p.add_argument("--no-rescale", action="store_true",
                   help="use tiny_ppo_settings' KL 0.3 and EOS penalty 1.0 on raw scores (not x the score std)")
    p.add_argument("--assets-dir", type=Path, default=Path("runs/ppo_quality_assets"),
                   help="where the SFT policy and reward model are built once and reused")
    p.add_argument("--task-size", type=int, default=None, help="build: task records (default: the pipeline's)")
    p.add_argument("--build-epochs", type=int, default=None, help="build: SFT and reward epochs (default: config)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--trl-python", default=sys.executable, help="interpreter with trl==1.12.0 for the TRL runs")
    p.add_argument("--out", type=Path, default=RESULTS / "ppo_vs_trl_quality.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "ppo_vs_trl_quality.png")
    p.add_argument("--report-only", action="store_true", help="print the report and redraw the PNG from --out")
    p.add_argument("--worker", choices=("build", *SYSTEMS), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--build", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def code_state() -> dict[str, Any]:
    """Where ``lightning_rlhf`` is imported from, its git commit and its uncommitted files (what "ours" ran)."""
    import importlib.util

    root = Path(importlib.util.find_spec("lightning_rlhf").origin).resolve().parents[1]
    git = (lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout.strip())
    return {"path": str(root), "commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "lightning_rlhf").splitlines()}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def final_quarter(curve: list[float]) -> float:
    """Mean of the last quarter of a curve (at least one point)."""
    return statistics.fmean(curve[-max(1, len(curve) // 4):])


def report(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """Print and return, per system: final-quarter scores and KL (mean +- SE over seeds), task success before/after."""
    summary: dict[str, Any] = {}
    print(f"\n{'system':<6} {'seeds':>5}  {'score step 1':>12}  {'final-quarter score':>20}  {'(- EOS penalty)':>16}  "
          f"{'final-quarter KL':>16}  {'success held-out':>18}  {'success all sums':>18}  {'train s':>7}")
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        if not mine:
            continue
        row = {"seeds": len(mine)}
        for key in ("scores", "penalised_scores", "kl"):
            row[f"final_quarter_{key}"] = mean_se([final_quarter(r[key]) for r in mine])
        row["first_score"] = mean_se([r["scores"][0] for r in mine])
        for name in mine[0]["after"]:
            for when in ("before", "after"):
                for metric in ("task_success", "reward_mean"):
                    row[f"{name}_{metric}_{when}"] = mean_se([r[when][name][metric] for r in mine])
        row["train_s"] = statistics.median(r["train_s"] for r in mine)
        summary[system] = row
        fmt = (lambda ms, d=3: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}")
        success = {n: f"{row[f'{n}_task_success_before'][0]:.2f} -> {fmt(row[f'{n}_task_success_after'], 2)}"
                   for n in ("held_out", "all_sums")}
        print(f"{system:<6} {len(mine):>5}  {row['first_score'][0]:>12.3f}  {fmt(row['final_quarter_scores']):>20}  "
              f"{fmt(row['final_quarter_penalised_scores']):>16}  {fmt(row['final_quarter_kl']):>16}  "
              f"{success['held_out']:>18}  {success['all_sums']:>18}  {row['train_s']:>7.0f}")
    if {"ours", "trl"} <= summary.keys():
        (a, sa), (b, sb) = summary["ours"]["final_quarter_scores"], summary["trl"]["final_quarter_scores"]
        diff, se = a - b, math.hypot(sa, sb)
        summary["ours_minus_trl_final_quarter_score"] = (diff, se)
        print(f"final-quarter score, ours - TRL: {diff:+.3f} ± {se:.3f} (standard error of the difference)")
        for name in ("held_out", "all_sums"):
            (a, sa), (b, sb) = (summary[s][f"{name}_task_success_after"] for s in ("ours", "trl"))
            print(f"task success after PPO ({name}), ours - TRL: {a - b:+.3f} ± {math.hypot(sa, sb):.3f}")
    print("(± is the standard error across seeds; the reward-model score is raw, i.e. before the missing-EOS penalty)")
    return summary


def plot(runs: list[dict[str, Any]], systems: list[str], path: Path) -> None:
    """Mean ± std across seeds of the per-step reward-model score and KL of each system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in zip(axes, ("scores", "kl"), ("mean reward-model score", "KL per response (k1, nats)")):
        for system in systems:
            curves = [r[key] for r in runs if r["system"] == system]
            if not curves:
                continue
            n = min(map(len, curves))
            mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
            std = [statistics.pstdev([c[i] for c in curves]) for i in range(n)]
            x = range(1, n + 1)
            ax.plot(x, mean, label=f"{NAMES[system]} ({len(curves)} seeds)")
            ax.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], alpha=0.25)
        ax.set(xlabel="PPO step (64 prompts)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("PPO on the built-in addition task: mean ± std across seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"reward curves: {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    systems = [s for s in args.systems.split(",") if s]
    if set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: choose from {SYSTEMS}")
    if args.report_only:
        saved = json.loads(args.out.read_text())
        print(f"{saved['date']} | {saved['machine']}\nargs: {' '.join(saved['argv'])}\nsettings: {saved['settings']}")
        report(saved["runs"], systems)
        return plot(saved["runs"], systems, args.plot)
    missing = trl_unavailable(args.trl_python) if "trl" in systems else None
    if missing:
        print(f"TRL skipped: {args.trl_python} cannot import trl 1.12.0's PPO trainer ({missing})")
        systems = [s for s in systems if s != "trl"]
    build = {"task_size": args.task_size, "sft_epochs": args.build_epochs, "reward_epochs": args.build_epochs}
    assets = build_assets(args.assets_dir.resolve(), build, args.threads)
    settings = settings_from_tiny(args.steps, args.lr, assets.reward_stats["std"], not args.no_rescale)
    started, host, code = time.strftime("%Y-%m-%d %H:%M"), machine(), code_state()
    sets = ", ".join(f"{k} ({len(v['ids'])})" for k, v in assets.eval_sets.items())
    print(f"{started} | {host}\nlightning_rlhf: {code}\nsettings: {asdict(settings)}\n"
          f"{len(assets.train_ids)} training prompts, eval sets {sets}; {args.seeds} seeds", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    common = ["--assets-dir", str(args.assets_dir.resolve()), "--threads", str(args.threads),
              "--settings", json.dumps(asdict(settings))]
    for seed in range(args.seeds):
        for system in (systems if seed % 2 == 0 else systems[::-1]):
            python = args.trl_python if system == "trl" else sys.executable
            run = run_worker(Path(__file__).resolve(), ["--worker", system, "--seed", str(seed), *common], python)
            runs.append(run)
            saved = {"date": started, "machine": host, "argv": sys.argv[1:], "code": code,
                     "settings": asdict(settings), "build": assets.build, "runs": runs}
            args.out.write_text(json.dumps(saved, indent=1))
            before, after = (run[k]["held_out"]["task_success"] for k in ("before", "after"))
            print(f"  seed {seed} {system:<5} {run['train_s']:5.0f}s  final-quarter score "
                  f"{final_quarter(run['scores']):.3f}  held-out success {before:.2f} -> {after:.2f}", flush=True)
    report(runs, systems)
    plot(runs, systems, args.plot)


if __name__ == "__main__":
    main()
