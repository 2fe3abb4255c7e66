"""Method name → constructor, with sensible defaults for the comparison problems.

The method list is the method registry's (:mod:`mtl_fast.methods.registry`: every registered
method, in its order), plus the comparison-side baselines of :mod:`mtl_fast.compare.transforms`
(SI, the scale-invariant Σ log L_t of the published QM9 tables). A method whose constructor
needs an argument the comparison cannot supply is listed as *unavailable* with the reason; it
never stops the comparison.

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
methods with ``seed``       ``seed`` = the run's seed (RLW, PCGrad, GradVac, ...)
StaticWeighting             ``weights`` = the problem's static weights (see the report)
Compose                     the method registry's representative composition,
                            ``Compose(IMTLL(T), IMTLG())`` (which equals IMTL)
others                      the class defaults
==========================  ==================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from mtl_fast.compare.transforms import COMPARISON_METHODS
from mtl_fast.methods import registry as method_registry

__all__ = [
    "ALIASES",
    "GROUPS",
    "METHODS",
    "MethodContext",
    "build_method",
    "canonical_name",
    "expand",
    "family",
    "resolve",
    "resolve_all",
]


def _ordered_methods() -> tuple[str, ...]:
    """Every method of the method registry (:mod:`mtl_fast.methods.registry`, its order:
    loss-based, then gradient-based) with the comparison-side baselines
    (:data:`~mtl_fast.compare.transforms.COMPARISON_METHODS`) after the loss-based ones."""
    names = list(method_registry.names())
    loss = [n for n in names if method_registry.get(n).family == "loss"]
    grad = [n for n in names if n not in loss]
    return tuple(loss + [n for n in COMPARISON_METHODS if n not in names] + grad)


#: Every method the comparison knows, in report order (loss-based, the comparison-side
#: baselines, then gradient-based). Read from the method registry, so a method registered there
#: is compared without another list to edit.
METHODS: tuple[str, ...] = _ordered_methods()

#: The methods of the published QM9 tables (Navon et al. 2022 Table 2, Liu et al. 2023 Table 3),
#: under this library's names: LS, SI, RLW, DWA, UW, MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, FAMO.
PUBLISHED_QM9: tuple[str, ...] = (
    "EqualWeighting",
    "SI",
    "RLW",
    "DWA",
    "UncertaintyWeighting",
    "MGDA",
    "PCGrad",
    "CAGrad",
    "IMTLG",
    "NashMTL",
    "FAMO",
)


def _family_of(canon: str) -> str:
    if canon in COMPARISON_METHODS:
        return "gradient" if COMPARISON_METHODS[canon].gradient_based else "loss"
    return method_registry.get(canon).family


def family(name: str) -> str:
    """``"loss"`` or ``"gradient"`` for a method of :data:`METHODS` (or an alias)."""
    return _family_of(canonical_name(name))


#: Group names accepted by :func:`expand` (``--methods``), each with its members.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": METHODS,
    "loss": tuple(n for n in METHODS if _family_of(n) == "loss"),
    "gradient": tuple(n for n in METHODS if _family_of(n) == "gradient"),
    "published": PUBLISHED_QM9,
}

#: Short names accepted on the command line (case-insensitive, '-' and '_' ignored).
ALIASES: dict[str, str] = {
    "equal": "EqualWeighting",
    "ew": "EqualWeighting",
    "ls": "EqualWeighting",
    "uniform": "EqualWeighting",
    "static": "StaticWeighting",
    "uncertainty": "UncertaintyWeighting",
    "uw": "UncertaintyWeighting",
    "kendall": "UncertaintyWeighting",
    "cv": "CVWeighting",
    "nash": "NashMTL",
    "scaleinvariant": "SI",
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
    # seed: every method with a generator of its own (RLW, PCGrad, ...) draws from the run's seed
    kw: dict[str, Any] = {"num_tasks": ctx.num_tasks, "seed": int(ctx.seed)}
    if name == "UncertaintyWeighting" and ctx.task_types is not None:
        kw["task_types"] = list(ctx.task_types)
    elif name == "LSB":
        kw["expected_periods"] = max(1, int(ctx.epochs))
    elif name == "AMTL" and ctx.potentials is not None:
        kw["potentials"] = [max(1e-3, float(p)) for p in ctx.potentials]
    elif name == "DWA":
        kw["temperature"] = 2.0
    elif name == "StaticWeighting" and ctx.static_weights is not None:
        kw["weights"] = [float(w) for w in ctx.static_weights]
    kw.update(ctx.extra.get(name, {}))
    return kw


def _key(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def canonical_name(name: str) -> str:
    """The name in :data:`METHODS` for ``name`` (a class name or an alias; case-insensitive,
    '-' and '_' ignored).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    key = _key(name)
    for m in METHODS:
        if _key(m) == key:
            return m
    if key in ALIASES:
        return ALIASES[key]
    raise ValueError(
        f"unknown method {name!r}; known: {', '.join(METHODS)} "
        f"(aliases: {', '.join(sorted(ALIASES))}; groups: {', '.join(GROUPS)})"
    )


def expand(names: Sequence[str]) -> list[str]:
    """Canonical names for a user list: a group of :data:`GROUPS` (``all``, ``loss``,
    ``gradient``, ``published``) → its members, anything else through :func:`canonical_name`;
    duplicates dropped, order kept."""
    out: list[str] = []
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n.lower() in GROUPS:
            out += list(GROUPS[n.lower()])
        elif n.lower() == "extra":
            raise ValueError(
                "the method group 'extra' is gone: 'all' now means every registered method "
                f"({len(METHODS)}); 'loss' and 'gradient' select a family"
            )
        else:
            out.append(canonical_name(n))
    return list(dict.fromkeys(out))


def resolve(name: str) -> tuple[type | None, str]:
    """The class for ``name`` and where it was found (the method registry, or the comparison's
    own baselines), or ``(None, reason)``."""
    name = canonical_name(name)
    if name in COMPARISON_METHODS:
        cls: type = COMPARISON_METHODS[name]
        return cls, f"{cls.__module__}.{cls.__name__} (comparison-side)"
    try:
        cls = method_registry.get(name).cls
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
    if missing and canon in method_registry.names() and method_registry.get(canon).make:
        # a method whose constructor takes objects (Compose): the registry's own instance
        return method_registry.get(canon).build(ctx.num_tasks)
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
