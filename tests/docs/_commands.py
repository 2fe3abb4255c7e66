"""Checks of the shell commands shown in the documentation (they are not run: they install
packages, train for minutes or need a GPU). Each command must refer to things that exist: a
file, a ``make`` target, an extra of ``pyproject.toml``, or arguments that ``mtl-fast``'s own
parsers accept."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _extras() -> set[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the docs toolchain needs Python 3.11
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _parse(parser, args: list[str], what: str) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"{what}: arguments rejected: {err.getvalue().strip()}") from None


def _check_pip(args: list[str], line: str) -> None:
    assert args[:1] == ["install"], f"only `pip install` is shown: {line}"
    for arg in args[1:]:
        if arg.startswith("-"):
            continue
        m = re.fullmatch(r"(?:\.|mtl_fast)\[([\w,-]+)\]", arg)
        if m:
            missing = set(m.group(1).split(",")) - _extras()
            assert not missing, f"{line}: no extra {sorted(missing)} in pyproject.toml"
        elif arg not in (".", "-e"):
            assert re.fullmatch(r"[A-Za-z][\w.-]*(\[[\w,]+\])?(==[\w.]+)?", arg), (line, arg)


def _check_mtl_fast(args: list[str], line: str) -> None:
    from mtl_fast.cli import build_parser

    if args[:1] == ["bench"]:
        _check_harness(args[1:], line)
        return
    _parse(build_parser(), args, line)


def _check_harness(args: list[str], line: str) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.harness.cli import build_parser
    finally:
        sys.path.remove(str(ROOT))
    _parse(build_parser(), args, line)


def _check_file(path: str, line: str) -> None:
    assert (ROOT / path).is_file(), f"{line}: no file {path} in the repository"


def check_command(line: str) -> None:
    """Raise ``AssertionError`` when ``line`` names something that does not exist."""
    words = shlex.split(line, comments=True)
    if not words:
        return
    if words[0].startswith(".venv/bin/"):
        words[0] = words[0].removeprefix(".venv/bin/")
    cmd, args = words[0], words[1:]
    if cmd in ("pip", "pip3"):
        _check_pip(args, line)
    elif cmd == "make":
        missing = set(a for a in args if not a.startswith("-")) - _make_targets()
        assert not missing, f"{line}: no make target {sorted(missing)}"
    elif cmd == "mtl-fast":
        _check_mtl_fast(args, line)
    elif cmd in ("python", "python3") and args[:2] == ["-m", "benchmarks.harness"]:
        _check_harness(args[2:], line)
    elif cmd in ("python", "python3"):
        _check_file(args[0], line)
    elif cmd == "torchrun":
        _check_file(next(a for a in args if a.endswith(".py")), line)
    elif cmd.endswith(".sh") or "/" in cmd:
        _check_file(cmd, line)
    else:
        raise AssertionError(f"no check for the command {cmd!r} ({line}): add one to {__file__}")
