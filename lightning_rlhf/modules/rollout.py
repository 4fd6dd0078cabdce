"""PPO experience: the rollout buffer and the tensor plumbing around generation.

Layout: every sequence is ``prompt (left-padded, length P) + response (right-padded, length R)``.
Per-token quantities (log-probs, values, rewards, advantages) live on the response part only,
shape ``(batch, R)``, with ``response_mask`` true on the real response tokens up to and including
the first EOS. Position ``P - 1 + t`` of a forward pass predicts response token ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from lightning_rlhf.algorithms import entropy_from_logits, logprobs_from_logits
from lightning_rlhf.models import forward_accepts, position_ids_from_mask, token_values
from lightning_rlhf.models.prompt_cache import shared_prompt_response_logits


@dataclass
class Rollout:
    """One buffer of experience; every tensor has the batch as its first dimension.

    Attributes:
        sequences: ``(B, P + R)`` prompt + response token ids.
        attention_mask: ``(B, P + R)`` 1 on real prompt and response tokens.
        response_mask: ``(B, R)`` bool, true on real response tokens (through the first EOS).
        logprobs: ``(B, R)`` actor log-probabilities at sampling time.
        advantages: ``(B, R)`` (whitened) advantages.
        values: ``(B, R)`` critic values at sampling time (None without a critic: GRPO and its family).
        returns: ``(B, R)`` value targets (None without a critic).
        ref_logprobs: ``(B, R)`` reference log-probabilities, kept when the update's loss needs them (GRPO's
            KL in the loss); None otherwise.
    """

    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    logprobs: Tensor
    advantages: Tensor
    values: Tensor | None = None
    returns: Tensor | None = None
    ref_logprobs: Tensor | None = None

    @property
    def prompt_length(self) -> int:
        """``P``: the (padded) prompt length shared by the buffer."""
        return self.sequences.shape[1] - self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, index: Tensor) -> "Rollout":
        """The rows ``index`` of every tensor (absent ones stay None)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> Iterator["Rollout"]:
        """Shuffled mini-batches of ``size`` rows (the last may be smaller).

        Args:
            size: rows per mini-batch (the training batch size).
            generator: random source of the shuffle, for reproducibility.
        """
        order = torch.randperm(len(self), generator=generator).to(self.sequences.device)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size])


@dataclass
class Generated:
    """What one rollout's ``generate`` returns.

    Attributes:
        sequences: ``(B, P + R)`` left-padded prompts + right-padded responses.
        attention_mask: ``(B, P + R)`` 1 on real prompt and response tokens.
        response_mask: ``(B, R)`` bool, true on real response tokens (through the first EOS).
        eos_found: ``(B,)`` bool, whether each response emitted EOS.
        logprobs: ``(B, R)`` log-probabilities of the sampled tokens from the logits ``generate`` computed
            (None when they were not requested or the generator cannot return them).
        entropy: ``(B, R)`` entropies of those distributions (None with ``logprobs``).
    """

    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    eos_found: Tensor
    logprobs: Tensor | None = None
    entropy: Tensor | None = None


