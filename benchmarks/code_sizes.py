"""Sizes of the code under simtrain/: lines per module and the longest function of each.

A function is a top-level ``def`` or a method (of a class, or of a class nested in a class,
named ``Class.method``); a ``def`` nested inside a function counts in its parent's lines. Its
length runs from the ``def`` line to its last line (decorators not counted, docstring counted).
A module's length is its number of lines. Files are read, never imported, and sorted by path,
so the output is the same on every run of the same tree.

Run:  python benchmarks/code_sizes.py [--json] [--module-lines 600] [--function-lines 80]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "simtrain"


class Function(NamedTuple):
    module: str  # file, relative to the repository root
    name: str  # qualified within the module: ``f`` or ``Class.method``
    line: int  # of the ``def``
    lines: int


class Module(NamedTuple):
    path: str
    lines: int
    functions: tuple[Function, ...]

    def longest(self) -> Function | None:
        # the most lines; ties go to the one defined first
        return min(self.functions, key=lambda f: (-f.lines, f.line), default=None)


def functions_of(tree: ast.Module, path: str) -> list[Function]:
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                end = child.end_lineno or child.lineno
                found.append(
                    Function(path, prefix + child.name, child.lineno, end - child.lineno + 1)
                )
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:  # defs under if / try / with at module or class level
                visit(child, prefix)

    visit(tree, "")
    return sorted(found, key=lambda f: f.line)


def scan(package: Path = PACKAGE) -> list[Module]:
    modules = []
    for file in sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts):
        text = file.read_text(encoding="utf-8")
        path = file.relative_to(package.parent).as_posix()
        functions = functions_of(ast.parse(text, filename=path), path)
        modules.append(Module(path, len(text.splitlines()), tuple(functions)))
    return sorted(modules, key=lambda m: m.path)


def report(modules: list[Module], module_limit: int, function_limit: int) -> dict[str, Any]:
    functions = [f for m in modules for f in m.functions]
    big_modules = sorted(
        (m for m in modules if m.lines > module_limit), key=lambda m: (-m.lines, m.path)
    )
    long_functions = sorted(
        (f for f in functions if f.lines > function_limit),
        key=lambda f: (-f.lines, f.module, f.line),
    )
    return {
        "modules": [
            {
                "path": m.path,
                "lines": m.lines,
                "functions": len(m.functions),
                "longest_function": None if (f := m.longest()) is None else f.name,
                "longest_function_line": None if f is None else f.line,
                "longest_function_lines": None if f is None else f.lines,
            }
            for m in modules
        ],
        "module_limit": module_limit,
        "modules_over_limit": [{"path": m.path, "lines": m.lines} for m in big_modules],
        "function_limit": function_limit,
        "functions_over_limit": [f._asdict() for f in long_functions],
        "totals": {
            "modules": len(modules),
            "lines": sum(m.lines for m in modules),
            "functions": len(functions),
            "function_lines": sum(f.lines for f in functions),
            "modules_over_limit": len(big_modules),
            "functions_over_limit": len(long_functions),
        },
    }


def text(doc: dict[str, Any]) -> str:
    rows = doc["modules"]
    width = max(len("module"), *(len(r["path"]) for r in rows))
    fwidth = max(len("longest function"), *(len(r["longest_function"] or "-") for r in rows))
    out = [
        f"{'module':<{width}}  {'lines':>5}  {'defs':>4}  {'longest function':<{fwidth}}  {'lines':>5}"
    ]
    out.append("-" * len(out[0]))
    for r in rows:
        name = r["longest_function"] or "-"
        flines = r["longest_function_lines"] or ""
        out.append(
            f"{r['path']:<{width}}  {r['lines']:>5}  {r['functions']:>4}  {name:<{fwidth}}  "
            f"{flines:>5}".rstrip()
        )
    out.append("")
    over = doc["modules_over_limit"]
    out.append(f"Modules over {doc['module_limit']} lines: {len(over)}")
    out += [f"  {m['lines']:>5}  {m['path']}" for m in over]
    out.append("")
    long = doc["functions_over_limit"]
    out.append(f"Functions over {doc['function_limit']} lines: {len(long)}")
    out += [f"  {f['lines']:>5}  {f['module']}:{f['line']} {f['name']}" for f in long]
    out.append("")
    t = doc["totals"]
    out.append(
        f"Totals: {t['modules']} modules, {t['lines']} lines; {t['functions']} functions "
        f"({t['function_lines']} lines); {t['modules_over_limit']} modules over "
        f"{doc['module_limit']} lines, {t['functions_over_limit']} functions over "
        f"{doc['function_limit']} lines"
    )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--module-lines", type=int, default=600, help="list modules longer than this")
    ap.add_argument(
        "--function-lines", type=int, default=80, help="list functions longer than this"
    )
    args = ap.parse_args()
    doc = report(scan(), args.module_lines, args.function_lines)
    print(json.dumps(doc, indent=2) if args.json else text(doc))


if __name__ == "__main__":
    main()
