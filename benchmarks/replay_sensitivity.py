"""The allocator replay's truncations and its order, measured on the Ultra-Scale Playbook's
nanotron records in measured/ (stage 0, the rank the sweep logs): the fragmentation with
2*pp + 2 micro-batches (what ``costs.memory.stage_allocations`` plays) against 4*pp + 8 and all
of them, with 2 steps (``costs.fragmentation.STEPS``) against 3 and 5, and the replay's
allocated peak against the memory model's (without the CUDA context, NCCL's buffers, the
pending outputs and the replay's own fragmentation). Prints the largest differences in GiB
and the ratio's range; nothing is fitted.

    python benchmarks/replay_sensitivity.py [--every 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simtrain.costs.fragmentation as frag  # noqa: E402
from simtrain.apps.validate.records import load_record_files, resolve_paths  # noqa: E402
from simtrain.apps.validate.translate import translate  # noqa: E402
from simtrain.costs import memory as mem  # noqa: E402
from simtrain.costs.caching_allocator import replay  # noqa: E402
from simtrain.layout.step import rank_schedule, resolve  # noqa: E402

GIB = 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=3, help="every n-th record [3]")
    args = ap.parse_args()
    recs = [r for r in load_record_files(resolve_paths(None)) if r.id.startswith("usp_")]
    caps, steps, ratios = [], [], []
    for rec in recs[:: args.every]:
        tr = translate(rec)
        sc = getattr(tr, "scenario", None)  # (a record validate skips has none)
        if sc is None:
            continue
        sm = mem.stage_memory(sc, 0)
        step = resolve(sc)
        a = mem.stage_allocations_of(sc, sm)
        if a is None:
            continue
        pp, m = sc.parallelism.pp, step.microbatches

        def cache(alloc: frag.StageAllocations) -> int:
            return replay(frag.stage_allocation_events(alloc)).cache_bytes

        base = cache(a)
        by_cap = []
        for n in (4 * pp + 8, m):
            acts = rank_schedule(step.schedule_name, pp, min(m, n), step.v, 0)
            b = replace(a, actions=tuple(x.kind for x in acts if x.kind != "OPT"))
            by_cap.append(abs(cache(b) - base))
        caps.append((max(by_cap), rec.id))
        shipped = frag.STEPS
        by_steps = []
        for n in (3, 5):
            frag.STEPS = n
            by_steps.append(abs(cache(a) - base))
        frag.STEPS = shipped
        steps.append((max(by_steps), rec.id))
        model = (sm.peak_memory_bytes - sm.fragmentation_bytes - sm.pending_collective_bytes
                 - sc.hardware.cuda_context_bytes - sm.breakdown.nccl_bytes)  # fmt: skip
        ratios.append(replay(frag.stage_allocation_events(a)).allocated_bytes / model - 1)
    n = len(ratios)
    print(f"{n} records (every {args.every}-th of {len(recs)} Playbook records, stage 0, replayed)")
    for what, diffs in (
        ("micro-batches 2*pp+2 vs 4*pp+8 and all", caps),
        (f"steps {frag.STEPS} vs 3 and 5", steps),
    ):
        d = sorted(diffs)
        within = sum(x <= 0.01 * GIB for x, _ in d)
        print(
            f"{what}: within 0.01 GiB on {within} of {len(d)}; median "
            f"{d[len(d) // 2][0] / GIB:.3f} GiB, largest {d[-1][0] / GIB:.3f} GiB ({d[-1][1]})"
        )
    print(f"replay's allocated peak / the model's - 1: {100 * min(ratios):+.1f} .. "
          f"{100 * max(ratios):+.1f} %, median {100 * statistics.median(ratios):+.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
