"""Sphinx extension: write the generated pages before Sphinx reads the sources.

* ``docs/methods/``: one page per registered method, and the index (``method_pages.py``);
* ``docs/api/``: the API reference, one page per public module (``api_pages.py``);
* ``docs/_generated/``: tables and figures from the measured results, included by
  ``benchmarks.md``, ``comparison.md`` and ``which-method.md`` (``results_pages.py``).

These folders are not in git (``.gitignore``): edit the generators. A generator that fails is a
build warning (an error under ``-W``) naming what failed. ``python docs/_ext/generate.py``
writes them without a Sphinx build (the tests do that).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_pages import write_api_pages
from method_pages import write_method_pages
from results_pages import (
    write_advice_fragment,
    write_bench_fragments,
    write_comparison_fragment,
    write_results_toc,
)

GENERATORS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("method pages", write_method_pages),
    ("API pages", write_api_pages),
    ("benchmark tables", write_bench_fragments),
    ("comparison tables", write_comparison_fragment),
    ("which-method advice", write_advice_fragment),
    ("comparison reports' toctree", write_results_toc),
)


def generate_all(warn: Callable[[str], None]) -> None:
    """Run every generator; a failure is reported through ``warn`` and the rest still run."""
    for what, gen in GENERATORS:
        try:
            gen()
        except Exception:
            warn(f"generating the {what} failed:\n{traceback.format_exc()}")


def _on_builder_inited(app: Any) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    generate_all(lambda msg: logger.warning(msg, type="mtl_docs"))


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    failures: list[str] = []
    generate_all(failures.append)
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)
