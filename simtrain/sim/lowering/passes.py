"""Lowering passes over the step IR (``ir.StepIR``), in the order :func:`lower` runs them.

Like ``torch.distributed.pipelining``'s lowered schedules: the compute pass turns each rank's
action list into groups of compute ops, and each later pass adds one kind of communication
where the schedule implies it. Every op keeps its position in its group, so the numbering pass
gives the same task ids whatever order passes were written in.
"""

from __future__ import annotations

import math

from simtrain.schedules import Action
from simtrain.schedules.analysis import sharded_at_start
from simtrain.sim.lowering.ir import Group, LoweringInput, Op, RankIR, RankWork, StepIR
from simtrain.sim.lowering.pieces import action_pieces, slice_layer
from simtrain.sim.lowering.sms import sm_shared_extra_ns

COMPUTE = ("F", "B", "I", "W")


def _cross_rank_deps(a: Action, line: range) -> list[tuple]:
    """F(s, j) waits for the previous stage's send; B or I (s, j) for its own forward and the
    next stage's send; W for its own I. Previous and next within ``line``, the stages of
    s's pipeline (DualPipe: of its direction's)."""
    if a.kind == "F":
        return [("send_f", a.stage - 1, a.microbatch)] if a.stage > line[0] else []
    if a.kind in ("B", "I"):
        deps: list[tuple] = [("done", a.stage, a.microbatch, "F")]
        if a.stage < line[-1]:
            deps.append(("send_b", a.stage + 1, a.microbatch))
        return deps
    return [("done", a.stage, a.microbatch, "I")]


def compute_pass(inp: LoweringInput, fuse_tp: bool, merge_recompute: bool) -> StepIR:
    """Pass 1: every compute action becomes a group of compute ops (``pieces``: recompute,
    bucket slices, ZeRO-3 per-layer slices, fused TP), chained in schedule order; a mid-step
    OPT (asynchronous PipeDream, Harlap et al. 2018 §3.3) becomes a group of its own."""
    ranks = {}
    for rank in sorted(inp.schedule):
        actions = inp.schedule[rank]
        work = inp.ranks[rank]
        grads = [a for a in actions if a.kind in ("B", "W")]
        last_backward = grads[-1] if grads else None
        groups: list[Group] = []
        for pos, a in enumerate(actions):
            prev = [("prev", rank, len(groups))] if groups else []
            if a.kind == "OPT" and pos < len(actions) - 1:
                stream = "cpu" if work.cpu_optimizer else "compute"
                op = Op(rank, stream, "OPT", f"optimizer step after mb{pos}", work.optimizer_ns,
                        prev, work.optimizer_alloc, work.optimizer_free)  # fmt: skip
                groups.append(Group(None, [op], op))
            if a.kind not in COMPUTE:
                continue  # communication is derived by the passes, not taken from the schedule
            c = inp.chunks[a.stage]
            # DDP / ZeRO buckets; without a reduction, optimizer offload's gradient copies
            # still leave bucket by bucket (DeepSpeed fills its ipg buckets at any dp).
            buckets = len(work.bucket_ns) or (0 if work.grad_sync_ns else len(work.grad_d2h_ns))
            bucketed = buckets if a == last_backward else 0
            pieces, tp_ns = action_pieces(a, c, inp, bucketed=bucketed, fuse_tp=fuse_tp,
                                          merge=merge_recompute)  # fmt: skip
            label = f"mb{a.microbatch} L{c.layers[0]}-{c.layers[1] - 1}"
            ops: list[Op] = []
            for kind, dur, alloc, free in pieces:
                cross = _cross_rank_deps(a, inp.pipeline(a.stage))
                deps = (prev + cross) if not ops else [ops[-1]]
                ops.append(Op(rank, "compute", kind, f"{kind} {label}", dur, deps, alloc, free,
                              a.microbatch, a.stage))  # fmt: skip
            groups.append(Group(a, ops, ops[-1], tp_ns, bucketed, label, a == last_backward))
        if work.step_held and groups:  # from the first forward to the last backward
            first = next(g for g in groups if g.action is not None).ops[0]
            first.alloc = tuple(first.alloc) + work.step_held
            last = next((g for g in reversed(groups) if g.last_backward), groups[-1]).ops[-1]
            last.free = tuple(last.free) + work.step_held
        ranks[rank] = RankIR(rank, groups, [])
    return StepIR(inp, ranks, {})


