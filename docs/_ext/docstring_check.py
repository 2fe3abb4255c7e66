"""The docstring policy of the API pages.

* A public name rendered by autodoc without a docstring is a build warning (an error under
  ``-W``): a module, class, function, method or property whose dotted name has no component
  starting with an underscore, and whose docstring (its own or, for an override, the one it
  inherits) is empty; a public constant without a ``#:`` comment likewise.
* Napoleon (Google-style sections) applies to modules, classes and functions only.
* ``|x|`` (an absolute value) is escaped, not read as a reST substitution.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

CHECKED = frozenset({"module", "class", "exception", "function", "method", "property"})


def is_public(name: str) -> bool:
    """No component of the dotted ``name`` is private (``_x``) or a dunder."""
    return not any(part.startswith("_") for part in name.split("."))


def check_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    del app, options
    if not is_public(name):
        return
    if what == "data" and lines and _inherited_from_type(obj, lines):
        # autodoc fell back to the docstring of the value's type (dict, tuple, ...).
        lines[:] = []
        logger.warning(
            "public data %s has no docstring (write a #: comment above its assignment)",
            name,
            type="mtl_docs",
        )
    elif what in CHECKED and not any(line.strip() for line in lines):
        logger.warning("public %s %s has no docstring", what, name, type="mtl_docs")


def _inherited_from_type(obj: Any, lines: list[str]) -> bool:
    own = inspect.getdoc(type(obj))
    return bool(own) and "\n".join(lines).strip() == own.strip()


#: Where Napoleon's Google-style parsing applies. The docstrings of properties and constants
#: are one sentence ("Population variance: m2/n ..."), which Napoleon would read as
#: "type: description" and turn the words before the colon into a type reference.
NAPOLEON_SCOPE = frozenset({"module", "class", "exception", "function", "method"})


def _scoped_napoleon(app: Sphinx) -> None:
    from sphinx.ext.napoleon import _process_docstring

    listeners = app.events.listeners["autodoc-process-docstring"]
    for listener in list(listeners):
        if listener.handler is _process_docstring:
            app.disconnect(listener.id)

    def napoleon_in_scope(
        app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
    ) -> None:
        if what in NAPOLEON_SCOPE:
            _process_docstring(app, what, name, obj, options, lines)

    app.connect("autodoc-process-docstring", napoleon_in_scope)


_BARS = re.compile(r"(?<![\\|`])\|(?=\S)([^|`\n]*?\S)\|(?![|_`])")


def escape_bars(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """``|x|`` in a docstring is an absolute value or a norm, never a reST substitution: escape
    the bars outside literal blocks (``::`` blocks show them as written)."""
    del app, what, name, obj, options
    literal_indent: int | None = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if line.strip() and indent <= literal_indent:
                literal_indent = None
            else:
                continue
        lines[i] = _BARS.sub(lambda m: "\\|" + m.group(1) + "\\|", line)
        if line.rstrip().endswith("::"):
            literal_indent = indent


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", escape_bars, priority=100)
    app.setup_extension("sphinx.ext.napoleon")
    _scoped_napoleon(app)
    app.connect("autodoc-process-docstring", check_docstring, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
