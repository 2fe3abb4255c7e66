"""Every code block of the documentation runs (or, for shell commands, is checked).

The hand-written pages of ``docs/`` are read as the site shows them (``{include}`` expanded;
``_blocks.py`` says how each kind of block is tested); the generated method pages' examples
are run from their generator (``docs/_ext/method_pages.py``); the docstrings' ``>>>``
examples are run with doctest. CPU only: blocks that need a GPU or an optional package are
skipped, with the reason, only when it is absent.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import sys

import pytest
import torch

from tests._isolated import run_isolated
from tests.docs._blocks import DOCS, LANGUAGES, Block, blocks, pages
from tests.docs._commands import check_command

sys.path.insert(0, str(DOCS / "_ext"))


def _missing(block: Block) -> str | None:
    for name in filter(None, block.options.get("requires", "").split(",")):
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{block.where} needs the optional package {name!r} (not installed)"
    if "cuda" in block.options and not torch.cuda.is_available():
        return f"{block.where} needs a CUDA GPU (none here)"
    return None


def _run_python(code: str, namespace: dict, block: Block) -> None:
    expected = block.options.get("raises")
    compiled = compile(code, block.where, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        if expected:
            with pytest.raises(BaseException) as info:
                exec(compiled, namespace)
            assert type(info.value).__name__ == expected, f"{block.where} raised {info.value!r}"
        else:
            exec(compiled, namespace)


def _run_script(block: Block, timeout: float = 240.0) -> None:
    """A block that is a whole script (it spawns processes that import its functions), run by
    :func:`tests._isolated.run_isolated`: on a timeout its workers are stopped with it, each
    printing its Python stack first (``-X faulthandler`` is inherited by spawned workers)."""
    from pathlib import Path

    script = Path("docs_example.py")
    script.write_text(block.code, encoding="utf-8")
    code, out, err = run_isolated(
        [sys.executable, "-X", "faulthandler", str(script)], timeout=timeout
    )
    if code is None:
        pytest.fail(f"{block.where} did not finish in {timeout:.0f} s:\n{out}\n{err}")
    assert code == 0, f"{block.where} failed:\n{out}\n{err}"


def _diff_sides(code: str) -> tuple[str, str]:
    old, new = [], []
    for line in code.splitlines():
        mark, text = (line[:1], line[1:]) if line else (" ", "")
        if mark in (" ", "-"):
            old.append(text)
        if mark in (" ", "+"):
            new.append(text)
    return "\n".join(old), "\n".join(new)


def run_page(page) -> int:
    """Run the blocks of ``page``; returns how many ran or were checked."""
    namespace: dict = {"__name__": "__docs__"}
    count = 0
    for block in blocks(page):
        assert block.lang in LANGUAGES, f"{block.where}: untested language {block.lang!r}"
        reason = _missing(block)
        if reason:
            pytest.skip(reason)
        if "setup" in block.options:
            for setup in blocks((block.source.parent / block.options["setup"]).resolve(), page):
                _run_python(setup.code, namespace, setup)
        if block.lang == "python" and "script" in block.options:
            _run_script(block)
        elif block.lang == "python":
            _run_python(block.code, namespace, block)
        elif block.lang == "diff":
            for side in _diff_sides(block.code):
                _run_python(side, {"__name__": "__docs__"}, block)
        elif block.lang == "bash":
            for line in block.code.splitlines():
                check_command(line.strip())
        count += 1
    return count


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Examples write files (checkpoints, CSV): into a fresh folder, not the checkout."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples(page):
    run_page(page)


def test_every_page_is_tested():
    """The collection above sees the pages the site is built from (a guard against a glob
    that silently matches nothing)."""
    names = {str(p.relative_to(DOCS)) for p in pages()}
    assert {"index.md", "getting-started.md", "concepts.md", "recipes/amp.md"} <= names
    assert sum(len(blocks(p)) for p in pages()) > 40


def _method_specs():
    from mtl_fast.methods import registry

    return registry.REGISTRY


@pytest.mark.parametrize("spec", _method_specs(), ids=lambda s: s.name)
def test_method_page_example(spec):
    """The example of each generated method page runs and trains: weights for T tasks."""
    from method_pages import example_code, run_example

    namespace = run_example(example_code(spec))
    weights = namespace["method"].weights
    assert weights.shape == (3,) and torch.isfinite(weights).all()


def _documented_modules():
    from api_pages import public_modules

    return public_modules()


def test_docstring_examples():
    """The ``>>>`` examples of every documented module pass (and there are some)."""
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    ran = 0
    for name in _documented_modules():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):
                out = io.StringIO()
                result = runner.run(test, out=out.write)
                assert result.failed == 0, out.getvalue()
                ran += len(test.examples)
    assert ran > 0


def test_readme_example():
    """The README's example is the landing page's: run it from the README itself."""
    readme = DOCS.parent / "README.md"
    python = [b for b in blocks(readme) if b.lang == "python"]
    assert python, "the README shows a runnable example"
    for block in python:
        _run_python(block.code, {"__name__": "__docs__"}, block)
    assert os.path.isfile(readme)