def zero3_pass(ir: StepIR) -> None:
    """ZeRO-3 / FSDP (Rajbhandari et al. 2020 §5.3): before each per-layer compute slice, its
    layer's parameter all-gather on the "gather" stream, prefetched one slice ahead (it may
    start when the slice two before it has ended); after each B/W slice, the layer's gradient
    reduce-scatter on the "dp" stream (ZeRO-2's every-micro-batch reduction too, without the
    gathers; where the runtime does not overlap it, ``reduce_scatter_blocking``, the next
    compute slice waits for it). With parameter offload (ZeRO-Infinity; DeepSpeed
    ``offload_param``: ``_all_gather`` copies the host partition to the GPU before the
    collective) the layer's partition first comes up on the "h2d" stream, in the same prefetch
    window, and the all-gather (or, alone on one GPU, the slice) waits for it. FSDP2 copies the
    gathered parameters out on the compute stream ("CPY") before the slice runs. A recompute
    slice that uses no weights (selective recompute: the attention core,
    ``LoweringInput.recompute_gathers``) gathers nothing; under FSDP
    (``LoweringInput.backward_reuses_recompute_gather``) a full recompute's slice gathers its
    layer once for the recompute and the backward after it. Under PyTorch pipelining
    (``ChunkDurations.unsharded_after_backward``) a chunk's action after one of its backwards
    gathers nothing: the backward left its parameters gathered. With the gradient sync in the
    last micro-batch only (``ChunkDurations.reduce_scatter_last_backward_only``) only a chunk's
    last backward reduce-scatters."""
    for r in ir.ranks.values():
        seen: list[Op] = []  # the rank's compute slices so far (prefetch window)
        blocking: Op | None = None  # a reduce-scatter the next compute slice waits for
        acting = [g for g in r.groups if g.action is not None]
        sharded = sharded_at_start([(g.action.stage, g.action.kind) for g in acting])
        last = {g.action.stage: i for i, g in enumerate(acting) if g.action.kind in ("B", "W")}
        for i, (g, at_start) in enumerate(zip(acting, sharded, strict=True)):
            c = ir.inp.chunks[g.action.stage]
            reduces = not c.reduce_scatter_last_backward_only or last.get(g.action.stage) == i
            out: list[Op] = []
            fetch = c.gather_ns_per_layer or c.param_h2d_ns_per_layer
            if c.unsharded_after_backward and not at_start:
                fetch = 0  # still gathered since its last backward (FSDP2 pipelining)
            recomputed: set[int] = set()  # layers whose recompute gathered their parameters
            for slice_no, op in enumerate(g.ops):
                if blocking is not None and op.stream == "compute":
                    op.deps.append(blocking)
                    blocking = None
                layer = slice_layer(op.kind, slice_no, *c.layers)
                if op.kind == "R" and ir.inp.recompute_gathers:
                    needs = True
                    recomputed.add(layer)
                else:  # (FSDP: a backward after its layer's recompute uses its gather)
                    reuses = ir.inp.backward_reuses_recompute_gather and layer in recomputed
                    needs = op.kind == "F" or (op.kind in ("B", "I") and not reuses)
                if fetch and needs:
                    before = seen[-2:-1]
                    if c.param_h2d_ns_per_layer:
                        up = Op(r.rank, "h2d", "H2D", f"H2D params L{layer} {g.label}",
                                c.param_h2d_ns_per_layer, list(before),
                                microbatch=op.microbatch, stage=op.stage)  # fmt: skip
                        out.append(up)
                        before = [*before, up]
                        if not c.gather_ns_per_layer:
                            op.deps.append(up)
                    if c.gather_ns_per_layer:
                        ag = Op(r.rank, "gather", "AG", f"AG params L{layer} {g.label}",
                                c.gather_ns_per_layer, before,
                                microbatch=op.microbatch, stage=op.stage)  # fmt: skip
                        out.append(ag)
                        # FSDP2: the copy-out (after what the slice waits for: its input, the
                        # previous action), then the layer. Without the reuse, a recompute runs
                        # under its backward's unshard: no copy before the R slice
                        if c.gather_copy_ns_per_layer and (
                            op.kind != "R" or ir.inp.backward_reuses_recompute_gather
                        ):
                            ag = Op(r.rank, "compute", "CPY", f"CPY params L{layer} {g.label}",
                                    c.gather_copy_ns_per_layer, [*op.deps, ag],
                                    microbatch=op.microbatch, stage=op.stage)  # fmt: skip
                            out.append(ag)
                        op.deps.append(ag)
                out.append(op)
                seen.append(op)
                if c.reduce_scatter_ns_per_layer and op.kind in ("B", "W") and reduces:
                    rs = Op(r.rank, "dp", "RS", f"RS grads {g.label}",
                            c.reduce_scatter_ns_per_layer, [op],
                            microbatch=op.microbatch, stage=op.stage)  # fmt: skip
                    out.append(rs)
                    r.grads_ready = rs
                    if c.reduce_scatter_blocking:
                        blocking = rs
            g.ops = out


def final_reduce_pass(ir: StepIR) -> None:
    """PyTorch pipelining over FSDP2 (``ChunkDurations.final_reduce_ns``): after the last
    backward (B or W) of each of the rank's chunks, that chunk's REDUCE_GRAD reduce-scatter on
    the "dp" stream (torch 2.13.0 pipelining/schedules.py ``_add_reduce_grad``: one per stage,
    after its last backward), and the rank's next compute waits for it (stage.py
    ``perform_reduce_grad`` -> FSDP2 ``finalize_backward``: the current stream waits for the
    reduce-scatter's event); the optimizer step waits for the last."""
    for r in ir.ranks.values():
        last: dict[int, int] = {}  # chunk -> index of its last backward group
        for i, g in enumerate(r.groups):
            if g.action is not None and g.action.kind in ("B", "W"):
                last[g.action.stage] = i
        blocking: Op | None = None
        for i, g in enumerate(r.groups):
            if blocking is not None:
                first = next((op for op in g.ops if op.stream == "compute"), None)
                if first is not None:
                    first.deps.append(blocking)
                    blocking = None
            if g.action is None or last.get(g.action.stage) != i:
                continue
            ns = ir.inp.chunks[g.action.stage].final_reduce_ns
            if not ns:
                continue
            rs = Op(r.rank, "dp", "RS", f"REDUCE_GRAD chunk {g.action.stage}", ns, [g.done],
                    stage=g.action.stage)  # fmt: skip
            g.ops.append(rs)
            r.grads_ready = blocking = rs


def bucket_pass(ir: StepIR) -> None:
    """DDP (Li et al. 2020 §3.2.3) and ZeRO-1/2 (DeepSpeed ``overlap_comm``): the rank's last
    backward runs in one slice per gradient bucket, and bucket i's reduction follows slice i
    on the "dp" stream."""
    for r in ir.ranks.values():
        work = ir.inp.ranks[r.rank]
        for g in r.groups:
            if not g.bucketed or not work.bucket_ns:
                continue
            out: list[Op] = []
            i = 0
            for op in g.ops:
                out.append(op)
                if op.stream == "compute" and op.kind in ("B", "W", "I") and i < g.bucketed:
                    dp = Op(r.rank, "dp", "DP", f"{work.bucket_name} bucket {i}",
                            work.bucket_ns[i], [op])  # fmt: skip
                    out.append(dp)
                    r.grads_ready = dp
                    i += 1
            g.ops = out