def response_mask_from_tokens(responses: Tensor, eos_token_id: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask of the real response tokens and whether each row emitted EOS.

    A token is real up to and including the first EOS; a row without EOS is real throughout (it was cut
    at the length limit). Padding after EOS is therefore never counted, even when pad equals EOS.

    Args:
        responses: ``(B, R)`` generated token ids (prompt removed).
        eos_token_id: the id (or ids: an instruct model's end-of-turn tokens) that end a response.

    Returns:
        ``(mask, eos_found)``: ``(B, R)`` bool and ``(B,)`` bool.
    """
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.isin(responses, torch.tensor(ids, device=responses.device, dtype=responses.dtype))
    eos_found = is_eos.any(dim=1)
    # number of EOS strictly before each position: 0 means "not yet ended"
    ended_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return ended_before == 0, eos_found


def check_left_padded(prompt_mask: Tensor) -> None:
    """Raise if any prompt row has padding after its tokens: ``generate`` appends each response at the row's end.

    A right-padded prompt would be answered after its pad tokens, and the response layout (prompt ``P`` then
    response) and the positions would be wrong for every row shorter than the longest.
    """
    mask = prompt_mask.bool()
    bad = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1) | (~mask[:, -1] & mask.any(dim=1))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"PPO prompts must be left-padded, but prompt_attention_mask rows {rows[:8]} have padding after their "
            f"tokens (right padding). Pad prompts on the left: set tokenizer.padding_side = 'left' before collating "
            f"them (or use PreferenceDataModule(stage='ppo'), whose collator does)."
        )


def pad_right(tensors: list[Tensor], value: float) -> Tensor:
    """Concatenate ``(b_i, T_i)`` tensors along the batch, right-padding each to the longest ``T_i``."""
    width = max(t.shape[1] for t in tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors]
    return torch.cat(padded, dim=0)


def forward_kwargs(model: nn.Module, attention_mask: Tensor) -> dict[str, Any]:
    """Keyword arguments for a forward pass over left-padded input: positions counted over real tokens.

    Generation computes positions from the attention mask; passing the same here makes the
    log-probabilities of the rollout and of the update agree.
    """
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if forward_accepts(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    return kwargs


def response_logits(model: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int,
                    share_prompts: bool = False) -> Tensor:
    """Logits ``(B, R, V)`` that score each response token (``temperature`` not applied).

    Only the last ``R + 1`` positions go through the language-model head (transformers' ``logits_to_keep``,
    where the model takes it): the prompt positions' logits are never used, and with a large vocabulary
    they are most of the forward's activation memory. With ``share_prompts`` rows that repeat a prompt (GRPO's
    groups) run it once (:func:`~lightning_rlhf.models.prompt_cache.shared_prompt_response_logits`).
    """
    if share_prompts:
        logits = shared_prompt_response_logits(model, sequences, attention_mask, response_length)
        if logits is not None:
            return logits
    kwargs = forward_kwargs(model, attention_mask)
    if forward_accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_length + 1
    logits = model(input_ids=sequences, **kwargs).logits
    return logits[:, -(response_length + 1) : -1]


def token_logprobs(
    logits: Tensor, responses: Tensor, temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities ``(B, R)`` of ``responses`` under ``logits`` ``(B, R, V)`` (and their entropies).

    Logits are divided by the sampling ``temperature`` so the log-probs are those of the distribution
    the tokens were actually drawn from. The entropies are detached unless ``entropy_grad`` (an entropy bonus).
    """
    if temperature != 1.0:
        logits = logits / temperature
    entropy = entropy_from_logits(logits if entropy_grad else logits.detach()) if with_entropy else None
    return logprobs_from_logits(logits, responses), entropy


def policy_logprobs(
    model: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int, temperature: float = 1.0,
    with_entropy: bool = False, entropy_grad: bool = False, share_prompts: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities ``(B, R)`` of the response tokens (and optionally their entropies ``(B, R)``, with
    their gradient if ``entropy_grad``); ``share_prompts`` as in :func:`response_logits`."""
    logits = response_logits(model, sequences, attention_mask, response_length, share_prompts)
    return token_logprobs(logits, sequences[:, -response_length:], temperature, with_entropy, entropy_grad)


def critic_values(
    critic: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int, score_mean: float = 0.0,
    score_std: float = 1.0,
) -> Tensor:
    """Values ``(B, R)``: the critic's value of the state just before each response token.

    ``(value - score_mean) / score_std``: a critic that starts from the reward model outputs the reward model's
    units, so with normalised scores (``PPOModule(normalize_reward=True)``) its outputs are mapped the same way,
    in the rollout and in the update alike, as OpenRLHF's critic does. Otherwise the returns it regresses to
    would sit ``mean / std`` away from where it starts, which the value clip lets it close only slowly, and the
    offset would bias every advantage by the response's length.
    """
    values = token_values(critic, sequences, attention_mask)
    start = sequences.shape[1] - response_length
    values = values[:, start - 1 : -1]
    return values if (score_mean, score_std) == (0.0, 1.0) else (values - score_mean) / score_std
