"""Episodes at the token level: the model's tokens are kept as sampled and marked, the environment's are appended
unmarked, and max_turns / max_tokens / stop ids end an episode; with a real tokenizer and real tools. The model's
turns are scripted (a policy that always says the same), so that every token's place can be checked exactly."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lightning_rlhf.environments import ToolEnvironment
from lightning_rlhf.environments.episodes import run_episodes
from tests.environments.test_tools import calc, hang


@pytest.fixture(scope="module")
def tokenizer(tiny_model_factory):
    return AutoTokenizer.from_pretrained(tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32,
                                                            num_layers=1, num_heads=4))


class Scripted:
    """A policy that says ``turns[k]`` at its k-th turn (per row), and records the contexts it was given."""

    def __init__(self, tokenizer, turns_per_row, stop_id):
        self.tokenizer, self.stop_id, self.seen = tokenizer, stop_id, []
        self.turns = [[self._ids(text) for text in turns] for turns in turns_per_row]
        self.calls = [0] * len(turns_per_row)

    def _ids(self, text):
        if text.endswith("<EOS>"):
            return self.tokenizer(text[:-5], add_special_tokens=False)["input_ids"] + [self.stop_id]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, contexts, max_new_tokens):
        out = []
        for context in contexts:
            row = next(r for r, turns in enumerate(self.turns) if self._owns(r, context))
            turn = self.turns[row][min(self.calls[row], len(self.turns[row]) - 1)][:max_new_tokens]
            self.calls[row] += 1
            self.seen.append((row, list(context)))
            out.append(turn + [self.tokenizer.pad_token_id] * 2)  # padding after a stop string, as generate pads
        return out

    def _owns(self, row, context):
        return context[:1] == [row + 10]  # each row's prompt starts with its own id


def prompts(rows):
    return [[row + 10, 7, 8] for row in range(rows)]


def records(rows):
    return [{"prompt": f"question {row}"} for row in range(rows)]


def test_tool_results_enter_unmarked_between_the_models_marked_tokens(tokenizer):
    eos = tokenizer.eos_token_id
    env = ToolEnvironment([calc])
    script = Scripted(tokenizer, [["<tool>calc(17*23)</tool>", " so 391<EOS>"], ["41<EOS>"]], eos)
    ep = run_episodes(script, tokenizer, env, records(2), prompts(2), [eos], max_turns=4, max_tokens=64,
                      max_new_tokens=32)
    call = tokenizer("<tool>calc(17*23)</tool>", add_special_tokens=False)["input_ids"]
    result = tokenizer("\n<result>391</result>\n", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" so 391", add_special_tokens=False)["input_ids"] + [eos]
    assert ep.tokens[0] == call + result + answer
    assert ep.model_mask[0] == [True] * len(call) + [False] * len(result) + [True] * len(answer)
    assert ep.tokens[1] == tokenizer("41", add_special_tokens=False)["input_ids"] + [eos] and all(ep.model_mask[1])
    # the second turn was sampled after the prompt, the call and the result: its tokens' context
    assert (0, prompts(2)[0] + call + result) in script.seen
    assert (ep.turns, ep.tool_calls, ep.tool_errors, ep.ended) == ([2, 1], [1, 0], [0, 0], [True, True])
    assert ep.answers[0].strip() == "so 391" and "<result>391</result>" in ep.texts[0].replace(" ", "")
    responses, model, real = ep.tensors(tokenizer.pad_token_id)
    assert responses.shape == model.shape == real.shape == (2, len(ep.tokens[0]))
    assert model[0].tolist() == ep.model_mask[0] and real[1].sum() == len(ep.tokens[1]) and not model[1, -1]


def test_max_turns_stops_an_episode_that_keeps_calling_and_marks_it(tokenizer):
    eos = tokenizer.eos_token_id
    script = Scripted(tokenizer, [["<tool>calc(1+1)</tool>"], ["2<EOS>"]], eos)  # row 0 calls forever
    ep = run_episodes(script, tokenizer, ToolEnvironment([calc]), records(2), prompts(2), [eos], max_turns=3,
                      max_tokens=256, max_new_tokens=32)
    assert ep.turns == [3, 1] and ep.tool_calls == [3, 0]
    assert ep.hit_max_turns == [True, False] and ep.ended == [False, True]
    assert script.calls == [3, 1]  # the finished row is not asked again


def test_max_tokens_cuts_the_episode_the_environments_tokens_included(tokenizer):
    eos = tokenizer.eos_token_id
    call = tokenizer("<tool>calc(2*3)</tool>", add_special_tokens=False)["input_ids"]
    limit = len(call) + 2  # room for the call and 2 tokens of the result
    ep = run_episodes(Scripted(tokenizer, [["<tool>calc(2*3)</tool>"]], eos), tokenizer, ToolEnvironment([calc]),
                      records(1), prompts(1), [eos], max_turns=5, max_tokens=limit, max_new_tokens=64)
    assert len(ep.tokens[0]) == limit and ep.model_mask[0] == [True] * len(call) + [False] * 2
    assert ep.hit_max_tokens == [True] and ep.ended == [False] and ep.turns == [1]


def test_a_tool_that_hangs_becomes_an_error_in_the_episode_within_its_time_limit(tokenizer):
    eos = tokenizer.eos_token_id
    script = Scripted(tokenizer, [["<tool>hang(1)</tool>", "sorry<EOS>"]], eos)
    ep = run_episodes(script, tokenizer, ToolEnvironment([hang], timeout_s=0.2), records(1), prompts(1), [eos],
                      max_turns=3, max_tokens=128, max_new_tokens=32)
    assert ep.tool_calls == [1] and ep.tool_errors == [1] and ep.ended == [True]
    assert "<result>error: hang did not finish within 0.2 s</result>" in ep.texts[0]


def test_a_turn_cut_at_max_new_tokens_without_a_call_ends_the_episode_unfinished(tokenizer):
    eos = tokenizer.eos_token_id
    ep = run_episodes(Scripted(tokenizer, [["a long answer that never ends"]], eos), tokenizer,
                      ToolEnvironment([calc]), records(1), prompts(1), [eos], max_turns=3, max_tokens=64,
                      max_new_tokens=3)
    assert len(ep.tokens[0]) == 3 and ep.turns == [1] and ep.ended == [False] and not ep.hit_max_turns[0]


def test_limits_below_one_are_refused(tokenizer):
    with pytest.raises(ValueError, match="must be >= 1"):
        run_episodes(None, tokenizer, ToolEnvironment([calc]), records(1), prompts(1), [0], max_turns=0,
                     max_tokens=8, max_new_tokens=4)


def test_a_tool_demonstration_tokenizes_as_the_episode_its_parts_make(smollm2_folder):
    """The built-in task's tool demonstrations (an SFT warm-up's data) are one text; an episode is the model's turn,
    then the result, tokenized apart. Their tokens must agree, or the warm-up teaches tokens no episode holds."""
    from lightning_rlhf.data.task import SyntheticTask
    from lightning_rlhf.environments.calculator import calc as calculator

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    env = ToolEnvironment([calculator])
    task = SyntheticTask(style="tool", operation="*", min_operand=10, max_operand=99)
    for record in task.records(4):
        a, b = task.operands(record["prompt"])
        call = f"<tool>calc({a} * {b})</tool>"
        reply, _, done = env.step([{"role": "assistant", "content": call}])
        parts = [call, env.render(reply[0]), str(a * b)]
        assert not done and "".join(parts) == record["response"]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in parts]
        assert tokenizer(record["response"], add_special_tokens=False)["input_ids"] == sum(ids, [])
