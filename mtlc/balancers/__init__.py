"""Loss balancers: how the task losses meet the shared weights (design §3).

Gradient-level methods share one contract, :func:`combine_gradients` (see
:mod:`mtlc.balancers.gradient`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mtlc.balancers.base import Balancer, BalancerError, did_you_mean
from mtlc.balancers.gradient import combine_gradients
from mtlc.registry import BALANCERS, resolve

__all__ = ["Balancer", "BalancerError", "build_balancer", "combine_gradients", "option_names"]


def option_names(cls: type[Balancer]) -> tuple[str, ...]:
    """The options a balancer class accepts: the keyword-only arguments of its ``__init__``."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def validated_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``balancer:`` block against the spec schema's model (types, ranges, names).

    The spec loader already does this for a spec; this is the same check for the
    Python API (:func:`combine_gradients`), so options are validated by one model.
    """
    from pydantic import TypeAdapter, ValidationError

    from mtlc.spec.schema import Balancer as BalancerModel

    try:
        model = TypeAdapter(BalancerModel).validate_python(dict(options))
    except ValidationError as exc:
        err = exc.errors()[0]
        path = tuple(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged")))
        path = path[1:] if path and path[0] == options.get("type") else path
        raise BalancerError(f"{'.'.join(path) or 'balancer'}: {err['msg']}", path) from None
    return model.model_dump()


def build_balancer(
    options: Mapping[str, Any],
    tasks: Sequence[str],
    kinds: Mapping[str, str],
    *,
    validate: bool = False,
) -> Balancer:
    """Build the balancer a spec's ``balancer:`` block asks for (no ``type`` means ``fixed``).

    ``validate`` runs the schema's check first (for options that did not come from a
    loaded spec, which is already checked).
    """
    opts = dict(options)
    name = opts.get("type", "fixed")
    if name not in BALANCERS:
        raise BalancerError(
            f"unknown balancer type {name!r}{did_you_mean(str(name), list(BALANCERS))};"
            f" known: {', '.join(BALANCERS)}",
            ("type",),
        )
    if validate:
        opts = validated_options(opts)
    opts.pop("type", None)
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