def _copy(rank: int, stream: str, name: str, ns: int, after: Op) -> Op:
    kind = "D2H" if stream == "d2h" else "H2D"
    return Op(rank, stream, kind, name, ns, [after], microbatch=after.microbatch,
              stage=after.stage)  # fmt: skip


def offload_pass(ir: StepIR) -> None:
    """Optimizer offload's gradient copies (ZeRO-Offload, Ren et al. 2021 §4.2; DeepSpeed
    ``stage_1_and_2.py`` ``copy_grads_in_partition``, ``stage3.py`` ``partition_grads``;
    ``costs.offload``), on the "d2h" and "h2d" streams, each after the reduction that made its
    gradients (or, without one, the backward slice):

    - ZeRO-1/2: at the rank's last backward, per gradient bucket, the accumulator up (with
      gradient accumulation) then the partition down (fp32, and the 16-bit accumulator);
      every earlier backward round-trips its 16-bit gradients (up from its stage's second
      micro-batch on, then down).
    - ZeRO-3: after every backward layer slice's reduce-scatter, the layer's 16-bit partition
      down and up (``partition_grads`` accumulates on the GPU side of the host buffer), plus
      its fp32 copy down at the last backward.

    The CPU optimizer step (``optimizer_pass``) waits for every copy down (``RankIR.offloaded``)."""
    for r in ir.ranks.values():
        work = ir.inp.ranks[r.rank]
        seen: set[int] = set()
        for g in r.groups:
            a = g.action
            if a is None or a.kind not in ("B", "W"):
                continue
            c = ir.inp.chunks[a.stage]
            first = a.stage not in seen
            seen.add(a.stage)
            out: list[Op] = []
            if c.grad_d2h_ns_per_layer or c.grad_d2h_last_ns_per_layer:
                rs = any(op.kind == "RS" for op in g.ops)
                ups: list[Op] = []  # after the action's slices: the h2d stream is FIFO and
                # the next layers' parameter fetches must not queue behind them
                for op in g.ops:
                    out.append(op)
                    if op.kind == "RS" or (not rs and op.stream == "compute" and op.kind == a.kind):
                        ns = c.grad_d2h_ns_per_layer
                        ns += c.grad_d2h_last_ns_per_layer if g.last_backward else 0
                        down = _copy(r.rank, "d2h", f"D2H grads {g.label}", ns, op)
                        out.append(down)
                        r.offloaded.append(down)
                        if c.grad_d2h_ns_per_layer:
                            ups.append(_copy(r.rank, "h2d", f"H2D grad accumulator {g.label}",
                                             c.grad_d2h_ns_per_layer, op))  # fmt: skip
                g.ops = out + ups
            elif g.last_backward and work.grad_d2h_ns:
                if work.grad_sync_ns:
                    continue  # one reduction at the end: optimizer_pass copies after it
                i = 0
                for op in g.ops:
                    out.append(op)
                    dp = op.stream == "dp" and op.kind == "DP"
                    slice_ = op.stream == "compute" and op.kind in ("B", "W", "I")
                    if i < len(work.grad_d2h_ns) and (dp if work.bucket_ns else slice_):
                        out += _offload_bucket(r, work, i, op, g.label)
                        i += 1
                g.ops = out
            elif work.accum_ns:
                after = g.done
                if not first:
                    after = _copy(r.rank, "h2d", f"H2D grad accumulator {g.label}",
                                  work.accum_ns, after)  # fmt: skip
                    g.ops.append(after)
                down = _copy(r.rank, "d2h", f"D2H grads {g.label}", work.accum_ns, after)
                g.ops.append(down)
                r.offloaded.append(down)


def _offload_bucket(r: RankIR, work: RankWork, i: int, after: Op, label: str) -> list[Op]:
    """Bucket ``i``'s copies at the accumulation boundary: the accumulator up (when there is
    one), then the partition down."""
    ops = []
    if work.grad_h2d_ns and work.grad_h2d_ns[i]:
        after = _copy(r.rank, "h2d", f"H2D grad accumulator bucket {i} {label}",
                      work.grad_h2d_ns[i], after)  # fmt: skip
        ops.append(after)
    down = _copy(r.rank, "d2h", f"D2H grads bucket {i} {label}", work.grad_d2h_ns[i], after)
    r.offloaded.append(down)
    return [*ops, down]


def activation_offload_pass(ir: StepIR) -> None:
    """Activation offload (DeepSpeed ``cpu_checkpointing`` through its async offload engine,
    ``runtime/activation_checkpointing/offload_activations.py``: each checkpointed layer input
    is copied to pinned host memory on a side stream once the next layer has started, and
    restored on that stream when its backward needs it, the compute stream waiting for it).
    Per chunk and micro-batch: the checkpoints go down on the "d2h" stream alongside the
    forward (same dependencies, so the copy overlaps it) and leave the GPU when the copy ends;
    they come back up on the "h2d" stream when the backward (B, or I) would start, allocating
    them again, and the backward waits for them (no prefetch: the restore is exposed).

    Megatron-Core's layer offload (``ChunkDurations.act_copy_beside``; Transformer Engine's
    ``DefaultOffloadSynchronizer``, cpu_offload.py l.602-654 at d0067d0d): block i's tensors
    go down from block i+1's forward on and must be gone before block L-N+i's; they come back
    from block L-1-N+i's backward on, before block i's. At the action's grain: the copy down
    starts with the forward, the copy up with the backward, each action ends when its compute
    and its copy have (a zero-length "OFFLOAD_WAIT" on the compute stream), and nothing is
    allocated or freed by them (the chunk's activations already leave those blocks out)."""
    down: dict[tuple[int, int], Op] = {}
    for r in ir.ranks.values():
        for g in r.groups:
            a = g.action
            if a is None or a.kind not in ("F", "B", "I"):
                continue
            c = ir.inp.chunks[a.stage]
            if not c.act_copy_bytes:
                continue
            act = c.act_copy_bytes
            first = next(op for op in g.ops if op.stream == "compute")
            if c.act_copy_beside:
                _copy_beside(r.rank, g, first, c.act_copy_ns, a)
                continue
            if a.kind == "F":
                op = Op(r.rank, "d2h", "D2H", f"D2H checkpoints {g.label}", c.act_copy_ns,
                        list(first.deps), free=(("activations", act),),
                        microbatch=a.microbatch, stage=a.stage)  # fmt: skip
                g.ops.append(op)
                down[(a.stage, a.microbatch)] = op
            else:
                deps = [*first.deps, down[(a.stage, a.microbatch)]]
                op = Op(r.rank, "h2d", "H2D", f"H2D checkpoints {g.label}", c.act_copy_ns, deps,
                        alloc=(("activations", act),), microbatch=a.microbatch,
                        stage=a.stage)  # fmt: skip
                first.deps.append(op)
                g.ops.insert(g.ops.index(first), op)


