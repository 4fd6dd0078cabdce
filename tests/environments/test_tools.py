"""Tools and the tag protocol: a tool that raises, hangs or floods becomes an error message in the episode, within
its time limit; calls parse from the model's text; the tool environment ends an episode at a turn without a call."""

from __future__ import annotations

import time

import pytest

from lightning_rlhf.environments import CALL_END, Environment, ToolEnvironment, Toolbox, last_call, tool_schema


def calc(expression: str) -> str:
    """Evaluate an arithmetic expression of integers.

    Args:
        expression: digits and + - * / ( ), e.g. 17*23
    """
    if set(expression) - set("0123456789+-*/() "):
        raise ValueError(f"not arithmetic: {expression!r}")
    return str(eval(expression))  # noqa: S307 - the characters are checked above


def lookup(city, limit=1):
    return [city] * limit


def hang(x: str) -> str:
    """Never returns in time.

    Args:
        x: ignored
    """
    time.sleep(30)
    return x


def flood(n: str) -> str:
    """A very long answer.

    Args:
        n: ignored
    """
    return "9" * 100_000


def test_a_tool_that_raises_hangs_or_floods_is_contained():
    box = Toolbox([calc, hang, flood], timeout_s=0.5, max_output_chars=50)
    assert box.call("calc", ("17*23",)).text == "391"
    raised = box.call("calc", ("__import__('os')",))
    assert raised.error and raised.text.startswith("error: calc raised ValueError: not arithmetic")
    start = time.perf_counter()
    hung = box.call("hang", ("x",))
    assert time.perf_counter() - start < 2.0
    assert hung.error and hung.text == "error: hang did not finish within 0.5 s"
    flooded = box.call("flood", ("x",))
    assert flooded.truncated and not flooded.error
    assert flooded.text == "9" * 50 + "... [cut at 50 of 100000 characters]"
    unknown = box.call("shell", ("rm -rf /",))
    assert unknown.error and "no tool named 'shell'" in unknown.text and "['calc', 'flood', 'hang']" in unknown.text
    wrong_arity = box.call("calc", (), {"expr": "1"})
    assert wrong_arity.error and "TypeError" in wrong_arity.text


def test_bad_toolbox_settings_fail_clearly():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        Toolbox([calc], timeout_s=0)
    with pytest.raises(ValueError, match="two tools share a name"):
        Toolbox([calc, calc])


def test_schemas_are_what_chat_templates_render_and_a_plain_function_still_gets_one():
    schema = tool_schema(calc)
    assert schema["function"]["name"] == "calc"
    assert schema["function"]["description"] == "Evaluate an arithmetic expression of integers."
    assert schema["function"]["parameters"]["properties"]["expression"]["type"] == "string"
    plain = tool_schema(lookup)["function"]
    assert plain["name"] == "lookup" and plain["parameters"]["required"] == ["city"]


@pytest.mark.parametrize(("text", "expected"), [
    ("Let me compute. <tool>calc(17*23)</tool>", ("calc", ("17*23",), {})),
    ("<tool> calc('2 + 2') </tool>", ("calc", ("2 + 2",), {})),
    ("<tool>lookup(\"Paris\", limit=2)</tool>", ("lookup", ("Paris",), {"limit": 2})),
    ("<tool>calc(1)</tool> then <tool>calc(2*3)</tool>", ("calc", ("2*3",), {})),
])
def test_calls_parse_from_the_models_text(text, expected):
    call = last_call(text, {"calc": ["expression"], "lookup": ["city", "limit"]})
    assert (call.name, call.args, call.kwargs) == expected and call.problem is None


@pytest.mark.parametrize(("text", "problem"), [
    ("<tool>calc</tool>", "'calc' is not a call"),
    ("<tool>shell(ls)</tool>", "no tool named 'shell'"),
    ("<tool>lookup(Paris, limit=x)</tool>", "the arguments of lookup must be Python literals"),
])
def test_a_malformed_call_is_a_problem_not_an_exception(text, problem):
    call = last_call(text, {"calc": ["expression"], "lookup": ["city", "limit"]})
    assert problem in call.problem


def test_no_call_is_none():
    assert last_call("The answer is 391.", {"calc": ["expression"]}) is None


def test_the_tool_environment_answers_calls_and_ends_at_a_turn_without_one():
    env = ToolEnvironment(["tests.environments.test_tools:calc"], timeout_s=1.0)
    assert env.stop_strings == (CALL_END,)
    messages = env.reset({"prompt": "What is 17 * 23?"})
    assert messages == [{"role": "user", "content": "What is 17 * 23?"}]
    messages.append({"role": "assistant", "content": "<tool>calc(17*23)</tool>"})
    new, reward, done = env.step(messages)
    assert new == [{"role": "tool", "name": "calc", "content": "391", "error": False}] and not done
    assert reward is None and env.render(new[0]) == "\n<result>391</result>\n"
    messages += new + [{"role": "assistant", "content": "391"}]
    assert env.step(messages) == (None, None, True)
    bad, _, done = env.step(messages[:1] + [{"role": "assistant", "content": "<tool>calc(import os)</tool>"}])
    assert bad[0]["error"] and "not arithmetic" in bad[0]["content"] and not done


def test_a_tool_path_that_does_not_import_fails_naming_it():
    with pytest.raises(ValueError, match=r"tool 'tests.environments.test_tools:nothing'.*has no attribute"):
        ToolEnvironment(["tests.environments.test_tools:nothing"])
    with pytest.raises(ValueError, match=r"tool 'calc' is not an import path 'package.module:function'"):
        ToolEnvironment(["calc"])


def test_the_base_environment_says_what_to_implement():
    with pytest.raises(NotImplementedError, match=r"Environment.step: subclass Environment and return"):
        Environment().step([{"role": "assistant", "content": "hi"}])


def test_the_calculator_evaluates_arithmetic_and_refuses_everything_else():
    from lightning_rlhf.environments.calculator import calc as calculator

    assert [calculator(e) for e in ("17 * 23", " 7/2 ", "2^10", "-(3 - 5) * 4", "10 // 3 + 10 % 3", "1.5 * 2")] == [
        "391", "3.5", "1024", "8", "4", "3"]
    assert calculator(391) == "391" and calculator(2.5) == "2.5"  # a bare number parsed as a literal by the tags
    for bad, error in [("__import__('os')", "only numbers"), ("9**9**9", "power too large"), ("17 *", "not an arith"),
                       ("True + 1", "only numbers"), ("(-8) ** 0.5", "no real value")]:
        with pytest.raises(ValueError, match=error):
            calculator(bad)
    # in an episode a refused expression is an error text, not a crash
    env = ToolEnvironment([calculator])
    reply, _, done = env.step([{"role": "assistant", "content": "<tool>calc(open('x'))</tool>"}])
    assert not done and reply[0]["error"] and "only numbers" in env.render(reply[0])
