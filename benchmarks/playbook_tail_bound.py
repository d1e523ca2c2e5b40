"""A lower bound on the step of the Ultra-Scale Playbook's runs whose split puts nanotron's fp32
cast and loss on pipeline stages of their own, from the logits traffic alone, against the
measured step (runtimes/nanotron.yaml [ppfix], the lead of 2026-12-06).

nanotron's compute-balanced split (layout.partition.nanotron_block_ranks, models/base.py
build_model at 2411b022) puts the LM head before the last rank when the vocabulary is large:
the logits (bf16) then cross to the cast's rank and its fp32 copy to the loss's, every
micro-batch, and their gradients come back. Each rank that sends or receives them moves,
per micro-batch, its forward send and backward send out and the neighbours' sends in,
priced as simtrain prices each hop (costs.chunk_time.chunk_send_ns: the hop's bytes on the
link between the two ranks). Even with every send beside every receive (full duplex) and no
other work, the step takes at least m x the larger of the two directions on the busiest rank.
A measured step below that bound ran a split, or links, other than the ones simulated.

Prints, per record (validate's translation, each run on its job's own links where it
measured them): the busiest tail rank, its p2p ms per micro-batch each way, the bound, the
measured step and the ratio measured / bound (< 1: impossible under the simulated split).
Nothing is fitted and nothing asserted. Run:
    python benchmarks/playbook_tail_bound.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.apps.validate.records import load_record_files, resolve_paths  # noqa: E402
from simtrain.apps.validate.translate import Translation, translate  # noqa: E402
from simtrain.costs.chunk_time import chunk_send_ns  # noqa: E402
from simtrain.layout.step import resolve  # noqa: E402


def tail_bound(sc) -> tuple[int, float, float] | None:
    """(rank, out ms, in ms) of the tail rank with the most p2p per micro-batch each way, or
    None when the split keeps the loss with the LM head."""
    step = resolve(sc)
    if step.v != 1 or not any(c.tail for c in step.chunks):
        return None
    best = None
    for k, ch in enumerate(step.chunks):
        if not (ch.tail or ch.loss_apart):
            continue
        # (chunk_send_ns: 0 past either end of the pipeline; the senders k -/+ 1 must exist)
        out_ns = chunk_send_ns(sc, step, k, k + 1) + chunk_send_ns(sc, step, k, k - 1)
        in_ns = sum(chunk_send_ns(sc, step, j, k) for j in (k - 1, k + 1)
                    if 0 <= j < len(step.chunks))  # fmt: skip
        if best is None or max(out_ns, in_ns) > max(best[1], best[2]):
            best = (k, out_ns, in_ns)
    return None if best is None else (best[0], best[1] / 1e6, best[2] / 1e6)


def main() -> None:
    print(f"{'record':46s} {'runtime':15s} {'rank':>4s} {'out ms':>7s} {'in ms':>7s} "
          f"{'m':>4s} {'bound s':>8s} {'measured s':>10s} {'meas/bound':>10s}")  # fmt: skip
    for rec in load_record_files(resolve_paths(None)):
        if rec.source_key != "nanotron" or "tokens_per_s" not in rec.measured:
            continue
        tr = translate(rec)
        if not isinstance(tr, Translation):
            continue
        sc = tr.scenario
        found = tail_bound(sc)
        if found is None:
            continue
        rank, out_ms, in_ms = found
        m = sc.num_microbatches
        bound_s = m * max(out_ms, in_ms) / 1e3
        measured_s = sc.tokens_per_step / float(rec.measured["tokens_per_s"])
        print(f"{rec.id:46s} {rec.runtime or '':15s} {rank:4d} {out_ms:7.2f} {in_ms:7.2f} "
              f"{m:4d} {bound_s:8.2f} {measured_s:10.2f} {measured_s / bound_s:10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