def _copy_beside(rank: int, g: Group, first: Op, copy_ns: int, a: Action) -> None:
    """Megatron-Core's layer offload for one action (:func:`activation_offload_pass`): the copy
    on "d2h" (a forward) or "h2d" (a backward) from the action's start, and a zero-length op on
    the compute stream after the action's end that waits for it."""
    fwd = a.kind == "F"
    stream, kind = ("d2h", "D2H") if fwd else ("h2d", "H2D")
    what = "offloaded blocks" if fwd else "reloaded blocks"
    copy = Op(rank, stream, kind, f"{kind} {what} {g.label}", copy_ns, list(first.deps),
              microbatch=a.microbatch, stage=a.stage)  # fmt: skip
    wait = Op(rank, "compute", "OFFLOAD_WAIT", f"wait {what} {g.label}", 0, [g.done, copy],
              microbatch=a.microbatch, stage=a.stage)  # fmt: skip
    g.ops.insert(g.ops.index(first), copy)
    g.ops.append(wait)
    g.done = wait


def tp_pass(ir: StepIR) -> None:
    """Megatron tensor parallelism (Narayanan et al. 2021 §3.2): the TP all-reduces of an
    action, on the "collective" stream after its last compute slice, on the critical path:
    the action is done when they are (with a TP overlap that pairs each collective with its
    GEMM, ``costs.compute.tp_pairs_gemms``, only their exposed excess: the hidden part is
    :func:`tp_overlap_span_pass`'s). With the pooled overlap (``LoweringInput.pooled_tp_overlap``:
    ``tp_comm_overlap`` without sequence parallelism, or with MLA or experts) they start with
    the action's compute and the action ends when both have: max(compute, TP) instead of the
    sum."""
    overlap = ir.inp.pooled_tp_overlap
    for r in ir.ranks.values():
        for g in r.groups:
            if g.tp_ns:
                compute = [op for op in g.ops if op.stream == "compute"]
                # nanotron's fp32 gradient add comes after the backward and its collectives
                acc = compute.pop() if compute[-1].kind == "ACC" else None
                last = compute[-1]
                deps = list(compute[0].deps) if overlap else [last]
                tp = Op(r.rank, "collective", "TP", f"TP all-reduce {g.label}", g.tp_ns,
                        deps, microbatch=last.microbatch, stage=last.stage)  # fmt: skip
                new = [tp]
                g.done = tp
                if overlap:  # the action ends when both its GEMMs and their collectives have
                    g.done = Op(r.rank, "compute", "JOIN", f"TP overlap join {g.label}", 0,
                                [tp], microbatch=last.microbatch, stage=last.stage)  # fmt: skip
                    new.append(g.done)
                if acc is None:
                    g.ops += new
                    continue
                i = g.ops.index(acc)
                g.ops[i:i] = new
                acc.deps.append(g.done)
                g.done = acc


def tp_overlap_span_pass(ir: StepIR) -> None:
    """The TP collectives an action hides under its own GEMMs (runtime ``tp_backward_overlap``:
    ``costs.comm.tp_backward_block``'s hidden part; a ``tp_comm_overlap`` that pairs each
    collective with its GEMM: that and ``costs.comm.tp_forward_block``'s) as one span on the
    "tp" stream that starts with the action's compute: a backward's first B slice (after any
    recompute; the recompute's own hidden collectives beside its R slice), a forward's first F
    slice, once that slice's dependencies and its predecessor
    on the compute stream are done; this pass runs last, when every other pass has added its
    dependencies. An I action of an I/W split hides what the paired overlap pipelines with its
    input-gradient GEMMs (with ``tp_backward_overlap`` alone, nothing). Nothing waits for the
    span: the exposed excess is the TP op after the compute. Only with ``StepIR.overlap_spans``."""
    if not ir.overlap_spans:
        return
    for r in ir.ranks.values():
        prev: Op | None = None  # the rank's compute stream, in task order
        for g in r.groups:
            compute = [op for op in g.ops if op.stream == "compute"]
            a = g.action
            kind = a.kind if a is not None and a.kind in ("F", "B", "I") else ""
            spans: list[tuple[str, int]] = []  # (the compute slice a span starts with, ns)
            if kind:
                c = ir.inp.chunks[a.stage]
                if kind != "F" and any(op.kind == "R" for op in compute):
                    spans.append(("R", c.tp_recompute_hidden_ns))
                spans.append((kind, {"F": c.tp_forward_hidden_ns, "B": c.tp_backward_hidden_ns,
                                     "I": c.tp_input_grad_hidden_ns}[kind]))  # fmt: skip
            for slice_kind, hidden in spans:
                if not hidden:
                    continue
                i = next(k for k, op in enumerate(compute) if op.kind == slice_kind)
                before = compute[i - 1] if i else prev
                deps = [*compute[i].deps, *([before] if before is not None else [])]
                what = "recompute " if slice_kind == "R" else ""
                g.ops.append(Op(r.rank, "tp", "TP", f"TP overlapped {what}{g.label}", hidden,
                                deps, microbatch=a.microbatch, stage=a.stage))  # fmt: skip
            prev = compute[-1] if compute else prev


