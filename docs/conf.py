"""Sphinx configuration of the mtl_fast documentation site (built by ``make docs``).

Sources are Markdown (MyST); the API pages, the method pages and the tables drawn from the
measured results are generated at build time by the extensions in ``docs/_ext/`` (see
``docs/contributing-docs.md``). The build runs with ``-W``: every warning (a broken reference,
a public name without a docstring, a math formula the renderer cannot convert) is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import mtl_fast  # noqa: E402  (after the path set-up, like the extensions)

project = "mtl_fast"
author = "the mtl_fast authors"
copyright = "the mtl_fast authors, MIT licence"
release = mtl_fast.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "mathml",  # LaTeX → MathML at build time: no JavaScript, no CDN (docs/_ext/mathml.py)
    "docstring_check",  # a public name without a docstring is a warning (docs/_ext/)
    "aliases",  # a reference to any public path of a documented object resolves
    "generate",  # method pages, API pages, result tables (docs/_ext/generate.py)
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_generated",  # fragments that pages include, not pages of their own
    "_snippets",  # shared set-up that pages include
    "contributing-docs.md",  # included by contributing.md
]

# Every cross-reference must resolve. References to other libraries (torch, numpy, ...) cannot:
# the build is offline, without their inventories, so they render as code. Private modules of
# mtl_fast (an underscore) are implementation detail the docstrings name on purpose.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|nn|optim|triton|lightning|transformers|scipy|matplotlib)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Parameter|ProcessGroup|Work|Figure|Axes|ndarray|Generator)"),
    (r"py:.*", r"mtl_fast(\.\w+)*\._\w+(\..*)?"),
    (r"py:.*", r"_\w+(\..*)?"),
    (r"py:class", r"(typing\.)?(Any|Callable|Sequence|Mapping|Iterable|Iterator|Literal)"),
    (r"py:class", r"(collections\.abc|os|pathlib|dataclasses|argparse|enum)\..*"),
    (r"py:class", r"(optional|default|callable|array-like|path-like|\.\.\.|PathLike)"),
    (r"py:class", r"(dict|list|tuple|set|Sequence|Mapping)\[.*|.*\]"),
    # torch's own docstring of nn.Module.set_extra_state (inherited by Weighting) says this.
    (r"py:func", r"load_state_dict"),
]

autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_inherit_docstrings = True
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# Literal blocks of the docstrings (``::``) are formulas and sketches of a training loop: shown
# as plain preformatted text. Every ``>>>`` example is run by tests/docs/; every Markdown code
# block of the site is run (or its command checked) by tests/docs/test_examples.py.
highlight_language = "text"
pygments_style = "friendly"

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
html_math_renderer = "mathml"

html_theme = "furo"
html_title = f"mtl_fast {release}"
html_static_path = ["_static"]
html_css_files = ["mtl_fast.css"]
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
