"""Cross-references to any public path of a documented object.

An object is documented once (``docs/_ext/api_pages.py`` chooses where), but the docstrings
name it by whichever path reads best where they are: ``mtl_fast.reference.gram`` for a
function defined in ``mtl_fast.reference.gram``'s module, ``get_problem`` inside the package
that exports it. When Sphinx finds no target for a Python reference, this resolves the name
to the object (relative to the current module and class, as Sphinx does) and links to the
place the object is documented. A name that is no object, or an object documented nowhere,
stays a broken reference (a warning, an error under ``-W``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx

#: id(object) → its documented dotted name, filled in by the API generator.
HOMES: dict[int, str] = {}


def _lookup(dotted: str) -> Any:
    """The object at ``dotted`` (module prefix imported, then attributes), or raise."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(dotted)


def documented_name(dotted: str) -> str | None:
    """Where the object at ``dotted`` is documented (a member: its class's home + its name)."""
    if not dotted.startswith("mtl_fast"):
        return None
    try:
        obj = _lookup(dotted)
    except (LookupError, AttributeError, ImportError):
        return None
    if isinstance(obj, ModuleType):
        return obj.__name__
    if id(obj) in HOMES:
        return HOMES[id(obj)]
    if isinstance(obj, property) and obj.fget is not None:
        obj = obj.fget
    defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    if defined != dotted and "<" not in defined and defined.startswith("mtl_fast"):
        found = documented_name(defined)
        if found:
            return found
    parent, _, attr = dotted.rpartition(".")
    home = documented_name(parent) if parent else None
    return f"{home}.{attr}" if home else None


def resolve_alias(
    app: Sphinx, env: Any, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module") or ""
    cls = node.get("py:class") or ""
    candidates = [target]
    if module:
        candidates += [f"{module}.{cls}.{target}" if cls else "", f"{module}.{target}"]
    if module and cls:  # a name of the module that defines the class being documented
        try:
            owner = _lookup(f"{module}.{cls.split('.')[0]}")
            candidates.append(f"{owner.__module__}.{target}")
        except (LookupError, AttributeError, ImportError):
            pass
    domain = env.get_domain("py")
    for cand in filter(None, candidates):
        home = documented_name(cand)
        if home is None or (home == cand and cand == target):
            continue
        ref = domain.resolve_any_xref(env, node["refdoc"], app.builder, home, node, contnode)
        if ref:
            return ref[0][1]
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", resolve_alias)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
