"""The real-model slow tier, one process: PPO's sampled distribution and first ratio on SmolLM2-135M-Instruct.

With ``repetition_penalty: 1.2`` saved in the checkpoint's generation config (as Qwen2.5-Instruct ships one), the
rollout samples from ``softmax(logits / T)`` of the hybrid strategy's replica (LoRA merged in float32), its
log-probs are those of a forward pass over the sampled tokens under that distribution, and the first mini-batch's
ratio against the update forward (LoRA unmerged) is 1 to float32 rounding. In bf16 the replica holds the weights
rounded once, and the rollout's log-probs come from the actor's forward: the first ratio is exactly 1.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_rlhf.data.collate import PromptCollator
from lightning_rlhf.models import LoraArgs, load_causal_lm
from lightning_rlhf.modules import PPOModule
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.models.forward import policy_logprobs, response_logits
from lightning_rlhf.strategies import HybridDeepSpeedStrategy, generation_mode

PROMPTS = ["What is the capital of France?", "List three prime numbers."]
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def penalised_folder(smollm2_folder, tmp_path_factory):
    """SmolLM2 with ``repetition_penalty: 1.2`` saved in its generation config (weights linked, not copied)."""
    folder = tmp_path_factory.mktemp("smollm2-penalised")
    for path in smollm2_folder.iterdir():
        if path.is_file() and path.name != "generation_config.json":
            (folder / path.name).symlink_to(path.resolve())
    generation = json.loads((smollm2_folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "repetition_penalty": 1.2}))
    return folder


def prompt_batch(tokenizer) -> dict:
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in PROMPTS]
    examples = [{"prompt": p, "prompt_input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]}
                for p, t in zip(PROMPTS, texts)]
    return PromptCollator(tokenizer.pad_token_id)(examples)


def penalised_logprobs(logits: torch.Tensor, sequences: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, R)`` log-probs of the response tokens had the saved ``repetition_penalty: 1.2`` reshaped each step."""
    from transformers import RepetitionPenaltyLogitsProcessor

    penalty, start = RepetitionPenaltyLogitsProcessor(1.2), sequences.shape[1] - length
    steps = [penalty(sequences[:, : start + t], logits[:, t].float()) / TEMPERATURE for t in range(length)]
    return torch.log_softmax(torch.stack(steps, 1), -1).gather(-1, sequences[:, start:, None]).squeeze(-1)


@pytest.mark.slow
def test_smollm2_rollout_logprobs_and_first_ratio_with_a_saved_repetition_penalty(penalised_folder, tmp_path):
    module = PPOModule(actor=str(penalised_folder), reward_model=str(penalised_folder),
                       actor_lora=LoraArgs(rank=8, alpha=16),
                       generation=GenerationArgs(max_new_tokens=12, temperature=TEMPERATURE))
    module.trainer = Trainer(accelerator="cpu", devices=1, strategy=HybridDeepSpeedStrategy(stage=0), logger=False,
                             enable_checkpointing=False, default_root_dir=str(tmp_path))
    # only the actor takes part in sampling and in the first ratio: the other three models are not loaded
    actor = load_causal_lm(str(penalised_folder), lora=module.actor_lora, dropout=0.0, tokenizer=module.tokenizer)
    assert actor.generation_config.repetition_penalty == 1.2
    with torch.no_grad():  # adapters as after training (B starts at 0, which would make the merge trivial)
        for name, param in actor.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    module.actor = actor.train()
    batch = prompt_batch(module.tokenizer)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generated = module.generate(batch, greedy=False, with_logprobs=module.logprobs_from_generation())
    assert any("repetition_penalty" in str(w.message) for w in caught), "the set-aside penalty is named"
    sequences, mask, length = generated.sequences, generated.response_mask, generated.response_mask.shape[1]
    assert mask.sum() >= 2 * len(PROMPTS)

    # the rollout's log-probs are those of softmax(logits / T) of the model that sampled (the replica, LoRA merged)
    with generation_mode(module.trainer.strategy, module.actor) as replica, torch.no_grad():
        logits = response_logits(replica.module, sequences, generated.attention_mask, length)
    sampled_from = torch.log_softmax(logits / TEMPERATURE, -1).gather(-1, sequences[:, -length:, None]).squeeze(-1)
    torch.testing.assert_close(generated.logprobs[mask], sampled_from[mask], atol=1e-4, rtol=0)
    # ... and not those of the penalised distribution the saved config would have sampled from
    assert (penalised_logprobs(logits, sequences, length) - generated.logprobs)[mask].abs().max() > 0.1
    # the first mini-batch's ratio: the update forward (LoRA unmerged, dropout 0) against the rollout's log-probs
    with torch.no_grad():
        new, _ = policy_logprobs(module.actor, sequences, generated.attention_mask, length, TEMPERATURE)
    deviation = torch.exp(new - generated.logprobs)[mask].sub(1).abs()
    gap = (generated.logprobs - sampled_from)[mask].abs().max()
    print(f"\nSmolLM2 float32 + LoRA: rollout vs replica forward max |diff| {gap:.2e}, "
          f"first ratio max |ratio - 1| {deviation.max():.2e}")
    assert deviation.max() < 1e-3

    # bf16: the replica holds W + B @ A * s summed in float32 and rounded once; the log-probs come from the forward
    module.actor.to(torch.bfloat16)
    assert not module.logprobs_from_generation()
    layer = module.actor.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    with generation_mode(module.trainer.strategy, module.actor) as replica:
        merged = dict(replica.module.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
        assert torch.equal(merged, (layer.base_layer.weight.float() + b @ a * layer.scaling["default"]).bfloat16())
    with torch.no_grad():  # the rollout (every row) and the first mini-batch (its first row) through the same forward
        old, _ = policy_logprobs(module.actor, sequences, generated.attention_mask, length, TEMPERATURE)
        new, _ = policy_logprobs(module.actor, sequences[:1], generated.attention_mask[:1], length, TEMPERATURE)
    assert torch.equal(old[:1][mask[:1]], new[mask[:1]])
