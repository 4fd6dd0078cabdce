"""A prompt's forward computed once and shared by its answers: the samples, logits and gradients of the full forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.models import load_causal_lm
from lightning_rlhf.models.prompt_cache import shared_prompt_cache, shared_prompt_response_logits
from lightning_rlhf.models.forward import response_logits
from lightning_rlhf.modules.generation_args import GenerationArgs
from lightning_rlhf.modules.rollout import repeat_groups

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4)
REPEATS = 3


def left_padded_prompts(tokenizer):
    """Three distinct prompts of different lengths (two rows left-padded)."""
    texts = ["Human: What is 3 + 4? Assistant:", "Human: What is 12 + 9? Answer with the number only. Assistant:",
             "Human: 7 + 1? Assistant:"]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any(dim=1).sum() == 2, "the test needs left-padded rows"
    return enc["input_ids"], enc["attention_mask"]


def sample(model, ids, mask, cache=None, seed=0):
    """``REPEATS`` samples per prompt (``model``: a transformers model or a generation replica)."""
    kwargs = cache or {}
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(input_ids=ids.repeat_interleave(REPEATS, 0), attention_mask=mask.repeat_interleave(
            REPEATS, 0), do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, output_scores=True,
            return_dict_in_generate=True, pad_token_id=model.config.pad_token_id, **kwargs)


def counted_prompt_tokens(model):
    """A list that collects the number of tokens each forward embeds."""
    counts: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: counts.append(args[0].numel()))
    return counts


@pytest.mark.parametrize("family,lora", [("llama", False), ("llama", True), ("opt", False), ("gpt2", False),
                                         ("gpt_neox", False)])
def test_shared_prefill_samples_the_same_tokens_with_the_same_scores(tiny_model_factory, family, lora):
    """Same seed, same tokens and (to float summation order) the same scores, for left-padded prompts of several
    lengths, on every tiny family (llama: grouped-query attention, tied embeddings, pad id set) and with LoRA."""
    path = tiny_model_factory(family, **SIZES)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    if lora:
        targets = ["q_proj", "v_proj"]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
        model.eval()
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    plain = sample(model, ids, mask)
    counts = counted_prompt_tokens(model)
    with torch.inference_mode():
        cache = shared_prompt_cache(model, ids, mask, REPEATS)
    assert set(cache) <= {"cache", "past_key_values"} and len(cache) == 1
    shared = sample(model, ids, mask, cache)
    assert torch.equal(plain.sequences, shared.sequences)
    for step, (a, b) in enumerate(zip(plain.scores, shared.scores)):
        assert torch.allclose(a, b, atol=1e-5), f"step {step}: scores differ by {(a - b).abs().max():.2e}"
    # the prompts were embedded once (all but their last token), then one token per row per step
    rows, width = ids.shape
    assert counts[0] == rows * (width - 1)
    assert counts[1] == rows * REPEATS


def test_no_sharing_where_it_cannot_apply(tiny_model_factory):
    """One sample per prompt, one-token prompts or a tensor-parallel replica: no arguments (generate runs as
    usual), and no forward runs."""
    path = tiny_model_factory("llama", **SIZES)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    counts = counted_prompt_tokens(model)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert shared_prompt_cache(model, ids, torch.ones_like(ids), 1) == {}
    assert shared_prompt_cache(model, ids[:, :1], torch.ones_like(ids[:, :1]), 4) == {}

    class TensorParallelReplica:
        tp_group = object()

    assert shared_prompt_cache(TensorParallelReplica(), ids, torch.ones_like(ids), 4) == {}
    assert counts == []


@pytest.mark.parametrize("groups_per_call", [None, 2])
def test_grpo_rollouts_are_the_same_with_and_without_the_shared_prefill(tmp_path, tiny_model_factory,
                                                                        groups_per_call):
    """Through ``GRPOModule.generate`` (whole groups per ``generate`` call, or two at a time): equal sequences,
    masks and streamed log-probabilities under one seed, and each call's prompts embedded once per group."""
    from tests.modules.test_grpo import make_module, make_trainer

    path = tiny_model_factory("llama", **SIZES)
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    batch = {"prompt_input_ids": ids, "prompt_attention_mask": mask}
    results, embedded = [], []
    for share in (False, True):
        rows_per_call = groups_per_call and groups_per_call * REPEATS
        module = make_module(path, generation=GenerationArgs(max_new_tokens=6), share_prompt_prefix=share,
                             num_generations=REPEATS, generation_batch_size=rows_per_call)
        module.trainer = make_trainer(tmp_path)
        module.configure_model()
        counts = counted_prompt_tokens(module.actor)
        torch.manual_seed(0)
        results.append(module.generate(repeat_groups(batch, REPEATS), greedy=False, with_logprobs=True,
                                       group_size=REPEATS))
        embedded.append(counts[0])
    plain, shared = results
    assert torch.equal(plain.sequences, shared.sequences)
    assert torch.equal(plain.response_mask, shared.response_mask)
    torch.testing.assert_close(plain.logprobs, shared.logprobs, atol=1e-5, rtol=1e-5)
    prompts, width = groups_per_call or len(ids), ids.shape[1]
    assert embedded == [prompts * REPEATS * width, prompts * (width - 1)]


