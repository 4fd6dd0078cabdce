"""DPO-family losses and sequence log-probs against plain Python loops over random masked tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_rlhf.algorithms import (
    PREFERENCE_LOSSES,
    get_preference_loss,
    preference_loss,
    response_token_mask,
    sequence_logprobs,
)

SEEDS = (0, 1, 2)


def random_rows(seed: int, batch: int = 4, seq: int = 9, vocab: int = 11):
    """Right-padded prompt + response rows of random lengths; row 0 is cut right after its prompt."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    lengths = torch.randint(2, seq + 1, (batch,), generator=gen)
    prompts = torch.stack([torch.randint(1, int(n), (1,), generator=gen)[0] for n in lengths])
    prompts[0] = lengths[0]  # a response truncated to nothing
    attention = (torch.arange(seq).expand(batch, seq) < lengths.unsqueeze(1)).long()
    return logits, ids, attention, prompts


def loop_sequence_logprob(logits, ids, attention, prompt_length, row, average):
    total, count = 0.0, 0
    for t in range(1, ids.shape[1]):
        if not attention[row, t] or t < prompt_length:
            continue
        z = [float(v) for v in logits[row, t - 1]]
        top = max(z)
        log_norm = top + math.log(sum(math.exp(v - top) for v in z))
        total += z[int(ids[row, t])] - log_norm
        count += 1
    return total / max(count, 1) if average else total


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_match_loop(seed, average):
    logits, ids, attention, prompts = random_rows(seed)
    logits.requires_grad_(True)
    mask = response_token_mask(attention, prompts)
    got = sequence_logprobs(logits, ids, mask, average=average)
    for row in range(ids.shape[0]):
        expected = loop_sequence_logprob(logits.detach(), ids, attention, int(prompts[row]), row, average)
        assert got[row].item() == pytest.approx(expected, abs=1e-5)
    assert got[0].item() == 0.0  # nothing left of the response: no tokens count
    got.sum().backward()
    # padding positions get no gradient: logits at t-1 score token t, so position t-1 is free when t is padding
    for row in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if not mask[row, t]:
                assert (logits.grad[row, t - 1] == 0).all()


def test_response_token_mask_counts_prompt_and_padding_out():
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    mask = response_token_mask(attention, torch.tensor([2, 4]))
    assert mask.tolist() == [[False, False, True, True, False], [False, False, False, False, True]]


def loop_pair_loss(name, pc, pr, rc, rr, beta, eps, gamma):
    """One pair's loss, written from the papers' formulas."""
    logsig = lambda x: -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))  # noqa: E731
    if name == "simpo":
        z = beta * pc - beta * pr
        return -(1 - eps) * logsig(z - gamma) - eps * logsig(-(z - gamma)), beta * pc, beta * pr
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    z = cr - rj
    if name == "sigmoid":
        loss = -(1 - eps) * logsig(z) - eps * logsig(-z)
    elif name == "ipo":
        loss = ((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2
    else:
        loss = max(0.0, 1 - z)
    return loss, cr, rj


CASES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0), ("hinge", 0.1, 0.0),
         ("hinge", 2.0, 0.0), ("simpo", 2.0, 0.0), ("simpo", 2.5, 0.1)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("name", "beta", "eps"), CASES)
def test_each_loss_matches_loop_from_logits(seed, name, beta, eps):
    """Logits -> sequence log-probs -> loss and TRL-named statistics, against the loops above."""
    gamma = 0.7
    variant = get_preference_loss(name)
    seqs = [random_rows(seed * 10 + k) for k in range(4)]  # policy chosen/rejected, reference chosen/rejected
    for logits, *_ in seqs[:2]:
        logits.requires_grad_(True)
    logps = [sequence_logprobs(lg, ids, response_token_mask(att, pr), variant.length_normalized)
             for lg, ids, att, pr in seqs]
    refs = (logps[2].detach(), logps[3].detach()) if variant.needs_reference else (None, None)
    loss, stats = preference_loss(logps[0], logps[1], *refs, loss_type=name, beta=beta, label_smoothing=eps,
                                  gamma=gamma)
    rows = []
    for row in range(seqs[0][1].shape[0]):
        plain = [loop_sequence_logprob(lg.detach(), ids, att, int(pr[row]), row, variant.length_normalized)
                 for lg, ids, att, pr in seqs]
        rows.append((*loop_pair_loss(name, *plain, beta, eps, gamma), plain[0], plain[1]))
    n = len(rows)
    assert loss.item() == pytest.approx(sum(r[0] for r in rows) / n, abs=1e-5)
    assert stats["rewards_chosen"].item() == pytest.approx(sum(r[1] for r in rows) / n, abs=1e-5)
    assert stats["rewards_rejected"].item() == pytest.approx(sum(r[2] for r in rows) / n, abs=1e-5)
    assert stats["rewards_margins"].item() == pytest.approx(sum(r[1] - r[2] for r in rows) / n, abs=1e-5)
    accuracy = sum(1.0 if r[1] > r[2] else 0.5 if r[1] == r[2] else 0.0 for r in rows) / n
    assert stats["rewards_accuracies"].item() == pytest.approx(accuracy)
    assert stats["logps_chosen"].item() == pytest.approx(sum(r[3] for r in rows) / n, abs=1e-5)
    assert stats["logps_rejected"].item() == pytest.approx(sum(r[4] for r in rows) / n, abs=1e-5)
    ranked = sum(1.0 if r[3] > r[4] else 0.5 if r[3] == r[4] else 0.0 for r in rows) / n
    assert stats["logps_accuracies"].item() == pytest.approx(ranked)
    loss.backward()
    assert torch.isfinite(seqs[0][0].grad).all()


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    loss, stats = preference_loss(chosen, rejected, torch.zeros(3), torch.zeros(3), beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["rewards_accuracies"].item() == 0.5  # all tied at the start
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_inputs_are_not_modified():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, generator=gen) for _ in range(4)]
    before = [t.clone() for t in tensors]
    for name in PREFERENCE_LOSSES:
        preference_loss(*tensors, loss_type=name, beta=0.3, gamma=0.2)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))


def test_bad_arguments_are_named():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown preference loss 'dpo'.*sigmoid"):
        preference_loss(x, x, x, x, loss_type="dpo")
    with pytest.raises(ValueError, match="'ipo' needs reference"):
        preference_loss(x, x, None, None, loss_type="ipo")
    with pytest.raises(ValueError, match="both reference"):
        preference_loss(x, x, x, None)
    with pytest.raises(ValueError, match="share"):
        sequence_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
