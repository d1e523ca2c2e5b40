"""How long `simtrain run` takes with and without its outputs (issue 16, Deliver 5).

Target: the whole `simtrain run scenarios/gpt3_175b_1024gpu.yaml` (trace.json, gantt.png and
memory.png included) within 2x of its `--no-plots` time.

Prints, median over ``--repeat`` repetitions (wall time, and the CPU time of the process, which a
busy machine changes less):

1. simulation only: a fresh ``python`` that imports simtrain, loads the scenario and runs
   ``simulate_scenario`` (what every `simtrain run` pays before writing anything);
2. ``simtrain run SCENARIO --no-plots`` (summary.json and trace.json);
3. ``simtrain run SCENARIO`` (also gantt.png and memory.png; the three files are written at the
   same time in forked processes where the machine has a free CPU: ``run_concurrently``), and the
   same with the three written one after the other in one process;

then the ratio 3 / 2 against the 2x target, and, in this process, the time of each output on
its own (trace.json, gantt.png, memory.png; median, fonts already loaded). Each command runs in
a fresh process, as a user runs it, so imports (matplotlib's ~0.4 s) count.

Run:  python benchmarks/bench_outputs.py [--repeat 5] [--scenario scenarios/...yaml]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = "scenarios/gpt3_175b_1024gpu.yaml"
TARGET_RATIO = 2.0  # issue 16, Deliver 5: the whole run within 2x of --no-plots

SIMULATE_ONLY = (
    "import sys\n"
    "from simtrain.apps.simulate import simulate_scenario\n"
    "from simtrain.spec.scenario import load_scenario\n"
    "simulate_scenario(load_scenario(sys.argv[1]))\n"
)


# `simtrain run` with its three files written one after the other in one process (no fork).
SERIAL = (
    "import sys\n"
    "import simtrain.report.plot as plot\n"
    "plot.run_concurrently = lambda jobs: [job() for job in jobs]\n"
    "from simtrain.cli import main\n"
    "sys.argv[0] = 'simtrain'\n"
    "main()\n"
)


def _child_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_process(args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``args`` (stdout and stderr discarded; must exit 0)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cpu0 = _child_cpu_s()
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=ROOT, env=env)  # fmt: skip
    return time.perf_counter() - t0, _child_cpu_s() - cpu0


def median_process(args: list[str], repeat: int) -> tuple[float, float]:
    runs = [timed_process(args) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def median_call(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scenario", default=DEFAULT_SCENARIO)
    args = ap.parse_args()
    scenario = str(ROOT / args.scenario)
    py = sys.executable
    cli = [py, "-c", "import sys; from simtrain.cli import main; sys.argv[0] = 'simtrain'; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        out = ["--out", str(Path(tmp) / "out")]
        rows = [
            ("simulation only", [py, "-c", SIMULATE_ONLY, scenario]),
            ("simtrain run --no-plots", [*cli, "run", scenario, *out, "--no-plots"]),
            ("simtrain run (whole)", [*cli, "run", scenario, *out]),
            ("  the same, one process", [py, "-c", SERIAL, "run", scenario, *out]),
        ]
        print(f"{args.scenario}, median of {args.repeat} runs, each a fresh process")
        print(f"{'':<26}{'wall s':>9}{'CPU s':>9}")  # CPU: the process and its children
        med = {}
        for label, cmd in rows:
            med[label] = median_process(cmd, args.repeat)
            print(f"{label:<26}{med[label][0]:>9.2f}{med[label][1]:>9.2f}")
        bare = med["simtrain run --no-plots"]
        for label in ("simtrain run (whole)", "  the same, one process"):
            whole = med[label]
            wall_ratio, cpu_ratio = whole[0] / bare[0], whole[1] / bare[1]
            verdict = "within" if wall_ratio <= TARGET_RATIO else "NOT within"
            print(f"{label.strip()} / --no-plots: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
                  f"({verdict} the {TARGET_RATIO:g}x target, wall)")  # fmt: skip
        outputs_in_process(scenario, Path(tmp), args.repeat)


def outputs_in_process(scenario: str, tmp: Path, repeat: int) -> None:
    """Each output's own time in this process (after one warm-up call of each)."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.report.plot import gantt, memory_plot
    from simtrain.report.trace import write_chrome_trace
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(scenario)
    res = simulate_scenario(sc)
    tl, cap = res.timeline, sc.hardware.memory_bytes
    jobs: dict[str, Callable[[], object]] = {
        "simulate_scenario": lambda: simulate_scenario(sc),
        "trace.json": lambda: write_chrome_trace(tl, tmp / "trace.json", capacity_bytes=cap),
        "gantt.png": lambda: gantt(tl, tmp / "gantt.png", title=sc.name, bubble_ratio=0.2),
        "memory.png": lambda: memory_plot(
            tl, tmp / "memory.png", capacity_bytes=cap, title=sc.name
        ),  # fmt: skip
    }
    print(f"in this process ({len(tl.spans):,} spans, {len(tl.memory):,} memory samples), "
          "median wall s:")  # fmt: skip
    for label, fn in jobs.items():
        fn()
        print(f"  {label:<24}{median_call(fn, repeat):>7.2f}")


if __name__ == "__main__":
    main()
