"""Math rendered at build time as MathML (``latex2mathml``): the pages need no JavaScript and no
network (no MathJax from a CDN). Browsers render MathML Core natively (Chromium ≥ 109,
Firefox, Safari); the LaTeX source is kept in ``alttext`` for screen readers and copying.

A formula the converter does not understand (an exception, or a ``\\command`` left over in the
output) is a build warning, hence an error under ``-W``.
"""

from __future__ import annotations

import html
import re
from typing import Any

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

_LEFTOVER = re.compile(r">\s*\\[A-Za-z]+")


def to_mathml(latex: str, *, display: bool) -> str:
    """``latex`` as a ``<math>`` element; raises ``ValueError`` when it cannot be converted."""
    source = latex.strip()
    try:
        out = convert(source, display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises several exception types
        raise ValueError(f"cannot convert {source!r}: {exc}") from exc
    if _LEFTOVER.search(out):
        raise ValueError(f"unsupported LaTeX command in {source!r}: {_LEFTOVER.search(out)}")
    alt = html.escape(source, quote=True)
    return out.replace("<math ", f'<math alttext="{alt}" ', 1)


def _render(self: Any, node: nodes.Element, *, display: bool) -> str:
    latex = node.astext()
    if display and not node.get("nowrap"):
        parts = [p for p in latex.split("\n\n") if p.strip()]
        if len(parts) > 1:
            latex = r"\begin{aligned}" + r"\\".join(parts) + r"\end{aligned}"
    try:
        return to_mathml(latex, display=display)
    except ValueError as exc:
        logger.warning("math: %s", exc, location=node)
        return f'<code class="math-fallback">{html.escape(latex)}</code>'


def visit_math(self: Any, node: nodes.Element) -> None:
    self.body.append(f'<span class="math">{_render(self, node, display=False)}</span>')
    raise nodes.SkipNode


def visit_displaymath(self: Any, node: nodes.Element) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node.get("number"):
        number = f"({node['number']})"
        self.body.append(f'<span class="eqno">{number}</span>')
    self.body.append(_render(self, node, display=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
