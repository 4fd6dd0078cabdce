"""Rollouts sample from the policy's own distribution and end at any of the model's end-of-turn tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lightning_rlhf.models import sampling
from lightning_rlhf.models.sampling import ignored_settings, sampling_from_policy, stop_token_ids
from lightning_rlhf.modules.rollout import response_mask_from_tokens

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4)
#: what instruct checkpoints save: a repetition penalty (Qwen2.5-Instruct), n-gram blocking, truncation, a minimum
SAVED = dict(repetition_penalty=1.3, no_repeat_ngram_size=1, top_k=2, top_p=0.5, min_new_tokens=3, suppress_tokens=[5])


def saved_model(tiny_model_factory, **generation):
    path = tiny_model_factory("llama", **SIZES)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    model.generation_config = GenerationConfig(**{**model.generation_config.to_dict(), **generation})
    return model, AutoTokenizer.from_pretrained(path)


def sample_with_scores(model, ids, temperature):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                          top_k=0, top_p=1.0, max_new_tokens=6, output_scores=True, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_samples_from_softmax_of_logits_over_temperature(tiny_model_factory, temperature, monkeypatch):
    """The scores generate samples from equal the raw logits / T: no saved processor reshapes them."""
    monkeypatch.setattr(sampling, "_WARNED", set())  # the warning comes once per process and set of names
    model, tokenizer = saved_model(tiny_model_factory, **SAVED)
    ids = torch.randint(4, 60, (4, 5), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="repetition_penalty"), sampling_from_policy(model, tokenizer) as stop:
        out = sample_with_scores(model, ids, temperature)
    assert stop == stop_token_ids(tokenizer, model.generation_config)
    processed, raw = torch.stack(out.scores, 1), torch.stack(out.logits, 1)
    live = out.sequences[:, ids.shape[1]:] != 0  # steps after a row ended are padding
    torch.testing.assert_close(processed[live], raw[live] / temperature, atol=1e-5, rtol=1e-5)
    assert model.generation_config.repetition_penalty == 1.3, "the model's own settings come back after the block"
    unguarded = sample_with_scores(model, ids, temperature)  # what rollouts did before: the saved processors apply
    assert not torch.allclose(torch.stack(unguarded.scores, 1)[:, 0], torch.stack(unguarded.logits, 1)[:, 0] / temperature)


def test_only_distribution_changing_settings_are_reported():
    config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 7], pad_token_id=3, max_new_tokens=50, do_sample=True,
                              temperature=0.6, repetition_penalty=1.1, top_p=0.9)
    assert ignored_settings(config) == {"repetition_penalty": 1.1, "top_p": 0.9}
    assert ignored_settings(GenerationConfig(bos_token_id=1, eos_token_id=2)) == {}


def test_end_of_turn_ids_from_the_model_end_responses(tiny_model_factory):
    _, tokenizer = saved_model(tiny_model_factory)
    config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, 9])  # Llama-3 style: <|end_of_text|>, <|eot_id|>
    stop = stop_token_ids(tokenizer, config)
    assert stop == [tokenizer.eos_token_id, 9]
    responses = torch.tensor([[5, 9, 6, 6], [5, 6, tokenizer.eos_token_id, 6], [5, 6, 6, 6]])
    mask, ended = response_mask_from_tokens(responses, stop)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False], [True] * 4]
    assert ended.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="names an EOS token"):
        stop_token_ids(type("NoEos", (), {"eos_token_id": None})(), None)


def test_generation_stops_at_a_model_end_of_turn_token(tiny_model_factory, tmp_path):
    """PPOModule.generate honours the saved EOS list: a response ends at the model's end-of-turn id."""
    from lightning_rlhf.modules import PPOModule
    from lightning_rlhf.modules.generation_args import GenerationArgs
    from tests.modules.test_ppo import make_data, make_trainer

    path = tiny_model_factory("llama", **SIZES)
    data = make_data({"actor": path})
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    def greedy(actor: str):
        module = PPOModule(actor=actor, reward_model=str(tiny_model_factory("llama", "value", **SIZES)),
                           generation=GenerationArgs(max_new_tokens=6))
        module.trainer = make_trainer(tmp_path)
        module.configure_model()
        return module.generate(batch, greedy=True)

    plain = greedy(str(path))
    end_of_turn = int(plain.sequences[0, batch["prompt_input_ids"].shape[1]])  # row 0's first answer token
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.eos_token_id = [model.generation_config.eos_token_id, end_of_turn]  # as Llama-3 saves
    model.save_pretrained(tmp_path / "eot")
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "eot")
    generated = greedy(str(tmp_path / "eot"))
    assert generated.eos_found[0] and generated.response_mask[0].sum() == 1, generated
    responses = generated.sequences[:, batch["prompt_input_ids"].shape[1]:]
    expected, _ = response_mask_from_tokens(responses, [AutoTokenizer.from_pretrained(path).eos_token_id, end_of_turn])
    assert torch.equal(generated.response_mask, expected)


def big_vocab_model(vocab_size: int = 8192):
    """A one-layer llama whose vocabulary dominates what a rollout holds (as a 128k vocabulary does)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # every row runs to max_new_tokens
    return model


def sample(model, ids, new_tokens: int, **kwargs):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                              top_k=0, top_p=1.0, max_new_tokens=new_tokens, pad_token_id=0, **kwargs)


def test_streamed_logprobs_equal_a_forward_pass_and_keep_one_step():
    """Log-probs read as tokens are drawn equal a forward pass; what generation keeps alive does not grow with
    the response length, where output_logits keeps every step's (B, V) float32 logits."""
    from transformers import LogitsProcessorList

    from lightning_rlhf.models.sampling import StreamedLogprobs
    from lightning_rlhf.models.forward import policy_logprobs
    from tests.helpers.measure import PeakTensorBytes

    model, batch = big_vocab_model(), 4
    ids = torch.randint(2, 1000, (batch, 5), generator=torch.Generator().manual_seed(0))
    one_step = batch * model.config.vocab_size * 4  # one step's float32 distribution
    peaks, kept_logits = {}, {}
    for new_tokens in (4, 16):
        stream = StreamedLogprobs(temperature=0.7)
        torch.manual_seed(0)
        with PeakTensorBytes() as peak:
            sequences = sample(model, ids, new_tokens, logits_processor=LogitsProcessorList([stream]))
            logprobs, entropy = stream.result(sequences[:, ids.shape[1]:])
        peaks[new_tokens] = peak.bytes
        with PeakTensorBytes() as peak:  # what rollouts did before: every step's logits, kept to the end
            sample(model, ids, new_tokens, output_logits=True, return_dict_in_generate=True)
        kept_logits[new_tokens] = peak.bytes
    assert sequences.shape[1] == ids.shape[1] + 16
    with torch.no_grad():
        want, want_entropy = policy_logprobs(model, sequences, torch.ones_like(sequences), 16, 0.7, with_entropy=True)
    torch.testing.assert_close(logprobs, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-5, rtol=1e-5)
    assert peaks[16] - peaks[4] < one_step, (peaks, one_step)  # 12 more steps, not one more distribution kept
    assert kept_logits[16] - kept_logits[4] > 10 * one_step, kept_logits  # the measurement sees kept logits