def cp_pass(ir: StepIR) -> None:
    """Context parallelism (Transformer Engine ``AttnFuncWithCPAndKVP2P``; ``costs.cp``): the
    ring exchange of an action's layers (K/V forward and in a recompute, K/V and dK/dV
    backward) on the "cp" stream, starting with the action's compute. It overlaps the
    attention steps; what a step's transfer takes beyond that step's attention is already in
    the compute durations, so the ring ends within its action and nothing waits for it (the
    all-to-all's time is all in them: its op shows when it runs; names: ``cp_labels``)."""
    forward_label, backward_label = ir.inp.cp_labels
    for r in ir.ranks.values():
        for g in r.groups:
            a = g.action
            if a is None or a.kind == "W":
                continue
            c = ir.inp.chunks[a.stage]
            if a.kind == "F":
                ns, what = c.cp_forward_ns, forward_label
            else:
                ns = c.cp_backward_ns + c.cp_recompute_ns  # a recompute replays the forward's
                what = backward_label
            if not ns:
                continue
            compute = [op for op in g.ops if op.stream == "compute"]
            ring = Op(r.rank, "cp", "CP", f"{what} {g.label}", ns, list(compute[0].deps),
                      microbatch=a.microbatch, stage=a.stage)  # fmt: skip
            g.ops.append(ring)


def ep_pass(ir: StepIR) -> None:
    """Expert parallelism (Megatron-Core ``MoEAlltoAllTokenDispatcher``): each MoE layer's
    dispatch and combine all-to-alls, forward and backward (and again in a full recompute), as
    one "A2A" op per action on the "collective" stream after the action's compute and TP
    collectives, on the critical path (Megatron runs them on the compute stream between the
    router and the experts, and between the experts and the next layer: no overlap).

    A schedule with overlapped F&B pairs (``LoweringInput.overlapped_fb``: Megatron-Core's
    combined 1F1B, DualPipeV) runs a forward and the adjacent backward of another micro-batch
    as one unit whose layers interleave (combined_1f1b.py: "EP A2A in forward step is hidden
    by the attention/mlp computation in the backward step, and vice versa"; DeepSeek-V3
    §3.2.1): both actions' all-to-alls start with the pair, the second action's compute starts
    when the first one's ends, and the pair ends when compute and communication both have:
    with identical layers, max(C1 + C2, A1 + A2) instead of C1 + A1 + C2 + A2. When the
    all-to-all kernels hold a share f of the SMs (``LoweringInput.comm_sm_share``, DeepEP),
    the pair's compute runs at 1 − f while they do: it takes
    ``C + min(A·f, C·f/(1 − f))`` (:func:`_sm_shared`). A schedule that names its pairs
    (``LoweringInput.fb_pairs``, DualPipe's ``_forward_backward_chunk`` calls) pairs those
    only; otherwise adjacent F/B of different micro-batches pair greedily."""
    overlap = ir.inp.overlapped_fb
    named = ir.inp.fb_pairs  # the schedule's own pairs (DualPipe), else greedy
    for r in ir.ranks.values():
        firsts = named.get(r.rank, frozenset()) if named is not None else None
        for i, g in enumerate(r.groups):
            ns = _a2a_ns(ir, g)
            if not ns:
                continue
            prev = r.groups[i - 1] if i else None
            nxt = r.groups[i + 1] if i + 1 < len(r.groups) else None
            if prev is not None and prev.compute_end is not None:
                # the second of a pair: its compute follows the first's compute, not the
                # first's A2A; its A2A starts with the pair (after the first's on the stream)
                # once its own input has arrived (its forward's activation or its backward's
                # gradient from the neighbouring stage)
                start = _compute_start(prev)
                # every op of the group that waits for the previous action (its first op; under
                # ZeRO-3 also the compute slice after the all-gather and its FSDP2 copy-out)
                for op in g.ops:
                    op.deps = [prev.compute_end if d == ("prev", r.rank, i) else d
                               for d in op.deps]  # fmt: skip
                own = [d for d in _compute_start(g) if d is not prev.compute_end]
                _overlapped_a2a(r.rank, g, ns, start + [d for d in own if d not in start])
                if ir.inp.comm_sm_share:
                    _sm_shared(prev, g, _a2a_ns(ir, prev) + ns, ir.inp.comm_sm_share)
            elif (overlap and nxt is not None and _a2a_ns(ir, nxt)
                  and (_pairs(g, nxt) if firsts is None else g.action in firsts)):  # fmt: skip
                # the first of a pair: done (for its sends) when its compute and its A2A are
                g.compute_end = g.done
                _overlapped_a2a(r.rank, g, ns, _compute_start(g))
            else:
                last = g.done
                g.done = Op(r.rank, "collective", "A2A", f"EP all-to-all {g.label}", ns, [last],
                            microbatch=last.microbatch, stage=last.stage)  # fmt: skip
                g.ops.append(g.done)


def _sm_shared(a: Group, b: Group, a2a_ns: int, share: float) -> None:
    """Lengthen the compute of an overlapped pair ``a``, ``b`` whose all-to-alls take
    ``a2a_ns`` on ``share`` of the SMs: compute C runs at 1 − share while they run and at
    full rate after, ``C + min(A·share, C·share/(1 − share))``; each compute op of the pair
    grows in proportion (rounded up to whole ns)."""
    ops = [op for g in (a, b) for op in g.ops if op.stream == "compute"]
    c = sum(op.duration_ns for op in ops)
    if not c:
        return
    extra = sm_shared_extra_ns(c, a2a_ns, share)
    for op in ops:  # its share of the extra, to the ns above (a float's last bit is no ns)
        op.duration_ns += math.ceil(round(op.duration_ns * extra / c, 6))


def _compute_start(g: Group) -> list:
    """What group ``g``'s first compute op waits for: when the action can start."""
    return list(next(op for op in g.ops if op.stream == "compute").deps)


