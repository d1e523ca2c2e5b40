"""Progress with an ETA on stderr, for the commands that can run for a while (``plan``,
``validate``, ``run``): never on stdout, which the golden tests and ``--json`` read.

A command calls the bar as ``bar(phase, done, total)`` (a :data:`Progress`). The ETA is the work
left at the rate of the current phase since its first finished unit (the time before that, a
process pool starting or the first chunk, is not a rate; until that window is as long as the
wait for the first unit, the rate since the phase began), plus the work still to come after this
phase when the command says how much: ``later(phase, done, total)``, in units of the current
phase, or of a phase already run, at that phase's last rate (the planner: the simulations that
follow the screening, and writing its files, as layouts' worth of screening).

What is printed: nothing during the first ``delay_s`` (2 s), so quick commands stay silent; on a
terminal one line redrawn with ``\\r`` at most every ``interval_s``, ended at a phase change and
by :meth:`ProgressBar.close`; elsewhere (a log, a pipe, CI) one line at a time, at least
``every_s`` apart and at most ``max_lines`` lines in all.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

#: ``progress(phase, done, total)``: ``done`` of ``total`` units of work of ``phase``.
Progress = Callable[[str, float, float], None]
#: ``later(phase, done, total)``: the work still to come after the phase, as units of the current
#: phase or as ``{phase: units}`` in the units (and at the rate) of phases already run.
Later = Callable[[str, float, float], "float | Mapping[str, float]"]


def format_s(seconds: float) -> str:
    """``7 s``, ``1 min 05 s``, ``2 h 03 min``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressBar:
    """A :data:`Progress` that prints a bar with the elapsed time and the ETA (module
    docstring). ``clock`` is injectable for tests."""

    def __init__(
        self,
        stream: Any = None,
        *,
        delay_s: float = 2.0,
        interval_s: float = 0.5,
        every_s: float = 10.0,
        max_lines: int = 6,
        width: int = 30,
        later: Later | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.delay_s, self.interval_s, self.every_s = delay_s, interval_s, every_s
        self.max_lines, self.width, self.clock = max_lines, width, clock
        self.later = later
        self.start = clock()
        self.lines = 0  # lines printed (off a terminal)
        self._phase = ""
        self._first: tuple[float, float] | None = None  # (time, done) of the phase's first unit
        self._phase_start = self.start
        self._last_update = self.start
        self._last_print = -math.inf
        self._open_line = False  # a \r line is on the terminal
        self._state: tuple[str, float, float] = ("", 0.0, 0.0)
        self._rates: dict[str, float] = {}  # units per second of each phase that has run

    # -------------------------------------------------------------------------- the estimate

    def eta_s(self, now: float | None = None) -> float:
        """Seconds left by the current estimate (inf while unknown)."""
        now = self.clock() if now is None else now
        phase, done, total = self._state
        rate = self._rate(now)
        if rate is not None:
            self._rates[phase] = rate
        later = self.later(phase, done, total) if self.later is not None else 0.0
        if not isinstance(later, Mapping):
            later = {phase: later}
        left = {phase: max(total - done, 0.0)}
        for p, units in later.items():
            left[p] = left.get(p, 0.0) + max(units, 0.0)
        seconds = 0.0
        for p, units in left.items():
            if units <= 0:
                continue
            r = self._rates.get(p)
            if not r:
                return math.inf
            seconds += units / r
        return seconds

    def _rate(self, now: float) -> float | None:
        """Units per second of the current phase; None while unknown."""
        _, done, _ = self._state
        first = self._first
        # Rate since the first finished unit, once that window is as long as the wait for the
        # first unit (a pool's start-up; two workers finishing together make a short window
        # meaningless); before that, since the phase began (slow, so the ETA errs long).
        if (
            first is not None
            and done > first[1]
            and now - first[0] >= first[0] - self._phase_start
            and now > first[0]
        ):
            return (done - first[1]) / (now - first[0])
        if done > 0 and now > self._phase_start:
            return done / (now - self._phase_start)
        return None

    # ------------------------------------------------------------------------------ updates

    def __call__(self, phase: str, done: float, total: float) -> None:
        now = self.clock()
        if phase != self._phase:  # it began when the previous phase last reported (or now)
            self._end_line()
            start = self._last_update if self._phase else now
            self._phase, self._phase_start, self._first = phase, start, None
        self._last_update = now
        if done > 0 and self._first is None:
            self._first = (now, done)
        self._state = (phase, done, total)
        rate = self._rate(now)
        if rate is not None:
            self._rates[phase] = rate
        if now - self.start < self.delay_s:
            return
        if self.tty:
            if now - self._last_print >= self.interval_s or done >= total:
                self._print(now, "\r")
        elif (
            self.lines < self.max_lines and now - self._last_print >= self.every_s and done < total
        ):
            self._print(now, "")  # a log gets no "100 %" lines: the next phase or the end says it

    def note(self, text: str) -> None:
        """A line of its own (e.g. a step that starts), shown under the same rules."""
        now = self.clock()
        if now - self.start < self.delay_s:
            return
        if self.tty:
            self._end_line()
            self.stream.write(text + "\n")
            self.stream.flush()
        elif self.lines < self.max_lines:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.lines += 1

    def close(self) -> None:
        """End the terminal line, if one is open."""
        self._end_line()

    def _print(self, now: float, prefix: str) -> None:
        phase, done, total = self._state
        frac = min(done / total, 1.0) if total else 1.0
        n = int(self.width * frac)
        bar = "=" * n + (">" if n < self.width else "") + " " * max(self.width - n - 1, 0)
        text = (f"{phase:<11}[{bar}] {100 * frac:5.1f} %  {format_s(now - self.start)} elapsed, "
                f"ETA {format_s(self.eta_s(now))}")  # fmt: skip
        if prefix:
            self.stream.write(prefix + text + "\x1b[K")  # \r, the line, clear to its end
            self._open_line = True
        else:
            self.stream.write(text + "\n")
            self.lines += 1
        self.stream.flush()
        self._last_print = now

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


# `simtrain run` of scenarios/gpt3_175b_1024gpu.yaml on the dev machine (one core,
# benchmarks/bench_outputs.py): simulation 0.45 s, trace.json 0.6 s, matplotlib's import 0.4 s,
# gantt.png 0.45 s, memory.png 0.5 s; a run is slow when its timeline is large, and then each
# output grows with the timeline as the simulation does. In simulations' worth:
TRACE_WORK = 1.3
PLOTS_WORK = 3.0


def run_later(plots: bool) -> Later:
    """``later`` for ``simtrain run``'s bar: after the simulation (its phase, 0 to 1), writing
    trace.json (and the plots) at the simulation's rate; while writing (the trace's chunks, the
    plots drawn meanwhile in other processes), nothing more."""

    def later(phase: str, done: float, total: float) -> dict[str, float]:
        if phase != "simulating":
            return {}
        return {"simulating": TRACE_WORK + (PLOTS_WORK if plots else 0.0)}

    return later
