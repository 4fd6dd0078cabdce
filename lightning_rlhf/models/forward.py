"""Forward passes that score responses: log-probabilities, entropies and critic values of the response tokens.

Layout: every sequence is ``prompt (left-padded, length P) + response (right-padded, length R)``; position
``P - 1 + t`` of a forward pass predicts response token ``t``. Rollouts and updates call the same functions, so
their log-probabilities agree.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import Tensor, nn

from lightning_rlhf.algorithms import entropy_from_logits, logprobs_from_logits
from lightning_rlhf.models.prompt_cache import shared_prompt_response_logits
from lightning_rlhf.models.values import forward_accepts, position_ids_from_mask, token_values


def forward_kwargs(model: nn.Module, attention_mask: Tensor) -> dict[str, Any]:
    """Keyword arguments for a forward over left-padded input: positions counted over real tokens, as
    ``generate`` counts them, so rollout and update log-probabilities agree."""
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if forward_accepts(model, "position_ids"):
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    return kwargs


def response_logits(model: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int,
                    share_prompts: bool = False) -> Tensor:
    """Logits ``(B, R, V)`` that score each response token (``temperature`` not applied).

    Only the last ``R + 1`` positions go through the language-model head (``logits_to_keep`` where the model
    takes it). With ``share_prompts``, rows that repeat a prompt (a group) run it once
    (:func:`~lightning_rlhf.models.prompt_cache.shared_prompt_response_logits`).
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
    """Log-probabilities ``(B, R)`` of ``responses`` under ``logits / temperature`` (the distribution the tokens
    were drawn from), and their entropies (detached unless ``entropy_grad``: an entropy bonus)."""
    if temperature != 1.0:
        logits = logits / temperature
    entropy = entropy_from_logits(logits if entropy_grad else logits.detach()) if with_entropy else None
    return logprobs_from_logits(logits, responses), entropy


def policy_logprobs(
    model: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int, temperature: float = 1.0,
    with_entropy: bool = False, entropy_grad: bool = False, share_prompts: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities ``(B, R)`` of the response tokens and optionally their entropies ``(B, R)``."""
    logits = response_logits(model, sequences, attention_mask, response_length, share_prompts)
    return token_logprobs(logits, sequences[:, -response_length:], temperature, with_entropy, entropy_grad)


def critic_values(
    critic: nn.Module, sequences: Tensor, attention_mask: Tensor, response_length: int, score_mean: float = 0.0,
    score_std: float = 1.0,
) -> Tensor:
    """Values ``(B, R)`` of the state before each response token, as ``(value - score_mean) / score_std``.

    A critic that starts from the reward model outputs its units; with normalised scores it is mapped the same
    way as the scores (as OpenRLHF does), else its returns would sit ``mean / std`` away from where it starts.
    """
    values = token_values(critic, sequences, attention_mask)
    start = sequences.shape[1] - response_length
    values = values[:, start - 1 : -1]
    return values if (score_mean, score_std) == (0.0, 1.0) else (values - score_mean) / score_std


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout in reference passes), the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