def _overlapped_a2a(rank: int, g: Group, ns: int, start: list) -> None:
    """``g``'s all-to-alls of an overlapped pair: from ``start`` on the collective stream, and
    a zero-time join that ends the action when its compute and its A2A both have."""
    last = g.done
    a2a = Op(rank, "collective", "A2A", f"EP all-to-all {g.label} (overlapped)", ns, start,
             microbatch=last.microbatch, stage=last.stage)  # fmt: skip
    g.done = Op(rank, "collective", "JOIN", f"F&B pair join {g.label}", 0, [last, a2a],
                microbatch=last.microbatch, stage=last.stage)  # fmt: skip
    g.ops += [a2a, g.done]


def _a2a_ns(ir: StepIR, g: Group) -> int:
    """The expert all-to-alls of group ``g``'s action (0: none, or not an F/B/I action)."""
    if g.action is None or g.action.kind not in ("F", "B", "I"):
        return 0
    c = ir.inp.chunks[g.action.stage]
    if g.action.kind == "F":
        return c.ep_forward_ns
    recompute = c.recompute_ns or ir.inp.working_set_bytes[g.action.stage]
    return c.ep_backward_ns + (c.ep_recompute_ns if recompute else 0)


def _pairs(a: Group, b: Group) -> bool:
    """Whether adjacent actions ``a`` then ``b`` form an overlapped F&B pair: a forward and a
    backward (B, or I) of different micro-batches (so neither needs the other's output)."""
    x, y = a.action, b.action
    if x is None or y is None or x.microbatch == y.microbatch:
        return False
    return {x.kind, y.kind} in ({"F", "B"}, {"F", "I"})


def host_pass(ir: StepIR) -> None:
    """Eager dispatch (``costs.host``): each action's kernels are issued by the rank's host on
    the "host" stream, one host op per action, before the GPU can run past them: an action's
    first kernel waits for the previous action's host op (the host has reached it), its sends
    for its own. When the host is slower than the GPU the GPU waits; when it is faster it runs
    ahead, through the pipeline bubbles. Blocking p2p (``LoweringInput.blocking_p2p``): a host
    op that receives also waits for the message and for the GPU's work queued before it (the
    receiver reads the metadata on the host), so the host cannot run ahead past a receive."""
    inp = ir.inp
    if not inp.host_modelled:
        return
    for r in ir.ranks.values():
        prev: Op | None = None
        for i, g in enumerate(r.groups):
            a = g.action
            if a is None:
                continue
            deps: list = []
            if inp.blocking_p2p:
                cross = _cross_rank_deps(a, inp.pipeline(a.stage))
                recv = [d for d in cross if d[0] != "done"]
                if recv and i:
                    deps = [*recv, ("prev", r.rank, i)]
                elif recv:
                    deps = recv
            host = Op(r.rank, "host", "HOST", f"issue {a.kind} {g.label}",
                      inp.chunks[a.stage].host_ns(a.kind), deps,
                      microbatch=a.microbatch, stage=a.stage)  # fmt: skip
            if prev is not None:
                g.ops[0].deps.append(prev)
            g.ops.insert(0, host)
            g.host = prev = host
        r.last_host = prev


def p2p_pass(ir: StepIR) -> None:
    """Pipeline sends (PyTorch ``_add_send_recv``): after a forward, its output to the next
    stage; after a backward (B or I), its input gradient to the previous stage; on the "p2p"
    stream, when the action is done (and, with a host stream, issued). Receives are the
    dependencies ``compute_pass`` named. Blocking p2p: the host issues nothing more until the
    send has completed (nanotron waits on each send at once)."""
    inp = ir.inp
    if inp.pp == 1:
        return
    owner = {g.action.stage: r.rank for r in ir.ranks.values() for g in r.groups
             if g.action is not None}  # fmt: skip
    if inp.p2p_poll_ns:
        _polled_receives(ir, owner)
    for r in ir.ranks.values():
        sent: Op | None = None  # blocking p2p: the host waits for its last send to complete
        for g in r.groups:
            a = g.action
            if a is None:
                continue
            if sent is not None and g.host is not None:
                g.host.deps.append(sent)
                sent = None
            c, line = inp.chunks[a.stage], inp.pipeline(a.stage)
            if a.kind == "F" and a.stage < line[-1]:
                kind, dur = "SEND_F", c.send_forward_ns
            elif a.kind in ("B", "I") and a.stage > line[0]:
                kind, dur = "SEND_B", c.send_backward_ns
            else:
                continue
            deps = [g.done] if g.host is None else [g.done, g.host]
            peer = a.stage + 1 if kind == "SEND_F" else a.stage - 1
            if inp.p2p_poll_ns and owner[peer] != r.rank:  # a hop on the rank sends nothing
                deps = _polled_sends(ir, g, kind, deps)
            send = Op(r.rank, "p2p", kind, f"{kind} {g.label}", dur, deps,
                      microbatch=a.microbatch, stage=a.stage)  # fmt: skip
            g.ops.append(send)
            ir.sends[(kind.lower(), a.stage, a.microbatch)] = send
            if inp.blocking_p2p:
                sent = send


def _polled_sends(ir: StepIR, g: Group, kind: str, deps: list) -> list:
    """A polled transfer's sender (the Ultra-Scale Playbook's nanotron, p2p.py ``_send_meta``):
    per metadata message the host copies it to the GPU (a synchronous copy: the action's
    kernels have ended), issues it, then sleeps one interval before seeing it complete (an
    isend is never complete when first checked; a few bytes fit the NCCL connection's FIFO, so
    the send completes without waiting for the receive). The tensor follows the last
    message. Message k of send ``(kind.lower(), stage, mb)`` is ``ir.metas[(that key, k)]``."""
    a = g.action
    n = ir.inp.p2p_polled[a.stage][0 if kind == "SEND_F" else 1]
    for k in range(n):
        issue = Op(g.done.rank, "host", "META", f"send metadata {k + 1}/{n} {g.label}", 0, deps,
                   microbatch=a.microbatch, stage=a.stage)  # fmt: skip
        wait = Op(g.done.rank, "host", "POLL", f"poll send {k + 1}/{n} {g.label}", 0, [],
                  microbatch=a.microbatch, stage=a.stage, poll_ns=ir.inp.p2p_poll_ns)  # fmt: skip
        g.ops += [issue, wait]
        ir.metas[((kind.lower(), a.stage, a.microbatch), k)] = issue
        deps = [wait]
    return deps


