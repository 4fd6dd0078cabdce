"""Smoke tests of the PPO and DPO benchmarks: they run with tiny settings and print the lines the README quotes.

The script runs launch fresh interpreters per measurement, so they are marked slow; the timing helper
they share is tested in-process. The TRL comparison needs ``trl==1.12.0`` (the ``bench`` extra) in this
interpreter or in ``$BENCH_PYTHON``; without it that test is skipped (the DPO comparison takes any release with
``DPOTrainer`` from the same places). The DeepSpeed-Chat harness needs a
checkout of DeepSpeedExamples' ``applications/DeepSpeed-Chat`` named by ``$DS_CHAT_DIR`` (CI has none, so
those tests are skipped there).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TINY = ["--hidden", "32", "--layers", "2", "--vocab", "320", "--prompts", "16", "--steps", "2", "--repeats", "1",
        "--epochs", "1", "--threads", "1"]


def load_common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, python: str = sys.executable) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, str(BENCHMARKS / name), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


# what every TRL side of a comparison must report it ran with: no autocast, no activation recomputation
FP32_NO_RECOMPUTE = {"mixed_precision": "no", "gradient_checkpointing": False}


def latest_trl_python() -> str | None:
    """An interpreter that imports TRL's ``GRPOTrainer`` and peft (``$TRL_LATEST_PYTHON``, this one), or None."""
    for python in filter(None, [os.environ.get("TRL_LATEST_PYTHON"), sys.executable]):
        # trl first: without it the probe fails at once instead of after importing peft (torch, transformers: 20 s)
        if subprocess.run([python, "-c", "import trl, peft; trl.GRPOTrainer"], capture_output=True).returncode == 0:
            return python
    return None


def trl_python() -> str | None:
    """An interpreter that imports trl 1.12.0's PPO trainer, or None."""
    for python in filter(None, [os.environ.get("BENCH_PYTHON"), sys.executable]):
        code = "import trl, trl.experimental.ppo; assert trl.__version__ == '1.12.0'"
        if subprocess.run([python, "-c", code], capture_output=True).returncode == 0:
            return python
    return None


def test_run_ours_times_the_training_loop(tmp_path):
    common = load_common()
    assets = common.build_assets(tmp_path, "llama", 320, 16, (8, 15), hidden_size=32, num_layers=2, num_heads=4,
                                 max_positions=40)
    assert len(assets.prompts) == 16 and all(8 <= len(p) <= 15 for p in assets.prompts)
    assert common.Assets.load(tmp_path / "assets.json") == assets
    from lightning_rlhf.modules.generation_args import GenerationArgs

    result = common.run_ours(assets, {"generation": GenerationArgs(max_new_tokens=4), "train_batch_size": 8},
                             batch_size=8, steps=2)
    assert result["episodes"] == 16 and len(result["scores"]) == 2
    assert result["episodes_per_s"] == pytest.approx(16 / result["loop_s"])
    assert 0 < result["loop_cpu_s"] and result["generation_s"] > 0 and result["training_s"] > 0
    # generation and training are parts of the timed loop, the rest is scoring and Lightning
    assert result["generation_s"] + result["training_s"] < result["loop_s"] and result["other_s"] > 0


SEVERAL_RANK_WORKER = """
import os, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
from _common import report_result

rank = int(os.environ.get("LOCAL_RANK", "0"))
go = Path({go!r})
if rank == 0:  # start the second rank the way Lightning's launcher does: the same command, LOCAL_RANK set
    other = subprocess.Popen([sys.executable, *sys.argv], env={{**os.environ, "LOCAL_RANK": "1"}})
    report_result({{"rank": 0, "payload": "x" * 20000}})
    go.touch()  # the second rank finishes after the first
    sys.exit(other.wait())
while not go.exists():
    time.sleep(0.05)
report_result({{"rank": 1, "payload": "y" * 20000}})
"""


