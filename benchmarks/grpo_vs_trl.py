"""GRPO on CPU, side by side: our ``GRPOModule`` (Lightning, one process) vs TRL's ``GRPOTrainer`` (latest).

Run from the repository root; TRL runs in its own environment (``--trl-python``; ``<trl-venv>`` is that
environment's folder, ``<smollm2-hf-dir>`` SmolLM2-135M-Instruct as a Hugging Face folder, both made as
benchmarks/README.md describes)::

    python benchmarks/grpo_vs_trl.py --trl-python <trl-venv>/bin/python            # tiny Llama, 3 repeats
    python benchmarks/grpo_vs_trl.py --trl-python ... --model <smollm2-hf-dir> --steps 10 --repeats 2 --lr 2e-4
    python benchmarks/grpo_vs_trl.py --systems ours --steps 2 --repeats 1 --hidden 32 --layers 2   # smoke
    python benchmarks/grpo_vs_trl.py --trl-python ... --model ... --generation-backend vllm \
        --ours-python .venv-vllm/bin/python     # ours on the vLLM backend (its own environment, scripts/test_vllm.sh)

The task is the built-in addition task in chat form (``SyntheticTask(style="chat")``: "What is a + b? Answer
with the number only.", an ``answer`` column). Its 100 distinct questions are shuffled once: ``--held-out``
of them are only ever evaluated, the others are cycled through as training prompts. Each prompt is rendered
once, in this process, to the text the model sees (the tokenizer's chat template with a generation prompt,
or ``"Human: ... Assistant:"`` without one), and both systems tokenize that text with the same call
(``tokenizer(text)``, as TRL does for plain-text prompts), take the prompts in the same order (TRL's
``shuffle_dataset=False``) and get the same reward functions: our built-ins ``answer_match_shaped`` (1.0 for
the right last number, partial credit otherwise) and ``answer_only_format`` (the number alone), weights
1.0 and 0.5, imported from ``lightning_rlhf/rewards/builtin.py`` by file path in TRL's environment, so they
run unchanged (TRL's signature).

Same work per step on both sides (TRL's ``GRPOConfig`` defaults checked at trl 1.16.0, each set explicitly):

- ``--batch`` prompts x ``--generations`` completions per step, **one optimizer step per generation batch**:
  TRL ``per_device_train_batch_size = batch * generations`` (TRL counts completions),
  ``gradient_accumulation_steps=1``, ``steps_per_generation=1`` (default: = accumulation steps),
  ``num_iterations=1`` (default 1); ours ``train_batch_size = batch * generations``, ``update_epochs=1``. So the
  update is on-policy (ratio 1) and neither side needs a second forward for the old log-probabilities.
- ``loss_type="grpo"`` (TRL's default is ``"dapo"``) = our ``loss_aggregation="seq_mean_token_mean"``
  (the GRPO paper's mean over each answer's tokens, then over answers).
- ``scale_rewards="group"`` (the default) = our ``advantage_estimator="grpo"``: ``(r - mean) / (std + 1e-4)``
  over the group, unbiased std, on both sides.
- ``beta=0.0`` (the default; no reference model is loaded on either side); ``epsilon=0.2``,
  ``epsilon_high=0.2`` (default None = epsilon) = our ``clip_range_low/high``.
- ``mask_truncated_completions=False`` (the default) = our ``filter_truncated=False``; no dynamic sampling.
- Sampling: ``temperature=1.0``, ``top_p=1.0``, ``top_k=0`` (the defaults) = our ``GenerationArgs``; at most
  ``--response`` new tokens, stopping at EOS.
- AdamW (0.9, 0.999), no weight decay, ``--lr`` constant (TRL ``lr_scheduler_type="constant"``, no warmup),
  gradient-norm clip 1.0 (TRL's default ``max_grad_norm``; ours ``max_grad_norm=1.0``); TRL's
  ``optim="adamw_torch_fused"``, the kernel ours uses in fp32.
- LoRA rank ``--lora-rank`` (alpha = 2 x rank, no dropout) on ``q_proj``/``v_proj`` on both sides (0: full
  fine-tuning); fp32 (TRL ``bf16=False``, the model loaded with ``dtype=torch.float32``); no gradient
  checkpointing (TRL ``gradient_checkpointing=False``; its default is True, ours recomputes nothing); dropout disabled
  (TRL ``disable_dropout=True``; ours ``dropout=0``); ``--threads`` threads; the same number of steps.

What differs on purpose: ours runs each distinct prompt once per group and shares its KV cache with the
group's answers, in ``generate`` and in the update (``GRPOModule(share_prompt_prefix=True)``, the default);
TRL runs every repeated copy of a prompt in full. The samples and the numbers are the same to float rounding
(``tests/models/test_prompt_cache.py``); ``benchmarks/grpo_prompt_sharing.py`` measures that part alone.

Time is the training loop only (models loaded before): TRL's ``on_train_begin`` to ``on_train_end``, our first
training batch to the end of ``fit``. Episodes are completions. Every run is a fresh interpreter, the systems
alternate and the order flips per repeat, so load changes on a shared machine hit both alike; the ratio is
reported per pair and as the median. Quality: the mean reward per step from each system's own logs, and the
greedy held-out accuracy (last number right) and exact-format rate before and after, measured by one function
(:func:`greedy_accuracy`) on both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TRL_FP32_NO_RECOMPUTE, add_comparison_arguments, loop_timer, machine, median, report_result, run_worker,
    save_figure, set_threads, timed, trl_effective_settings,
)

SYSTEMS = ("ours", "trl")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REWARD_FUNCS, REWARD_WEIGHTS = ("answer_match_shaped", "answer_only_format"), (1.0, 0.5)
LORA_TARGETS = ["q_proj", "v_proj"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a Hugging Face causal-LM folder (e.g. SmolLM2-135M-Instruct); default: a tiny "
                                   "randomly initialised Llama with a tokenizer trained on the task")
    p.add_argument("--layers", type=int, default=4, help="tiny model layers")
    p.add_argument("--hidden", type=int, default=128, help="tiny model hidden size")
    p.add_argument("--heads", type=int, default=4, help="tiny model attention heads")
    p.add_argument("--vocab", type=int, default=400, help="tiny model tokenizer size")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (the group size)")
    p.add_argument("--response", type=int, default=16, help="most new tokens per completion")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps (= generation batches) per run")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (both systems, constant)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on q_proj/v_proj (0: full fine-tuning)")
    p.add_argument("--held-out", type=int, default=36, help="distinct questions kept for the greedy evaluation")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per system")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generation-backend", choices=("auto", "native", "fast", "vllm"), default=None,
                   help="ours under HybridDeepSpeedStrategy(stage=0, generation_backend=...) (default: Lightning's "
                   "single-device strategy, transformers' generate)")
    p.add_argument("--ours-python", default=sys.executable,
                   help="interpreter for our workers (e.g. .venv-vllm/bin/python for --generation-backend vllm)")
    add_comparison_arguments(p, SYSTEMS, RESULTS / "grpo_vs_trl.json", RESULTS / "grpo_vs_trl.png",
                             "the latest trl and peft")
    return p.parse_args(argv)


# -- what both environments share ------------------------------------------------------------------------------
def builtin_rewards() -> Any:
    """``lightning_rlhf/rewards/builtin.py`` loaded by file path: standard library only, so TRL's environment
    (which lacks Lightning) runs the very same reward functions."""
    spec = importlib.util.spec_from_file_location("lightning_rlhf_builtin_rewards",
                                                  ROOT / "lightning_rlhf" / "rewards" / "builtin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def greedy_accuracy(model: Any, tokenizer: Any, records: list[dict[str, str]], max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers to ``records`` (rendered ``prompt`` texts): the fraction whose last number is the
    ``answer`` (``answer_match``) and the fraction that are the number alone (``answer_only_format``)."""
    import torch

    rewards = builtin_rewards()
    texts, answers = [r["prompt"] for r in records], [r["answer"] for r in records]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    right = rewards.answer_match(texts, completions, answers)
    formatted = rewards.answer_only_format(texts, completions)
    return {"accuracy": sum(right) / len(right), "format_rate": sum(formatted) / len(formatted),
            "samples": completions[:4]}


