"""Tensor-parallel plans: which layers of a causal LM are split column- or row-wise.

transformers ships plans for Llama, Qwen2, GPT-NeoX and others but none for OPT, GPT-2, BLOOM or GPT-J, which
DeepSpeed-Chat users train most; those are here, with the attention fixes each family needs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from torch import nn

from lightning_rlhf.models.loading import unwrap_model


@dataclass(frozen=True)
class Split:
    """How the replica splits one ``nn.Linear`` / ``nn.Embedding`` over the tensor-parallel group.

    Attributes:
        kind: ``colwise`` shards the output features, ``rowwise`` the input features (outputs summed).
        replicated_input: the input arrives whole on every rank (rowwise only: each rank takes its slice).
        gather_output: the output is gathered back to full width (colwise only).
        packed: equal blocks stacked along the output features (``[gate | up]``), each split per rank.
    """

    kind: Literal["colwise", "rowwise"]
    replicated_input: bool = False
    gather_output: bool = False
    packed: int = 1


#: transformers' style names (``base_model_tp_plan`` values) that the replica splits, and how.
SPLITS: dict[str, Split] = {
    "colwise": Split("colwise"),
    "colwise_rep": Split("colwise", gather_output=True),
    "colwise_gather_output": Split("colwise", gather_output=True),
    "rowwise": Split("rowwise"),
    "rowwise_rep": Split("rowwise", replicated_input=True),
    "rowwise_split_input": Split("rowwise", replicated_input=True),
    "embedding_rowwise": Split("rowwise", replicated_input=True),
    "embedding_colwise": Split("colwise", gather_output=True),
    "packed_colwise": Split("colwise", packed=2),
}

#: Styles that keep a module's weights whole on every rank in a forward pass.
KEPT_WHOLE: frozenset[str] = frozenset({"replicated_with_grad_allreduce", "replicate", "local_params"})

#: transformers 5.x styles kept whole, with one warning (MoE experts are 3-D parameters; MLA's output has two users).
NOT_SPLIT: frozenset[str] = frozenset({
    "moe_tp_experts", "moe_identity_expert", "packed_rowwise", "mla_kv_a_proj", "all_reduce", "sequence_parallel",
    "grouped_gemm", "ep_dispatch_experts",
})

KNOWN_STYLES: frozenset[str] = frozenset(SPLITS) | KEPT_WHOLE | NOT_SPLIT

_WARNED: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class FamilyTPPlan:
    """How to split one model family across a tensor-parallel group.

    Attributes:
        styles: module (or bare parameter) pattern (``*`` = layer index) -> style.
        divide: module pattern -> names of integer attributes (head counts) divided by the TP size.
        fused_blocks: module pattern -> number of equal blocks (``[q | k | v]``) stacked along the output.
        prepare: ``prepare(replica, tp_rank, tp_size)`` run once after sharding, for family quirks.
    """

    styles: dict[str, str]
    divide: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fused_blocks: dict[str, int] = field(default_factory=dict)
    prepare: Callable[[nn.Module, int, int], None] | None = None


def _bloom_slice_alibi(replica: nn.Module, tp_rank: int, tp_size: int) -> None:
    """Give each BLOOM attention module only this rank's heads of the ALiBi bias (built for all heads)."""
    for module in replica.modules():
        if type(module).__name__ != "BloomAttention":
            continue

        def slice_alibi(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            alibi = kwargs.get("alibi")
            if alibi is not None:
                local_heads = mod.num_heads
                alibi = alibi.view(-1, local_heads * tp_size, *alibi.shape[1:])
                alibi = alibi[:, tp_rank * local_heads : (tp_rank + 1) * local_heads]
                kwargs["alibi"] = alibi.reshape(-1, *alibi.shape[2:])
            return args, kwargs

        module.register_forward_pre_hook(slice_alibi, with_kwargs=True)


OUR_PLANS: dict[str, FamilyTPPlan] = {
    "opt": FamilyTPPlan(
        styles={
            "layers.*.self_attn.q_proj": "colwise",
            "layers.*.self_attn.k_proj": "colwise",
            "layers.*.self_attn.v_proj": "colwise",
            "layers.*.self_attn.out_proj": "rowwise",
            "layers.*.fc1": "colwise",
            "layers.*.fc2": "rowwise",
        },
        divide={"layers.*.self_attn": ("num_heads",)},
    ),
    "gpt2": FamilyTPPlan(
        styles={
            "h.*.attn.c_attn": "colwise",
            "h.*.attn.c_proj": "rowwise",
            "h.*.mlp.c_fc": "colwise",
            "h.*.mlp.c_proj": "rowwise",
        },
        divide={"h.*.attn": ("num_heads", "split_size")},
        fused_blocks={"h.*.attn.c_attn": 3},
    ),
    "bloom": FamilyTPPlan(
        # query_key_value is interleaved per head (n_head, 3, head_dim): a colwise split keeps heads whole.
        styles={
            "h.*.self_attention.query_key_value": "colwise",
            "h.*.self_attention.dense": "rowwise",
            "h.*.mlp.dense_h_to_4h": "colwise",
            "h.*.mlp.dense_4h_to_h": "rowwise",
        },
        divide={"h.*.self_attention": ("num_heads", "hidden_size", "split_size")},
        prepare=_bloom_slice_alibi,
    ),
    "gptj": FamilyTPPlan(
        styles={
            "h.*.attn.q_proj": "colwise",
            "h.*.attn.k_proj": "colwise",
            "h.*.attn.v_proj": "colwise",
            "h.*.attn.out_proj": "rowwise",
            "h.*.mlp.fc_in": "colwise",
            "h.*.mlp.fc_out": "rowwise",
        },
        divide={"h.*.attn": ("num_attention_heads", "embed_dim")},
    ),
}


def pattern_regex(pattern: str) -> re.Pattern:
    """Compile a plan pattern into a regex matching module names that end with it (``*`` = an index)."""
    body = r"\.".join(r"\d+" if part == "*" else re.escape(part) for part in pattern.split("."))
    return re.compile(rf"(^|\.){body}$")


def shipped_plan(config) -> dict[str, str]:
    """transformers' plan for ``config``, with its text sub-config's (a multimodal plan names only its projector)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {**(getattr(text, "base_model_tp_plan", None) or {}), **(getattr(config, "base_model_tp_plan", None) or {})}


def resolve_tp_plan(config, tp_plan: dict[str, str] | None = None) -> FamilyTPPlan:
    """The plan for a model with ``config``: ``tp_plan`` if given, ours for the family, or transformers'."""
    family = getattr(config, "model_type", "?")
    if tp_plan is not None:
        plan = FamilyTPPlan(styles=dict(tp_plan))
        if family in OUR_PLANS:  # keep the family's attention fixes
            ours = OUR_PLANS[family]
            plan = FamilyTPPlan(dict(tp_plan), ours.divide, ours.fused_blocks, ours.prepare)
    elif family in OUR_PLANS:
        plan = OUR_PLANS[family]
    elif shipped_plan(config):
        plan = FamilyTPPlan(styles=shipped_plan(config))
    else:
        raise ValueError(
            f"no tensor-parallel plan for model family {family!r}: transformers ships none and lightning-rlhf "
            f"has plans for {sorted(OUR_PLANS)}. Use inference_tp_size=1, or pass tp_plan={{module pattern: "
            f"'colwise'|'rowwise'}}, e.g. {{'layers.*.self_attn.q_proj': 'colwise', "
            f"'layers.*.self_attn.o_proj': 'rowwise', ...}} (query/key/value and the first MLP projection "
            f"colwise, the attention output and the second MLP projection rowwise)."
        )
    bad = {k: v for k, v in plan.styles.items() if v not in KNOWN_STYLES}
    if bad and tp_plan is not None:  # the user's own plan: a typo must not pass silently
        raise ValueError(
            f"unsupported tensor-parallel styles {bad} in the tp_plan for {family!r}; supported: "
            f"{sorted(KNOWN_STYLES)}"
        )
    return plan


@dataclass
class ModuleLayout:
    """Which modules and bare parameters of one model the replica splits (see :func:`layout_modules`).

    Attributes:
        splits: module name -> how it is split.
        param_shards: bare parameter name (attention sinks, per-head biases) -> dimension sliced per rank.
        kept_whole: module name -> the unknown style that left it whole.
    """

    splits: dict[str, Split] = field(default_factory=dict)
    param_shards: dict[str, int] = field(default_factory=dict)
    kept_whole: dict[str, str] = field(default_factory=dict)


def _style_of(name: str, compiled: list[tuple[re.Pattern, str, str]]) -> tuple[str, str] | None:
    return next(((pattern, style) for regex, pattern, style in compiled if regex.search(name)), None)


def layout_modules(model: nn.Module, plan: FamilyTPPlan, family: str = "?") -> ModuleLayout:
    """Match ``plan`` against ``model``'s modules and parameters; no process group needed (runs on ``meta``).

    A style it does not know keeps the module whole (exact, just not divided) with one warning: transformers adds
    styles in minor releases.
    """
    compiled = [(pattern_regex(p), p, s) for p, s in plan.styles.items()]
    layout = ModuleLayout()
    whole: list[str] = []
    under_whole = lambda name: any(name.startswith(f"{w}.") for w in whole)  # noqa: E731
    for name, module in model.named_modules():
        match = _style_of(name, compiled) if name and not under_whole(name) else None
        if match is None or match[1] in KEPT_WHOLE:
            continue
        pattern, style = match
        if style not in SPLITS:
            layout.kept_whole[name] = style
            whole.append(name)
            _warn_kept_whole(family, pattern, style)
            continue
        if not isinstance(module, (nn.Linear, nn.Embedding)) and type(module).__name__ != "Conv1D":
            raise ValueError(f"tensor-parallel plan maps {name!r} ({type(module).__name__}) to {style!r}; "
                             f"only nn.Linear, nn.Embedding and transformers Conv1D layers can be split")
        layout.splits[name] = SPLITS[style]
    for name, _ in model.named_parameters():
        owner = name.rpartition(".")[0]
        match = _style_of(name, compiled) if not under_whole(name) and owner not in layout.splits else None
        if match is None or match[1] in KEPT_WHOLE:
            continue
        if match[1] not in SPLITS:
            _warn_kept_whole(family, match[0], match[1])
            continue
        layout.param_shards[name] = 0 if SPLITS[match[1]].kind == "colwise" else -1
    return layout


def _warn_kept_whole(family: str, pattern: str, style: str) -> None:
    if (family, pattern, style) in _WARNED:
        return
    _WARNED.add((family, pattern, style))
    warnings.warn(
        f"tensor parallelism: {family!r} module {pattern!r} has style {style!r}, which lightning-rlhf does not "
        f"split; it stays whole on every rank (generation is exact, its memory is not divided). Pass "
        f"tp_plan=... to split it yourself.",
        stacklevel=3,
    )


def check_divisible(config, tp_size: int) -> None:
    """Fail early, naming the field, when heads or widths cannot be split evenly over ``tp_size`` ranks."""
    fields = (
        "num_attention_heads", "n_head", "num_key_value_heads", "hidden_size", "n_embd",
        "intermediate_size", "ffn_dim", "n_inner",
    )
    for name in fields:
        value = getattr(config, name, None)
        if isinstance(value, int) and value % tp_size:
            raise ValueError(
                f"{config.model_type} config.{name}={value} is not divisible by inference_tp_size={tp_size}; "
                f"choose an inference_tp_size that divides it"
            )


def check_generation_layout(module: Any, tp_size: int, tp_plan: dict[str, str] | None) -> None:
    """Refuse, before any engine is built, a generating child (a causal LM) that ``tp_size`` ranks cannot split:
    heads or widths not divisible, or a family without a plan. Otherwise it would fail at the first rollout."""
    if tp_size <= 1:
        return
    for name, child in module.named_children():
        model = unwrap_model(child)
        config = getattr(model, "config", None)
        if config is None or not callable(getattr(model, "generate", None)):
            continue
        try:
            check_divisible(config, tp_size)
            resolve_tp_plan(config, tp_plan)
        except ValueError as err:
            raise ValueError(f"{type(module).__name__}.{name} cannot generate split over inference_tp_size="
                             f"{tp_size}: {err}") from err