def test_run_worker_takes_the_first_ranks_result_when_every_rank_runs_the_worker(tmp_path, monkeypatch):
    """A worker running a several-rank Lightning fit has each rank run the worker's code to its end; the result
    comes from the first rank, whatever the others print (a CI run failed on two ranks' JSON lines). ``RANK=0``
    in the parent's environment, which the second rank inherits, as an earlier in-process DeepSpeed test leaves
    it (a later CI run took rank 1's result that way)."""
    monkeypatch.setenv("RANK", "0")
    common = load_common()
    script = tmp_path / "worker.py"
    script.write_text(SEVERAL_RANK_WORKER.format(benchmarks=str(BENCHMARKS), go=str(tmp_path / "go")))
    result = common.run_worker(script, ["--worker"])
    assert result["rank"] == 0 and result["payload"] == "x" * 20000


def test_run_worker_says_when_a_worker_reports_nothing(tmp_path):
    common = load_common()
    script = tmp_path / "silent.py"
    script.write_text("print('done, but no result')\n")
    with pytest.raises(RuntimeError, match="silent.py --worker failed \\(exit 0, no result reported\\)"):
        common.run_worker(script, ["--worker"])


@pytest.mark.slow
def test_ppo_vs_trl_script_runs_ours(tmp_path):
    out, plot = tmp_path / "runs.json", tmp_path / "curves.png"
    stdout = run_script("ppo_vs_trl.py", *TINY, "--systems", "ours", "--out", str(out), "--plot", str(plot))
    assert "ours         episodes/s median" in stdout and "ours time split: generation" in stdout
    data = json.loads(out.read_text())
    assert [r["system"] for r in data["runs"]] == ["ours"] and len(data["runs"][0]["scores"]) == 2
    assert plot.stat().st_size > 0


@pytest.mark.slow
def test_ppo_vs_trl_script_compares_with_trl(tmp_path):
    python = trl_python()
    if python is None:
        pytest.skip("trl==1.12.0 not importable (install the bench extra or set BENCH_PYTHON)")
    out = tmp_path / "runs.json"
    stdout = run_script("ppo_vs_trl.py", *TINY, "--out", str(out), "--plot", str(tmp_path / "c.png"),
                        "--trl-python", python, python=python)
    for line in ("ratio ours / trl ", "ratio ours / trl-compute", "trl generation share"):
        assert line in stdout, stdout
    runs = json.loads(out.read_text())["runs"]
    assert {r["system"] for r in runs} == {"ours", "trl", "trl-compute"}
    assert all(len(r["scores"]) == 2 and r["episodes"] == 16 for r in runs)
    assert all(r["settings"] == FP32_NO_RECOMPUTE for r in runs if r["system"] != "ours")


# -- DPO: benchmarks/dpo_vs_trl.py (TRL's DPOTrainer, any recent release) ------------------------------------------
DPO_TINY = ["--hidden", "32", "--layers", "2", "--vocab", "320", "--steps", "3", "--batch", "4", "--repeats", "1",
            "--threads", "1"]


def dpo_trl_python() -> str | None:
    """An interpreter that imports TRL's DPOTrainer ($BENCH_PYTHON, then this one), or None."""
    for python in filter(None, [os.environ.get("BENCH_PYTHON"), sys.executable]):
        if subprocess.run([python, "-c", "from trl import DPOConfig, DPOTrainer"], capture_output=True).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_dpo_vs_trl_script_runs_ours(tmp_path):
    out, plot = tmp_path / "runs.json", tmp_path / "curves.png"
    stdout = run_script("dpo_vs_trl.py", *DPO_TINY, "--systems", "ours", "--out", str(out), "--plot", str(plot))
    assert "ours  pairs/s median" in stdout and "ours  loss first 0.6931" in stdout  # policy = reference: log 2
    (run,) = json.loads(out.read_text())["runs"]
    assert run["system"] == "ours" and run["pairs"] == 12 and len(run["loss"]) == len(run["accuracy"]) == 3
    assert run["pairs_per_s"] == pytest.approx(12 / run["loop_s"]) and plot.stat().st_size > 0


