"""``generation_backend="fast"``'s decode loop: the tokens of transformers' ``generate`` (greedy; sampled: its
distribution), log-probs equal to a forward pass, the shared prefill, packed weights renewed only when told."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from lightning_rlhf.models.fast_decode import FastDecoder, _warpers, sample_tokens
from lightning_rlhf.models.forward import response_logits
from lightning_rlhf.models.packed_linear import PackedWeights, packing_available
from lightning_rlhf.models.prompt_cache import shared_prompt_cache
from lightning_rlhf.models.sampling import StreamedLogprobs
from tests.models.test_prompt_cache import SIZES, left_padded_prompts

NEW = 10


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    """A tiny llama (grouped-query attention, tied embeddings, pad id set), its left-padded prompts and stop id."""
    path = tiny_model_factory("llama", **SIZES)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids, mask = left_padded_prompts(tokenizer)
    # a stop id the untrained model samples within NEW tokens, so that rows end at different steps
    with torch.inference_mode():
        greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                pad_token_id=model.config.pad_token_id)
    stop = int(greedy[0, ids.shape[1] + 2])
    return model, ids, mask, stop


def kwargs(model, stop, **sampling):
    return dict(max_new_tokens=NEW, eos_token_id=[stop], pad_token_id=model.config.pad_token_id, **sampling)


def hf_generate(model, ids, mask, stop, seed=0, **sampling):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs(model, stop, **sampling))


def fast_generate(decoder, ids, mask, stop, seed=0, **sampling):
    torch.manual_seed(seed)
    with torch.inference_mode():
        return decoder.generate(ids, mask, **kwargs(decoder.model, stop, **sampling))


@pytest.mark.parametrize("pack", [False, True])
def test_greedy_tokens_equal_generates_with_rows_that_stop_early(tiny, pack):
    model, ids, mask, stop = tiny
    if pack and not packing_available(model):
        pytest.skip("this torch build has no oneDNN linear")
    expected = hf_generate(model, ids, mask, stop, do_sample=False)
    assert (expected[:, ids.shape[1]:] == stop).any(), "the test needs a row that stops"
    assert torch.equal(fast_generate(FastDecoder(model, pack=pack), ids, mask, stop, do_sample=False), expected)


def assert_drawn_with(tokens, probs):
    """Each token's frequency within 5 standard errors of its probability; no token of probability 0 drawn."""
    probs = probs.double()
    frequency = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    assert frequency[probs == 0].sum() == 0, "a token of probability 0 was drawn"
    sigma = (probs * (1 - probs) / len(tokens)).sqrt()
    assert ((frequency - probs).abs() <= 5 * sigma + 1e-9).all(), (frequency, probs)


def test_sample_tokens_draws_each_token_with_its_probability_and_never_a_masked_one():
    probs = torch.tensor([0.5, 0.0, 0.3, 1e-3, 0.199, 0.0])  # zeros inside and at the end (top-k / top-p masks)
    torch.manual_seed(0)
    assert_drawn_with(sample_tokens(probs.expand(200_000, -1)), probs)


@pytest.mark.parametrize("sampling", [dict(temperature=0.7, top_k=0, top_p=1.0), dict(temperature=1.3, top_k=5,
                                                                                           top_p=0.8)])
def test_sampled_tokens_follow_generates_distribution(tiny, sampling):
    # the first token of many copies of one prompt, against softmax of generate's own warpers on a forward pass
    model, ids, mask, stop = tiny
    rows = 4000
    copies = ids[:1].expand(rows, -1), mask[:1].expand(rows, -1)
    sequences = fast_generate(FastDecoder(model, pack=False), *copies, stop, seed=3, do_sample=True, **sampling)
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[:, -1].float()
    for warper in _warpers(**sampling):
        logits = warper(ids[:1], logits)
    assert_drawn_with(sequences[:, ids.shape[1]], logits.softmax(-1)[0])


