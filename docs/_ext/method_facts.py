"""What a method page says about one registered method, read from the code and the results.

Everything comes from the method itself, so a method added to ``mtl_fast/methods/registry.py``
gets a complete page without an edit here: its family, lifecycle calls and CUDA-graph flag
from the class, the "Needs:" / "Extra cost:" / "State:" sentences of its docstring (the
convention of CONTRIBUTING.md), its paper from ``docs/bibliography.md``, its state from a
short run of the page's own example, and its measured cost from the results files.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from gen_common import DOCS

import mtl_fast
from mtl_fast.methods.registry import MethodSpec

LIFECYCLE_CALLS = {
    "end_epoch": "`method.end_epoch()` after each training epoch",
    "observe": "`method.observe(metrics)` after each evaluation (one metric per task)",
    "update": "`method.update(losses)` after `optimizer.step()`, with the losses recomputed on "
    "the same batch (or `extra_pass=False`)",
}

_ROLE = re.compile(r":(?:py:)?(\w+):`([^`]+)`")


def rst_to_myst(text: str, owner: type | None = None) -> str:
    """Inline reST of a docstring sentence as MyST: roles ``:func:`x``` → ``{py:func}`x```.

    On a Markdown page there is no current module or class: an unqualified name is qualified
    by ``owner`` (a member for ``meth``/``attr``, a name of its module otherwise)."""

    def sub(m: re.Match) -> str:
        role, target = m.group(1), m.group(2)
        if owner is not None and "." not in target and not target.startswith("~"):
            if role in ("meth", "attr"):
                target = f"~{owner.__module__}.{owner.__qualname__}.{target}"
            else:
                target = f"~{owner.__module__}.{target}"
        return f"{{py:{role}}}`{target}`"

    return _ROLE.sub(sub, text)


def _sentence(doc: str, label: str, stops: tuple[str, ...]) -> str | None:
    """The text after ``label`` up to the next label in ``stops`` or the end of the paragraph."""
    paragraphs = re.split(r"\n\s*\n", doc)
    for para in paragraphs:
        one = re.sub(r"\s*\n\s*", " ", para.strip())
        idx = one.find(label)
        if idx < 0:
            continue
        rest = one[idx + len(label) :]
        cut = min([rest.find(s) for s in stops if s in rest] or [len(rest)])
        return rest[:cut].strip() or None
    return None


@dataclass
class Paper:
    cited_as: str
    reference: str


def bibliography() -> dict[str, list[Paper]]:
    """Class name → the papers docs/bibliography.md lists for it (its "methods" column)."""
    out: dict[str, list[Paper]] = {}
    text = (DOCS / "bibliography.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("cited as", "") or set(cells[0]) <= {"-", " "}:
            continue
        for name in re.findall(r"`(\w+)`", cells[2]):
            out.setdefault(name, []).append(Paper(cells[0], cells[1]))
    return out


@dataclass
class MethodFacts:
    """The facts of one method page."""

    spec: MethodSpec
    summary: str
    needs: str | None
    extra_cost: str | None
    state_note: str | None
    papers: list[Paper]
    learnable: list[tuple[str, list[int]]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qualname(self) -> str:
        """Where the class is documented: ``mtl_fast.X`` when exported at the top level."""
        if getattr(mtl_fast, self.name, None) is self.spec.cls:
            return f"mtl_fast.{self.name}"
        return f"{self.spec.cls.__module__}.{self.name}"

    @property
    def lifecycle_text(self) -> list[str]:
        return [
            LIFECYCLE_CALLS.get(c, f"`method.{c}(...)` (see the class documentation)")
            for c in self.spec.lifecycle
        ]


def method_facts(spec: MethodSpec, papers: dict[str, list[Paper]]) -> MethodFacts:
    """The docstring-derived facts of ``spec`` (state and cost are filled in later)."""
    doc = inspect.getdoc(spec.cls) or ""
    summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    return MethodFacts(
        spec=spec,
        summary=rst_to_myst(summary, spec.cls),
        needs=_opt(_sentence(doc, "Needs:", ("Extra cost:", "State:")), spec.cls),
        extra_cost=_opt(_sentence(doc, "Extra cost:", ("State:", "Needs:")), spec.cls),
        state_note=_opt(_sentence(doc, "State:", ("Needs:", "Extra cost:")), spec.cls),
        papers=papers.get(spec.name, []),
    )


def _opt(text: str | None, owner: type) -> str | None:
    return rst_to_myst(text.rstrip(".") + ".", owner) if text else None


def describe_value(value: Any) -> str:
    """A short description of one entry of a method's state (types and shapes, no values)."""
    import torch

    if isinstance(value, torch.Tensor):
        shape = "×".join(str(s) for s in value.shape) or "scalar"
        return f"tensor [{shape}] {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, dict):
        if "__state_dict__" in value:
            inner = value["__state_dict__"]
            return "state of a helper object: " + ", ".join(f"`{k}`" for k in inner)
        if "__generator_state__" in value:
            return "random generator state"
        return "dict: " + ", ".join(f"`{k}`" for k in value)
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    if value is None:
        return "None (set later)"
    return type(value).__name__
