"""Answer guidance: a form of answer the policy never samples can still be learned.

GRPO can only reinforce what it samples. A small instruct model asked for "the answer alone" answers "7 * 8 = 56";
once those answers are right, the bare "56" (which the strict reward pays) is too rare to be sampled, so no reward
on it is ever learned (issue 31's first trap). Guidance projects each group's best answer onto the wanted form (a
projection function: "7 * 8 = 56" -> "56"), scores the projection with the same reward functions and, where it earns
more than the answer it came from and no answer of the group already reads that way, puts it in the group in place
of the group's lowest answer. The group's advantages then compare it with the sampled answers like any other.

The candidate is off-policy, as a demonstration mixed into a group is (LUFFY's off-policy guidance); its old
log-probs come from a forward pass of the current policy, so its first ratio is 1. Guidance switches itself off as
the policy learns the form: a group whose answers already include the projection gets no candidate.

``min_agreement`` teaches the form only where the answer is known: a candidate is placed only in a group where at
least that share of the answers project to it (the policy already gives that answer, in its own words). A form that
is learned on answers the model cannot yet give replaces the words it computes them with (issue 31's trap 1b: a
135M model that writes "7 * 8 = 56" gets 56 and, bare, "168").

``form_parity`` pauses guidance for a rollout whose answers already in the wanted form (equal to their projection)
earn less on average than the others, over all ranks: the form is taught only while the policy's answers in it are
as good (docs/tasks.md, rounds 10-11; strict: one wrong bare answer can pause a rollout).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from lightning_rlhf.algorithms.guidance import best_rows, form_earns_less, form_sums, replaced_rows
from lightning_rlhf.modules.rollout import Generated
from lightning_rlhf.rewards.combined import RewardSources
from lightning_rlhf.rewards.projection import Projection


def _rows(columns: Mapping[str, Sequence[Any]] | None, rows: Sequence[int]) -> dict[str, list[Any]]:
    return {name: [values[r] for r in rows] for name, values in (columns or {}).items()}


class AnswerGuidance:
    """Replace at most one answer per group by a projected, better-paid candidate (module docstring).

    Args:
        projection: ``f(prompts, completions, **columns) -> list[str | None]`` (``rewards/projection.py``).
        tokenizer: the policy's tokenizer; a candidate's tokens are its text's, ended by the stop token its source
            answer ended with (the tokenizer's EOS where that answer was cut at the length limit).
        min_agreement: the share of a group's answers whose projection must equal the candidate (the best answer's
            projection, which counts itself) for it to be placed; 0 places one wherever it earns more.
        form_parity: place none in a rollout whose answers already in the wanted form earn less on average than the
            others (module docstring).
    """

    def __init__(self, projection: Projection, tokenizer: Any, min_agreement: float = 0.0,
                 form_parity: bool = False) -> None:
        if not 0.0 <= min_agreement <= 1.0:
            raise ValueError(f"answer guidance's min_agreement must be in [0, 1], got {min_agreement}")
        self.projection = projection
        self.tokenizer = tokenizer
        self.min_agreement = min_agreement
        self.form_parity = form_parity
        self.paused = False  # whether form_parity held back the last call's candidates (``grpo/guidance_paused``)
        self.exemplars = torch.zeros(0, dtype=torch.bool)  # the last call's sampled answers worth keeping (below)

    def project(self, prompts: Sequence[Any], responses: Sequence[str],
                columns: Mapping[str, Sequence[Any]] | None, rows: Sequence[int]) -> list[str | None]:
        """The projections of ``rows``, checked: one ``str`` or None per row."""
        name = getattr(self.projection, "__name__", type(self.projection).__name__)
        values = self.projection(prompts=[prompts[r] for r in rows], completions=[responses[r] for r in rows],
                                 **_rows(columns, rows))
        values = list(values)
        if len(values) != len(rows) or any(v is not None and not isinstance(v, str) for v in values):
            raise ValueError(f"answer_projection {name!r} returned {values[:4]!r}... for {len(rows)} answers; return "
                             "a list with one str (or None) per completion")
        return values

    def __call__(self, rewards: RewardSources, batch: Mapping[str, Any], generated: Generated,
                 responses: Sequence[str], group_size: int, iteration: int | None,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> tuple[Generated, Tensor]:
        """``(generated, guided)``: the rollout with the candidates in place (its log-probs dropped when any was
        placed, so that a forward pass computes them) and ``(B,)`` which rows are candidates. ``reduce`` sums a
        tensor over the ranks (``form_parity``; every rank must call this then)."""
        prompts, columns = batch["prompts"], batch.get("columns")
        totals = rewards.score(prompts, responses, columns, generated.response_ids(), None, iteration).total
        sources = best_rows(totals, group_size)
        groups = [g for g, row in enumerate(sources.tolist()) if row >= 0]
        every_row = bool(self.min_agreement or self.form_parity)
        rows = range(len(responses)) if every_row else [int(sources[g]) for g in groups]
        projected = dict(zip(rows, self.project(prompts, responses, columns, rows))) if rows else {}
        guided = torch.zeros(len(responses), dtype=torch.bool)
        in_form = torch.tensor([bool(projected.get(r)) and projected[r].strip() == text.strip()
                                for r, text in enumerate(responses)], dtype=torch.bool)
        self.exemplars = self._exemplars(totals, in_form, sources, group_size)
        if self.form_parity:
            sums = form_sums(totals, in_form)
            self.paused = form_earns_less(reduce(sums) if reduce is not None else sums)
        if self.paused:
            return generated, guided
        candidates = self._candidates(responses, projected, sources, groups, group_size)
        if not candidates:
            return generated, guided
        rows = [int(sources[g]) for g in candidates]
        ids = {g: self.tokenizer(text, add_special_tokens=False)["input_ids"] for g, text in candidates.items()}
        scored = rewards.score([prompts[r] for r in rows], list(candidates.values()), _rows(columns, rows),
                               list(ids.values()), None, iteration).total
        candidate_totals = torch.full((len(sources),), float("nan"))
        candidate_totals[list(candidates)] = scored.float()
        replaced = replaced_rows(totals, sources, candidate_totals, group_size)
        placed = {int(row): (int(sources[g]), ids[g]) for g, row in enumerate(replaced.tolist()) if row >= 0}
        if not placed:
            return generated, guided
        return self._placed(generated, placed, guided), guided

    @staticmethod
    def _exemplars(totals: Tensor, in_form: Tensor, sources: Tensor, group_size: int) -> Tensor:
        """``(B,)``: each group's best answer where it is in the wanted form and beats another (for replay)."""
        scores = torch.nan_to_num(totals.float(), nan=float("-inf")).view(-1, group_size)
        signal = scores.max(1).values > scores.min(1).values
        exemplars = torch.zeros_like(in_form)
        for group, row in enumerate(sources.tolist()):
            if row >= 0 and in_form[row] and signal[group]:
                exemplars[row] = True
        return exemplars

    def _candidates(self, responses: Sequence[str], projected: Mapping[int, str | None], sources: Tensor,
                    groups: Sequence[int], group_size: int) -> dict[int, str]:
        """``group -> candidate text``: the projection of each group's best answer, where it is text, no answer of the
        group reads that way yet and at least ``min_agreement`` of the group's answers project to it."""
        candidates: dict[int, str] = {}
        for g in groups:
            text = (projected[int(sources[g])] or "").strip()
            members = range(g * group_size, (g + 1) * group_size)
            if not text or text in {responses[r].strip() for r in members}:
                continue
            agreeing = sum((projected.get(r) or "").strip() == text for r in members) if self.min_agreement else 0
            if agreeing / group_size >= self.min_agreement:
                candidates[g] = text
        return candidates

    def _placed(self, generated: Generated, placed: Mapping[int, tuple[int, list[int]]], guided: Tensor) -> Generated:
        """The rollout with each ``row -> (source row, candidate tokens)`` written in, ended by its source's stop."""
        width = generated.response_mask.shape[1]
        prompt_width = generated.sequences.shape[1] - width
        sequences, mask = generated.sequences.clone(), generated.response_mask.clone()
        eos_found = generated.eos_found.clone()
        for row, (source, tokens) in placed.items():
            source_tokens = generated.sequences[source, prompt_width:][generated.response_mask[source]]
            stop = int(source_tokens[-1]) if bool(generated.eos_found[source]) else self.tokenizer.eos_token_id
            ids = tokens + [stop]
            if len(ids) > width:  # longer than the rollout's answers: keep the sampled answer
                continue
            sequences[row, prompt_width:] = self.tokenizer.pad_token_id
            sequences[row, prompt_width:prompt_width + len(ids)] = torch.tensor(ids, dtype=sequences.dtype)
            mask[row] = False
            mask[row, :len(ids)] = True
            eos_found[row], guided[row] = True, True
        attention = torch.cat([generated.attention_mask[:, :prompt_width], mask.long()], dim=1)
        return Generated(sequences, attention.to(generated.attention_mask.dtype), mask, eos_found)


__all__ = ["AnswerGuidance"]
