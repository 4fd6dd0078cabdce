"""DeepSpeed-Chat's own step-3 PPO loop, run on CPU on our benchmark assets and timed like ours (issue 8).

Run from the repository root (one measurement; ``ppo_deepspeed_chat_config.py --ds-chat-dir`` runs it
in fresh interpreters interleaved with ours)::

    python benchmarks/deepspeed_chat_step3.py --ds-chat-dir <ds-chat-dir> --assets ROOT/assets.json \
        --dtype fp32 --steps 4

``--ds-chat-dir`` (``<ds-chat-dir>`` above) is a checkout of ``applications/DeepSpeed-Chat`` from
deepspeedai/DeepSpeedExamples (how to make one: benchmarks/README.md, "Environment"); its
``dschat`` package is imported from there (nothing of it is copied into this repository). What runs is
its ``DeepSpeedRLHFEngine`` (actor, reference, critic and reward DeepSpeed engines) and
``DeepSpeedPPOTrainer`` (``generate_experience`` + ``train_rlhf``), fed by its ``DataCollatorRLHF`` and
``MiniDataset``, in the loop of ``training/step3_rlhf_finetuning/main.py`` reduced to what one process,
one generation batch, one PPO epoch, no unsupervised data and no EMA execute. Its argument namespace is
built from that ``main.py``'s parser defaults, with the benchmark's values where they differ:
ZeRO stage 0 for both models, hybrid engine, offload, LoRA, gradient checkpointing, EMA, unsupervised
data and tensorboard off; actor lr 9.65e-6, critic lr 5e-6 (its defaults, also ours); cosine schedule
with no warmup (its default warms up for 100 steps; ours does not warm up); dropout 0 on actor and
critic (its ``--actor_dropout``/``--critic_dropout``; ours trains with dropout 0).

Timing is the one ``_common.run_ours`` uses: the loop from the start of the first step (the first
prompt batch already drawn) to the end of the last; a step is ``generate_experience`` + its
``train_rlhf`` and the bookkeeping ``main.py`` does (``.item()`` of the losses, the all-reduced mean
reward); ``generation_s`` is DeepSpeed-Chat's own ``trainer.generate_time`` (``generate`` plus its
short-answer filter), ``training_s`` the ``train_rlhf`` calls, ``other_s`` the rest (the experience
forward passes of actor, reference, reward and critic, and the loop). Model loading and engine set-up
are outside the loop. Not run: ``print_throughput_step3`` (FLOPs printout) and ``get_overflow`` (reads the
optimizer's fp16 ``overflow`` flag, which torch's AdamW under fp32 lacks; it only feeds ``--enable_test_mode``).

Patches, all applied here by monkeypatching (DeepSpeed-Chat's files are not edited):

1. ``transformers.modeling_utils.no_init_weights``: ``dschat/utils/model/model_utils.py`` imports it from
   there; transformers 5 moved it to ``transformers.initialization``. Aliased (same function).
2. ``FusedAdam`` -> ``torch.optim.AdamW`` for actor and critic (same parameter groups, lr and betas
   (0.9, 0.95), eps 1e-8, weight decay 0), built with the kernel our side picks
   (``lightning_rlhf.modules.optim.fastest_adamw_kind``: ``fused`` for CPU float parameters, else
   ``foreach``; plain ``foreach`` if that helper is absent; the result's ``optimizer`` says which).
   FusedAdam is DeepSpeed's CUDA multi-tensor kernel; on the CPU accelerator it JIT-compiles DeepSpeed's
   C++ ``fused_adam`` op instead (that build had not finished after 2 minutes on this 2-core machine, so
   it was not pursued). With the same AdamW kernel the update costs the same on both sides by construction.
3. ``get_train_ds_config``/``get_eval_ds_config`` for ``dtype="fp32"``: DeepSpeed-Chat only knows fp16 and
   bf16 (any other dtype raises ``UnboundLocalError``); fp32 builds its bf16 config and drops the
   ``bfloat16`` section, so DeepSpeed runs in its default fp32. bf16 is untouched. (fp16 is not offered:
   DeepSpeed's fp16 loss scaling needs CUDA.)
4. ``DeepSpeedRLHFEngine._init_reward`` loads the reward model from our reward folder: DeepSpeed-Chat
   builds the reward model from the critic's path, our benchmark has a distinct reward model (seed + 1)
   and critic (seed + 2), the ones our side loads.
5. Not a code patch: the critic and reward folders are converted to DeepSpeed-Chat's step-2 format
   (``pytorch_model.bin`` of its ``RewardModel``: ``rwtransformer.*`` + ``v_head.weight``) from our
   ``AutoModelForSequenceClassification`` folders (``model.*`` + ``score.weight``), the same weights; the
   key sets are checked against the built ``RewardModel`` since its loader is not strict.
6. Not a code patch: ``torch.distributed`` is initialised (gloo, world size 1, 127.0.0.1 on a free port)
   with ``deepspeed.init_distributed``, as the ``deepspeed`` launcher + ``main.py`` would, and
   ``local_rank`` is 0. The device is DeepSpeed's CPU accelerator (auto-detected); batches stay on CPU.
7. Instrumentation only: ``DeepSpeedPPOTrainer._generate_sequence`` is wrapped (and, during the call, the
   actor's ``generate``, to read its raw output) to count the answers DeepSpeed-Chat drops (<= 1 non-pad
   token) and to measure answer width and lengths; neither changes what runs.

``episodes`` counts prompts answered (batch x steps, as ours); ``trained_rows`` the rows ``train_rlhf``
saw (DeepSpeed-Chat drops answers of <= 1 token before training; ``dropped`` counts them). ``scores`` is
the per-step mean raw reward-model score of the trained rows (main.py's ``average_reward``); with no
answer dropped or ended by EOS it equals our ``ppo/score_mean`` on the same batch. Workload differences
that remain are DeepSpeed-Chat's own design, measured as such: dropped short answers, the score read at
the token before EOS (ours: at EOS), and full-vocabulary logits over the whole sequence in its
experience and update passes.

Generation is greedy: for OPT DeepSpeed-Chat passes no sampling arguments, so ``generate`` follows the
actor's ``generation_config`` (``do_sample`` false, checked), with ``max_length`` = prompt + answer
tokens. Its tokenizer loader sets pad = EOS, so it masks an answer's EOS and all after it. Per step:
``answer_width`` (generated positions), ``response_length`` (tokens up to and including the first EOS,
our ``ppo/response_length``) and ``valid_answer_length`` (its non-pad count).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Assets, report_result, set_threads  # noqa: E402

#: DeepSpeed-Chat dtype for each of our Lightning precisions
DTYPES = {"32-true": "fp32", "bf16-mixed": "bf16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ds-chat-dir", type=Path, required=True, help="applications/DeepSpeed-Chat checkout")
    p.add_argument("--assets", type=Path, required=True, help="assets.json written by _common.build_assets")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=16, help="PPO steps (prompt batches)")
    p.add_argument("--batch", type=int, default=8, help="generation batch = training batch")
    p.add_argument("--prompt", type=int, default=16, help="prompt length (max_prompt_seq_len)")
    p.add_argument("--answer", type=int, default=16, help="max_answer_seq_len")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def ds_chat_commit(ds_chat_dir: Path) -> str | None:
    """The DeepSpeedExamples commit: a ``DSE_COMMIT`` file in or above the checkout (``git archive`` extracts
    have no ``.git``), else ``git rev-parse``; None if unknown."""
    for folder in (ds_chat_dir, *ds_chat_dir.resolve().parents):
        if (folder / "DSE_COMMIT").is_file():
            return (folder / "DSE_COMMIT").read_text().strip()
    import subprocess

    proc = subprocess.run(["git", "-C", str(ds_chat_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def step3_args(assets: Assets, dtype: str, batch: int, prompt: int, answer: int, seed: int) -> argparse.Namespace:
    """Every field ``DeepSpeedRLHFEngine``/``DeepSpeedPPOTrainer`` read: step-3 ``main.py`` defaults + ours."""
    return argparse.Namespace(
        actor_model_name_or_path=assets.actor, critic_model_name_or_path=assets.critic, num_padding_at_beginning=1,
        per_device_generation_batch_size=batch, per_device_training_batch_size=batch, generation_batches=1,
        ppo_epochs=1, max_prompt_seq_len=prompt, max_answer_seq_len=answer, actor_learning_rate=9.65e-6,
        critic_learning_rate=5e-6, actor_weight_decay=0.0, critic_weight_decay=0.0, num_train_epochs=1,
        lr_scheduler_type="cosine", gradient_accumulation_steps=1, gradient_accumulation_steps_actor=1,
        num_warmup_steps=0, seed=seed, local_rank=0, global_rank=0, enable_hybrid_engine=False,
        unpin_actor_parameters=False, release_inference_cache=False, inference_tp_size=1, tp_gather_partition_size=8,
        offload=False, dtype=dtype, offload_reference_model=False, offload_reward_model=False, actor_zero_stage=0,
        critic_zero_stage=0, actor_gradient_checkpointing=False, critic_gradient_checkpointing=False,
        actor_dropout=0.0, critic_dropout=0.0, actor_lora_dim=0, actor_lora_module_name="decoder.layers.",
        critic_lora_dim=0, critic_lora_module_name="decoder.layers.", only_optimize_lora=False,
        actor_lora_learning_rate=5e-4, critic_lora_learning_rate=5e-4, enable_ema=False,
        enable_mixed_precision_lora=False, compute_fp32_loss=False, enable_tensorboard=False,
        tensorboard_path="step3_tensorboard", add_eot_token=False, end_of_conversation_token="<|endoftext|>",
        align_overflow=False, print_answers=False, print_answers_interval=1, enable_test_mode=False,
        test_stop_step=0, unsupervised_dataset_name=None, unsupervised_dataset_config_name=None, unsup_coef=27.8)


def ds_chat_value_folder(source: str, target: Path) -> Path:
    """Our sequence-classification folder as a DeepSpeed-Chat step-2 folder (``RewardModel`` state dict)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    if not (target / "pytorch_model.bin").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(source):
            if name != "model.safetensors":
                shutil.copy(Path(source) / name, target / name)
        ours = load_file(str(Path(source) / "model.safetensors"))
        theirs = {("v_head.weight" if k == "score.weight" else "rwtransformer." + k.removeprefix("model.")): v
                  for k, v in ours.items()}
        torch.save(theirs, target / "pytorch_model.bin")
    return target


