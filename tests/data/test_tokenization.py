"""Per-stage tokenization and collation: label masks, EOS, padding sides, long prompts, chat templates."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_rlhf.data import IGNORE_INDEX, Encoder, PromptCollator, RewardCollator, SFTCollator, TokenizeSettings
from lightning_rlhf.data.tokenization import (
    DROP_LONG_PROMPT,
    DROP_NO_PAIR,
    DROP_SAME_PAIR,
    dialogue_messages,
    plain_chat_template,
)

RECORDS = [
    {"prompt": "3+4=", "response": " 8", "chosen": " 7", "rejected": " 8"},
    {"prompt": "9+9=", "response": " 18", "chosen": " 18", "rejected": " 8"},
]


def _encode(tokenizer, stage, records=RECORDS, **settings):
    encoder = Encoder(tokenizer, TokenizeSettings(**settings))
    return encoder, [encoder.encode(r, stage) for r in records]


def test_sft_batch_masks_prompt_and_padding_and_ends_with_eos(task_tokenizer):
    encoder, examples = _encode(task_tokenizer, "sft")
    batch = SFTCollator(task_tokenizer.pad_token_id)(examples)
    eos = task_tokenizer.eos_token_id
    for row, record in enumerate(RECORDS):
        prompt_ids = task_tokenizer("Human: " + record["prompt"] + " Assistant:")["input_ids"]
        real = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :real].all() and not batch["attention_mask"][row, real:].any()
        assert batch["input_ids"][row, : len(prompt_ids)].tolist() == prompt_ids
        assert (batch["labels"][row, : len(prompt_ids)] == IGNORE_INDEX).all()
        assert (batch["labels"][row, real:] == IGNORE_INDEX).all()
        response = batch["labels"][row, len(prompt_ids): real].tolist()
        assert response[-1] == eos  # the demonstration (not chosen) is what SFT learns
        assert task_tokenizer.decode(response[:-1]) == record["response"]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == task_tokenizer.pad_token_id).all()


def test_reward_pairs_share_the_prompt_and_a_width(task_tokenizer):
    _, examples = _encode(task_tokenizer, "reward")
    batch = RewardCollator(task_tokenizer.pad_token_id)(examples)
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    for row, record in enumerate(RECORDS):
        for side in ("chosen", "rejected"):
            ids, mask = batch[f"{side}_input_ids"][row], batch[f"{side}_attention_mask"][row]
            text = task_tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            assert text == f"Human: {record['prompt']} Assistant:{record[side]}"
            assert ids[int(mask.sum()) - 1] == task_tokenizer.eos_token_id
            # prompt_lengths: where the response starts (what DPO scores)
            start = int(batch["prompt_lengths"][row])
            assert task_tokenizer.decode(ids[:start]) == f"Human: {record['prompt']} Assistant:"
            response = task_tokenizer.decode(ids[start:int(mask.sum())], skip_special_tokens=True)
            assert response == record[side]


def test_ppo_prompts_are_left_padded_with_raw_texts(task_tokenizer):
    prompts = ["3+4=", "a long 1+2="]
    _, examples = _encode(task_tokenizer, "ppo", [{**r, "prompt": p} for r, p in zip(RECORDS, prompts)])
    for example, prompt in zip(examples, prompts):
        example["prompt"] = prompt  # datasets keeps the raw prompt column beside the ids
    batch = PromptCollator(task_tokenizer.pad_token_id)(examples)
    assert batch["prompts"] == ["3+4=", "a long 1+2="]
    mask = batch["prompt_attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # the shorter prompt is padded on the left
    assert task_tokenizer.decode(batch["prompt_input_ids"][0][mask[0].bool()]) == "Human: 3+4= Assistant:"


def test_add_eos_off(task_tokenizer):
    _, examples = _encode(task_tokenizer, "sft", add_eos=False)
    assert all(task_tokenizer.eos_token_id not in e["input_ids"] for e in examples)


def test_long_prompts_are_dropped_or_truncated_from_the_left(task_tokenizer):
    record = {"prompt": "1+2=" * 20 + "3+4=", "response": " 7", "chosen": " 7", "rejected": " 8"}
    _, [dropped] = _encode(task_tokenizer, "ppo", [record], max_prompt_length=16, max_length=32)
    assert dropped["drop_reason"] == DROP_LONG_PROMPT
    _, [cut] = _encode(task_tokenizer, "ppo", [record], max_prompt_length=16, max_length=32,
                       long_prompt_policy="truncate")
    assert cut["drop_reason"] == "" and len(cut["prompt_input_ids"]) == 16
    assert task_tokenizer.decode(cut["prompt_input_ids"]).endswith("3+4= Assistant:")
    _, [sft] = _encode(task_tokenizer, "sft", [record], max_prompt_length=16, max_length=32,
                       long_prompt_policy="truncate")
    assert sft["prompt_length"] == 16


def test_max_length_cuts_responses_and_identical_pairs_are_dropped(task_tokenizer):
    record = {"prompt": "1+1=", "response": " 2 2 2 2 2 2", "chosen": " 2 2 2 2 2 2", "rejected": " 2 2 2 2 2 3"}
    encoder, [sft] = _encode(task_tokenizer, "sft", [record], max_prompt_length=9, max_length=12)
    assert len(sft["input_ids"]) == 12 and sft["input_ids"][-1] != task_tokenizer.eos_token_id
    _, [pair] = _encode(task_tokenizer, "reward", [record], max_prompt_length=9, max_length=12)
    assert pair["drop_reason"] == DROP_SAME_PAIR
    _, [sft_only] = _encode(task_tokenizer, "reward", [{**record, "chosen": None, "rejected": None}])
    assert sft_only["drop_reason"] == DROP_NO_PAIR


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        TokenizeSettings(max_prompt_length=64, max_length=64)
    with pytest.raises(ValueError, match="long_prompt_policy"):
        TokenizeSettings(long_prompt_policy="clip")


def test_chat_template_is_used_when_present(task_tokenizer):
    chat = copy.deepcopy(task_tokenizer)
    chat.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    hh = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 3+4=\n\nAssistant:"
    assert dialogue_messages(hh) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "3+4="},
    ]
    encoder = Encoder(chat, TokenizeSettings())
    assert encoder.prompt_text(hh) == "<s>user: hi\n<s>assistant: hello\n<s>user: 3+4=\n<s>assistant:"
    assert encoder.prompt_text("3+4=") == "<s>user: 3+4=\n<s>assistant:"
    # the same prompt without a template (or with use_chat_template=False) keeps the Human/Assistant format
    assert Encoder(chat, TokenizeSettings(use_chat_template=False)).prompt_text(hh) == hh
    assert Encoder(task_tokenizer, TokenizeSettings()).prompt_text("3+4=") == "Human: 3+4= Assistant:"
    ids = encoder.prompt_ids("3+4=")[0]
    assert ids.count(chat.bos_token_id) == 2  # the template's own BOS tokens, none added on top
    assert torch.tensor(encoder.response_ids(" 7"))[-1] == chat.eos_token_id


def test_a_tokenizer_exported_with_the_plain_template_encodes_every_stage_as_before(task_tokenizer):
    """The next step loads an export that carries :func:`plain_chat_template`: its batches must be the ones the
    step before trained on (the template-less tokenizer's), responses with their leading space included. A
    reward model fed responses stripped of the space scored a format the policy never produces, and PPO and
    DPO after it stopped learning."""
    exported = copy.deepcopy(task_tokenizer)
    exported.chat_template = plain_chat_template(task_tokenizer)
    for stage in ("sft", "reward", "ppo"):
        assert _encode(exported, stage)[1] == _encode(task_tokenizer, stage)[1], stage
