"""Lowering: a schedule (per-rank compute actions) and its durations become engine tasks.

Passes over the step IR (``ir.StepIR``), in order (``passes``): ``compute_pass`` turns each
action into compute ops (``pieces``: recompute, bucket slices, ZeRO-3 per-layer slices, TP
fusion); ``zero3_pass`` adds per-layer parameter gathers and gradient reduce-scatters;
``bucket_pass`` the DDP / ZeRO-1/2 bucket reductions; ``offload_pass`` optimizer offload's
gradient copies to the host (PCIe "d2h" / "h2d" streams; the CPU optimizer step on "cpu");
``tp_pass`` the TP all-reduces; ``ep_pass`` the expert-parallel all-to-alls;
``final_reduce_pass`` pipelining-over-FSDP2's one reduce-scatter of each chunk's gradients after
its last backward;
``host_pass`` the host's eager dispatch and blocking receives (when the runtime models them);
``activation_offload_pass`` the checkpoints' copies to the host and back (cpu_checkpointing);
``cp_pass`` the context-parallel ring exchange;
``p2p_pass`` the pipeline sends; ``optimizer_pass`` the gradient sync, optimizer step and
ZeRO-1/2 parameter all-gather; ``paging_pass`` a paged optimizer's eviction and prefetch of
its states on a "paging" stream; ``data_parallel_pass`` torch.nn.DataParallel's GPU 0
transfers and its replica row; ``tp_overlap_span_pass`` the TP collectives a backward
hides under its GEMMs, on their own "tp" stream; ``resolve`` numbers the ops into engine tasks. ``nics`` then
puts cross-node transfers on shared NIC links. Only one GPU per pipeline
stage is simulated: its TP and DP peers do identical work (scale by symmetry); under
torch.nn.DataParallel GPU 0 does not, and a replica is simulated beside it (rank 1). Data-parallel
reductions run on their own "dp" stream (a separate NCCL communicator), overlapping the
backward and never delaying the pipeline's TP traffic; the optimizer step waits for them.
"""

from __future__ import annotations

from simtrain.sim.engine import Task
from simtrain.sim.lowering.ir import (
    ChunkDurations,
    DataParallelPlan,
    LoweringInput,
    NicPlan,
    RankWork,
)
from simtrain.sim.lowering.nics import share_nics
from simtrain.sim.lowering.passes import (
    activation_offload_pass,
    bucket_pass,
    compute_pass,
    cp_pass,
    data_parallel_pass,
    ep_pass,
    final_reduce_pass,
    host_pass,
    offload_pass,
    optimizer_pass,
    p2p_pass,
    paging_pass,
    tp_overlap_span_pass,
    tp_pass,
    zero3_pass,
)
from simtrain.sim.lowering.resolve import resolve

__all__ = [
    "ChunkDurations",
    "DataParallelPlan",
    "LoweringInput",
    "NicPlan",
    "RankWork",
    "lower",
    "share_nics",
]


def lower(inp: LoweringInput, fuse_tp: bool = False, merge_recompute: bool = False,
          overlap_spans: bool = False) -> list[Task]:  # fmt: skip
    """Per-rank action lists -> engine tasks (passes ``pieces`` and ``tasks``).

    ``fuse_tp``: add each TP all-reduce to the compute slice it follows instead of making it a
    task of its own, where nothing else hangs off that slice (no DDP/ZeRO bucket, no ZeRO-3
    gather or reduce-scatter). The next compute and the sends wait for the all-reduce either
    way and no other stream allocates memory meanwhile, so step time and peak memory are the
    same with fewer tasks (the planner's fast path; the trace then shows no TP spans; GPT-3 on
    1,024 GPUs, tp 8 pp 16 1F1B m 192: 21,632 -> 15,504 tasks).
    Only for TP inside a node: a cross-node TP all-reduce shares the NIC.

    ``merge_recompute``: run a backward's recompute and the backward as one compute task where
    the backward hangs off nothing but the recompute (no DDP bucket slices, no ZeRO-3 per-layer
    slices). The backward always starts when its recompute ends (all its other dependencies
    are the recompute's), the merged task allocates the working set at its start and frees
    everything at its end, so step time and memory are the same with fewer tasks under full
    recompute (tp 8 pp 16 interleaved m 192, with fuse_tp: 30,384 -> 24,256 tasks); the trace
    then counts recompute time as backward.

    ``overlap_spans``: lower communication that overlaps compute and delays nothing (the TP
    collectives hidden under the backward's GEMMs) as spans of their own stream, for the trace
    and the Gantt chart; without it the same step time and memory with fewer tasks. Not with
    ``merge_recompute`` (a merged backward starts with its recompute: the span would too)."""
    assert not (overlap_spans and merge_recompute), "overlap_spans needs unmerged recompute"
    ir = compute_pass(inp, fuse_tp, merge_recompute)
    ir.overlap_spans = overlap_spans
    for lowering_pass in (zero3_pass, bucket_pass, offload_pass, tp_pass, ep_pass,
                          final_reduce_pass, host_pass,
                          activation_offload_pass, cp_pass, p2p_pass, optimizer_pass, paging_pass,
                          data_parallel_pass, tp_overlap_span_pass):  # fmt: skip
        lowering_pass(ir)
    return resolve(ir)