def _polled_receives(ir: StepIR, owner: dict[int, int]) -> None:
    """A polled transfer's receiver (nanotron ``_recv_meta``): before the host issues the
    receiving action, it posts each metadata message's receive and looks every interval until
    the sender's message has arrived (the first look one interval after posting); then it
    posts the tensor's receive, so whatever waits for the tensor waits for the last look.
    nanotron takes a transfer's tensors one at a time (metadata, metadata, tensor, then the
    next tensor's); here every metadata message comes first and the tensors after the last,
    which moves the tensors earlier by the later messages' polls only when a tensor's transfer
    outlasts them. Stages on the same rank exchange nothing (nanotron refuses a send to
    itself, p2p.py l.467)."""
    inp = ir.inp
    for r in ir.ranks.values():
        for g in r.groups:
            if g.action is None or g.host is None:
                continue
            for data in _cross_rank_deps(g.action, inp.pipeline(g.action.stage)):
                kind, peer, mb = data[:3]
                if kind == "done" or owner[peer] == r.rank:  # a V's turn: one rank, no hop
                    continue
                n = inp.p2p_polled[peer][0 if kind == "send_f" else 1]
                polls = [Op(r.rank, "host", "POLL", f"poll metadata {k + 1}/{n} {g.label}", 0,
                            [], microbatch=mb, stage=g.action.stage, poll_ns=inp.p2p_poll_ns,
                            polled=[("meta", data, k)])
                         for k in range(n)]  # fmt: skip
                for op in g.ops:  # the tensor arrives once the host has posted its receive
                    if data in op.deps:
                        op.deps.append(polls[-1])
                i = g.ops.index(g.host)
                g.ops[i:i] = polls


def optimizer_pass(ir: StepIR) -> None:
    """The rank's tail: the gradient reduction not launched during backward (one all-reduce,
    or naive DP through GPU 0) after its last action, the optimizer step once the gradients
    are reduced, and ZeRO-1/2's all-gather of the updated parameter shards (or, overlapped with
    the forward, that all-gather at the start of the step: the previous step's, in steady
    state). The tied word embedding's gradient (``LoweringInput.tied_embedding_sync``) is
    all-reduced between its two ranks once both have reduced theirs: each rank's copy of the
    collective starts when the later of the two is ready, and its optimizer step waits for it."""
    ready_of: dict[int, list] = {}
    offloaded_of: dict[int, list] = {}
    for r in ir.ranks.values():
        work = ir.inp.ranks[r.rank]
        last = [r.groups[-1].done] if r.groups else []
        ready = [r.grads_ready] if r.grads_ready is not None else last
        if r.grads_ready is None and work.grad_sync_ns:
            sync = Op(r.rank, "dp", "DP", work.grad_sync_name, work.grad_sync_ns, list(last))
            r.tail.append(sync)
            ready = [sync]
            if work.grad_d2h_ns:  # optimizer offload: the gradients go down after the sync
                r.tail += _offload_bucket(r, work, 0, sync, "")
        ready_of[r.rank], offloaded_of[r.rank] = ready, list(r.offloaded)
    tied = ir.inp.tied_embedding_sync
    if tied is not None:
        first, last_rank, ns = tied
        assert first in ir.ranks and last_rank in ir.ranks, tied  # every schedule rank lowers
        both = [*ready_of[first], *ready_of[last_rank]]
        for rank in (first, last_rank):
            op = Op(rank, "dp", "ALLREDUCE", "ALLREDUCE tied embedding grads", ns, list(both))
            ir.ranks[rank].tail.append(op)
            ready_of[rank] = [op]
    for r in ir.ranks.values():
        work = ir.inp.ranks[r.rank]
        actions = ir.inp.schedule[r.rank]
        ready = [*ready_of[r.rank], *offloaded_of[r.rank]]
        if actions and actions[-1].kind == "OPT":
            if r.last_host is not None:
                ready = [*ready, r.last_host]
            stream = "cpu" if work.cpu_optimizer else "compute"
            opt = Op(r.rank, stream, "OPT", "optimizer step", work.optimizer_ns, ready,
                     work.optimizer_alloc, work.optimizer_free)  # fmt: skip
            r.tail.append(opt)
            if work.param_h2d_ns:  # ZeRO-Offload: the updated 16-bit parameters go back up
                opt = Op(r.rank, "h2d", "H2D", "H2D updated params", work.param_h2d_ns, [opt])
                r.tail.append(opt)
            if work.post_opt_ns:
                r.tail.append(Op(r.rank, "dp", "AG", work.post_opt_name, work.post_opt_ns,
                                 [opt]))  # fmt: skip
        first, rest = work.pre_gather_ns
        if (first or rest) and r.groups:
            ag0 = Op(r.rank, "dp", "AG", f"{work.post_opt_name} (first bucket)", first, [])
            ag1 = Op(r.rank, "dp", "AG", f"{work.post_opt_name} (other buckets)", rest, [ag0])
            g0 = r.groups[0]
            g0.ops[0].deps.append(ag0)
            g0.ops[:0] = [ag0, ag1]


