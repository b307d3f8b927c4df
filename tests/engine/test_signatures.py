"""The engine's public functions take at most five parameters (self and cls not counted; *args/**kwargs neither).

Functions of a private class and nested functions are not public. Longer lists are grouped into
small dataclasses (``store.CellIdentity``, ``runner.Console``, ``score.ImageFolders``, ``timing.Timing``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import bench_core

LIMIT = 5


def _too_long(tree: ast.Module) -> list[str]:
    found = []

    def visit(node: ast.AST, owner: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, child.name)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                if child.name.startswith("_") and child.name != "__init__":
                    continue
                args = child.args
                params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                if owner and params and params[0].arg in ("self", "cls"):
                    params = params[1:]
                if len(params) > LIMIT:
                    found.append(f"{owner + '.' if owner else ''}{child.name} ({len(params)})")

    visit(tree, None)
    return found


def test_the_checker_counts_parameters():
    source = (
        "def f(a, b, c, d, e, *, g): ...\n"
        "class C:\n    def m(self, a, b, c, d, e): ...\n    def n(self, a, b, c, d, e, f): ...\n"
        "def _p(a, b, c, d, e, f): ..."
    )
    assert _too_long(ast.parse(source)) == ["f (6)", "C.n (6)"]


def test_no_public_engine_function_takes_more_than_five_parameters():
    root = Path(bench_core.__file__).parent
    offenders = {
        str(path.relative_to(root)): found
        for path in sorted(root.rglob("*.py"))
        if (found := _too_long(ast.parse(path.read_text())))
    }
    assert offenders == {}