def load_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# -- assets (this process, main environment) ---------------------------------------------------------------------
def render(tokenizer: Any, question: str) -> str:
    """The prompt text the model sees: its chat template with a generation prompt, else ``Human: ... Assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Human: {question} Assistant:"


def build_assets(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The model folder, the training prompts (in order) and the held-out prompts, rendered; saved as JSON."""
    from transformers import AutoTokenizer

    from lightning_rlhf.data.task import SyntheticTask
    from lightning_rlhf.models.tiny import save_tiny_model, train_tokenizer

    task = SyntheticTask(seed=args.seed, style="chat")
    if args.model:
        path = args.model
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        tokenizer = train_tokenizer(task.corpus(), vocab_size=args.vocab)
        path = str(save_tiny_model(root / "actor", "llama", tokenizer, seed=args.seed, hidden_size=args.hidden,
                                   num_layers=args.layers, num_heads=args.heads, max_positions=128))
    questions = task.prompts()
    random.Random(args.seed).shuffle(questions)
    if not 0 < args.held_out < len(questions):
        raise ValueError(f"--held-out must be in [1, {len(questions) - 1}], got {args.held_out}")

    def record(question: str) -> dict[str, str]:
        return {"prompt": render(tokenizer, question), "answer": task.answer(question)}

    held_out, pool = [record(q) for q in questions[: args.held_out]], [record(q) for q in questions[args.held_out:]]
    train = [pool[i % len(pool)] for i in range(args.steps * args.batch)]
    assets = {"model": path, "train": train, "held_out": held_out,
              "before": greedy_accuracy(load_model(path), tokenizer, held_out, args.response)}
    (root / "assets.json").write_text(json.dumps(assets))
    return assets


