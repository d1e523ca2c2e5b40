"""How ``simtrain validate`` finds its step times (``apps.validate.predict.predicted_step_time``),
on one core: for each distinct timed scenario of the default records, whether it was simulated
whole at once (a step of at most 6·m₁ micro-batches, a schedule not affine in m), taken from
the line through m₁, 2·m₁ and 3·m₁ micro-batches, or simulated whole after those three (off the
line, or over blocking p2p a stage off the line's pace); counts per family and the seconds each
way took; ``--top N`` the N steps that took longest. With ``--check`` every line taken is
compared with the whole simulation of its step: the largest differences are printed.
2026-12-07, the line from m > 3·m₁: 209 whole at once 31.0 s, 273 lines 32.2 s (each within
18 ns), 108 whole after the three 64.9 s; from m > 6·m₁: 351 whole 62.7 s, 169 lines 8.0 s
(each within 18 ns), 70 whole after the three 25.7 s (96.4 s against 128.1 s).

Run:  python benchmarks/bench_validate_steps.py [--only SOURCE] [--check] [--top N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import simtrain.apps.validate.predict as predict  # noqa: E402
from simtrain.apps.validate.records import load_record_files, resolve_paths  # noqa: E402
from simtrain.apps.validate.translate import Translation, translate  # noqa: E402

WAYS = ("whole at once", "line", "whole after the line's three")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="records of this source key only")
    ap.add_argument("--check", action="store_true", help="simulate each line's step whole too")
    ap.add_argument("--top", type=int, default=0, help="print the N steps that took longest")
    args = ap.parse_args()
    calls: list[float] = []
    simulate = predict.simulate_scenario

    def counting(sc, *a, **k):  # the simulations predicted_step_time runs
        result = simulate(sc, *a, **k)
        calls.append(result.metrics.step_time_s)
        return result

    predict.simulate_scenario = counting
    seen: set = set()
    counts: dict[str, Counter] = {w: Counter() for w in WAYS}
    seconds: Counter = Counter()
    off: list[tuple[float, str]] = []
    slowest: list[tuple[float, str, str]] = []
    for rec in load_record_files(resolve_paths(None)):
        tr = translate(rec)
        if not isinstance(tr, Translation) or not any(
            k in rec.measured for k in predict.TIMING_KEYS
        ):
            continue
        family = rec.source_key
        if args.only and family != args.only:
            continue
        key = predict.scenario_key(tr.scenario)
        if key in seen:
            continue
        seen.add(key)
        calls.clear()
        t0 = time.perf_counter()
        got = predict.predicted_step_time(tr.scenario)
        way = WAYS[{1: 0, 3: 1, 4: 2}[len(calls)]]
        counts[way][family] += 1
        took = time.perf_counter() - t0
        seconds[way] += took
        slowest.append((took, way, rec.id))
        if args.check and way == "line":
            full = simulate(tr.scenario).metrics.step_time_s  # (the replay moves no time)
            off.append((abs(got - full), rec.id))
    for way in WAYS:
        n = sum(counts[way].values())
        fams = ", ".join(f"{f} {c}" for f, c in counts[way].most_common())
        print(f"{way:30s} {n:4d} steps {seconds[way]:7.1f} s   {fams}")
    print(f"{'distinct timed steps':30s} {len(seen):4d}")
    if args.top:
        print(f"the {args.top} steps that took longest:")
        for took, way, rid in sorted(slowest, reverse=True)[: args.top]:
            print(f"  {took:7.2f} s  {way:30s} {rid}")
    if args.check:
        off.sort(reverse=True)
        print(f"lines against their whole simulation: {len(off)}, largest differences:")
        for d, rid in off[:10]:
            print(f"  {d * 1e9:10.0f} ns  {rid}")


if __name__ == "__main__":
    main()
