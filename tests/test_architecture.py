"""Architecture rules (issue 12): data flows one way through the packages of ``simtrain``.

Every module under ``simtrain/`` is parsed with :mod:`ast` (never imported) and every ``import``
and ``from ... import`` is read, including imports inside functions and ``if TYPE_CHECKING:``
blocks, with relative imports resolved. The rules:

1. Layering: a module imports only from packages of a LOWER rank (:data:`LAYERS`) or from its
   own package. Same rank, other package (``sim`` <-> ``spec``, ``apps`` <-> ``torchref``) is a
   sideways import and fails like an upward one.
2. No import cycles between modules (lazy imports count: a cycle hidden in a function is still a
   cycle in the design).
3. Only ``simtrain/torchref/*`` imports torch when the module is imported (torch is an optional
   extra; elsewhere it may be imported inside a function).
4. ``simtrain/sim/*`` and ``simtrain/schedules/*`` never import yaml or click (the engine and the
   schedules know nothing of files or of the command line).

The checker functions work on any package directory, so the last tests feed them a small fake
package with each kind of violation and check that each is reported (the rules can fail).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import networkx as nx
import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "simtrain"

#: Rank of each top-level unit of the package. ``simtrain`` means ``simtrain/__init__.py`` only.
#: A module may import a module of a unit of lower rank, or of its own unit.
LAYERS: dict[str, int] = {
    "simtrain.errors": 0,
    "simtrain.units": 0,
    "simtrain.schedules": 1,
    "simtrain.sim": 2,  # the engine: knows nothing of YAML or scenarios
    "simtrain.spec": 2,
    "simtrain.layout": 3,
    "simtrain.costs": 4,
    "simtrain.report": 5,
    "simtrain.apps": 6,
    "simtrain.torchref": 6,
    "simtrain.cli": 7,
    "simtrain.__main__": 8,  # python -m simtrain: runs cli.main, the one module above it
    "simtrain": 7,
}

#: (importing module, imported module) pairs let through despite the layering. Each entry needs a
#: comment saying why it is there and which issue removes it. Empty: the tree has no violation.
ALLOWED: frozenset[tuple[str, str]] = frozenset()

#: Units whose modules may import torch at module top level.
TORCH_UNITS = ("simtrain.torchref",)
#: Units that must not import these third-party packages at all (not even inside a function).
NO_FILE_OR_CLI = {"simtrain.sim": ("yaml", "click"), "simtrain.schedules": ("yaml", "click")}


class Import(NamedTuple):
    module: str  # importing module, dotted (``simtrain.sim.engine``)
    path: str  # its file, relative to the package's parent (``simtrain/sim/engine.py``)
    line: int
    target: str  # imported module, dotted and absolute
    top_level: bool  # runs when the module is imported: not in a def, not under TYPE_CHECKING

    def where(self) -> str:
        return f"{self.path}:{self.line}"


# ------------------------------------------------------------------------------ the checker


def discover(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in ``package_dir``: dotted name -> file, sorted by name."""
    found: dict[str, Path] = {}
    for path in package_dir.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return dict(sorted(found.items()))


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _resolve_base(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"relative import beyond the top-level package in {module}")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports_of(module: str, path: Path, known: set[str], display: str) -> list[Import]:
    """Every import statement of one file, with targets resolved.

    ``from X import a`` targets ``X.a`` when that is a known module (a submodule imported by
    name), else ``X``; ``known`` holds the package's modules and the units of :data:`LAYERS`.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def add(line: int, target: str, top: bool) -> None:
        found.append(Import(module, display, line, target, top))

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name, top)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, is_package, node.level, node.module)
            targets: list[str] = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if alias.name != "*" and sub in known else base
                if target not in targets:
                    targets.append(target)
            for target in targets:
                add(node.lineno, target, top)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, top)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, top)

    visit(tree, True)
    return found


def scan(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """(modules, every import of every module) of the package in ``package_dir``."""
    modules = discover(package_dir)
    known = set(modules) | set(LAYERS)
    imports: list[Import] = []
    for name, path in modules.items():
        display = path.relative_to(package_dir.parent).as_posix()
        imports += imports_of(name, path, known, display)
    return modules, imports


def unit_of(module: str) -> str | None:
    """The :data:`LAYERS` unit of a ``simtrain`` module, None when it is in none."""
    if module == "simtrain":
        return "simtrain"
    parts = module.split(".")
    if parts[0] != "simtrain":
        return None
    unit = ".".join(parts[:2])
    return unit if unit in LAYERS else None


def layer_violation(importer: str, target: str) -> str | None:
    """Why ``importer`` may not import ``target`` (both dotted module names); None if it may."""
    if target.split(".")[0] != "simtrain":
        return None  # standard library or third party
    a, b = unit_of(importer), unit_of(target)
    if a is None:
        return f"{importer} is in no layer (add its package to LAYERS)"
    if b is None:
        return f"imports {target}, which is in no layer (add its package to LAYERS)"
    if a == b or (importer, target) in ALLOWED:
        return None
    ra, rb = LAYERS[a], LAYERS[b]
    if ra > rb:
        return None
    kind = "upward" if ra < rb else "sideways"
    return f"imports {target} (rank {ra} -> rank {rb}, {kind})"


def layer_problems(imports: Iterable[Import]) -> list[str]:
    return [
        f"{imp.where()} {why}"
        for imp in imports
        if (why := layer_violation(imp.module, imp.target)) is not None
    ]


def unlayered_modules(modules: Iterable[str]) -> list[str]:
    return [f"{m} is in no layer (add its package to LAYERS)" for m in modules if not unit_of(m)]


def cycle_problems(modules: dict[str, Path], imports: Iterable[Import]) -> list[str]:
    """One line per strongly connected set of modules: its members and one cycle through them."""
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for imp in imports:
        if imp.target in modules and imp.target != imp.module:
            if not graph.has_edge(imp.module, imp.target):
                graph.add_edge(imp.module, imp.target, where=imp.where())
    problems = []
    components = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    for component in sorted(components):
        cycle = nx.find_cycle(graph.subgraph(component), source=component[0])
        path = " -> ".join([*(u for u, _ in cycle), cycle[0][0]])
        wheres = ", ".join(graph.edges[u, v]["where"] for u, v in cycle)
        problems.append(f"import cycle {path} ({wheres}); modules in it: {', '.join(component)}")
    return problems


def _root(target: str) -> str:
    return target.split(".")[0]


def torch_problems(imports: Iterable[Import]) -> list[str]:
    return [
        f"{imp.where()} imports {imp.target} at module top level (only {', '.join(TORCH_UNITS)} may)"
        for imp in imports
        if _root(imp.target) == "torch" and imp.top_level and unit_of(imp.module) not in TORCH_UNITS
    ]


def file_or_cli_problems(imports: Iterable[Import]) -> list[str]:
    return [
        f"{imp.where()} imports {imp.target} ({unit_of(imp.module)} must not import "
        f"{' or '.join(NO_FILE_OR_CLI[unit])})"
        for imp in imports
        if (unit := unit_of(imp.module)) in NO_FILE_OR_CLI
        and _root(imp.target) in NO_FILE_OR_CLI[unit]
    ]


def all_problems(package_dir: Path) -> Iterator[str]:
    modules, imports = scan(package_dir)
    yield from unlayered_modules(modules)
    yield from layer_problems(imports)
    yield from cycle_problems(modules, imports)
    yield from torch_problems(imports)
    yield from file_or_cli_problems(imports)


# ------------------------------------------------------------------------------ the real tree


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], list[Import]]:
    return scan(PACKAGE_DIR)


def _fail_on(problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n" + "\n".join(problems), pytrace=False)


def test_the_scan_sees_the_package(tree) -> None:
    modules, imports = tree
    assert {"simtrain", "simtrain.cli", "simtrain.sim.engine", "simtrain.spec.scenario"} <= set(
        modules
    )
    # an import inside a function is seen (cli imports the apps lazily)
    assert any(i.module == "simtrain.cli" and not i.top_level for i in imports)


def test_every_module_is_in_a_layer(tree) -> None:
    _fail_on(unlayered_modules(tree[0]))


def test_imports_go_down_the_layers(tree) -> None:
    _fail_on(layer_problems(tree[1]))


def test_allowed_exceptions_are_still_needed(tree) -> None:
    """An ALLOWED pair whose import is gone must be taken out of ALLOWED."""
    pairs = {(i.module, i.target) for i in tree[1]}
    _fail_on([f"ALLOWED pair {p} no longer occurs; remove it" for p in sorted(ALLOWED - pairs)])


def test_no_import_cycles(tree) -> None:
    _fail_on(cycle_problems(*tree))


def test_torch_only_at_top_level_of_torchref(tree) -> None:
    _fail_on(torch_problems(tree[1]))


def test_sim_and_schedules_import_no_yaml_or_click(tree) -> None:
    _fail_on(file_or_cli_problems(tree[1]))


# ------------------------------------------------------------------------------ the rules can fail


@pytest.mark.parametrize(
    ("importer", "target", "expected"),
    [
        ("simtrain.costs.memory", "simtrain.schedules", None),
        ("simtrain.costs.memory", "simtrain.sim.timeline", None),
        ("simtrain.costs.compute", "simtrain.costs.memory", None),
        ("simtrain.cli", "simtrain.apps.plan", None),
        ("simtrain.sim.engine", "numpy", None),
        ("simtrain.spec.model", "simtrain.units", None),
        ("simtrain.schedules.actions", "simtrain.costs.memory", "(rank 1 -> rank 4, upward)"),
        ("simtrain.sim.engine", "simtrain.spec.scenario", "(rank 2 -> rank 2, sideways)"),
        ("simtrain.spec.scenario", "simtrain.sim.engine", "(rank 2 -> rank 2, sideways)"),
        ("simtrain.apps.plan", "simtrain.torchref.measure", "(rank 6 -> rank 6, sideways)"),
        ("simtrain.torchref.measure", "simtrain.apps.simulate", "(rank 6 -> rank 6, sideways)"),
        ("simtrain.errors", "simtrain.cli", "(rank 0 -> rank 7, upward)"),
        ("simtrain.report.metrics", "simtrain.apps.simulate", "(rank 5 -> rank 6, upward)"),
        ("simtrain.costs.memory", "simtrain.nowhere", "which is in no layer"),
        ("simtrain.nowhere.x", "simtrain.errors", "simtrain.nowhere.x is in no layer"),
    ],
)
def test_layer_violation_pairs(importer: str, target: str, expected: str | None) -> None:
    why = layer_violation(importer, target)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


def test_resolve_relative_imports() -> None:
    assert _resolve_base("simtrain.sim.engine", False, 1, "timeline") == "simtrain.sim.timeline"
    assert _resolve_base("simtrain.sim.engine", False, 2, "spec") == "simtrain.spec"
    assert _resolve_base("simtrain.sim", True, 1, None) == "simtrain.sim"
    assert _resolve_base("simtrain.sim", True, 2, "errors") == "simtrain.errors"
    with pytest.raises(ValueError):
        _resolve_base("simtrain.errors", False, 3, "x")


def _src(*lines: str) -> str:
    return "\n".join(lines) + "\n"


FAKE = {
    "__init__.py": "",
    "errors.py": _src("class SimtrainError(Exception): ..."),
    "sim/__init__.py": "",
    # line 1 relative and sideways: sim (rank 2) -> spec (rank 2); line 2 torch at top level;
    # line 5 yaml inside a def
    "sim/engine.py": _src(
        "from ..spec import scenario",
        "import torch.nn",
        "",
        "def load():",
        "    import yaml",
    ),
    "spec/__init__.py": "",
    # a lazy import that closes a cycle with sim/engine.py (and is itself sideways)
    "spec/scenario.py": _src("def f():", "    from simtrain.sim.engine import load"),
    "schedules/__init__.py": _src("from . import a"),
    # line 2 upward, in a class body: schedules (1) -> costs (4); a -> b -> a is a cycle
    "schedules/a.py": _src("class A:", "    from simtrain.costs import memory", "from .b import x"),
    "schedules/b.py": _src(
        "from typing import TYPE_CHECKING",
        "if TYPE_CHECKING:",
        "    import torch",
        "from simtrain.schedules.a import A",
        "x = 1",
    ),
    "costs/__init__.py": "",
    "costs/memory.py": _src("import click", "from simtrain.errors import SimtrainError"),
    "torchref/__init__.py": "",
    # line 2 sideways: torchref (6) -> apps (6)
    "torchref/measure.py": _src("import torch", "from simtrain.apps import plan"),
    "apps/__init__.py": "",
    "apps/plan.py": _src("def f():", "    import torch"),
    "extra/__init__.py": "",  # a package in no layer
}


def test_a_fake_package_with_violations_fails(tmp_path: Path) -> None:
    for name, text in FAKE.items():
        path = tmp_path / "simtrain" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    problems = list(all_problems(tmp_path / "simtrain"))
    expected = [
        "simtrain.extra is in no layer",
        "simtrain/sim/engine.py:1 imports simtrain.spec.scenario (rank 2 -> rank 2, sideways)",
        "simtrain/spec/scenario.py:2 imports simtrain.sim.engine (rank 2 -> rank 2, sideways)",
        "simtrain/schedules/a.py:2 imports simtrain.costs.memory (rank 1 -> rank 4, upward)",
        "simtrain/torchref/measure.py:2 imports simtrain.apps.plan (rank 6 -> rank 6, sideways)",
        "import cycle simtrain.schedules.a -> simtrain.schedules.b -> simtrain.schedules.a",
        "import cycle simtrain.sim.engine -> simtrain.spec.scenario -> simtrain.sim.engine",
        "simtrain/sim/engine.py:2 imports torch.nn at module top level",
        "simtrain/sim/engine.py:5 imports yaml (simtrain.sim must not import yaml or click)",
    ]
    for text in expected:
        assert any(text in p for p in problems), f"not reported: {text!r} in {problems}"
    # what is allowed is not reported: a lazy torch import in apps, a top-level one in torchref,
    # one under TYPE_CHECKING; click in costs; costs -> errors (down)
    assert not [p for p in problems if "apps/plan.py" in p or "schedules/b.py:3" in p]
    assert not [p for p in problems if "costs/memory.py" in p or "torchref/measure.py:1" in p]
    assert len(problems) == len(expected), "\n".join(problems)