@pytest.mark.slow
def test_dpo_vs_trl_script_compares_with_trl(tmp_path):
    """Same model, ids, order and settings: TRL's per-step losses follow ours (the first is log 2 in both)."""
    python = dpo_trl_python()
    if python is None:
        pytest.skip("trl's DPOTrainer not importable here (pip install trl, or set BENCH_PYTHON to a venv with it)")
    out = tmp_path / "runs.json"
    stdout = run_script("dpo_vs_trl.py", *DPO_TINY, "--out", str(out), "--plot", str(tmp_path / "c.png"),
                        "--trl-python", python)
    assert "ratio ours / trl per pair" in stdout, stdout
    runs = {r["system"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"ours", "trl"} and all(len(r["loss"]) == 3 for r in runs.values())
    assert runs["ours"]["loss"][0] == pytest.approx(math.log(2), abs=1e-5) == runs["trl"]["loss"][0]
    assert runs["ours"]["loss"] == pytest.approx(runs["trl"]["loss"], abs=2e-3)
    # TRL's DPOConfig defaults to bf16 autocast and gradient checkpointing: the run must have turned both off
    assert runs["trl"]["settings"] == FP32_NO_RECOMPUTE


@pytest.mark.slow
def test_deepspeed_chat_config_script(tmp_path):
    out = tmp_path / "dschat.json"
    stdout = run_script("ppo_deepspeed_chat_config.py", "--runs", "1", "--steps", "1", "--threads", "1",
                        "--precisions", "32-true", "--out", str(out))
    assert "DS-Chat (quoted)" in stdout and "84.8" in stdout
    saved = json.loads(out.read_text())
    assert set(saved["runs"]) == {"deepspeed0/32-true", "single/32-true"}
    assert all(len(r) == 1 and r[0]["episodes"] == 8 and r[0]["episodes_per_s"] > 0 for r in saved["runs"].values())
    assert 460_000 < saved["params"]["actor"] < 475_000  # DS-Chat's 467K-parameter OPT
    again = run_script("ppo_deepspeed_chat_config.py", "--report-only", "--out", str(out))
    assert "deepspeed0 32-true" in again


GRPO_TINY = ["--hidden", "32", "--layers", "2", "--vocab", "320", "--steps", "2", "--repeats", "1", "--threads", "1",
             "--response", "6", "--held-out", "8"]


@pytest.mark.slow
def test_grpo_vs_trl_script_runs_ours(tmp_path):
    """Our side of the GRPO comparison: two steps of 8 prompts x 4 completions, timed, with both reward curves
    and the held-out evaluation before and after; the report re-prints from the JSON."""
    out, plot = tmp_path / "grpo.json", tmp_path / "grpo.png"
    stdout = run_script("grpo_vs_trl.py", *GRPO_TINY, "--systems", "ours", "--out", str(out), "--plot", str(plot))
    assert "ours  episodes/s median" in stdout and "held-out greedy accuracy before" in stdout, stdout
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["system"] == "ours" and run["episodes"] == 2 * 8 * 4
    assert run["episodes_per_s"] == pytest.approx(run["episodes"] / run["loop_s"])
    assert 0 < run["generation_s"] < run["loop_s"] and 0 < run["training_s"] < run["loop_s"]
    # the weighted reward is answer_match_shaped (<= 1) + 0.5 x answer_only_format (<= 1)
    assert len(run["rewards"]) == 2 and all(0.0 <= r <= 1.5 for r in run["rewards"])
    assert all(1 <= n <= 6 for n in run["response_length"])
    for result in (data["before"], run["after"]):
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["format_rate"] <= 1.0
    assert data["summary"]["ours"]["episodes_per_s"] == run["episodes_per_s"] and plot.stat().st_size > 0
    again = run_script("grpo_vs_trl.py", "--report-only", "--systems", "ours", "--out", str(out), "--plot", str(plot))
    assert "ours  episodes/s median" in again


def test_grpo_vs_trl_accuracy_is_one_function_for_both(tiny_tokenizer):
    """The held-out evaluation both systems run: the last number of the greedy answer is checked against
    ``answer`` and the exact-format rate counts answers that are the number alone."""
    import torch

    load_common()
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_grpo_vs_trl", BENCHMARKS / "grpo_vs_trl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tok = tiny_tokenizer
    records = [{"prompt": "Human: What is 3 + 4? Assistant:", "answer": "7"},
               {"prompt": "Human: What is 5 + 7? Assistant:", "answer": "12"},
               {"prompt": "Human: What is 1 + 1? Assistant:", "answer": "2"}]

    class Policy(torch.nn.Module):  # answers with ``answers[i]`` then EOS
        def __init__(self, answers):
            super().__init__()
            self.answers = answers

        def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
            assert kwargs["do_sample"] is False and attention_mask[:, -1].all()  # greedy, left-padded
            eos = [tok.eos_token_id] * max_new_tokens
            rows = [(tok(a, add_special_tokens=False)["input_ids"] + eos)[:max_new_tokens] for a in self.answers]
            return torch.cat([input_ids, torch.tensor(rows)], 1)

    side = tok.padding_side
    result = bench.greedy_accuracy(Policy([" 7", " the sum is 12", " 3 apples"]), tok, records, max_new_tokens=12)
    assert result["accuracy"] == pytest.approx(2 / 3) and result["format_rate"] == pytest.approx(1 / 3)
    assert result["samples"][1].strip() == "the sum is 12" and tok.padding_side == side  # padding side restored


@pytest.mark.slow
def test_grpo_vs_trl_script_compares_with_trl(tmp_path):
    python = latest_trl_python() or pytest.skip(
        "TRL's GRPOTrainer and peft not importable (set TRL_LATEST_PYTHON to an environment with them)")
    out = tmp_path / "grpo.json"
    stdout = run_script("grpo_vs_trl.py", *GRPO_TINY, "--out", str(out), "--plot", str(tmp_path / "g.png"),
                        "--trl-python", python)
    assert "ratio ours / trl per pair" in stdout, stdout
    runs = {r["system"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"ours", "trl"}
    # the same work on both sides: 2 optimizer steps of 8 x 4 completions, one logged reward per step
    assert all(r["episodes"] == 64 and len(r["rewards"]) == 2 for r in runs.values())
    assert all(1 <= n <= 6 for r in runs.values() for n in r["response_length"])
    # GRPOConfig defaults to gradient checkpointing (and bf16): fp32 without recomputation, as ours
    assert runs["trl"]["settings"] == FP32_NO_RECOMPUTE


# -- quality mode (--task addition): benchmarks/quality.py ------------------------------------------------------
QUALITY_TINY = ["--task", "addition", "--seeds", "1", "--steps", "2", "--task-size", "600", "--build-epochs", "1",
                "--threads", "1"]


def load_quality():
    load_common()  # quality.py imports _common by its file name
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_quality", BENCHMARKS / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ppo_step_parts_script_times_each_choice():
    import re

    out = run_script("ppo_step_parts.py", "--repeats", "1")
    numbers = {line.split(",")[0].split(":")[0]: [float(x) for x in re.findall(r" (\d+\.\d+)", line.split(":", 1)[1])]
               for line in out.splitlines() if " ms" in line}
    from lightning_rlhf.modules.ppo_logging import PPO_TAGS

    assert set(numbers) == {"AdamW step", "generate 8x16 -> +16 tokens", "256x128 @ 128x512",
                            f"Lightning log_dict of {len(PPO_TAGS)} curves"}
    assert len(numbers["AdamW step"]) == 3 and len(numbers["256x128 @ 128x512"]) == 4
    assert all(v > 0 for values in numbers.values() for v in values)


def test_quality_evaluation_checks_greedy_answers(tiny_tokenizer):
    """The shared evaluation: the answer up to the first EOS is checked; what follows EOS is ignored."""
    import torch

    quality = load_quality()
    tok, prompts = tiny_tokenizer, ["3+4=", "5+7=", "0+0="]
    ids = [tok(f"Human: {p} Assistant:", add_special_tokens=False)["input_ids"] for p in prompts]

    class Policy(torch.nn.Module):  # answers with ``answers[i]`` + EOS + (ignored) garbage
        def __init__(self, answers):
            super().__init__()
            self.answers = answers

        def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
            rows = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + [5] * max_new_tokens
                    for a in self.answers]
            return torch.cat([input_ids, torch.tensor([r[:max_new_tokens] for r in rows])], 1)

    class Reward(torch.nn.Module):  # score = number of real tokens, so padding after EOS is checked too
        def forward(self, input_ids, attention_mask, position_ids):
            assert position_ids[attention_mask.bool()].min() == 0
            return type("Out", (), {"logits": attention_mask.sum(1, keepdim=True).float()})()

    right = quality.evaluate_policy(Policy([" 7", " 12", " 0"]), Reward(), tok, ids, prompts, max_new_tokens=6)
    assert right["task_success"] == 1.0
    wrong = quality.evaluate_policy(Policy([" 7", " 2", " 0 0"]), Reward(), tok, ids, prompts, max_new_tokens=6)
    assert wrong["task_success"] == pytest.approx(1 / 3)
    # EOS and everything after it are padding for the reward model: prompt + answer + EOS tokens only
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in (" 7", " 12", " 0")]
    lengths = [len(i) + len(a) + 1 for i, a in zip(ids, answers)]
    assert right["reward_mean"] == pytest.approx(sum(lengths) / 3)


