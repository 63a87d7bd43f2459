"""Loss balancers: how the task losses meet the shared weights (design §3)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mtlc.balancers.base import Balancer, BalancerError, did_you_mean
from mtlc.registry import BALANCERS, resolve

__all__ = ["Balancer", "BalancerError", "build_balancer", "option_names"]


def option_names(cls: type[Balancer]) -> tuple[str, ...]:
    """The options a balancer class accepts: the keyword-only arguments of its ``__init__``."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def build_balancer(
    options: Mapping[str, Any], tasks: Sequence[str], kinds: Mapping[str, str]
) -> Balancer:
    """Build the balancer a spec's ``balancer:`` block asks for (no ``type`` means ``fixed``)."""
    opts = dict(options)
    name = opts.pop("type", "fixed")
    if name not in BALANCERS:
        raise BalancerError(
            f"unknown balancer type {name!r}{did_you_mean(str(name), list(BALANCERS))};"
            f" known: {', '.join(BALANCERS)}",
            ("type",),
        )
    cls = resolve(BALANCERS, name)
    allowed = option_names(cls)
    for key in opts:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise BalancerError(
                f"unknown option {key!r} for balancer {name!r}"
                f"{did_you_mean(str(key), allowed)}; its options: {known}",
                (str(key),),
            )
    return cls(tasks, kinds, **opts)
