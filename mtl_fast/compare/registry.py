"""Method name → constructor, with sensible defaults for the comparison problems.

Classes come from the method registry (:mod:`mtl_fast.methods.registry`). A method that is not
registered, or whose constructor needs an argument the comparison cannot supply, is listed as
*unavailable* with the reason; it never stops the comparison.

Defaults (each passed only when the constructor has a parameter of that name):

==========================  ==================================================================
method                      arguments
==========================  ==================================================================
every method                ``num_tasks=T``
UncertaintyWeighting        ``task_types``: "classification" for cross-entropy tasks, else
                            "regression" (the problem says which)
LSB                         ``expected_periods`` = the number of epochs (β reaches 1 at the end)
AMTL                        ``potentials`` = single-task validation KPIs (Yun & Cho 2023: p_t is the
                            single-task accuracy), floored at 1e-3
DWA                         ``temperature=2`` (the paper's)
RLW, PCGrad                 ``seed`` = the run's seed
StaticWeighting             ``weights`` = the problem's static weights (see the report)
others                      the class defaults
==========================  ==================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

__all__ = [
    "ALIASES",
    "METHODS",
    "MethodContext",
    "build_method",
    "canonical_name",
    "expand",
    "extra_methods",
    "resolve",
    "resolve_all",
]

#: Every method the comparison knows, in report order (loss-based, then gradient-based).
METHODS: tuple[str, ...] = (
    "EqualWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "CVWeighting",
    "LSB",
    "AMTL",
    "IMTLL",
    "GLS",
    "DWA",
    "RLW",
    "DTP",
    "IMTLG",
    "IMTL",
    "MGDA",
    "GradNorm",
    "PCGrad",
    "CAGrad",
)

#: Short names accepted on the command line (case-insensitive, '-' and '_' ignored).
ALIASES: dict[str, str] = {
    "equal": "EqualWeighting",
    "ew": "EqualWeighting",
    "uniform": "EqualWeighting",
    "static": "StaticWeighting",
    "uncertainty": "UncertaintyWeighting",
    "uw": "UncertaintyWeighting",
    "kendall": "UncertaintyWeighting",
    "cv": "CVWeighting",
}


@dataclass
class MethodContext:
    """What the registry may pass to a constructor.

    Attributes:
        num_tasks: T.
        epochs: the training budget in epochs (periods for LSB / DWA).
        seed: the run's seed (RLW, PCGrad generators).
        potentials: single-task validation KPIs in [0, 1] (AMTL), or None when not computed.
        static_weights: the problem's static weights (StaticWeighting).
        task_types: "classification" / "regression" per task (UncertaintyWeighting).
    """

    num_tasks: int
    epochs: int = 1
    seed: int = 0
    potentials: Sequence[float] | None = None
    static_weights: Sequence[float] | None = None
    task_types: Sequence[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _defaults(name: str, ctx: MethodContext) -> dict[str, Any]:
    """Candidate keyword arguments for ``name`` (filtered by the signature later)."""
    kw: dict[str, Any] = {"num_tasks": ctx.num_tasks}
    if name == "UncertaintyWeighting" and ctx.task_types is not None:
        kw["task_types"] = list(ctx.task_types)
    elif name == "LSB":
        kw["expected_periods"] = max(1, int(ctx.epochs))
    elif name == "AMTL" and ctx.potentials is not None:
        kw["potentials"] = [max(1e-3, float(p)) for p in ctx.potentials]
    elif name == "DWA":
        kw["temperature"] = 2.0
    elif name in ("RLW", "PCGrad"):
        kw["seed"] = int(ctx.seed)
    elif name == "StaticWeighting" and ctx.static_weights is not None:
        kw["weights"] = [float(w) for w in ctx.static_weights]
    kw.update(ctx.extra.get(name, {}))
    return kw


def _key(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def canonical_name(name: str) -> str:
    """The class name for ``name`` (a class name or an alias; case-insensitive; also any other
    :class:`mtl_fast.Weighting` subclass found in ``mtl_fast.methods``, see :func:`extra_methods`).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    key = _key(name)
    for m in METHODS:
        if m.lower() == key:
            return m
    if key in ALIASES:
        return ALIASES[key]
    for m in extra_methods():
        if m.lower() == key:
            return m
    raise ValueError(
        f"unknown method {name!r}; known: {', '.join(METHODS)} "
        f"(aliases: {', '.join(sorted(ALIASES))}; extra: {', '.join(extra_methods()) or 'none'})"
    )


def extra_methods() -> list[str]:
    """Registered methods (:mod:`mtl_fast.methods.registry`) beyond :data:`METHODS` (e.g. FAMO,
    STCH), sorted; requested by name or with the ``extra`` token of :func:`expand`."""
    from mtl_fast.methods import registry

    return sorted(n for n in registry.names() if n not in METHODS)


def expand(names: Sequence[str]) -> list[str]:
    """Canonical names for a user list: ``all`` → :data:`METHODS`, ``extra`` →
    :func:`extra_methods`, anything else through :func:`canonical_name`; duplicates dropped."""
    out: list[str] = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n.lower() == "all":
            out += list(METHODS)
        elif n.lower() == "extra":
            out += extra_methods()
        else:
            out.append(canonical_name(n))
    return list(dict.fromkeys(out))


def resolve(name: str) -> tuple[type | None, str]:
    """The class for ``name`` and where it was found (the method registry), or
    ``(None, reason)``."""
    from mtl_fast.methods import registry

    name = canonical_name(name)
    try:
        cls = registry.get(name).cls
    except KeyError:
        return None, "not in the method registry (mtl_fast.methods.registry)"
    return cls, f"{cls.__module__}.{name}"


def _constructor_kwargs(cls: type, candidates: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the candidates the constructor accepts by name, its required parameters left unset)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in candidates.items() if k in named}
    missing = [p.name for p in named.values() if p.default is p.empty and p.name not in kwargs]
    return kwargs, missing


def build_method(name: str, ctx: MethodContext) -> nn.Module:
    """Construct method ``name`` with the defaults of :func:`_defaults`.

    Raises:
        LookupError: the class is unavailable or needs an argument the context cannot supply
            (the message says which).
    """
    canon = canonical_name(name)
    cls, where = resolve(canon)
    if cls is None:
        raise LookupError(f"{canon}: {where}")
    kwargs, missing = _constructor_kwargs(cls, _defaults(canon, ctx))
    if missing:
        raise LookupError(
            f"{canon} ({where}) needs {', '.join(missing)}, which the comparison cannot supply"
        )
    return cls(**kwargs)


def resolve_all(
    names: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Split ``names`` (default: :data:`METHODS`) into (available, {unavailable: reason}).

    Availability here means the class exists; constructor problems surface in
    :func:`build_method` (and are reported the same way by the runner).
    """
    chosen = list(METHODS) if names is None else [canonical_name(n) for n in names]
    available: list[str] = []
    missing: dict[str, str] = {}
    for n in dict.fromkeys(chosen):  # unique, in order
        cls, where = resolve(n)
        if cls is None:
            missing[n] = where
        else:
            available.append(n)
    return available, missing
