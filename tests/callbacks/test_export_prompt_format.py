"""Exports carry the prompt format of training: plain transformers + ``apply_chat_template`` reproduce validation."""

from __future__ import annotations

import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_rlhf.data.tokenization import Encoder, TokenizeSettings, plain_chat_template
from lightning_rlhf.models.tiny import train_tokenizer
from tests.conftest import CORPUS
from tests.helpers.ppo_export import fit_and_export
from tests.modules.test_ppo import ppo_paths  # noqa: F401  (fixture)


def _until_stop(tokens: list[int], stop: int) -> list[int]:
    return tokens[: tokens.index(stop) + 1] if stop in tokens else tokens


def test_exported_policy_in_plain_transformers_reproduces_validation(tmp_path, ppo_paths):
    exported = fit_and_export(tmp_path, ppo_paths)
    batch, generated, folder = exported.batch, exported.generated, exported.folder

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tokenizer.chat_template, "the export carries the training prompt format as a chat template"
    length = generated.response_mask.shape[1]
    for row, prompt in enumerate(batch["prompts"]):
        trained_ids = batch["prompt_input_ids"][row][batch["prompt_attention_mask"][row].bool()].tolist()
        chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
        assert chat_ids == trained_ids, f"prompt {prompt!r}: chat template differs from the training prompt"
        out = model.generate(torch.tensor([chat_ids]), max_new_tokens=length, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        plain = _until_stop(out[0, len(chat_ids):].tolist(), tokenizer.eos_token_id)
        expected = generated.sequences[row, -length:][generated.response_mask[row]].tolist()
        assert plain == expected, f"prompt {prompt!r}: plain transformers {plain} != validation {expected}"


def test_plain_template_keeps_a_bos_the_tokenizer_adds_and_renders_dialogues():
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    encoder = Encoder(tokenizer, TokenizeSettings())
    tokenizer.chat_template = plain_chat_template(tokenizer)
    ids, _ = encoder.prompt_ids("7+5=")
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.apply_chat_template([{"role": "user", "content": "7+5="}], add_generation_prompt=True,
                                         tokenize=False) == "<s>Human: 7+5= Assistant:"
    dialogue = "Human: hi Assistant: hello Human: 7+5= Assistant:"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "7+5="}], add_generation_prompt=True, tokenize=False)
    assert rendered == "<s>" + encoder.prompt_text(dialogue)