# -- workers (one measurement in a fresh interpreter) ---------------------------------------------------------
def worker_ours(args: argparse.Namespace, assets: dict[str, Any]) -> dict[str, Any]:
    import torch
    from lightning.pytorch import Trainer, seed_everything
    from torch.utils.data import DataLoader

    from lightning_rlhf.models import LoraArgs
    from lightning_rlhf.modules.optim import OptimizerArgs
    from lightning_rlhf.modules.grpo import GRPOModule
    from lightning_rlhf.modules.generation_args import GenerationArgs

    seed_everything(args.seed, verbose=False)
    group = args.generations
    lora = (LoraArgs(rank=args.lora_rank, alpha=2.0 * args.lora_rank, target_modules=LORA_TARGETS)
            if args.lora_rank else None)
    module = GRPOModule(
        actor=assets["model"], reward_funcs=list(REWARD_FUNCS), reward_weights=list(REWARD_WEIGHTS), actor_lora=lora,
        actor_optimizer=OptimizerArgs(learning_rate=args.lr, betas=(0.9, 0.999), scheduler="constant"),
        max_grad_norm=1.0, generation=GenerationArgs(max_new_tokens=args.response, do_sample=True, temperature=1.0),
        num_generations=group, train_batch_size=args.batch * group, update_epochs=1, advantage_estimator="grpo",
        loss_aggregation="seq_mean_token_mean", clip_range_low=0.2, clip_range_high=0.2, kl_coef=0.0,
        num_samples_to_log=0, seed=args.seed)
    tokenizer = module.tokenizer

    def collate(rows: list[dict[str, str]]) -> dict[str, Any]:
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        enc = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True)
        tokenizer.padding_side = side
        return {"prompt_input_ids": enc["input_ids"], "prompt_attention_mask": enc["attention_mask"],
                "prompts": [r["prompt"] for r in rows], "columns": {"answer": [r["answer"] for r in rows]}}

    loader = DataLoader(assets["train"], batch_size=args.batch, shuffle=False, collate_fn=collate)
    keys = ("grpo/reward_mean", "grpo/groups_without_signal", "grpo/response_length", "time/generation_s",
            "time/logprobs_s", "time/training_s")
    timer = loop_timer(keys)
    strategy: Any = "auto"
    if args.generation_backend:
        from lightning_rlhf.strategies import HybridDeepSpeedStrategy

        strategy = HybridDeepSpeedStrategy(stage=0, generation_backend=args.generation_backend)
    trainer = Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=1, limit_train_batches=args.steps,
                      strategy=strategy, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    torch.set_grad_enabled(True)
    loop_s, episodes = timer.end - timer.start, args.batch * group * len(timer.steps)
    generation_s = sum(timer.metrics["time/generation_s"])
    training_s = sum(timer.metrics["time/training_s"])
    logprobs_s = sum(timer.metrics["time/logprobs_s"])  # the step split: generate / log-probs / update
    return {"episodes": episodes, "loop_s": loop_s, "episodes_per_s": episodes / loop_s,
            "loop_cpu_s": timer.cpu_end - timer.cpu_start, "generation_s": generation_s, "logprobs_s": logprobs_s,
            "training_s": training_s,
            "rewards": timer.metrics["grpo/reward_mean"],
            "no_signal": timer.metrics["grpo/groups_without_signal"],
            "response_length": timer.metrics["grpo/response_length"],
            "after": greedy_accuracy(module.actor, tokenizer, assets["held_out"], args.response)}


