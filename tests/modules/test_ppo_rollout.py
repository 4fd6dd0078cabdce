"""Rollout plumbing: response masks, padding, mini-batches, and the log-prob/value alignment."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.models import load_causal_lm, load_value_model
from lightning_rlhf.models.forward import critic_values, policy_logprobs
from lightning_rlhf.modules.rollout import Rollout, pad_right, response_mask_from_tokens

EOS, PAD = 2, 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_response_mask_matches_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    responses = torch.randint(0, 5, (6, 7), generator=gen)
    mask, eos_found = response_mask_from_tokens(responses, EOS)
    for i, row in enumerate(responses.tolist()):
        ended, want = False, []
        for token in row:
            want.append(not ended)
            ended = ended or token == EOS
        assert mask[i].tolist() == want
        assert bool(eos_found[i]) == (EOS in row)


def test_pad_right_and_minibatches_cover_every_row_once():
    padded = pad_right([torch.ones(2, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], PAD)
    assert padded.shape == (3, 5) and padded[:2, 3:].eq(PAD).all() and padded[2].eq(1).all()
    n, r = 7, 3
    rows = torch.arange(n).float().unsqueeze(1)
    rollout = Rollout(torch.arange(n).unsqueeze(1).repeat(1, 5), torch.ones(n, 5), torch.ones(n, r, dtype=torch.bool),
                      rows.repeat(1, r), rows.repeat(1, r), rows.repeat(1, r), rows.repeat(1, r))
    assert rollout.prompt_length == 2
    seen = []
    for mb in rollout.minibatches(3, torch.Generator().manual_seed(0)):
        assert len(mb) <= 3 and torch.equal(mb.sequences[:, 0].float(), mb.logprobs[:, 0])  # rows stay aligned
        seen += mb.sequences[:, 0].tolist()
    assert sorted(seen) == list(range(n))


def test_logprobs_and_values_align_with_left_padding(tiny_model_factory):
    """Log-probs of a left-padded row equal those of the same row without padding (positions from the mask)."""
    actor = load_causal_lm(tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=2)).eval()
    critic = load_value_model(tiny_model_factory("llama", "value", seed=1, hidden_size=32, num_layers=2)).eval()
    prompt, response = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, EOS]])
    plain = torch.cat([prompt, response], 1)
    padded = torch.cat([torch.full((1, 2), PAD), plain], 1)
    plain_mask, padded_mask = torch.ones_like(plain), torch.cat([torch.zeros(1, 2), torch.ones_like(plain)], 1).long()
    with torch.no_grad():
        lp_plain, ent = policy_logprobs(actor, plain, plain_mask, 3, with_entropy=True)
        lp_padded, _ = policy_logprobs(actor, padded, padded_mask, 3)
        full = torch.log_softmax(actor(input_ids=plain).logits, -1)
        v_plain, v_padded = critic_values(critic, plain, plain_mask, 3), critic_values(critic, padded, padded_mask, 3)
    want = torch.stack([full[0, 2 + t, response[0, t]] for t in range(3)])
    assert torch.allclose(lp_plain[0], want, atol=1e-5)
    assert torch.allclose(lp_plain, lp_padded, atol=1e-4) and torch.allclose(v_plain, v_padded, atol=1e-4)
    assert ent.shape == (1, 3) and (ent > 0).all()
