"""The package structure holds: layers (import-linter, contracts in .importlinter), no import
cycle between saelab's modules, and no private name imported from another module."""

from __future__ import annotations

import ast
import configparser
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import saelab

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = pathlib.Path(saelab.__file__).parent
CONTRACTS = ROOT / ".importlinter"


def import_graph() -> dict[str, set[str]]:
    """saelab's modules -> the saelab modules each imports (lazy imports in functions too)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("saelab", cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (each holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(root: pathlib.Path, package: str) -> list[str]:
    """`module imports _name from other.module` for every such import under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        module = ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    and node.module.split(".")[0] == package and node.module != module):
                found += [f"{module} imports {a.name} from {node.module}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_layers_contract_holds():
    pytest.importorskip("importlinter.cli")
    # in a process of its own: import-linter reconfigures logging (it disables every logger
    # that exists), which would silence saelab's warnings in the tests that follow
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(CONTRACTS)!r}, no_cache=True))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"a layer is broken (lint-imports --config .importlinter):\n" \
                                f"{res.stdout[-3000:]}"


def test_every_package_has_a_layer():
    parser = configparser.ConfigParser()
    parser.read(CONTRACTS)
    layers = parser["importlinter:contract:layers"]["layers"]
    named = {n.strip("() ") for line in layers.split("\n") for n in line.split("|") if n.strip()}
    packages = {f"saelab.{m.name}" for m in pkgutil.iter_modules(saelab.__path__)
                if m.name != "__main__"}
    assert packages - named == set(), "add these to a layer in .importlinter"


def test_no_import_cycle_between_modules():
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_no_private_name_imported_across_modules():
    assert private_imports(SRC, "saelab") == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_private_import_finder_finds_one(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("_hidden = 1\n")
    (pkg / "b.py").write_text("from pkg.a import _hidden\nfrom pkg.a import __doc__\n")
    assert private_imports(pkg, "pkg") == ["pkg.b imports _hidden from pkg.a"]
