"""Frozen linear layers run from oneDNN-packed weights in training: the same loss and LoRA gradients as PyTorch's own
linear layers, only the frozen layers packed, and nothing packed where oneDNN cannot run them."""

from __future__ import annotations

import pytest
import torch

from lightning_rlhf.models import LoraArgs, load_causal_lm
from lightning_rlhf.models.packed_linear import frozen_layers_packed, packing_available
from tests.models.test_prompt_cache import SIZES


def loss_and_gradients(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = torch.log_softmax(logits.float(), -1)[..., 0].mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def lora_model(tiny_model_factory):
    model = load_causal_lm(tiny_model_factory("llama", **SIZES), lora=LoraArgs(rank=4, alpha=8)).train()
    if not packing_available(model):
        pytest.skip("this torch build has no oneDNN linear")
    return model


def test_packed_frozen_layers_give_the_same_loss_and_lora_gradients(lora_model):
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 12))
    expected_loss, expected = loss_and_gradients(lora_model, ids)
    kept: dict = {}
    with frozen_layers_packed([lora_model], kept) as count:
        loss, gradients = loss_and_gradients(lora_model, ids)
    linears = [m for m in lora_model.modules() if type(m) is torch.nn.Linear]
    frozen = [m for m in linears if not m.weight.requires_grad]
    assert count == len(frozen) > 0 and len(frozen) < len(linears), "the base layers and the head, not LoRA's A/B"
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == expected.keys() and gradients
    for name, grad in expected.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all("forward" not in vars(m) for m in linears), "the layers' own forward is back after the block"
    with frozen_layers_packed([lora_model], kept):
        pass
    assert kept[id(lora_model)].repacked == 0, "unchanged frozen weights are not packed again"


def test_nothing_is_packed_where_onednn_cannot_run_it_or_every_layer_trains(tiny_model_factory, lora_model):
    full = load_causal_lm(tiny_model_factory("llama", **SIZES)).train()
    with frozen_layers_packed([full], {}) as count:
        assert count == 0  # full fine-tuning: every weight takes a gradient
    with torch.autocast("cpu", dtype=torch.bfloat16), frozen_layers_packed([lora_model], {}) as count:
        assert count == 0


def test_a_swapped_weight_is_packed_again():
    # a new parameter at version 0 where the packed one was at version 0 too: only its identity tells them apart
    layer = torch.nn.Linear(8, 4, bias=False)
    if not packing_available(layer):
        pytest.skip("this torch build has no oneDNN linear")
    layer.weight = torch.nn.Parameter(torch.randn(4, 8), requires_grad=False)
    x, kept = torch.randn(3, 8, requires_grad=True), {}
    with frozen_layers_packed([layer], kept):
        layer(x)
    layer.weight = torch.nn.Parameter(torch.randn(4, 8), requires_grad=False)
    with frozen_layers_packed([layer], kept):
        out = layer(x)
    torch.testing.assert_close(out, x @ layer.weight.T)
