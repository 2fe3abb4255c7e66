"""The package has no import cycles, function-local imports included (``if TYPE_CHECKING:``
blocks excluded): a cycle hidden behind a local import is still a cycle in the design."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mtl_fast"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    found: set[str] = set()

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (t := target(alias.name)) is not None:
                    found.add(t)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                pkg = f"{base}.{node.module}" if node.module else base
            else:
                pkg = node.module or ""
            for alias in node.names:
                sub = f"{pkg}.{alias.name}"
                t = sub if sub in modules else target(pkg)
                if t is not None:
                    found.add(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among modules that are not packages' ``__init__`` re-exporting their children
    (a package importing its own submodules, which import siblings, is not a cycle)."""
    packages = {m for m in graph if (ROOT.parent / m.replace(".", "/") / "__init__.py").exists()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n in packages:
                continue  # importing a package name binds its __init__, which only re-exports
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (c := dfs(n)) is not None:
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and m not in packages and (c := dfs(m)) is not None:
            return c
    return None


def test_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"mtl_fast.a": {"mtl_fast.b"}, "mtl_fast.b": {"mtl_fast.a"}}) == [
        "mtl_fast.a",
        "mtl_fast.b",
        "mtl_fast.a",
    ]


def test_setup_lists_every_package() -> None:
    """Every folder of mtl_fast with an ``__init__.py`` ships in the wheel (setup.py lists the
    packages by hand)."""
    setup_py = (ROOT.parent / "setup.py").read_text()
    for init in ROOT.rglob("__init__.py"):
        name = _module_name(init)
        assert f'"{name}"' in setup_py, f"setup.py does not list {name}"