def worker_trl(args: argparse.Namespace, assets: dict[str, Any]) -> dict[str, Any]:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    rewards = builtin_rewards()

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = self.cpu_start = self.cpu_end = None
            self.logs: list[dict[str, float]] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_log(self, args_: Any, state: Any, control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "reward" in logs:
                self.logs.append(dict(logs))

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    group = args.generations
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"), report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=args.seed, use_cpu=True, dataloader_num_workers=0, **TRL_FP32_NO_RECOMPUTE,
        max_steps=args.steps, per_device_train_batch_size=args.batch * group, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=group, shuffle_dataset=False,
        max_completion_length=args.response, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
        epsilon_high=0.2, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        reward_weights=list(REWARD_WEIGHTS), learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, optim="adamw_torch_fused", max_grad_norm=1.0,
        disable_dropout=True, log_completions=False, remove_unused_columns=False,
    )
    peft_config = (LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                              target_modules=LORA_TARGETS, task_type="CAUSAL_LM") if args.lora_rank else None)
    dataset = Dataset.from_list(assets["train"])
    recorder = Recorder()
    trainer = GRPOTrainer(model=load_model(assets["model"]), reward_funcs=[getattr(rewards, f) for f in REWARD_FUNCS],
                          args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[recorder])
    trainer.remove_callback(PrinterCallback), trainer.remove_callback(ProgressCallback)  # no per-step printing
    generation = {"s": 0.0}
    trainer._generate_single_turn = timed(trainer._generate_single_turn, generation)
    torch.manual_seed(args.seed)
    trainer.train()
    loop_s, episodes = recorder.end - recorder.start, args.batch * group * len(recorder.logs)
    return {"episodes": episodes, "loop_s": loop_s, "episodes_per_s": episodes / loop_s,
            "loop_cpu_s": recorder.cpu_end - recorder.cpu_start, "generation_s": generation["s"],
            "rewards": [log["reward"] for log in recorder.logs],
            "no_signal": [log.get("frac_reward_zero_std", float("nan")) for log in recorder.logs],
            "response_length": [log.get("completions/mean_length", float("nan")) for log in recorder.logs],
            "trl_version": trl.__version__, "settings": trl_effective_settings(trainer),
            "after": greedy_accuracy(trainer.model, tokenizer, assets["held_out"], args.response)}


def worker_main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    assets = json.loads(Path(args.assets).read_text())
    result = (worker_ours if args.worker == "ours" else worker_trl)(args, assets)
    report_result({"system": args.worker, **result})


# -- the comparison ------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, assets_path: Path, systems: list[str], save: Any) -> list[dict[str, Any]]:
    """Every (repeat, system) run, systems interleaved with the order alternating per repeat; ``save(runs)``
    after every run, so a run cut short leaves complete pairs on disk."""
    script, runs = Path(__file__).resolve(), []
    common = ["--assets", str(assets_path), "--threads", str(args.threads), "--steps", str(args.steps),
              "--batch", str(args.batch), "--generations", str(args.generations), "--response", str(args.response),
              "--lr", str(args.lr), "--lora-rank", str(args.lora_rank), "--seed", str(args.seed),
              *(["--generation-backend", args.generation_backend] if args.generation_backend else [])]
    for repeat in range(args.repeats):
        for system in (systems if repeat % 2 == 0 else systems[::-1]):
            python = args.trl_python if system == "trl" else args.ours_python
            run = run_worker(script, ["--worker", system, *common], python, timeout=3600)
            run["repeat"] = repeat
            runs.append(run)
            save(runs)
            print(f"  repeat={repeat} {system:<5} {run['episodes_per_s']:7.2f} episodes/s "
                  f"({run['episodes'] / run['loop_cpu_s']:.2f} per CPU-s), held-out accuracy after "
                  f"{run['after']['accuracy']:.3f}, format {run['after']['format_rate']:.3f}", flush=True)
    return runs