@pytest.fixture(scope="module")
def quality_assets(tmp_path_factory):
    """One assets folder for the quality-mode tests (the second run must reuse it)."""
    return tmp_path_factory.mktemp("quality_assets")


@pytest.mark.slow
def test_quality_mode_runs_ours(tmp_path, quality_assets):
    out = tmp_path / "q.json"
    stdout = run_script("ppo_vs_trl.py", *QUALITY_TINY, "--systems", "ours", "--assets-dir", str(quality_assets),
                        "--out", str(out), "--plot", str(tmp_path / "q.png"))
    assert "final-quarter score" in stdout and (tmp_path / "q.png").stat().st_size > 0
    saved = json.loads(out.read_text())
    (run,) = saved["runs"]
    assert run["system"] == "ours" and len(run["scores"]) == len(run["kl"]) == 2
    penalty = saved["settings"]["missing_eos_penalty"]
    assert penalty > 0 and run["penalised_scores"] == pytest.approx(
        [s - penalty * (1 - e) for s, e in zip(run["scores"], run["eos_fraction"])])
    for when in ("before", "after"):
        assert set(run[when]) == {"held_out", "all_sums"}
        assert all(0.0 <= r["task_success"] <= 1.0 for r in run[when].values())
    assert (quality_assets / "quality_assets.json").is_file()


