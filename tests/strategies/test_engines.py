"""Engine planning rules: one optimizer per child, frozen children inference-only, clear errors."""

import pytest
import torch
from torch import nn

from lightning_rlhf.strategies.engines import deep_merge, engine_per_child, inference_config, plan_engines


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.actor, self.critic, self.reference = nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(2, 2)
        self.reference.requires_grad_(False)
        self.metric_like = nn.Identity()  # no parameters: ignored


BASE = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2}


def test_each_optimizer_maps_to_its_child_and_frozen_children_are_inference_only():
    holder = Holder()
    opts = [torch.optim.SGD(holder.actor.parameters(), lr=0.1), torch.optim.SGD(holder.critic.parameters(), lr=0.1)]
    plans = {p.name: p for p in plan_engines(holder, opts, BASE, inference_config(BASE, 3, False),
                                             {"critic": {"gradient_clipping": 1.0}})}
    assert sorted(plans) == ["actor", "critic", "reference"]
    assert plans["actor"].optimizer is opts[0] and plans["critic"].optimizer_index == 1
    assert not plans["reference"].trainable and plans["reference"].config["zero_optimization"]["stage"] == 3
    assert plans["critic"].config["gradient_clipping"] == 1.0 and "gradient_clipping" not in plans["actor"].config


def test_optimizer_spanning_two_children_is_an_error():
    holder = Holder()
    opt = torch.optim.SGD([*holder.actor.parameters(), *holder.critic.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"Optimizer 0 \(SGD\) spans the child modules \['actor', 'critic'\]"):
        plan_engines(holder, [opt, torch.optim.SGD(holder.reference.parameters(), lr=1)], BASE, BASE)


def test_child_in_two_optimizers_is_an_error():
    holder = Holder()
    opts = [torch.optim.SGD([holder.actor.weight], lr=0.1), torch.optim.SGD([holder.actor.bias], lr=0.1)]
    with pytest.raises(ValueError, match=r"'actor' has parameters in optimizers 0 and 1"):
        plan_engines(holder, opts, BASE, BASE)


def test_trainable_child_without_optimizer_and_unknown_override_are_errors():
    holder = Holder()
    holder.reference.requires_grad_(True)
    opts = [torch.optim.SGD(holder.actor.parameters(), lr=0.1), torch.optim.SGD(holder.critic.parameters(), lr=0.1)]
    with pytest.raises(ValueError, match=r"'reference' has 2 trainable parameters .* but no optimizer"):
        plan_engines(holder, opts, BASE, BASE)
    holder.reference.requires_grad_(False)
    with pytest.raises(ValueError, match=r"engine_configs names \['critc'\]"):
        plan_engines(holder, opts, BASE, BASE, {"critc": {}})
    with pytest.raises(ValueError, match="sets 'optimizer'"):
        plan_engines(holder, opts, {**BASE, "optimizer": {"type": "Adam"}}, BASE)


def test_a_per_engine_zero_stage_is_refused_when_the_strategy_is_built():
    """DeepSpeed-Chat's --critic_zero_stage: accepted before, then fit died with `mat2 must be a matrix`."""
    from lightning_rlhf.strategies import HybridDeepSpeedStrategy

    with pytest.raises(ValueError, match=r"engine_configs\['critic'\] sets ZeRO stage 2, but the strategy's stage is 3"):
        HybridDeepSpeedStrategy(stage=3, engine_configs={"critic": {"zero_optimization": {"stage": 2}}})
    same = HybridDeepSpeedStrategy(stage=3, engine_configs={"critic": {"zero_optimization": {"stage": 3}},
                                                             "actor": {"gradient_clipping": 0.5}})
    assert same.engine_configs["actor"] == {"gradient_clipping": 0.5}
    holder = Holder()
    opts = [torch.optim.SGD(holder.actor.parameters(), lr=0.1), torch.optim.SGD(holder.critic.parameters(), lr=0.1)]
    with pytest.raises(ValueError, match="sets ZeRO stage 1"):
        plan_engines(holder, opts, BASE, BASE, {"actor": {"zero_optimization": {"stage": 1}}})


def test_inference_config_offload_forces_zero3_and_keeps_precision():
    cfg = inference_config({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}, 2, offload=True)
    assert cfg["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": False}}
    assert cfg["bf16"] == {"enabled": True}
    assert inference_config({}, 2, offload=False)["zero_optimization"] == {"stage": 0}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_module_clip_goes_into_the_config_unless_the_user_set_one():
    from types import SimpleNamespace

    from lightning_rlhf.strategies.engine_steps import apply_module_clipping

    manual = SimpleNamespace(automatic_optimization=False, max_grad_norm=1.0)
    config = {"gradient_clipping": 0.0}  # what Lightning writes under manual optimization
    apply_module_clipping(config, manual, explicit=False)
    assert config["gradient_clipping"] == 1.0
    config = {"gradient_clipping": 0.3}
    with pytest.warns(UserWarning, match="the config's value is used"):
        apply_module_clipping(config, manual, explicit=True)
    assert config["gradient_clipping"] == 0.3
    with pytest.raises(ValueError, match="max_grad_norm must be a number >= 0 or None"):
        apply_module_clipping({}, SimpleNamespace(automatic_optimization=False, max_grad_norm="1"), explicit=False)


def test_engine_per_child_is_asked_for_or_follows_from_manual_optimization_with_several_children():
    class Module(nn.Module):
        def __init__(self, automatic: bool, children: int, ask: bool = False) -> None:
            super().__init__()
            self.automatic_optimization = automatic
            self.engine_per_child = ask
            for index in range(children):
                self.add_module(f"child{index}", nn.Linear(2, 2))
            self.metrics = nn.ModuleDict()  # no parameters: never counts

    assert engine_per_child(Module(automatic=False, children=2))
    assert not engine_per_child(Module(automatic=False, children=1))
    assert not engine_per_child(Module(automatic=True, children=2)), "automatic: one engine unless asked"
    assert engine_per_child(Module(automatic=True, children=2, ask=True)), "DPO with a reference asks"
    assert engine_per_child(Module(automatic=False, children=1, ask=True)), "GRPO without a reference asks"
