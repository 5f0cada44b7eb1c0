"""The package's layers: no import cycles at all, and the layer contract `make lint` checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import ROOT


def cycle_in(graph) -> list[str] | None:
    """One import cycle among the graph's modules (a module, the ones it imports, ... back to
    it), or None. Imports inside functions count: grimp reads every import statement."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    assert cycle_in(grimp.build_graph("dqn_jax")) is None


def test_the_cycle_finder_finds_a_package_importing_its_own_module():
    """The kind of cycle import-linter's contracts do not see: a package's __init__ imports a
    module that imports the package."""
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "q"):
        graph.add_module(module)
    graph.add_import(importer="p", imported="p.a")
    graph.add_import(importer="p.a", imported="q")
    assert cycle_in(graph) is None
    graph.add_import(importer="p.a", imported="p")
    assert cycle_in(graph) == ["p", "p.a", "p"]


def test_make_lint_keeps_the_layer_contract():
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout
