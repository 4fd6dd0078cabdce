"""Tools in the model's own chat format: prompts carry the tools' schemas through the chat template, calls are
``<tool_call>`` JSON, and an episode is, text for text, the conversation the template renders. The tiny tokenizer
gets a Hermes-style template (the format Qwen and Hermes models use); SmolLM2's has no tool format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.environments import ChatTemplateTools, EpisodeArgs
from lightning_rlhf.environments.episodes import run_episodes
from tests.environments.test_episodes import Scripted, prompts, records
from tests.environments.test_tools import calc

TOOL = "tests.environments.test_tools:calc"
HERMES = (
    "{%- if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>{{ eos_token }}\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "{{ eos_token }}\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}{{ eos_token }}\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def folders(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's folder, and a copy whose tokenizer has the Hermes-style template."""
    plain = tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=1, num_heads=4)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = HERMES
    hermes = tmp_path_factory.mktemp("hermes")
    tokenizer.save_pretrained(hermes)
    return {"plain": plain, "hermes": hermes}


def call(expression: str) -> str:
    return f'<tool_call>{{"name": "calc", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


def test_prompts_carry_the_tool_schemas_that_the_template_renders(folders, tmp_path):
    data = RLHFDataModule(tokenizer=str(folders["hermes"]), stage="rl", task_size=20, split="0,0,1",
                          eval_fraction=0.0, max_prompt_length=4000, max_length=4100, tools=[TOOL],
                          cache_dir=str(tmp_path))
    data.setup()
    tokenizer = AutoTokenizer.from_pretrained(folders["hermes"])
    prompt = tokenizer.decode(data.datasets["train"][0]["prompt_input_ids"])
    schema = json.loads(prompt.split("<tools>")[1].split("\n</tools>")[0])
    assert schema["function"]["name"] == "calc" and "expression" in schema["function"]["parameters"]["properties"]
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_template_without_a_tool_format_is_refused_with_the_tag_protocol_named(folders):
    plain = AutoTokenizer.from_pretrained(folders["plain"])
    plain.chat_template = HERMES.replace("{%- if tools %}", "{%- if false %}")
    with pytest.raises(ValueError, match="does not render tools=.*use the tag protocol"):
        EpisodeArgs(tools=[TOOL], protocol="chat_template").build(plain)
    with pytest.raises(ValueError, match="protocol='chat_template' calls tools"):
        EpisodeArgs(environment="tests.modules.test_grpo_episodes:AnswersTwice", protocol="chat_template")


def test_an_episode_is_the_conversation_the_template_renders(folders):
    tokenizer = AutoTokenizer.from_pretrained(folders["hermes"])
    eos = tokenizer.eos_token_id
    env = EpisodeArgs(tools=[TOOL], protocol="chat_template").build(tokenizer)
    assert isinstance(env, ChatTemplateTools) and env.stop_strings == ("</tool_call>",)
    script = Scripted(tokenizer, [[call("17*23"), "391<EOS>"]], eos)
    ep = run_episodes(script, tokenizer, env, records(1), prompts(1), [eos], max_turns=3, max_tokens=800,
                      max_new_tokens=300)
    assert (ep.turns, ep.tool_calls, ep.tool_errors, ep.ended) == ([2], [1], [0], [True])
    conversation = [{"role": "user", "content": "q"}]
    before = tokenizer.apply_chat_template(conversation, tools=env.schemas, tokenize=False, add_generation_prompt=True)
    conversation += [{"role": "assistant", "content": call("17*23")}, {"role": "tool", "content": "391"},
                     {"role": "assistant", "content": "391"}]
    after = tokenizer.apply_chat_template(conversation, tools=env.schemas, tokenize=False)
    assert tokenizer.decode(ep.tokens[0]) == after[len(before):].rstrip("\n")  # the template ends a turn with "\n"
    assert ep.answers[0] == "391"
    # the result and the template's markup around it are the environment's: out of the loss
    model = [t for t, m in zip(ep.tokens[0], ep.model_mask[0]) if m]
    assert tokenizer.decode(model) == call("17*23") + "391" + tokenizer.eos_token


@pytest.mark.parametrize("said, error", [
    ("<tool_call>calc(17*23)</tool_call>", "the call is not JSON"),
    ("<tool_call>" + "[" * 3000 + "</tool_call>", "the call is not JSON (RecursionError)"),
    ('<tool_call>{"name": "sqrt", "arguments": {}}</tool_call>', "no tool named 'sqrt'"),
    ('<tool_call>{"name": "calc"}</tool_call>', "error: calc raised TypeError"),
    ('<tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"2*3\\"}"}</tool_call>', None),
])
def test_a_bad_call_is_an_error_message_in_the_episode(folders, said, error):
    env = ChatTemplateTools([calc], AutoTokenizer.from_pretrained(folders["hermes"]))
    reply, reward, done = env.step([{"role": "assistant", "content": said}])
    assert not done and reward is None
    if error is None:  # arguments serialised as a JSON string, as some templates write them
        assert reply[0]["content"] == "6" and not reply[0]["error"]
    else:
        assert reply[0]["error"] and error in reply[0]["content"]
        assert "<tool_response>\nerror:" in env.render(reply[0])


def test_grpo_in_the_chat_format_needs_the_prompts_to_carry_the_tools(folders, tmp_path):
    from tests.modules.test_grpo import make_data, make_module, make_trainer

    episodes = EpisodeArgs(tools=[TOOL], protocol="chat_template")
    module = make_module(str(folders["plain"]), tokenizer=str(folders["hermes"]), episodes=episodes)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="prompts carry no tool schemas; give the data module the same tools"):
        trainer.fit(module, datamodule=make_data(str(folders["hermes"]), max_prompt_length=100, max_length=120))
    tags = make_module(str(folders["plain"]), tokenizer=str(folders["hermes"]),
                       episodes=EpisodeArgs(tools=[TOOL], protocol="tags"))
    with pytest.raises(ValueError, match="data.tools puts tool schemas in the prompts, and the model calls no tools"):
        make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(
            tags, datamodule=make_data(str(folders["hermes"]), max_prompt_length=4000, max_length=4100,
                                       tools=[TOOL]))


def test_evaluate_in_the_chat_format_refuses_a_model_without_one(folders):
    from lightning_rlhf.commands.main import main

    with pytest.raises(ValueError, match="does not render tools=.*use the tag protocol"):
        main(["evaluate", str(folders["plain"]), "--tasks", '["builtin?size=4"]', "--samples", "0", "--tools",
              json.dumps([TOOL]), "--tool_protocol", "chat_template"])
