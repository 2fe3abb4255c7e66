"""The API reference (``docs/api/``): one page per public module, generated from ``__all__``.

Documented: ``mtl_fast`` (its ``__all__``) and every public module of the package (no
underscore in its dotted name; ``LEFT_OUT`` lists the exceptions with the reason): its
``__all__``, or without one the public names it defines. Each object is documented once: the
top-level names as ``mtl_fast.X``, the others in the module that defines them (else the first
that exports them); the other modules that export it link there. The weighting methods are
documented on their method pages (``docs/methods/``), which the API pages link to. A new
public module or name appears without an edit here; one without a docstring fails the
build (``docs/_ext/docstring_check.py``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from gen_common import BANNER, DOCS, md_table, write_page_folder

import mtl_fast
from mtl_fast.methods import registry

API = DOCS / "api"
_BANNER = BANNER.format(gen="api_pages.py")
#: Section of the index each module belongs to (first matching prefix).
GROUPS = (
    ("mtl_fast.integrations", "Integrations"),
    ("mtl_fast.compare", "Comparison tooling (`mtl-fast compare`)"),
    ("mtl_fast.kernels", "Triton kernels (reached through `backend=`)"),
    ("mtl_fast.reference", "Reference implementation"),
    ("mtl_fast.methods", "Methods"),
    ("mtl_fast", "Core"),
)
#: Public modules left out, with the reason (shown on the index).
LEFT_OUT = {
    "mtl_fast.cli": "the `mtl-fast` command line; its commands are documented where they are used",
}


def public_modules() -> list[str]:
    """The dotted names of the documented modules, ``mtl_fast`` first."""
    found = set()
    for info in pkgutil.walk_packages(mtl_fast.__path__, "mtl_fast."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.name not in LEFT_OUT:
            found.add(info.name)
    return ["mtl_fast", *sorted(found)]


def page_name(module: str) -> str:
    return module


def _defined_here(module: ModuleType, name: str, obj: Any) -> bool:
    """``name`` is defined in ``module`` (a class or function of it, or assigned in it)."""
    owner = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and owner is not None:
        return owner == module.__name__
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\s*[:=]", source, re.MULTILINE) is not None


def exported(module: ModuleType) -> list[str]:
    """``__all__``, else the public names defined in the module."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and not isinstance(obj, ModuleType)
        and _defined_here(module, n, obj)
    ]


def _is_alias(obj: Any) -> bool:
    """A typing construct (``Union[...]``, ``list[int]``, ``Literal[...]``), not a value."""
    return type(obj).__module__ == "typing" or type(obj).__name__ in ("GenericAlias", "UnionType")


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def _trackable(obj: Any) -> bool:
    """Objects whose identity says where they are documented (not small shared constants)."""
    return not isinstance(obj, (int, float, str, bytes, bool, type(None)))


def canonical_homes(modules: list[str]) -> dict[int, str]:
    """id(object) → the dotted name it is documented under: ``mtl_fast.X`` for the top-level
    names, else the module that defines it, else the first module (in order) exporting it."""
    homes: dict[int, str] = {}
    first: dict[int, str] = {}
    for modname in modules:
        module = importlib.import_module(modname)
        for name in exported(module):
            obj = getattr(module, name)
            if isinstance(obj, ModuleType) or not _trackable(obj) or _is_alias(obj):
                continue
            full = f"{modname}.{name}"
            first.setdefault(id(obj), full)
            if modname == "mtl_fast" or (id(obj) not in homes and _defined_here(module, name, obj)):
                homes.setdefault(id(obj), full)
    return {**first, **homes}


def module_page(modname: str, homes: dict[int, str], methods: set[int]) -> str:
    module = importlib.import_module(modname)
    blocks = []
    links = []
    for name in exported(module):
        obj = getattr(module, name)
        full = f"{modname}.{name}"
        if isinstance(obj, ModuleType):
            links.append([f"`{name}`", f"module {{py:mod}}`{obj.__name__}`"])
        elif name.startswith("__"):
            links.append([f"`{name}`", f"`{obj!r}`"])
        elif _is_alias(obj):
            links.append([f"`{name}`", f"type alias: `{obj!r}`".replace("typing.", "")])
        elif id(obj) in methods:
            links.append(
                [f"`{name}`", f"weighting method, [its page](../methods/{obj.__name__}.md)"]
            )
        elif _trackable(obj) and homes.get(id(obj), full) != full:
            links.append([f"`{name}`", f"the same object as {{py:obj}}`{homes[id(obj)]}`"])
        else:
            kind = _kind(obj)
            directive = {"class": "autoclass", "exception": "autoexception"}.get(
                kind, f"auto{kind}"
            )
            blocks.append(f".. {directive}:: {full}\n")
    rst = f".. automodule:: {modname}\n   :no-members:\n\n" + "\n".join(blocks)
    out = _BANNER + f"# `{modname}`\n\n```{{eval-rst}}\n{rst}```\n"
    if links:
        out += "\n## Also exported here\n\n" + md_table(["name", "what"], links)
    return out


def index_page(modules: list[str]) -> str:
    sections: dict[str, list[str]] = {}
    for mod in modules:
        group = next(title for prefix, title in GROUPS if mod.startswith(prefix))
        summary = (importlib.import_module(mod).__doc__ or "").strip().split("\n\n")[0]
        summary = " ".join(summary.split())
        summary = re.sub(r":\w+(?::\w+)?:`~?([^`]+)`", r"`\1`", summary).replace("``", "`")
        sections.setdefault(group, []).append(f"- [`{mod}`]({page_name(mod)}.md): {summary}")
    body = "\n\n".join(
        f"## {title}\n\n" + "\n".join(sections[title])
        for _, title in GROUPS[::-1]
        if title in sections
    )
    toc = "\n".join(page_name(m) for m in modules)
    return (
        _BANNER
        + "# API reference\n\n"
        + "Every public name: `mtl_fast`'s `__all__` and the `__all__` of each public "
        "module. The weighting methods are documented on their [method pages]"
        "(../methods/index.md).\n\n"
        + body
        + "\n\nNot documented here: "
        + "; ".join(f"`{m}`, {why}" for m, why in LEFT_OUT.items())
        + "."
        + f"\n\n```{{toctree}}\n:hidden:\n\n{toc}\n```\n"
    )


def write_api_pages() -> list[Path]:
    modules = public_modules()
    homes = canonical_homes(modules)
    import aliases

    aliases.HOMES.clear()
    aliases.HOMES.update(homes)
    methods = {id(spec.cls) for spec in registry.REGISTRY}
    pages = {page_name(mod): module_page(mod, homes, methods) for mod in modules}
    return write_page_folder(API, pages, index_page(modules))
