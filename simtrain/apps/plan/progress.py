"""Progress of a search: the callback type and a plain-text bar with ETA."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

Progress = Callable[[str, int, int], None]


class ProgressBar:
    """Plain-text progress with ETA on a stream, at most every ``interval_s`` (``\\r`` on a
    terminal, one line per update otherwise, then at most every 10 s)."""

    def __init__(self, stream: Any = None, interval_s: float = 0.5, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._phase = ""
        self._start = 0.0
        self._last = 0.0
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self._phase:
            self._finish_line()
            self._phase, self._start, self._last = phase, now, now
            return
        every = self.interval_s if self.tty else max(self.interval_s, 10.0)
        if done < total and now - self._last < every:
            return
        if done >= total and not self._shown:
            return  # quick phases print nothing
        self._last = now
        self._shown = True
        elapsed = now - self._start
        frac = done / total if total else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else math.inf
        n = int(self.width * frac)
        bar = "=" * n + (">" if n < self.width else "") + " " * max(self.width - n - 1, 0)
        eta_s = f"ETA {eta:,.0f} s" if math.isfinite(eta) else "ETA ?"
        text = (f"{phase:<10} [{bar}] {100 * frac:5.1f} % {done:,}/{total:,}  "
                f"{elapsed:,.0f} s  {eta_s}")  # fmt: skip
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def _finish_line(self) -> None:
        if self._shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False

    def close(self) -> None:
        self._finish_line()