def test_a_generation_replica_shares_the_prefill_and_counts_it_as_generation_time(tiny_model_factory):
    """What ``hybrid_deepspeed`` yields with ``inference_tp_size: 1`` (a hook-free replica, LoRA merged): the same
    samples with the shared cache, and the prefill's time in the replica's ``generate_s``."""
    from lightning_rlhf.strategies.generation import GenerationStats, generation_mode, release_replica

    path = tiny_model_factory("llama", **SIZES)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    stats = GenerationStats()
    with generation_mode(model, stats=stats) as policy:
        plain = sample(policy, ids, mask)
        before = stats.generate_s
        with torch.inference_mode():
            cache = shared_prompt_cache(policy, ids, mask, REPEATS)
        assert len(cache) == 1 and stats.generate_s > before and stats.calls == 1
        shared = sample(policy, ids, mask, cache)
    release_replica(model)
    assert torch.equal(plain.sequences, shared.sequences)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain.scores, shared.scores))


def sampled_rollout(model, ids, mask, length=8):
    """``REPEATS`` answers per prompt as the update sees them: prompt + response rows and their attention mask."""
    sequences = sample(model, ids, mask).sequences
    prompt_mask = mask.repeat_interleave(REPEATS, 0)
    response_mask = (sequences[:, ids.shape[1]:] != model.config.pad_token_id).long()
    return sequences, torch.cat([prompt_mask, response_mask], dim=1), sequences.shape[1] - ids.shape[1]


@pytest.mark.parametrize("family,lora", [("llama", True), ("opt", False), ("gpt2", False), ("gpt_neox", False)])
def test_shared_prompt_logits_and_gradients_equal_the_full_forward(tiny_model_factory, family, lora):
    """The update's forward with each prompt run once: the response logits and every trained parameter's
    gradient equal those of the full forward (rows shuffled, as a mini-batch holds them)."""
    path = tiny_model_factory(family, **SIZES)
    model = load_causal_lm(str(path), dropout=0.0)  # as the modules load the policy: train mode draws no dropout
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    model.eval()
    sequences, attention_mask, length = sampled_rollout(model, ids, mask)
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(0))
    sequences, attention_mask = sequences[order], attention_mask[order]
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    results = []
    for logits_of in (response_logits, shared_prompt_response_logits):
        model.zero_grad()
        counts = counted_prompt_tokens(model)
        logits = logits_of(model, sequences, attention_mask, length)
        (logits.log_softmax(-1)[..., :7].sum()).backward()
        results.append((logits.detach(), [p.grad.clone() for p in trained], counts))
    (full, full_grads, full_counts), (shared, shared_grads, shared_counts) = results
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    rows, width = sequences.shape
    assert full_counts[0] == rows * width
    assert shared_counts == [len(ids) * (ids.shape[1] - 1), rows * (length + 1)]


def test_rows_with_distinct_prompts_run_the_plain_forward(tiny_model_factory):
    """Nothing to share (PPO's rollouts, one answer per prompt): None, before any forward runs."""
    path = tiny_model_factory("llama", **SIZES)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    sequences = torch.cat([ids, ids[:, -2:]], dim=1)
    counts = counted_prompt_tokens(model)
    assert shared_prompt_response_logits(model, sequences, torch.cat([mask, mask[:, -2:]], 1), 2) is None
    assert counts == []


def test_grpo_trains_to_the_same_weights_with_and_without_shared_prompts(tmp_path, tiny_model_factory):
    """Two GRPO iterations (two mini-batches each, two epochs) from one seed: the same rewards and, to float
    rounding, the same trained weights whether prompts are shared or not."""
    from lightning.pytorch import seed_everything

    from tests.modules.test_grpo import make_data, make_module, make_trainer

    path = tiny_model_factory("llama", **SIZES)
    weights, rewards = [], []
    for share in (False, True):
        seed_everything(0)
        module = make_module(path, share_prompt_prefix=share)
        trainer = make_trainer(tmp_path / str(share), limit_val_batches=0)
        trainer.fit(module, datamodule=make_data(path))
        weights.append({k: v.detach().clone() for k, v in module.actor.state_dict().items()})
        rewards.append(float(trainer.callback_metrics["grpo/reward_mean"]))
    assert rewards[0] == rewards[1]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_activation_checkpointing_runs_the_update_in_full_and_generation_shared(tiny_model_factory):
    """transformers drops the cache of a checkpointed forward in training: no cache is offered there (the plain
    forward runs, nothing wasted); in eval mode (generation) the cache is shared as usual."""
    from lightning_rlhf.models.prompt_cache import cache_argument

    model = load_causal_lm(str(tiny_model_factory("llama", **SIZES)), gradient_checkpointing=True, dropout=0.0)
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(tiny_model_factory("llama", **SIZES)))
    sequences, attention_mask = torch.cat([ids, ids], dim=0), torch.cat([mask, mask], dim=0)
    model.train()
    assert cache_argument(model) is None
    assert shared_prompt_response_logits(model, sequences, attention_mask, 2) is None
    model.eval()
    assert cache_argument(model) in ("cache", "past_key_values")
    assert shared_prompt_response_logits(model, sequences, attention_mask, 2) is not None


def test_zero3_partitioned_models_run_the_update_in_full(tiny_model_factory):
    """Under ZeRO-3 the update does not share (two forwards cost DeepSpeed's parameter fetches twice): a model
    with a partitioned parameter (``ds_id``, as DeepSpeed marks them) gets None before any forward runs."""
    path = tiny_model_factory("llama", **SIZES)
    model = load_causal_lm(str(path), dropout=0.0)
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    sequences, attention_mask = torch.cat([ids, ids], dim=0), torch.cat([mask, mask], dim=0)
    assert shared_prompt_response_logits(model, sequences, attention_mask, 2) is not None
    next(model.parameters()).ds_id = 0
    counts = counted_prompt_tokens(model)
    assert shared_prompt_response_logits(model, sequences, attention_mask, 2) is None
    assert counts == []
