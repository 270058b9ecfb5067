"""The code's shape, as ARCHITECTURE.md draws it: six layers, imports pointing down only, Ray
imported in one layer, modules and the worker loop short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raycifar"
# Lowest first: a module may import its own layer and the layers before it, never one after.
LAYERS = ("recipe", "store", "reading", "cluster", "api", "cli")
RAY_LAYER = "cluster"


def modules() -> dict[str, ast.Module]:
    """Every module by dotted name under raycifar ("recipe.engine"; "train" for a top-level one)."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text())
            for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str:
    """A module's layer; the top-level modules (the package, `python -m` entry points) sit
    above every layer."""
    first = module.split(".")[0]
    return first if first in LAYERS else "top"


def raycifar_imports(module: str, tree: ast.Module) -> set[str]:
    """The raycifar modules (dotted, as `modules()` names them) or packages that `tree` imports
    anywhere, at module level or inside functions."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("raycifar.") for a in node.names
                      if a.name.startswith("raycifar.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "raycifar":
                base = []
                node_module = node.module.removeprefix("raycifar").lstrip(".")
                found |= {".".join(filter(None, [node_module, a.name])) for a in node.names}
                continue
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            found |= {".".join(target + [a.name]) for a in node.names}
    return {f.strip(".") for f in found}


def upward_imports(trees: dict[str, ast.Module]) -> list[str]:
    order = {name: i for i, name in enumerate(LAYERS)} | {"top": len(LAYERS)}
    bad = []
    for module, tree in trees.items():
        mine = order[layer_of(module)]
        for target in sorted(raycifar_imports(module, tree)):
            if target.split(".")[0] not in LAYERS and target not in trees:
                continue  # a name the package itself defines (`from .. import __version__`)
            if order[layer_of(target)] > mine:
                bad.append(f"{module} imports {target}")
    return bad


def test_imports_point_down_the_layers():
    trees = modules()
    assert {layer_of(m) for m in trees} == set(LAYERS) | {"top"}
    assert upward_imports(trees) == []


@pytest.mark.parametrize("module, planted", [
    ("recipe.engine", "from ..cluster.trainer import fit"),
    ("store.runs", "from ..reading import report"),
    ("reading.report", "import raycifar.cli.main"),
    ("cluster.trials", "def later():\n    from raycifar.cli.args import run_cli"),
])
def test_an_upward_import_is_caught(module, planted):
    trees = modules()
    trees[module] = ast.parse(planted)
    found = upward_imports(trees)
    assert len(found) == 1 and found[0].startswith(f"{module} imports "), found


def test_each_layer_says_what_it_is():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 25, f"raycifar/{layer}/__init__.py needs its paragraph"


def test_no_module_imports_one_that_imports_it_back():
    trees = modules()
    graph = {m: {t for t in raycifar_imports(m, tree) if t in trees} - {m}
             for m, tree in trees.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n}))
                   for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_ray_is_imported_only_in_its_layer():
    users = set()
    for name, tree in modules().items():
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                    else [])
            if any(m == "ray" or m.startswith("ray.") for m in mods):
                users.add(name)
    outside = sorted(u for u in users if layer_of(u) != RAY_LAYER)
    assert users and not outside, f"Ray imported outside raycifar/{RAY_LAYER}/: {outside}"


def test_modules_and_the_worker_loop_stay_short():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"modules of 400 lines or more: {long}"
    loop = next(n for n in ast.walk(modules()["cluster.worker"])
                if isinstance(n, ast.FunctionDef) and n.name == "train_loop_per_worker")
    assert loop.end_lineno - loop.lineno + 1 < 40


def test_the_search_reads_back_fields_of_the_epoch_row():
    """ASHA ranks by, and the search table reads, names the workers' rows really have."""
    from raycifar.store import runs

    assert {runs.RANK_BY, runs.TABULATE} <= set(runs.METRIC_COLUMNS)
