"""Speed of the memory model (``costs.memory.estimate_memory``) on one core, per scenario.

The planner screens thousands of layouts through it, and a runtime whose reserved figure holds
the row-parallel outputs pending their NCCL reduce-scatter (``nccl_record_streams``: the
Playbook sweep's nanotron) reads each chunk's host and GPU times there too
(``costs.chunk_time``), and one whose reserved figure holds the caching allocator's
fragmentation (``allocator_replay``) replays the rank's allocations of three steps
(``costs.fragmentation``). Prints, for each shipped scenario (and nanotron_playbook_polling again
with each of those keys off), the best of ``--repeats`` timings of ``--n`` calls, in ms per call: warm
(the same scenario again, everything simtrain memoises cached) and cold
(``apps.caches.clear_caches`` before each call: a planner's next, unseen layout).

Run:  python benchmarks/bench_memory.py [--n 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.apps.caches import clear_caches  # noqa: E402
from simtrain.costs.memory import estimate_memory  # noqa: E402
from simtrain.spec.scenario import load_scenario  # noqa: E402


def ms_per_call(sc, n: int, repeats: int, cold: bool) -> float:  # noqa: ANN001
    estimate_memory(sc)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            if cold:
                clear_caches()
            estimate_memory(sc)
        best = min(best, (time.perf_counter() - t) / n)
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = [(p.stem, load_scenario(p)) for p in sorted((ROOT / "scenarios").glob("*.yaml"))]
    polling = ROOT / "scenarios" / "nanotron_playbook_polling.yaml"
    cases.append((f"{polling.stem}, nccl_record_streams false",
                  load_scenario(polling, ["runtime.nccl_record_streams=false"])))  # fmt: skip
    cases.append((f"{polling.stem}, allocator_replay false",
                  load_scenario(polling, ["runtime.allocator_replay=false"])))  # fmt: skip
    width = max(len(name) for name, _ in cases)
    print(f"{'scenario':<{width}}  ms per estimate_memory call, warm / cold "
          f"(best of {args.repeats} x {args.n})")  # fmt: skip
    for name, sc in cases:
        warm = ms_per_call(sc, args.n, args.repeats, cold=False)
        cold = ms_per_call(sc, args.n, args.repeats, cold=True)
        print(f"{name:<{width}}  {warm:8.3f} / {cold:8.3f}")


if __name__ == "__main__":
    main()
