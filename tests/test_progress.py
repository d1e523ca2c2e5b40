"""Progress with ETA on stderr (issue 16, Deliver 6): silent for quick commands, a redrawn line
on a terminal, a few lines in a log, an ETA from the current phase's rate plus the work a
command says is still to come. A fake clock drives every test: none asserts on wall time."""

from __future__ import annotations

import io
import math
import sys

import pytest
from click.testing import CliRunner

from simtrain.apps.plan.progress import OUTPUT_WORK, SIMULATION_WORK, work_after
from simtrain.apps.plan.search import screening_work
from simtrain.apps.validate.run import validate_later
from simtrain.cli import main
from simtrain.report import progress as progress_mod
from simtrain.report.progress import ProgressBar, format_s, run_later


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_during_the_delay() -> None:
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(out, clock=clock)
    for i in range(10):
        clock.t += 0.19
        bar("work", i, 10)
    bar.close()
    assert out.getvalue() == ""


def test_log_gets_a_few_lines_at_most() -> None:
    clock, out = Clock(), io.StringIO()
    bar = ProgressBar(out, clock=clock, max_lines=4, every_s=10.0)
    for i in range(1, 1001):
        clock.t += 1.0
        bar("screening", i, 1000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 4
    assert "\r" not in out.getvalue()
    assert all("ETA" in line and "screening" in line for line in lines)
    assert not any("100.0 %" in line for line in lines)  # a log gets no "done" lines


def test_terminal_redraws_one_line_and_ends_it() -> None:
    clock, out = Clock(), Terminal()
    bar = ProgressBar(out, clock=clock, interval_s=0.5)
    for i in range(1, 41):
        clock.t += 0.25
        bar("screening", i, 40)
    clock.t += 1.0
    bar("simulating", 1, 2)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 2  # one per phase shown: redrawn with \r, ended by \n
    assert text.count("\r") >= 10
    assert text.endswith("\n")


def test_eta_from_the_rate_since_the_first_unit() -> None:
    """A pool's start-up (4 s before the first unit) is not a rate: once the window since the
    first unit is as long as that wait, the ETA uses only it."""
    clock = Clock()
    bar = ProgressBar(io.StringIO(), clock=clock)
    bar("screening", 0, 100)
    clock.t += 4.0
    bar("screening", 10, 100)  # first unit after 4 s of start-up
    clock.t += 1.0
    bar("screening", 20, 100)
    # window 1 s < wait 4 s: rate since the phase began, 20 units in 5 s -> 80 left in 20 s
    assert bar.eta_s() == pytest.approx(20.0)
    clock.t += 3.0
    bar("screening", 50, 100)
    # window 4 s: 40 units in 4 s -> 50 left in 5 s
    assert bar.eta_s() == pytest.approx(5.0)


def test_eta_includes_later_work_at_the_rate_of_its_phase() -> None:
    clock = Clock()

    def later(phase: str, done: float, total: float) -> dict[str, float]:
        return {"a": 30.0} if phase == "a" else {"a": 10.0, "b": 4.0}

    bar = ProgressBar(io.StringIO(), clock=clock, later=later)
    bar("a", 0, 100)
    clock.t += 1.0
    bar("a", 10, 100)
    clock.t += 1.0
    bar("a", 20, 100)  # 10 units/s
    assert bar.eta_s() == pytest.approx((80 + 30) / 10)
    bar("b", 0, 8)
    assert math.isinf(bar.eta_s())  # no rate of b yet
    clock.t += 1.0
    bar("b", 2, 8)
    clock.t += 1.0
    bar("b", 4, 8)  # b: 2 units/s (since the phase began: window 1 s = wait 1 s)
    assert bar.eta_s() == pytest.approx((4 + 4) / 2 + 10 / 10)


def test_eta_unknown_then_zero() -> None:
    clock = Clock()
    bar = ProgressBar(io.StringIO(), clock=clock)
    bar("x", 0, 5)
    assert math.isinf(bar.eta_s())
    clock.t += 1
    bar("x", 5, 5)
    assert bar.eta_s() == 0.0


def test_format_s() -> None:
    assert format_s(7.4) == "7 s"
    assert format_s(65) == "1 min 05 s"
    assert format_s(7_380) == "2 h 03 min"
    assert format_s(math.inf) == "?"


def test_default_stream_is_stderr() -> None:
    assert ProgressBar().stream is sys.stderr


def test_planner_later_work() -> None:
    later = work_after(20)
    assert later("screening", 0, 1000) == {
        "screening": 20 * SIMULATION_WORK + OUTPUT_WORK + progress_mod_csv(1000)
    }
    assert later("simulating", 3, 20) == {"screening": OUTPUT_WORK + progress_mod_csv(1000)}


def progress_mod_csv(total: float) -> float:
    from simtrain.apps.plan.progress import CSV_SHARE

    return CSV_SHARE * total


def test_screening_work_grows_with_microbatches() -> None:
    from simtrain.apps.plan.layouts import Layout

    few = Layout("a100", 64, 8, 8, 1, 0, 1, "none", "1f1b", 1, 8)
    many = few._replace(global_batch=1230)
    assert screening_work(few) == pytest.approx(1 + 8 / 123)
    assert screening_work(many) == pytest.approx(11.0)


def test_validate_and_run_later() -> None:
    later = validate_later()
    assert later("translating", 10, 1796) == {"translating": 1796.0}
    assert later("simulating", 5, 50) == {"translating": 1796.0}
    assert later("comparing", 5, 1796) == {}
    assert run_later(True)("simulating", 0, 1) == {"simulating": 4.3}
    assert run_later(False)("simulating", 0, 1) == {"simulating": 1.3}
    assert run_later(True)("writing", 1, 3) == {}


def test_run_prints_progress_on_stderr_only(tmp_path, monkeypatch) -> None:
    """With the delay at 0 the bar reports; stdout is byte for byte what it is without it."""
    args = ["run", "scenarios/1f1b_8gpu.yaml", "--out", str(tmp_path), "--no-plots"]
    quiet = CliRunner().invoke(main, args)
    real_init = ProgressBar.__init__

    def eager(self, *a, **kw) -> None:
        real_init(self, *a, **{**kw, "delay_s": 0.0, "every_s": 0.0})

    monkeypatch.setattr(progress_mod.ProgressBar, "__init__", eager)
    loud = CliRunner().invoke(main, args)
    assert quiet.exit_code == loud.exit_code == 0
    assert loud.stdout == quiet.stdout
    assert "ETA" in loud.stderr and "ETA" not in loud.stdout


def test_the_trace_reports_its_sort_before_its_chunks() -> None:
    """The trace's events are sorted before the first chunk is written: a phase of its own,
    so that the writing phase's rate starts after it (a 16k-GPU run's trace, sorted for 18 s
    and written in seconds, had shown ETA 45 min throughout; a review, 2026-12-07)."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.report.trace import _stream_chrome_trace
    from simtrain.spec.scenario import load_scenario

    calls: list[tuple[str, float, float]] = []
    tl = simulate_scenario(load_scenario("scenarios/1f1b_8gpu.yaml")).timeline
    _stream_chrome_trace(io.StringIO(), tl, progress=lambda *a: calls.append(a))
    assert calls[0] == ("sorting", 1, 1)
    assert [c[0] for c in calls[1:]] == ["writing"] * (len(calls) - 1)
    clock = Clock()
    bar = ProgressBar(io.StringIO(), clock=clock, delay_s=0.0)
    bar("simulating", 1, 1)
    clock.t += 18.0  # the sort
    bar("sorting", 1, 1)
    clock.t += 0.02  # one chunk of 300
    bar("writing", 1, 300)
    assert bar.eta_s() == pytest.approx(299 * 0.02)