def paging_pass(ir: StepIR) -> None:
    """A paged optimizer (bitsandbytes ``is_paged``; Dettmers et al. 2023 §3): on the rank's
    "paging" stream, the eviction of its paged optimizer states to host memory from the start
    of the step (the activations' growth pushes them out; the rank's initial memory already
    leaves them out, ``costs.workload.initial_memory``, since a forward allocates its
    activations at its start), and their prefetch back once the gradients are ready, which the
    optimizer step waits for (bitsandbytes' ``step`` calls ``prefetch_state(p)`` right before
    each ``update_step`` and synchronises: the transfer is not hidden); the prefetch allocates
    the bytes at its start. Runs after :func:`optimizer_pass`; nothing on a rank without an
    optimizer step at the end."""
    for r in ir.ranks.values():
        work = ir.inp.ranks[r.rank]
        opt = next((op for op in r.tail if op.kind == "OPT"), None)
        if not work.paged_bytes or opt is None:
            continue
        out = Op(r.rank, "paging", "PAGE_OUT", "page out optimizer states", work.page_out_ns, [])
        back = Op(r.rank, "paging", "PAGE_IN", "prefetch optimizer states", work.page_in_ns,
                  [*opt.deps, out], (("optimizer_states", work.paged_bytes),))  # fmt: skip
        opt.deps.append(back)
        at = r.tail.index(opt)
        r.tail[at:at] = [out, back]


def data_parallel_pass(ir: StepIR) -> None:
    """``torch.nn.DataParallel`` (``ir.DataParallelPlan``; torch 2.13
    torch/nn/parallel/data_parallel.py ``DataParallel.forward``): GPU 0 is rank 0, rank 1 one
    replica. Per forward, on GPU 0's "dp" stream: the inputs scattered (``scatter_kwargs``),
    the parameters broadcast (``replicate`` → ``Broadcast.apply`` → ``comm.broadcast_coalesced``),
    then every GPU's forward (``parallel_apply``); the outputs gathered onto GPU 0 once every
    forward is done and the host has issued them all (the threads joined), the loss there, and
    the output gradient scattered back (``Gather.backward``). Each backward is followed by the
    reduction of the gradients onto GPU 0 (``Broadcast.backward`` → ``ReduceAddCoalesced``),
    and GPU 0's optimizer step waits for the last one. torch's NCCL calls run on each device's
    current stream, so none of this overlaps compute: each is a step of the action's chain
    (GPU 0's action ends with its scatter or reduction). The replica row shows its side of each
    transfer and no optimizer step. Runs after ``optimizer_pass``."""
    plan = ir.inp.data_parallel
    if plan is None:
        return
    gpu0 = ir.ranks[0]
    rep_groups: list[Group] = []
    last_rep: Op | None = None
    join: Op | None = None  # what a replica's next compute waits for (broadcast or scatter)
    last_reduce: Op | None = None
    for g in gpu0.groups:
        a = g.action
        if a is None or a.kind not in COMPUTE:
            continue
        compute = [op for op in g.ops if op.stream == "compute"]
        first, mb, st = compute[0], a.microbatch, a.stage
        rep: list[Op] = []
        if a.kind == "F":
            scatter = Op(0, "dp", "SCATTER", f"scatter inputs {g.label}", plan.scatter_inputs_ns,
                         list(first.deps), microbatch=mb, stage=st)  # fmt: skip
            bcast = Op(0, "dp", "BCAST", f"broadcast params {g.label}", plan.broadcast_ns,
                       [scatter], microbatch=mb, stage=st)  # fmt: skip
            first.deps.append(bcast)
            at = g.ops.index(first)
            g.ops[at:at] = [scatter, bcast]
            rep.append(Op(1, "dp", "BCAST", f"receive params {g.label}", plan.broadcast_ns,
                          [scatter], microbatch=mb, stage=st))  # fmt: skip
            join = bcast
        for op in compute:
            deps = [rep[-1] if rep and rep[-1].stream == "compute" else join]
            if last_rep is not None and not (rep and rep[-1].stream == "compute"):
                deps.append(last_rep)
            rep.append(Op(1, "compute", op.kind, op.name, op.duration_ns, deps, op.alloc,
                          op.free, mb, st))  # fmt: skip
        last_rep = rep[-1]
        both = [g.done, last_rep]
        if a.kind == "F":
            issued = [g.host] if g.host is not None else []
            gather = Op(0, "dp", "GATHER", f"gather outputs {g.label}", plan.gather_ns,
                        both + issued, (("buffers", plan.gathered_bytes),),
                        microbatch=mb, stage=st)  # fmt: skip
            loss = Op(
                0,
                "compute",
                "LOSS",
                f"loss on gathered outputs {g.label}",
                plan.loss_ns,
                [gather],
                (("buffers", plan.loss_bytes),),
                microbatch=mb,
                stage=st,
            )
            grad = Op(0, "dp", "SCATTER", f"scatter output grads {g.label}",
                      plan.scatter_grad_ns, [loss], (),
                      (("buffers", plan.gathered_bytes + plan.loss_bytes),), mb, st)  # fmt: skip
            rep.append(Op(1, "dp", "GATHER", f"send outputs {g.label}", plan.gather_ns,
                          both + issued, microbatch=mb, stage=st))  # fmt: skip
            rep.append(Op(1, "dp", "SCATTER", f"receive output grads {g.label}",
                          plan.scatter_grad_ns, [loss], microbatch=mb, stage=st))  # fmt: skip
            g.ops += [gather, loss, grad]
            g.done = join = grad
        elif a.kind in ("B", "W"):
            red = (("gradients", plan.gpu0_grad_bytes),)
            reduce = Op(0, "dp", "REDUCE", f"reduce grads onto GPU 0 {g.label}", plan.reduce_ns,
                        both, red, red, mb, st)  # fmt: skip
            mine = (("gradients", plan.replica_grad_bytes),)
            rep.append(Op(1, "dp", "REDUCE", f"send grads {g.label}", plan.reduce_ns, both,
                          mine, mine, mb, st))  # fmt: skip
            g.ops.append(reduce)
            g.done = last_reduce = reduce
        rep_groups.append(Group(None, rep, rep[-1], label=g.label))
    if last_reduce is not None:  # the reductions run in order on GPU 0's "dp" stream
        for op in gpu0.tail:
            if op.kind == "OPT":
                op.deps.append(last_reduce)
    ir.ranks[1] = RankIR(1, rep_groups, [])
