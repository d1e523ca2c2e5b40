"""Regenerate the golden outputs in this folder (run from the repository root):

    python tests/golden/make_goldens.py

Goldens change only on purpose: regenerate them in the commit that changes a number, and say
in that commit which figures moved and why. ``tests/test_golden.py`` compares against them.

What is kept, per shipped scenario (``scenarios/*.yaml``):
- ``scenarios/<name>.summary.json``: ``simtrain run``'s summary.json, whole;
- ``digests.json``: SHA-256 of ``trace.json``, ``simtrain memory --json`` and
  ``simtrain memory --explain`` (too large to keep whole, but any changed byte shows);
and ``validate.json``: ``simtrain validate --json`` over the published records in ``measured/`` (``published_runs.yaml``
and ``more_runs_2026-12.yaml``);
``plan_llama3_8b.json``: ``simtrain plan plans/llama3_8b.yaml --json --workers 1``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from simtrain.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"simtrain {' '.join(args)} exited {res.exit_code}: {res.output}")
    return res.stdout  # progress bars and notes go to stderr, which a busy machine changes


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def scenario_outputs(path: Path) -> tuple[str, dict[str, str]]:
    """(summary.json text, digests of the other outputs) of one scenario."""
    with tempfile.TemporaryDirectory() as tmp:
        _cli("run", str(path), "--out", tmp, "--no-plots")
        summary = (Path(tmp) / "summary.json").read_text()
        trace = (Path(tmp) / "trace.json").read_bytes()
    digests = {
        "trace.json": _sha(trace),
        "memory.json": _sha(_cli("memory", str(path), "--json")),
        "memory_explain.txt": _sha(_cli("memory", str(path), "--explain")),
    }
    return summary, digests


def validate_output() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return _cli("validate", "--json", "--out", tmp)


def plan_output() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        plan = str(ROOT / "plans" / "llama3_8b.yaml")
        return _cli("plan", plan, "--json", "--out", tmp, "--workers", "1")


def main_() -> None:
    out = GOLDEN / "scenarios"
    out.mkdir(exist_ok=True)
    digests = {}
    for path in SCENARIOS:
        summary, d = scenario_outputs(path)
        (out / f"{path.stem}.summary.json").write_text(summary)
        digests[path.stem] = d
        print(f"{path.stem}: {d['trace.json'][:12]}", file=sys.stderr)
    (GOLDEN / "digests.json").write_text(json.dumps(digests, sort_keys=True, indent=2) + "\n")
    (GOLDEN / "validate.json").write_text(validate_output())
    (GOLDEN / "plan_llama3_8b.json").write_text(plan_output())


if __name__ == "__main__":
    main_()
