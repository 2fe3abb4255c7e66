"""The code blocks of the documentation's Markdown pages, as the tests run them.

A fenced block's language says what the test does with it:

* ``python``: executed; the blocks of one page run in order in one namespace (an included
  file's blocks run where it is included);
* ``diff``: both sides executed, the old program (context and ``-`` lines) and the new one
  (context and ``+`` lines);
* ``bash``: each command is checked without being run (its file, make target, extra or
  ``mtl-fast`` arguments must exist; see ``_commands.py``);
* ``text``: output or a layout, not code.

A MyST comment line just above a block changes that: ``% test: requires=pkg1,pkg2`` (skipped,
with the reason, only when a package is missing), ``% test: cuda`` (needs a GPU),
``% test: raises=ValueError`` (the block must raise it), ``% test: setup=path.md`` (run that
file's blocks first, for a page that shows a fragment of a loop defined elsewhere),
``% test: script`` (a whole program, run as ``python file.py``: it spawns processes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Pages generated at build time (their examples are tested from the generators).
GENERATED = ("methods", "api", "_generated", "_build")
LANGUAGES = ("python", "diff", "bash", "text")

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_OPTION = re.compile(r"^%\s*test:\s*(?P<opts>.*)$")


@dataclass
class Block:
    page: Path  # the page the block is shown on
    source: Path  # the file it is written in (an included file for shared set-up)
    line: int
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source.relative_to(DOCS.parent)}:{self.line}"


def pages() -> list[Path]:
    """The hand-written Markdown pages of the site (generated ones excluded)."""
    out = []
    for path in sorted(DOCS.rglob("*.md")):
        rel = path.relative_to(DOCS)
        if rel.parts[0] in GENERATED or rel.parts[0] == "_snippets":
            continue
        out.append(path)
    return out


def _options(line: str) -> dict[str, str]:
    m = _OPTION.match(line.strip())
    if not m:
        return {}
    opts = {}
    for item in m.group("opts").split():
        key, _, value = item.partition("=")
        opts[key] = value
    return opts


def blocks(path: Path, page: Path | None = None) -> list[Block]:
    """The code blocks of ``path`` in order, with ``{include}``-d files expanded."""
    page = page or path
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        if info.startswith("{include}"):
            target = (path.parent / info.split(None, 1)[1].strip()).resolve()
            out += blocks(target, page)
            continue
        if info.startswith("{"):  # another directive (toctree, eval-rst, ...): not code
            continue
        opts = _options(lines[start - 1]) if start > 0 else {}
        out.append(
            Block(page, path, start + 1, info.split()[0] if info else "", "\n".join(body), opts)
        )
    return out
