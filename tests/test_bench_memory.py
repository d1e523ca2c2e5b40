"""benchmarks/bench_memory.py runs and prints a warm and a cold time for every shipped scenario,
and for nanotron_playbook_polling with the pending reduce-scatter term and the allocator replay
each off (its speed is
measured there, never asserted here: no test may assert on wall time)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_memory.py"


def test_it_prints_every_scenario_warm_and_cold(capsys, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--n", "1", "--repeats", "1"])
    mod.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [re.fullmatch(r"(.*?)\s+([\d.]+) /\s+([\d.]+)", line) for line in lines[1:]]
    assert all(rows), lines
    names = {m.group(1) for m in rows}
    assert {p.stem for p in (ROOT / "scenarios").glob("*.yaml")} <= names
    assert "nanotron_playbook_polling, nccl_record_streams false" in names
    assert "nanotron_playbook_polling, allocator_replay false" in names
    assert all(float(m.group(2)) > 0 and float(m.group(3)) > 0 for m in rows)