def adamw_kind(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """The AdamW kernel our PPOModule would use for these parameter groups (``fused`` or ``foreach``)."""
    try:
        from lightning_rlhf.modules.optim import fastest_adamw_kind
    except ImportError:
        return {"foreach": True}
    return fastest_adamw_kind(groups)


def patch(dschat_modules: dict[str, Any], reward_path: str, generations: list[dict[str, int]],
          optimizers: list[str]) -> None:
    """Apply patches 2, 3, 4 and 7 of the module docstring (patch 1 must precede the ``dschat`` imports)."""
    import torch

    engine_mod, trainer_mod = dschat_modules["engine"], dschat_modules["trainer"]

    def adamw(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:  # 2
        kind = adamw_kind(params)
        optimizers.append("AdamW(" + ",".join(kind) + ")")
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=1e-8, weight_decay=0.0, **kind)

    engine_mod.FusedAdam = adamw

    def fp32_aware(build: Any) -> Any:  # 3
        def config(*args: Any, **kwargs: Any) -> dict[str, Any]:
            dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
            if dtype != "fp32":
                return build(*args, **kwargs)
            if "dtype" in kwargs:
                kwargs["dtype"] = "bf16"
            else:
                args = (args[0], "bf16", *args[2:])
            cfg = build(*args, **kwargs)
            cfg.pop("bfloat16")
            return cfg
        return config

    engine_mod.get_train_ds_config = fp32_aware(engine_mod.get_train_ds_config)
    engine_mod.get_eval_ds_config = fp32_aware(engine_mod.get_eval_ds_config)

    init_reward = engine_mod.DeepSpeedRLHFEngine._init_reward  # 4
    engine_mod.DeepSpeedRLHFEngine._init_reward = lambda self, critic_model_name_or_path: init_reward(self, reward_path)

    generate_sequence = trainer_mod.DeepSpeedPPOTrainer._generate_sequence  # 7

    def counted(self: Any, prompts: Any, mask: Any, step: int) -> Any:
        module = self.actor_model.module
        generate, answers = module.generate, []

        def capture(*args: Any, **kwargs: Any) -> Any:
            seq = generate(*args, **kwargs)
            answers.append(seq[:, prompts.shape[1]:])
            return seq

        module.generate = capture  # instance attribute, removed below: the class's generate runs
        try:
            seq = generate_sequence(self, prompts, mask, step)
        finally:
            del module.generate
        generations.append({"batch": prompts.shape[0], "kept": 0 if seq is None else seq.shape[0],
                            **answer_lengths(answers[0], self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)})
        return seq

    trainer_mod.DeepSpeedPPOTrainer._generate_sequence = counted


def answer_lengths(answers: Any, eos_id: int, pad_id: int) -> dict[str, float]:
    """Generated width, mean length up to and including the first EOS (our ``ppo/response_length``), and mean
    non-pad tokens (DeepSpeed-Chat's ``valid_ans_len``; its pad is EOS, so EOS is not counted)."""
    import torch

    is_eos = answers == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], answers.shape[1],
                                                                                    dtype=torch.long))
    return {"answer_width": answers.shape[1], "response_length": first.float().mean().item(),
            "valid_answer_length": (answers != pad_id).sum(1).float().mean().item()}


