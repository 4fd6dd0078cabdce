"""Multi-turn rollouts for the online loop (issue 34): episodes run under the generation switch, returned as a
rollout whose response mask marks the model's tokens only (the environment's are attended to, never trained on).

The switch is entered once per rollout and every turn of every episode runs inside it: under ZeRO-3 entering it is
a collective (the replica's refresh), so ranks whose episodes take different numbers of turns still meet the same
collectives. The log-probs come from the update's forward over whole episodes, never from ``generate``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lightning_rlhf.data.collate import pad
from lightning_rlhf.environments.base import Environment
from lightning_rlhf.environments.episodes import Episodes, run_episodes
from lightning_rlhf.models.context import check_context_length
from lightning_rlhf.models.prompt_cache import shared_prompt_cache
from lightning_rlhf.models.sampling import sampling_from_policy
from lightning_rlhf.modules.pooled import Pooled, pooled_mean
from lightning_rlhf.modules.rollout import Generated, check_left_padded
from lightning_rlhf.strategies import generation_mode


class EpisodeGeneration:
    """The multi-turn half of :class:`~lightning_rlhf.modules.online.OnlineRLModule` (a LightningModule mixin)."""

    #: what answers the model between its turns; None: one answer per prompt (``episodes=...`` sets it)
    environment: Environment | None = None

    def sample_answers(self, batch: Mapping[str, Any], greedy: bool, **generate_args: Any
                       ) -> tuple[Generated, Episodes | None]:
        """``(generated, episodes)``: episodes with an environment, else ``generate(batch, greedy, **generate_args)``
        and None."""
        if self.environment is not None:
            return self.generate_episodes(batch, greedy, generate_args.get("group_size", 1))
        return self.generate(batch, greedy=greedy, **generate_args), None

    def scored_answers(self, batch: Mapping[str, Any], generated: Generated, episodes: Episodes | None
                       ) -> tuple[list[str], Mapping[str, Any] | None]:
        """``(completions, columns)`` for the reward functions: the decoded answers and the batch's columns, or for
        episodes the final turns, with each whole episode as the ``episode`` column."""
        columns = batch.get("columns")
        if episodes is None:
            return self.responses(generated), columns
        return episodes.answers, {**(columns or {}), "episode": episodes.texts}

    @torch.no_grad()
    def generate_episodes(self, batch: Mapping[str, Any], greedy: bool, group_size: int = 1
                          ) -> tuple[Generated, Episodes]:
        """One episode per prompt row: ``(generated, episodes)``, ``generated.response_mask`` the model's tokens.

        ``group_size``: rows ``[i * n, (i + 1) * n)`` repeat one prompt; with ``share_prompt_prefix`` the first turn
        runs each prompt's prefill once for its group (later turns differ per row and run in full)."""
        input_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        check_left_padded(prompt_mask)
        tok, args, new = self.tokenizer, self.episode_args, self.generation.max_new_tokens
        max_tokens = args.max_tokens or args.max_turns * new
        check_context_length(self.actor, input_ids.shape[1] + max_tokens,
                             f"the prompt batch ({input_ids.shape[1]} tokens wide) + the episode's {max_tokens} tokens",
                             "the prompts, model.episodes.max_tokens or model.episodes.max_turns")
        prompt_ids = [row[keep.bool()].tolist() for row, keep in zip(input_ids, prompt_mask)]
        columns = batch.get("columns") or {}
        records = [{"prompt": prompt, **{name: values[row] for name, values in columns.items()}}
                   for row, prompt in enumerate(batch["prompts"])]
        stop_strings = list(self.environment.stop_strings)
        with generation_mode(self.trainer.strategy, self.actor) as policy, \
                sampling_from_policy(policy, tok) as stop_ids:
            kwargs = self.generation.generate_kwargs(tok.pad_token_id, stop_ids, greedy=greedy)
            if stop_strings:
                kwargs.update(stop_strings=stop_strings, tokenizer=tok)

            def turn(contexts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
                ids, mask = (t.to(input_ids.device) for t in pad(contexts, tok.pad_token_id, left=True))
                with torch.inference_mode():
                    shared = shared_prompt_cache(policy, ids[::group_size], mask[::group_size], group_size) \
                        if share and grouped(contexts, group_size) else {}
                    out = policy.generate(input_ids=ids, attention_mask=mask, **{**kwargs, **shared,
                                                                                 "max_new_tokens": max_new_tokens})
                return [row.tolist() for row in out[:, ids.shape[1]:]]

            share = group_size > 1 and self.shares_prompts()

            episodes = run_episodes(turn, tok, self.environment, records, prompt_ids, stop_ids, args.max_turns,
                                    max_tokens, new)
        responses, model_mask, real = (t.to(input_ids.device) for t in episodes.tensors(tok.pad_token_id))
        generated = Generated(torch.cat([input_ids, responses], 1),
                              torch.cat([prompt_mask.long(), real.long()], 1), model_mask,
                              torch.tensor(episodes.ended, device=input_ids.device))
        return generated, episodes


def grouped(contexts: list[list[int]], group_size: int) -> bool:
    """Whether ``contexts`` are whole groups of ``group_size`` equal rows (a first turn: every row its prompt)."""
    return len(contexts) % group_size == 0 and all(
        contexts[row] == contexts[row - row % group_size] for row in range(len(contexts)))


def episode_metrics(prefix: str, episodes: Episodes) -> dict[str, Pooled]:
    """Turns, tool calls and tool errors per episode, and the shares cut by ``max_turns`` and ``max_tokens``."""
    def mean(values: list) -> Pooled:
        return pooled_mean(torch.tensor(values, dtype=torch.float64))

    return {f"{prefix}/turns_per_episode": mean(episodes.turns),
            f"{prefix}/tool_calls_per_episode": mean(episodes.tool_calls),
            f"{prefix}/tool_errors_per_episode": mean(episodes.tool_errors),
            f"{prefix}/episodes_at_max_turns": mean([float(x) for x in episodes.hit_max_turns]),
            f"{prefix}/episodes_at_max_tokens": mean([float(x) for x in episodes.hit_max_tokens])}


__all__ = ["EpisodeGeneration", "episode_metrics"]
