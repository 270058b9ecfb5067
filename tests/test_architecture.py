"""The code's shape, as ARCHITECTURE.md states it: imports point one way, Ray stays in its
rooms, modules and the worker loop stay short."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raycifar"
RAY_ROOMS = {"connect", "cluster", "trainer", "trials", "bench", "ray_compat"}


def parsed() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py")}


def imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The raycifar modules `tree` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1 or name.startswith("raycifar"):
                name = name.removeprefix("raycifar").lstrip(".")
                if name:
                    found.add(name.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
    return found & modules


def test_no_module_imports_one_that_imports_it_back():
    trees = parsed()
    graph = {m: imports(t, set(trees)) - {m} for m, t in trees.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n}))
                   for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_ray_is_imported_only_in_its_rooms():
    users = set()
    for name, tree in parsed().items():
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m == "ray" or m.startswith("ray.") for m in mods):
                users.add(name)
    assert users <= RAY_ROOMS, f"Ray imported outside its rooms: {sorted(users - RAY_ROOMS)}"


def test_modules_and_the_worker_loop_stay_short():
    long = {p.name: n for p in PACKAGE.glob("*.py")
            if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"modules of 400 lines or more: {long}"
    loop = next(n for n in ast.walk(parsed()["trainer"])
                if isinstance(n, ast.FunctionDef) and n.name == "train_loop_per_worker")
    assert loop.end_lineno - loop.lineno + 1 < 40


def test_the_search_reads_back_fields_of_the_epoch_row():
    """ASHA ranks by, and the search table reads, names the workers' rows really have."""
    from raycifar import runs

    assert {runs.RANK_BY, runs.TABULATE} <= set(runs.METRIC_COLUMNS)