def test_streamed_logprobs_of_the_packed_decode_equal_a_forward_pass(tiny):
    model, ids, mask, stop = tiny
    decoder = FastDecoder(model)
    stream = StreamedLogprobs(temperature=0.7)
    torch.manual_seed(1)
    with torch.inference_mode():
        sequences = decoder.generate(ids, mask, **kwargs(model, stop, do_sample=True, temperature=0.7),
                                     logits_processor=LogitsProcessorList([stream]))
    responses = sequences[:, ids.shape[1]:]
    logprobs, _ = stream.result(responses)
    full_mask = torch.cat([mask, torch.ones_like(responses)], dim=1)
    with torch.no_grad():
        logits = response_logits(model, sequences, full_mask, responses.shape[1]).float() / 0.7
    expected = torch.log_softmax(logits, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    upto_stop = torch.cumsum((responses == stop).long(), 1) - (responses == stop).long() == 0
    torch.testing.assert_close(logprobs[upto_stop], expected[upto_stop], atol=1e-4, rtol=1e-4)


def test_a_shared_prompt_prefill_gives_the_same_samples(tiny):
    model, ids, mask, stop = tiny
    rows = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    decoder = FastDecoder(model, pack=False)
    plain = fast_generate(decoder, *rows, stop, seed=5, do_sample=True, temperature=1.0)
    with torch.inference_mode():
        cache = shared_prompt_cache(model, ids, mask, 3)
    assert cache, "the tiny llama shares its prefill"
    torch.manual_seed(5)
    with torch.inference_mode():
        shared = decoder.generate(*rows, **kwargs(model, stop, do_sample=True, temperature=1.0), **cache)
    assert torch.equal(plain, shared)


def test_only_the_layers_written_since_are_packed_again(tiny):
    model, ids, mask, stop = tiny
    if not packing_available(model):
        pytest.skip("this torch build has no oneDNN linear")
    model = AutoModelForCausalLM.from_config(model.config).eval()  # a copy whose weights this test may change
    packed = PackedWeights(model)
    x = torch.randn(2, model.config.hidden_size)
    layer = model.model.layers[0].self_attn.q_proj
    with packed.active() as count:
        before = layer(x)
    assert count == packed.repacked == sum(type(m) is torch.nn.Linear for m in model.modules())
    torch.testing.assert_close(before, torch.nn.functional.linear(x, layer.weight), atol=1e-5, rtol=1e-5)
    with packed.active():
        again = layer(x)
    assert packed.repacked == 0 and torch.equal(again, before)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # written in place, as the replica's refresh writes: that layer alone is packed again
    with packed.active():
        renewed = layer(x)
    assert packed.repacked == 1
    torch.testing.assert_close(renewed, 2 * before, atol=1e-5, rtol=1e-5)
    layer.weight.data.mul_(0.5)  # through .data the version counter does not move: invalidate() is the way
    with packed.active():
        stale = layer(x)
    packed.invalidate()
    with packed.active():
        restored = layer(x)
    torch.testing.assert_close(stale, 2 * before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(restored, before, atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(layer)  # the layer's own forward is back outside the block


def test_arguments_it_does_not_implement_are_refused(tiny):
    model, ids, mask, stop = tiny
    with pytest.raises(TypeError, match=r"generation_backend='fast'.*\['num_beams'\].*generation_backend='native'"):
        FastDecoder(model).generate(ids, mask, **kwargs(model, stop), num_beams=2)


def test_the_compiled_static_cache_step_gives_the_same_tokens_and_compiles_once_per_bucket(tiny):
    model, ids, mask, stop = tiny
    decoder = FastDecoder(model, compile=True, pack=False)
    expected = hf_generate(model, ids, mask, stop, do_sample=False)
    assert torch.equal(fast_generate(decoder, ids, mask, stop, do_sample=False), expected)
    shorter = ids[:, 1:], mask[:, 1:]  # one token shorter: the same cache-length bucket
    assert torch.equal(fast_generate(decoder, *shorter, stop, do_sample=False),
                       hf_generate(model, *shorter, stop, do_sample=False))
    assert decoder.buckets == [(len(ids), 64)] and decoder.compile_s > 0


def test_grpo_rollouts_on_the_fast_backend(tmp_path, tiny_model_factory, monkeypatch):
    """Through ``GRPOModule.generate`` on ``HybridDeepSpeedStrategy(generation_backend="fast")``, groups sharing
    their prefill: greedy answers equal the native backend's, and the sampled answers' streamed log-probs equal
    the actor's forward (the ratio of the first update starts at 1)."""
    from lightning_rlhf.models.forward import policy_logprobs
    from lightning_rlhf.modules.generation_args import GenerationArgs
    from lightning_rlhf.modules.rollout import repeat_groups
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy
    from lightning_rlhf.strategies.generation import release_replica
    from tests.modules.test_grpo import make_module, make_trainer

    calls = []
    decode = FastDecoder.generate
    monkeypatch.setattr(FastDecoder, "generate", lambda self, *a, **k: calls.append(k) or decode(self, *a, **k))
    path = tiny_model_factory("llama", **SIZES)
    ids, mask = left_padded_prompts(AutoTokenizer.from_pretrained(path))
    batch = repeat_groups({"prompt_input_ids": ids, "prompt_attention_mask": mask}, 3)
    greedy = {}
    for backend in ("native", "fast"):
        module = make_module(path, generation=GenerationArgs(max_new_tokens=6, temperature=0.7), num_generations=3)
        module.trainer = make_trainer(tmp_path, logger=False,
                                      strategy=HybridDeepSpeedStrategy(stage=0, generation_backend=backend))
        module.configure_model()
        greedy[backend] = module.generate(batch, greedy=True).sequences
        if backend == "fast":
            torch.manual_seed(0)
            sampled = module.generate(batch, greedy=False, with_logprobs=True, group_size=3)
            assert sampled.logprobs is not None
            with torch.no_grad():
                forward, _ = policy_logprobs(module.actor, sampled.sequences, sampled.attention_mask,
                                             sampled.response_mask.shape[1], temperature=0.7)
            keep = sampled.response_mask
            torch.testing.assert_close(sampled.logprobs[keep], forward[keep], atol=1e-4, rtol=1e-4)
        release_replica(module.actor)
    assert torch.equal(greedy["native"], greedy["fast"])
    assert len(calls) == 2 and ("cache" in calls[1] or "past_key_values" in calls[1])  # greedy, then shared prefill


def test_the_strategy_refuses_the_fast_backend_with_a_tensor_parallel_replica():
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    with pytest.raises(ValueError, match=r"'fast' decodes on a full replica per rank.*inference_tp_size must be 1"):
        HybridDeepSpeedStrategy(generation_backend="fast", inference_tp_size=2)
    with pytest.raises(ValueError, match=r"'native', 'fast', 'deepspeed' or 'vllm', got 'sglang'"):
        HybridDeepSpeedStrategy(generation_backend="sglang")
    with pytest.raises(ValueError, match=r"'vllm' decodes on a full replica per rank.*inference_tp_size must be 1"):
        HybridDeepSpeedStrategy(generation_backend="vllm", inference_tp_size=2)


def test_a_model_that_drops_its_kv_cache_is_refused_with_the_backend_to_use(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", "causal_lm", seed=0, **SIZES))
    model.gradient_checkpointing_enable()
    model.train()  # transformers drops the cache under activation checkpointing in training mode
    with pytest.raises(ValueError, match="use generation_backend='native'"):
        FastDecoder(model)
    model.eval()
    assert FastDecoder(model, pack=False)._cache_name in ("cache", "past_key_values")
