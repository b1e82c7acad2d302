"""The import graph of ``helpers/``, read from the source (standard library only).

It is the architecture: ``tests/test_layout.py`` checks it has no cycle, and the Makefile
derives each step's dependencies from it, so that changing a module reruns exactly the
notebooks that import it, directly or not::

    python3 -m helpers.core.imports --make notebooks/*.ipynb   # make variables DEPS_<notebook>

Importing ``helpers.a.b`` runs ``helpers/__init__.py`` and ``helpers/a/__init__.py`` first, so
those count as dependencies too. Imports inside functions count like the others.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "helpers"
ROOT = Path(__file__).resolve().parents[2]


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a dotted ``helpers`` module or package, or None when there is none."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.resolve().relative_to(root.resolve()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(tree: ast.AST, importer: str = "", is_package: bool = False,
                     root: Path = ROOT) -> set[str]:
    """The ``helpers`` modules an AST imports (``from pkg import module`` names the module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, importer, is_package)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names
                         if module_path(f"{target}.{a.name}", root) is not None)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_path(m, root) is not None}


def with_parents(modules: Iterable[str]) -> set[str]:
    """``modules`` and the packages whose ``__init__`` importing them runs."""
    out = set()
    for module in modules:
        parts = module.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every ``helpers`` module -> the ``helpers`` modules it imports (parents included)."""
    edges = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = with_parents(imported_modules(tree, name, path.name == "__init__.py", root)) - {name}
    return edges


def reachable(start: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    """``start`` and everything it imports, directly or not."""
    seen, todo = set(), list(with_parents(start))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges.get(module, ()))
    return seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` importing its own modules is not
    one: Python runs the ``__init__`` first). Each cycle once, as a list of modules."""
    def parent_of(a: str, b: str) -> bool:
        return b.startswith(a + ".")

    found, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        stack.append(module)
        for nxt in sorted(edges.get(module, ())):
            if parent_of(nxt, module) or parent_of(module, nxt):
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    return found


def notebook_tree(notebook: Path) -> ast.Module:
    """The code cells of a notebook as one module (IPython's ``!`` and ``%`` lines left out)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    code = "\n".join("".join(line for line in c["source"] if not line.lstrip().startswith(("!", "%")))
                     for c in cells if c["cell_type"] == "code")
    return ast.parse(code, str(notebook))


def notebook_dependencies(notebook: Path, root: Path = ROOT) -> list[Path]:
    """The ``helpers`` files a notebook's code runs when it imports what it imports."""
    modules = reachable(imported_modules(notebook_tree(notebook), root=root), graph(root))
    return sorted(p for p in (module_path(m, root) for m in modules) if p is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m helpers.core.imports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make", nargs="+", metavar="NOTEBOOK", default=[],
                        help="print `DEPS_<stem> := files` for each notebook")
    args = parser.parse_args(argv)
    for notebook in map(Path, args.make):
        files = " ".join(p.relative_to(ROOT).as_posix() for p in notebook_dependencies(notebook))
        print(f"DEPS_{notebook.stem} := {files}")
    found = cycles(graph())
    for cycle in found:
        print(f"import cycle: {' -> '.join(cycle)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
