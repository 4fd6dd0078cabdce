"""Resolving ``reward_funcs`` entries and ``reward_weights`` at construction, so that a typo in a YAML import path
fails before the models load, not at the first rollout.
"""

from __future__ import annotations

import importlib
import math
import numbers
from typing import Any, Callable, Sequence, Union

from lightning_rlhf.rewards.builtin import BUILTIN_REWARD_FUNCTIONS, check_requirements
from lightning_rlhf.rewards.reasoning_gym import reasoning_gym_score, reasoning_gym_score_flexible
from lightning_rlhf.rewards.remote import RemoteScorer
from lightning_rlhf.rewards.scoring import NamedRewardFunction, RewardFunction

RewardSpec = Union[str, RewardFunction]
#: every reward function a YAML file can name: the standard-library built-ins and reasoning-gym's verifiers
NAMED_REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    **BUILTIN_REWARD_FUNCTIONS, "reasoning_gym_score": reasoning_gym_score,
    "reasoning_gym_score_flexible": reasoning_gym_score_flexible}


def resolve_reward_function(spec: RewardSpec) -> NamedRewardFunction:
    """Turn one ``reward_funcs`` entry into a named callable, with a clear error.

    Args:
        spec: an import path ``package.module:function``, a built-in's name, an ``http(s)://`` URL or a callable.
    """
    if callable(spec):
        owner = spec if hasattr(spec, "__qualname__") else type(spec)
        function, source = spec, f"{owner.__module__}:{owner.__qualname__}"
    elif not isinstance(spec, str):
        raise TypeError(f"reward_funcs entries must be import paths, URLs or callables, got {spec!r}")
    elif spec.startswith(("http://", "https://")):
        function, source = RemoteScorer(spec), spec
    elif spec in NAMED_REWARD_FUNCTIONS:
        function = NAMED_REWARD_FUNCTIONS[spec]
        source = f"{function.__module__}:{spec}"
    else:
        function, source = _import(spec), spec
    check_requirements(function, source)
    if isinstance(function, RemoteScorer):
        return NamedRewardFunction(function.name, function.url, function)
    return NamedRewardFunction(getattr(function, "__name__", type(function).__name__), source, function)


def _import(path: str) -> RewardFunction:
    others = f"neither a built-in ({', '.join(sorted(NAMED_REWARD_FUNCTIONS))}) nor "
    return import_callable(path, "reward function", others, "nor an http(s):// URL")


def import_callable(path: str, what: str, before: str = "", after: str = "") -> Callable[..., Any]:
    """The callable at import path ``package.module:attribute``, or a ValueError naming ``what`` it was for."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{what} {path!r} is {before or 'not '}an import path 'package.module:function' "
                         f"{after}".rstrip())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({exc}); install it or "
                         f"put its folder on PYTHONPATH") from exc
    function = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ValueError(f"{what} {path!r}: {module_name!r} has no attribute {attribute!r}")
        function = getattr(function, part)
    if not callable(function):
        raise ValueError(f"{what} {path!r} is a {type(function).__name__}, not a callable")
    return function


def resolve_reward_functions(
    specs: Sequence[RewardSpec], weights: Sequence[float] | None = None
) -> tuple[tuple[NamedRewardFunction, ...], tuple[float, ...]]:
    """Resolve every ``reward_funcs`` entry and check ``reward_weights`` against them.

    Args:
        specs: the ``reward_funcs`` entries (see :func:`resolve_reward_function`).
        weights: one weight per function (``reward_weights``); ``None`` weighs each 1.0.

    A name used twice gets a ``_2``, ``_3`` suffix so that the curves stay apart.
    """
    if isinstance(specs, (str, bytes)) or callable(specs):
        raise TypeError(f"reward_funcs must be a list, got the single entry {specs!r}; write [{specs!r}]")
    functions = [resolve_reward_function(spec) for spec in specs]
    if weights is None:
        weights = [1.0] * len(functions)
    if len(weights) != len(functions):
        raise ValueError(f"reward_weights has {len(weights)} entries for {len(functions)} reward_funcs "
                         f"({[f.source for f in functions]}); give one weight per function")
    bad = [w for w in weights if not isinstance(w, numbers.Real) or not math.isfinite(w)]
    if bad:
        raise ValueError(f"reward_weights must be finite numbers, got {list(weights)}")
    seen: dict[str, int] = {}
    unique = []
    for function in functions:
        seen[function.name] = seen.get(function.name, 0) + 1
        name = function.name if seen[function.name] == 1 else f"{function.name}_{seen[function.name]}"
        unique.append(NamedRewardFunction(name, function.source, function.function))
    return tuple(unique), tuple(float(w) for w in weights)
