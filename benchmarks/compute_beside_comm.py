"""How much of each measured run's step simtrain's timeline spends computing beside
communication: rank 0's compute-stream time overlapped by the data-parallel collectives'
streams ("gather", "dp": the ones whose NCCL kernels hold SMs, ``sim.lowering.sms``) and by
every communication stream (those and "tp", "collective", "p2p"), as shares of the step,
median per family. The figures the 2026-12-07 closing note quotes (KempnerForge 35 % with every
stream, Megatron-Bridge 13 %, ...) came from this count before the SM holds were added; run
now, the step it divides by includes them. Run:
    python benchmarks/compute_beside_comm.py kempnerforge torchtitan megatron_bridge [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.apps.simulate import simulate_scenario  # noqa: E402
from simtrain.apps.validate.records import load_record_files, resolve_paths  # noqa: E402
from simtrain.apps.validate.translate import Translation, translate  # noqa: E402
from simtrain.report.metrics import union_length  # noqa: E402
from simtrain.sim.lowering.sms import HOLDING_STREAMS  # noqa: E402

NOT_COMM = ("compute", "host", "h2d", "d2h", "cpu", "paging")


def overlap_ns(compute: list[tuple[int, int]], comm: list[tuple[int, int]]) -> int:
    """Time covered by both the compute and the communication intervals:
    |compute| + |comm| − |compute ∪ comm| (``report.metrics.union_length``, the measure
    the step's exposed-communication figure is taken with)."""
    return union_length(compute) + union_length(comm) - union_length(compute + comm)


def shares(tr: Translation) -> tuple[float, float]:
    """(beside the data-parallel streams, beside any communication) / step, rank 0."""
    res = simulate_scenario(tr.scenario, detail=True)
    by: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for s in res.timeline.spans:
        if s.rank == 0:
            by[s.stream].append((s.start_ns, s.end_ns))
    compute = sorted(by.get("compute", []))
    dp = [iv for k, v in by.items() if k in HOLDING_STREAMS for iv in v]
    comm = [iv for k, v in by.items() if k not in NOT_COMM for iv in v]
    step = res.metrics.step_time_s * 1e9
    return overlap_ns(compute, dp) / step, overlap_ns(compute, comm) / step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="+", help="source keys (e.g. kempnerforge)")
    ap.add_argument("--limit", type=int, default=0, help="at most N records a family")
    args = ap.parse_args(argv)
    records = [r for r in load_record_files(resolve_paths(None)) if r.source_key in args.families]
    got: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if args.limit and len(got[r.source_key]) >= args.limit:
            continue
        tr = translate(r)
        if isinstance(tr, Translation):
            got[r.source_key].append(shares(tr))
    print(f"{'family':<20}{'n':>5}{'beside dp/gather %':>20}{'beside any comm %':>19}")
    for fam in args.families:
        v = got.get(fam, [])
        if v:
            print(f"{fam:<20}{len(v):>5}{100 * statistics.median(a for a, _ in v):>20.1f}"
                  f"{100 * statistics.median(b for _, b in v):>19.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