def report(data: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    """Print episodes/s per system, the per-pair ratios ours / TRL and their median, and the accuracies."""
    runs, summary = data["runs"], {}
    by = {s: {r["repeat"]: r for r in runs if r["system"] == s} for s in systems}
    before = data["before"]
    print(f"\nheld-out greedy accuracy before {before['accuracy']:.3f}, exact-format rate {before['format_rate']:.3f}")
    for system in (s for s in systems if by[s]):
        done = list(by[system].values())
        eps = [r["episodes_per_s"] for r in done]
        row = {"episodes_per_s": median(eps), "accuracy_after": median([r["after"]["accuracy"] for r in done]),
               "format_after": median([r["after"]["format_rate"] for r in done]),
               "generation_share": median([r["generation_s"] / r["loop_s"] for r in done]),
               "last_reward": median([sum(r["rewards"][-4:]) / len(r["rewards"][-4:]) for r in done])}
        summary[system] = row
        print(f"{system:<5} episodes/s median {row['episodes_per_s']:7.2f}  runs " + " ".join(f"{e:.2f}" for e in eps)
              + f"  | generation {row['generation_share']:.0%} of the loop | reward (last 4 steps) "
              f"{row['last_reward']:.3f} | held-out accuracy after {row['accuracy_after']:.3f} (runs "
              + " ".join(f"{r['after']['accuracy']:.3f}" for r in done) + f"), format {row['format_after']:.3f}")
    pairs = [(by["ours"][i], by["trl"][i]) for i in sorted(by.get("ours", {})) if i in by.get("trl", {})]
    if pairs:
        ratios = [a["episodes_per_s"] / b["episodes_per_s"] for a, b in pairs]
        cpu = [b["loop_cpu_s"] / a["loop_cpu_s"] for a, b in pairs]
        summary["ratio"], summary["cpu_ratio"], summary["ratios"] = median(ratios), median(cpu), ratios
        print("ratio ours / trl per pair " + " ".join(f"{x:.2f}" for x in ratios)
              + f"  median {median(ratios):.2f}x  (CPU time: {median(cpu):.2f}x)")
    return summary


def plot(data: dict[str, Any], systems: list[str], path: Path) -> None:
    """Mean reward per step (mean over repeats) and held-out greedy accuracy before / after, per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"ours": "lightning-rlhf GRPOModule", "trl": f"TRL {data.get('trl_version', '')} GRPOTrainer"}
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, system in enumerate(s for s in systems if any(r["system"] == s for r in data["runs"])):
        runs = [r for r in data["runs"] if r["system"] == system]
        steps = min(len(r["rewards"]) for r in runs)
        mean = [sum(r["rewards"][i] for r in runs) / len(runs) for i in range(steps)]
        curve.plot(range(1, steps + 1), mean, label=names[system])
        after = [r["after"]["accuracy"] for r in runs]
        bars.bar([index * 3, index * 3 + 1], [data["before"]["accuracy"], median(after)], label=names[system])
        bars.scatter([index * 3 + 1] * len(after), after, color="black", s=8, zorder=3)
    curve.set(xlabel="step", ylabel="mean reward (shaped answer + 0.5 x format)", title="reward per step")
    bars.set(xticks=[0, 1, 3, 4], xticklabels=["ours before", "ours after", "TRL before", "TRL after"],
             ylabel="held-out greedy accuracy", title="accuracy (median; dots: runs)")
    for ax in (curve, bars):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, "curves")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; choose from {SYSTEMS}")
    if args.report_only:
        data = json.loads(args.out.read_text())
    else:
        set_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
            assets = build_assets(args, Path(tmp))
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            data = {"date": started, "machine": machine(), "argv": sys.argv[1:] if argv is None else argv,
                    "model": args.model or f"tiny llama {args.layers}x{args.hidden}", "before": assets["before"],
                    "runs": []}
            print(f"{started} | {data['machine']}\n{data['model']}: {args.steps} steps of {args.batch} prompts x "
                  f"{args.generations} completions, {args.response} new tokens, LoRA r{args.lora_rank}, lr {args.lr}, "
                  f"{args.threads} threads, {args.repeats} interleaved repeats", flush=True)

            def save(runs: list[dict[str, Any]]) -> None:
                versions = [r["trl_version"] for r in runs if "trl_version" in r]
                data.update(runs=runs, **({"trl_version": versions[0]} if versions else {}))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(data, indent=1))

            measure(args, Path(tmp) / "assets.json", systems, save)
    data["summary"] = report(data, systems)
    args.out.write_text(json.dumps(data, indent=1))
    plot(data, systems, args.plot)


if __name__ == "__main__":
    main()
