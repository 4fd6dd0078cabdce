"""PPOModule on tiny models, Lightning's single-device CPU strategy: curves in TensorBoard, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.modules.optim import OptimizerArgs
from lightning_rlhf.modules.ppo import PPO_TAGS, GenerationArgs, PPOModule

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4)


@pytest.fixture()
def ppo_paths(tiny_model_factory) -> dict[str, Path]:
    return {
        "actor": tiny_model_factory("llama", "causal_lm", seed=0, **SIZES),
        "reward_model": tiny_model_factory("llama", "value", seed=1, **SIZES),
    }


def make_module(paths: dict[str, Path], **overrides) -> PPOModule:
    kwargs = dict(
        actor=str(paths["actor"]), reward_model=str(paths["reward_model"]) if paths.get("reward_model") else None,
        actor_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        critic_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=6), generation_batch_size=2, train_batch_size=2,
        update_epochs=2, log_samples_every_n_steps=1, missing_eos_penalty=1.0,
    )
    kwargs.update(overrides)
    return PPOModule(**kwargs)


def make_data(paths: dict[str, Path], **overrides) -> RLHFDataModule:
    kwargs = dict(tokenizer=str(paths["actor"]), stage="rl", task_size=200, batch_size=4, eval_fraction=0.1,
                  max_prompt_length=32, max_length=64)
    kwargs.update(overrides)
    return RLHFDataModule(**kwargs)


def make_trainer(root: Path, max_epochs: int = 1, **overrides) -> Trainer:
    kwargs = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=1,
        log_every_n_steps=1, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(str(root), name="ppo", version=0), enable_checkpointing=False,
        default_root_dir=str(root),
    )
    kwargs.update(overrides)
    return Trainer(**kwargs)


def read_events(log_dir: str) -> EventAccumulator:
    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_ppo_logs_every_curve_and_samples(tmp_path, ppo_paths):
    torch.manual_seed(0)
    module = make_module(ppo_paths, ptx_coef=0.5, kl_target=1.0, kl_horizon=100)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, datamodule=make_data(ppo_paths))
    events = read_events(trainer.logger.log_dir)
    scalars = set(events.Tags()["scalars"])
    expected = set(PPO_TAGS) | {"ppo/task_success", "ppo/ptx_loss", "val/reward_mean", "val/task_success"}
    assert expected <= scalars, f"missing tags: {sorted(expected - scalars)}"
    for tag in PPO_TAGS:  # one point per PPO iteration
        assert len(events.Scalars(tag)) == 2, tag
    # global_step counts optimizer steps: (actor + critic) x update_epochs x 2 mini-batches + 1 ptx, per iteration
    assert trainer.global_step == 2 * (2 * 2 * 2 + 1)
    assert {"ppo/samples/text_summary", "val/samples/text_summary"} <= set(events.Tags()["tensors"])
    assert all(opt.defaults["fused"] for opt in trainer.optimizers)  # fp32: PyTorch's fused AdamW kernel
    # the adaptive controller moved the KL coefficient between the two iterations
    kl_coefs = [e.value for e in events.Scalars("ppo/kl_coef")]
    assert kl_coefs[0] == pytest.approx(0.1) and kl_coefs[1] != pytest.approx(0.1)
    assert module.kl_controller.value != pytest.approx(kl_coefs[1])  # updated after the second rollout
    # actor and critic trained, reference and reward model frozen and untouched
    assert all(not p.requires_grad for p in module.reference.parameters())
    reference = type(module.reference).from_pretrained(str(ppo_paths["actor"]))
    actor_moved = any(not torch.equal(a, r) for a, r in zip(module.actor.parameters(), reference.parameters()))
    ref_same = all(torch.equal(a, r) for a, r in zip(module.reference.parameters(), reference.parameters()))
    assert actor_moved and ref_same
    lengths = [e.value for e in events.Scalars("ppo/response_length")]
    assert all(1 <= v <= 6 for v in lengths)


def test_ppo_resumes_from_checkpoint(tmp_path, ppo_paths):
    torch.manual_seed(0)
    data = make_data(ppo_paths)
    first = make_module(ppo_paths, kl_target=1.0, kl_horizon=100)
    trainer = make_trainer(tmp_path / "a", max_epochs=1)
    trainer.fit(first, datamodule=data)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    kl_after_first = first.kl_controller.value
    steps_after_first = trainer.global_step

    resumed = make_module(ppo_paths, kl_target=1.0, kl_horizon=100)
    state = torch.load(ckpt, weights_only=False)
    trainer2 = make_trainer(tmp_path / "b", max_epochs=2)
    trainer2.fit(resumed, datamodule=make_data(ppo_paths), ckpt_path=str(ckpt))
    assert trainer2.current_epoch == 2 and trainer2.global_step == 2 * steps_after_first
    events = read_events(trainer2.logger.log_dir)
    assert len(events.Scalars("ppo/kl_coef")) == 2  # only the second epoch ran
    assert events.Scalars("ppo/kl_coef")[0].value == pytest.approx(kl_after_first)
    # resumed from the saved weights, then trained further
    saved_actor = {k[len("actor."):]: v for k, v in state["state_dict"].items() if k.startswith("actor.")}
    assert any(not torch.equal(saved_actor[n], p) for n, p in resumed.actor.named_parameters())


def test_invalid_arguments_are_named(ppo_paths):
    with pytest.raises(ValueError, match="train_batch_size"):
        make_module(ppo_paths, train_batch_size=0)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        make_module(ppo_paths, kl_estimator="k7")
    with pytest.raises(FileNotFoundError, match="reward_stats.json"):
        make_module(ppo_paths, normalize_reward=True)
    with pytest.raises(ValueError, match="clip_reward_value must be > 0 .*or None"):
        make_module(ppo_paths, clip_reward_value=0.0)  # a clip of 0 zeroed every score
    assert make_module(ppo_paths, clip_reward_value=None).hparams.clip_reward_value is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_from_generate_equal_a_forward_pass(tmp_path, ppo_paths, temperature):
    """The log-probs and entropies taken from generate's logits are those a full forward pass gives."""
    from lightning_rlhf.models.forward import policy_logprobs

    module = make_module(ppo_paths, generation=GenerationArgs(max_new_tokens=6, temperature=temperature))
    module.trainer = make_trainer(tmp_path)
    module.configure_model()
    data = make_data(ppo_paths)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    generated = module.generate(batch, greedy=False, with_logprobs=True)
    mask, length = generated.response_mask, generated.response_mask.shape[1]
    assert generated.logprobs.shape == mask.shape == generated.entropy.shape
    with torch.no_grad():
        logprobs, entropy = policy_logprobs(module.actor.eval(), generated.sequences, generated.attention_mask, length,
                                            temperature, with_entropy=True)
    assert mask.sum() >= len(mask)  # every row has at least one real response token
    torch.testing.assert_close(generated.logprobs[mask], logprobs[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(generated.entropy[mask], entropy[mask], atol=1e-5, rtol=1e-5)
    assert module.generate(batch, greedy=True).logprobs is None  # validation decodes without them


def test_curves_follow_log_every_n_steps_and_callback_metrics_every_iteration(tmp_path, ppo_paths):
    torch.manual_seed(0)
    module = make_module(ppo_paths, update_epochs=1, logprobs_from_generation=False)
    seen: list[float] = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            seen.append(float(trainer.callback_metrics["ppo/kl"]))

    trainer = make_trainer(tmp_path, limit_train_batches=4, log_every_n_steps=2, callbacks=[Record()])
    trainer.fit(module, datamodule=make_data(ppo_paths))
    events = read_events(trainer.logger.log_dir)
    points = events.Scalars("ppo/kl")
    assert [p.step for p in points] == [1, 3]  # iterations 2 and 4, at Lightning's step for step metrics
    assert [p.value for p in points] == pytest.approx([seen[1], seen[3]])
    assert len(seen) == 4 and len(set(seen)) == 4  # callbacks saw a fresh value every iteration
    assert set(PPO_TAGS) <= set(trainer.logged_metrics)


def test_bf16_mixed_clips_gradients_with_a_non_fused_adamw(tmp_path, ppo_paths):
    """Lightning's mixed-precision plugin refuses to clip the gradients of a fused optimizer."""
    torch.manual_seed(0)
    module = make_module(ppo_paths, update_epochs=1, max_grad_norm=1.0)
    trainer = make_trainer(tmp_path, precision="bf16-mixed", limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(ppo_paths))
    assert trainer.global_step == 2 * 2  # (actor + critic) x 2 mini-batches
    assert not any(opt.defaults["fused"] for opt in trainer.optimizers)
    assert all(opt.defaults["foreach"] for opt in trainer.optimizers)


def test_max_grad_norm_is_the_clip_hybrid_deepspeed_gives_each_trained_engine(ppo_paths):
    from lightning_rlhf.strategies.engine_steps import module_gradient_clipping

    assert module_gradient_clipping(make_module(ppo_paths)) == 1.0  # DeepSpeed-Chat clips at 1.0
    assert module_gradient_clipping(make_module(ppo_paths, max_grad_norm=0.5)) == 0.5
    assert module_gradient_clipping(make_module(ppo_paths, max_grad_norm=None)) is None
    with pytest.raises(ValueError, match="max_grad_norm must be >= 0 or None, got -1"):
        make_module(ppo_paths, max_grad_norm=-1.0)


def test_16_mixed_clips_the_unscaled_gradients(tmp_path, ppo_paths):
    """Under fp16 AMP (a real GradScaler, on CPU) the clip applies to the unscaled gradients the optimizer uses.

    Lightning turns ``precision="16-mixed"`` on CPU into bf16, so the plugin is passed as it is built on a GPU.
    Clipping before the unscale clipped gradients ``2**16`` times too large: the step then saw norms ~1e-5.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    max_norm, seen = 1e-3, {"before_clip": [], "at_step": []}

    def norm(optimizer) -> float:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    class Record(Callback):  # callbacks' hook runs after the unscale and before the module's own
        def on_fit_start(self, trainer, pl_module) -> None:
            for optimizer in trainer.optimizers:
                optimizer.register_step_pre_hook(lambda opt, *_: seen["at_step"].append(norm(opt)))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            seen["before_clip"].append(norm(optimizer))

    torch.manual_seed(0)
    module = make_module(ppo_paths, update_epochs=1, max_grad_norm=max_norm)
    plugin = MixedPrecision("16-mixed", "cpu")
    trainer = make_trainer(tmp_path, plugins=[plugin], callbacks=[Record()], limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(ppo_paths))
    assert plugin.scaler is not None and plugin.scaler.get_scale() > 1  # the loss really was scaled
    assert len(seen["at_step"]) == len(seen["before_clip"]) == 4  # (actor + critic) x 2 mini-batches, none skipped
    assert all(n > max_norm for n in seen["before_clip"]), seen  # the true gradients needed the clip ...
    assert seen["at_step"] == pytest.approx([max_norm] * 4, rel=1e-3), seen  # ... and the step got exactly max_norm


def test_bf16_lora_actor_first_ratio_is_one_under_the_hybrid_replica(tmp_path, ppo_paths):
    """A bf16 actor with LoRA generates on the hybrid strategy's merged bf16 replica; the rollout's log-probs come
    from the actor's forward, so the first mini-batch's ratio is exactly 1 (generation's were up to 0.3 nats off on
    SmolLM2-135M)."""
    from lightning_rlhf.models import LoraArgs
    from lightning_rlhf.models.forward import policy_logprobs
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    module = make_module(ppo_paths, actor_lora=LoraArgs(rank=4, alpha=8))
    module.trainer = make_trainer(tmp_path, strategy=HybridDeepSpeedStrategy(stage=0), logger=False)
    module.configure_model()
    with torch.no_grad():  # adapters as after training (B starts at 0)
        for name, param in module.actor.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    module.actor.to(torch.bfloat16)
    assert module.hparams.logprobs_from_generation and not module.logprobs_from_generation()
    data = make_data(ppo_paths)
    data.setup("fit")
    torch.manual_seed(0)
    rollout, _, _ = module.make_experience(next(iter(data.train_dataloader())))
    first = next(rollout.minibatches(module.hparams.train_batch_size, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        new, _ = policy_logprobs(module.actor, first.sequences, first.attention_mask, first.response_mask.shape[1])
    assert torch.equal(new[first.response_mask], first.logprobs[first.response_mask])