def init_distributed() -> None:
    """gloo, world size 1, on a free local port (what the ``deepspeed`` launcher sets up for ``main.py``)."""
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo")


def run_ds_chat(ds_chat_dir: Path, assets: Assets, dtype: str, batch: int, steps: int, prompt: int = 16,
                answer: int = 16, seed: int = 0) -> dict[str, Any]:
    """DeepSpeed-Chat step 3 for ``steps`` prompt batches of ``batch``; the same dict ``run_ours`` returns."""
    import torch
    import transformers.initialization
    import transformers.modeling_utils

    transformers.modeling_utils.no_init_weights = transformers.initialization.no_init_weights  # patch 1
    sys.path.insert(0, str(ds_chat_dir.resolve()))
    import dschat.rlhf.ppo_trainer as trainer_mod
    import dschat.rlhf.rlhf_engine as engine_mod
    from dschat.utils.data.data_utils import DataCollatorRLHF, MiniDataset
    from dschat.utils.utils import get_all_reduce_mean, load_hf_tokenizer, set_random_seed
    from torch.utils.data import DataLoader

    if any(len(p) != prompt for p in assets.prompts):
        raise ValueError(f"DeepSpeed-Chat runs need prompts of exactly {prompt} tokens (no padding either side)")
    root = Path(assets.critic).parent / "ds-chat"
    critic = ds_chat_value_folder(assets.critic, root / "critic")
    reward = ds_chat_value_folder(assets.reward_model, root / "reward")
    generations: list[dict[str, int]] = []
    optimizers: list[str] = []
    patch({"engine": engine_mod, "trainer": trainer_mod}, str(reward), generations, optimizers)
    init_distributed()
    args = step3_args(assets, dtype, batch, prompt, answer, seed)
    args.critic_model_name_or_path = str(critic)
    set_random_seed(seed)
    tokenizer = load_hf_tokenizer(assets.tokenizer, fast_tokenizer=True)
    # PromptDataset rows of step 3: (flipped ids, flipped mask, pad id); the collator flips them back (left pad)
    rows = [(torch.tensor(p).flip(0), torch.ones(len(p), dtype=torch.long), tokenizer.pad_token_id)
            for p in assets.prompts]
    # the same seeded shuffle as _common.prompt_loader, so both systems see the same batches in the same order
    loader = DataLoader(rows, batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=DataCollatorRLHF(args.max_prompt_seq_len, args.inference_tp_size),
                        generator=torch.Generator().manual_seed(seed))
    engine = engine_mod.DeepSpeedRLHFEngine(actor_model_name_or_path=assets.actor,
                                            critic_model_name_or_path=str(critic), tokenizer=tokenizer,
                                            num_total_iters=min(steps, len(loader)), args=args)
    check_value_models(engine, critic, reward)
    actor = engine.actor.module
    if actor.generation_config.do_sample:
        raise RuntimeError("the actor's generation_config samples; the benchmark decodes greedily")
    trainer = trainer_mod.DeepSpeedPPOTrainer(engine, args)
    exp_mini_dataset = MiniDataset(args.generation_batches, args.per_device_training_batch_size)

    start = cpu_start = end = cpu_end = None
    step_s: list[float] = []
    curves: dict[str, list[float]] = {k: [] for k in ("scores", "actor_loss", "critic_loss")}
    generation_s = training_s = 0.0
    trained = 0
    for step, batch_prompt in enumerate(loader):
        if step == steps:
            break
        step_start = time.perf_counter()
        if start is None:
            start, cpu_start = step_start, time.process_time()
        out = trainer.generate_experience(batch_prompt["prompt"], batch_prompt["prompt_att_mask"], step)
        generation_s += trainer.generate_time
        exp_dataset = exp_mini_dataset.add(out)
        actor_loss_sum = critic_loss_sum = average_reward = 0.0
        for exp_data in exp_dataset:  # one generation batch, one PPO epoch: a single mini-batch
            train_start = time.perf_counter()
            actor_loss, critic_loss = trainer.train_rlhf(exp_data)
            training_s += time.perf_counter() - train_start
            actor_loss_sum += actor_loss.item()
            critic_loss_sum += critic_loss.item()
            average_reward += exp_data["rewards"].mean()
            trained += exp_data["input_ids"].shape[0]
        average_reward = get_all_reduce_mean(average_reward).item()
        step_s.append(time.perf_counter() - step_start)
        curves["scores"].append(average_reward)
        curves["actor_loss"].append(actor_loss_sum)
        curves["critic_loss"].append(critic_loss_sum)
    end, cpu_end = time.perf_counter(), time.process_time()
    loop_s, episodes = end - start, batch * len(step_s)
    torch.distributed.destroy_process_group()
    return {"system": "ds-chat", "dtype": dtype, "episodes": episodes, "loop_s": loop_s,
            "episodes_per_s": episodes / loop_s, "loop_cpu_s": cpu_end - cpu_start,
            "step_episodes_per_s": batch / statistics.median(step_s), "generation_s": generation_s,
            "training_s": training_s, "other_s": loop_s - generation_s - training_s, **curves,
            **{k: [g[k] for g in generations] for k in ("answer_width", "response_length", "valid_answer_length")},
            "trained_rows": trained, "dropped": sum(g["batch"] - g["kept"] for g in generations),
            "dropped_per_step": [g["batch"] - g["kept"] for g in generations], "step_s": step_s,
            "optimizer": sorted(set(optimizers)), "ds_chat_commit": ds_chat_commit(ds_chat_dir)}


def check_value_models(engine: Any, critic: Path, reward: Path) -> None:
    """The converted critic/reward checkpoints filled every ``RewardModel`` weight (its loader is not strict)."""
    import torch

    for model, folder in ((engine.critic.module, critic), (engine.reward.module, reward)):
        saved = torch.load(folder / "pytorch_model.bin", map_location="cpu")
        if set(saved) != set(model.state_dict()):
            raise RuntimeError(f"{folder}: checkpoint keys differ from DeepSpeed-Chat's RewardModel: "
                               f"{sorted(set(saved) ^ set(model.state_dict()))[:6]}")
        head = model.v_head.weight.detach().float()
        if not torch.allclose(head, saved["v_head.weight"].float(), atol=1e-2):
            raise RuntimeError(f"{folder}: DeepSpeed-Chat's value head is not the one we saved")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    result = run_ds_chat(args.ds_chat_dir, Assets.load(args.assets), args.dtype, args.batch, args.steps,
                         args.prompt, args.answer, args.seed)
    report_result(result)


if __name__ == "__main__":
    main()