@pytest.mark.slow
def test_quality_mode_compares_with_trl(tmp_path, quality_assets):
    python = trl_python()
    if python is None:
        pytest.skip("trl==1.12.0 not importable (install the bench extra or set BENCH_PYTHON)")
    out = tmp_path / "q.json"
    stdout = run_script("ppo_vs_trl.py", *QUALITY_TINY, "--assets-dir", str(quality_assets), "--out", str(out),
                        "--plot", str(tmp_path / "q.png"), "--trl-python", python, python=python)
    assert "final-quarter score, ours - TRL" in stdout, stdout
    runs = {r["system"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"ours", "trl"} and all(len(r["scores"]) == 2 for r in runs.values())
    # both start from the same folders and go through the same evaluation: identical "before" numbers
    assert runs["ours"]["before"] == runs["trl"]["before"]
    # TRL logs the score after the missing-EOS penalty; the raw score recorded beside it is never lower
    assert all(p <= s + 1e-6 for p, s in zip(runs["trl"]["penalised_scores"], runs["trl"]["scores"]))


def ds_chat_dir() -> str:
    """``$DS_CHAT_DIR`` if it names a DeepSpeed-Chat checkout, else skip (CI has none)."""
    ds_chat = os.environ.get("DS_CHAT_DIR")
    if not ds_chat or not (Path(ds_chat) / "dschat" / "rlhf" / "ppo_trainer.py").is_file():
        pytest.skip("DS_CHAT_DIR does not name an applications/DeepSpeed-Chat checkout (not available in CI)")
    return ds_chat


def test_deepspeed_chat_step3_runs_on_our_assets(tmp_path):
    """One tiny DeepSpeed-Chat step 3 through the harness: it trains on our assets, greedy and full length.

    Why each check: the episode and row counts show the loop ran every prompt (minus what DS-Chat drops);
    the answer width shows both systems generate the same number of positions; finite losses show the
    CPU patches (fp32 config, AdamW) give a working PPO update; and, when no answer ended early, the first
    step's mean reward equals ours on the same batch, which is only true if DS-Chat loaded the same reward
    model and got the same prompts and greedy answers.
    """
    ds_chat = ds_chat_dir()
    common = load_common()
    prompt, answer = 8, 4
    assets = common.build_assets(tmp_path, "opt", 320, 8, (prompt, prompt), hidden_size=32, num_layers=2,
                                 num_heads=4, max_positions=prompt + answer)
    stdout = run_script("deepspeed_chat_step3.py", "--ds-chat-dir", ds_chat, "--assets", str(tmp_path / "assets.json"),
                        "--dtype", "fp32", "--steps", "1", "--batch", "8", "--prompt", str(prompt), "--answer",
                        str(answer), "--threads", "1")
    result = json.loads(stdout.splitlines()[-1])
    assert result["episodes"] == 8 and result["trained_rows"] + result["dropped"] == 8
    assert result["answer_width"] == [answer] and 1 <= result["response_length"][0] <= answer
    assert all(math.isfinite(x) for x in result["actor_loss"] + result["critic_loss"])
    assert result["loop_s"] > 0 and result["generation_s"] > 0 and result["training_s"] > 0
    if result["response_length"][0] == answer:  # no EOS: the same rows and score positions as ours
        from lightning_rlhf.modules.generation_args import GenerationArgs

        ours = common.run_ours(assets, {"generation": GenerationArgs(max_new_tokens=answer, do_sample=False),
                                        "train_batch_size": 8}, batch_size=8, steps=1)
        assert result["scores"][0] == pytest.approx(ours["scores"][0], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_deepspeed_chat_config_script_measures_ds_chat(tmp_path):
    """``--ds-chat-dir``: DS-Chat joins the interleaved runs and the ratio comes from the same run."""
    ds_chat, out = ds_chat_dir(), tmp_path / "dschat.json"
    stdout = run_script("ppo_deepspeed_chat_config.py", "--ds-chat-dir", ds_chat, "--runs", "1", "--steps", "1",
                        "--threads", "1", "--strategies", "single", "--precisions", "32-true", "--out", str(out))
    assert "DS-Chat (run)" in stdout and "positions generated" in stdout
    saved = json.loads(out.read_text())
    assert set(saved["runs"]) == {"single/32-true", "ds-chat/32-true"} and saved["fresh_interpreters"]
    ds = saved["runs"]["ds-chat/32-true"][0]
    assert ds["episodes"] == 8 and ds["answer_width"] == [16] and "load_before" in ds


@pytest.mark.slow
def test_grpo_prompt_sharing_script_times_both_settings(tmp_path):
    """The prompt-sharing benchmark on a tiny Llama: both settings timed on the same module, ratios reported."""
    out = tmp_path / "sharing.json"
    stdout = run_script("grpo_prompt_sharing.py", "--repeats", "2", "--lora-rank", "4", "--response", "4",
                        "--threads", "1", "--out", str(out))
    assert "generate_s" in stdout and "update_s" in stdout, stdout
    data = json.loads(out.read_text())
    for setting in ("full", "shared"):
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in data["times"][setting].values())
    assert data["speedup"]["update_s"] == pytest.approx(data["median"]["full"]["update_s"]
                                                        / data["median"]["shared"]["update_s"])
