"""Golden outputs: every shipped scenario's ``simtrain run`` summary.json (whole), the digests of
its trace.json and ``simtrain memory`` outputs, ``simtrain validate --json`` and a small plan are
byte-identical to ``tests/golden/``. A refactor keeps them; a change of a number regenerates them
on purpose (``python tests/golden/make_goldens.py``) with the reason in the commit."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import make_goldens as golden  # noqa: E402


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(expected.splitlines(), actual.splitlines(), name, "now", n=1)
    return "\n".join(list(lines)[:40])


DIGESTS = json.loads((golden.GOLDEN / "digests.json").read_text())


def test_every_scenario_has_a_golden() -> None:
    assert sorted(DIGESTS) == sorted(p.stem for p in golden.SCENARIOS)
    assert len(DIGESTS) >= 16


@pytest.mark.parametrize("path", golden.SCENARIOS, ids=lambda p: p.stem)
def test_scenario_outputs_unchanged(path: Path) -> None:
    summary, digests = golden.scenario_outputs(path)
    expected = (golden.GOLDEN / "scenarios" / f"{path.stem}.summary.json").read_text()
    assert summary == expected, _diff(expected, summary, "summary.json")
    assert digests == DIGESTS[path.stem]


def test_validate_output_unchanged(default_result) -> None:
    """``simtrain validate --json`` prints ``dumps(result.to_json())`` (apps/validate/output.py;
    the CLI path itself: tests/test_validate.py test_validate_command_outputs): compared from
    the session's one validate run (conftest ``default_result``)."""
    from simtrain.report.tables import dumps

    expected = (golden.GOLDEN / "validate.json").read_text()
    actual = dumps(default_result.to_json())
    assert actual == expected, _diff(expected, actual, "validate.json")


def test_plan_output_unchanged() -> None:
    expected = (golden.GOLDEN / "plan_llama3_8b.json").read_text()
    actual = golden.plan_output()
    assert actual == expected, _diff(expected, actual, "plan_llama3_8b.json")
