"""How good the planner's ETA is (issue 16, Deliver 6: within 30 % of the real time).

Runs ``plan_command`` (what ``simtrain plan PLAN`` runs: search, plan.csv, pareto.png) with the
bar it builds, recording the ETA at every update, then prints, at 10, 25, 50, 75 and 90 % of the
real time, the ETA against the time really left and the predicted total (elapsed + ETA) against
the real total. The bar shows nothing during the first 2 s, so the 10 % row of a short plan is
what it would have said, not what it showed.

Run:  python benchmarks/bench_eta.py [--plan plans/llama3_8b.yaml] [--workers 1]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import simtrain.apps.plan.command as command
from simtrain.report.progress import ProgressBar

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="plans/llama3_8b.yaml")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    args = ap.parse_args()
    log: list[tuple[float, str, float, float, float]] = []

    class Recording(ProgressBar):
        def __call__(self, phase: str, done: float, total: float) -> None:
            super().__call__(phase, done, total)
            now = self.clock()
            log.append((now - t0, phase, done, total, self.eta_s(now)))

    command.ProgressBar = lambda **kw: Recording(io.StringIO(), **kw)  # type: ignore[misc]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        command.plan_command(str(ROOT / args.plan), True, tmp, args.workers)
    real = time.perf_counter() - t0
    print(f"{args.plan}, workers {args.workers or 'default'}: {real:.2f} s in all")
    print(f"{'at':>9} {'phase':<11}{'done':>7}{'ETA s':>8}{'left s':>8}{'error':>8}"
          f"{'total s':>9}{'error':>8}")  # fmt: skip
    for frac in (0.1, 0.25, 0.5, 0.75, 0.9):
        seen = [e for e in log if e[0] <= frac * real]
        if not seen:
            print(f"{frac:>8.0%}  no update yet")
            continue
        t, phase, done, total, eta = seen[-1]
        left = real - t
        print(f"{t:>7.2f} s {phase:<11}{done / total:>7.0%}{eta:>8.2f}{left:>8.2f}"
              f"{(eta - left) / left:>+8.0%}{t + eta:>9.2f}{(t + eta - real) / real:>+8.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
