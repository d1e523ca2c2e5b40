"""The closed-form step time the planner ranks layouts by before simulating the best in full
(:func:`closed_form_step_s`): the library's own per-chunk costs, uniform-stage pipeline closed
forms and the exposed data-parallel communication, without an event simulation."""

from __future__ import annotations

from typing import NamedTuple

from simtrain.costs import comm, offload
from simtrain.costs.chunk_time import (
    block_comm,
    chunk_duration,
    chunk_gpu_ns,
    pooled_tp_overlap,
    with_tp,
)
from simtrain.costs.comm import (
    ddp_buckets,
    dp_ns,
    hop_send_ns,
    nccl_sm_share,
)
from simtrain.costs.compute import optimizer_step_ns
from simtrain.costs.memory import StageMemory, accumulation_defers_reduction, wire_grad_bytes
from simtrain.costs.muon import rank_muon_ns
from simtrain.costs.workload import (
    deferred_reduction_ns,
    gather_copy_out_ns,
    grad_passes_ns,
    grad_reduction_op,
    grads_bucketable,
    pipelined_gather_layers,
    rank_optimizer_shard,
    tied_embedding_sync,
    zero2_every_microbatch,
    zero2_microbatch_rs_ns,
    zero3_layer_bytes,
    zero3_layer_comm_ns,
)
from simtrain.layout.step import ResolvedStep, resolve
from simtrain.sim.lowering import ChunkDurations
from simtrain.sim.lowering.sms import sm_shared_extra_ns
from simtrain.spec.scenario import Scenario


class _Rank(NamedTuple):
    forward_ns: float  # F + its TP all-reduces
    input_ns: float  # recompute + input-gradient + their TP all-reduces
    weight_ns: float  # weight-gradient matmuls

    @property
    def total(self) -> float:
        return self.forward_ns + self.input_ns + self.weight_ns


def _beside(compute_ns: float, comm_ns: float, share: float) -> float:
    """Time beyond ``compute_ns`` of compute launched with ``comm_ns`` of data-parallel
    collectives whose kernels hold ``share`` of the SMs: the compute lengthened by
    ``sim.lowering.sms.sm_shared_extra_ns``, and both done at the later end; less C. Without a
    share: max(0, A − C)."""
    return max(compute_ns + sm_shared_extra_ns(compute_ns, comm_ns, share), comm_ns) - compute_ns


def _bucketed_exposed_ns(sc: Scenario, step: ResolvedStep, op: str, grad_bytes: int,
                         last_backward_ns: float) -> float:  # fmt: skip
    """Exposed time of DDP / ZeRO-1/2 gradient buckets launched as the last backward produces
    them (``costs.comm.bucket_group_ns``: buckets of ``bucket_mb``). Bucket
    i follows slice i of k; the collective stream runs them back to back, so the sync ends at
    max(T_B + d_last, T_B/k + Σd); the buckets before the last lengthen the backward they
    overlap by their SM share (``sim.lowering.sms.sm_shared_extra_ns``)."""
    k, cap, last = ddp_buckets(sc.parallelism.bucket_mb, grad_bytes)
    full = dp_ns(sc, step, op, cap) if k > 1 else 0
    d_last = dp_ns(sc, step, op, last)
    total = (k - 1) * full + d_last
    extra = sm_shared_extra_ns(last_backward_ns, total - d_last, nccl_sm_share(sc))
    return max(extra + d_last, last_backward_ns / k + total - last_backward_ns)


def closed_form_step_s(sc: Scenario, stages: tuple[StageMemory, ...]) -> float:
    """Fast step-time estimate from the library's own costs, no event simulation.

    - Per micro-batch and rank: ``costs.chunk_costs`` of each of its chunks (forward,
      recompute, input and weight gradients) plus Megatron's TP all-reduces
      (``costs.comm.tp_forward_block``'s exposed part after F, ``costs.chunk_time.tp_recompute_block``'s
      with a recompute, ``costs.comm.tp_backward_block_ns`` after B), as ``costs.workload``
      lowers them (with a tp_comm_overlap that is not paired GEMM by GEMM, the longer of an
      action's compute and its collectives, as ``passes.tp_pass``).
    - Pipeline (uniform-stage closed forms; Narayanan et al. 2021 Eq. 1 and §2.2.2; formulas.md
      §3): ``m·T_max + (p−1)·T_avg/v`` for GPipe, 1F1B and interleaved (bubble (p−1)/(v·m+p−1)
      of the total); ZB-H1 ``m·T_max + (p−1)·(T_F + T_I − T_W)`` (Qi et al. 2024, "Zero Bubble
      Pipeline Parallelism", §3: the 1F1B bubble less the deferred weight gradients); ZB-V and
      DualPipeV half that (their executed orders with two chunks per rank); asynchronous
      PipeDream none (its steady state); plus the
      p2p hops of filling and draining the pipeline (``costs.comm.hop_send_ns``, each hop
      over the link its placement gives).
    - Data parallelism on stage 0 (whose last backward ends the step): DDP / ZeRO-1/2 buckets
      overlapped with the last backward (:func:`_bucketed_exposed_ns`), ZeRO-1/2's parameter
      all-gather after the step, ZeRO-3's per-layer gathers and reduce-scatters beyond the
      compute they hide behind (``costs.comm.dp_ns``), that compute lengthened by the SMs their
      NCCL kernels hold (:func:`_beside`, ``sim.lowering.sms``), FSDP2's copy-out of each
      gather on the compute stream; the tied word embedding's gradient all-reduce between the first and
      last ranks (``costs.workload.tied_embedding_sync``, on stage 0's path as the DP terms:
      where another rank ends the step, 0-7 ms too slow); the optimizer step
      (``costs.optimizer_step_ns``).
    """
    step = resolve(sc)
    ranks, first_chunk = _rank_costs(sc, step)
    if sc.parallelism.zero_stage == 3 and sc.parallelism.dp_cp > 1:
        ranks = [_with_copy_out(sc, step, stages, r, ranks[r]) for r in range(step.pp)]
    step_ns = _pipeline_ns(sc, step, ranks)
    t = sc.training
    s0 = stages[0]
    shard = rank_optimizer_shard(sc, step, 0, s0.trainable)  # as the simulated step's
    opt_ns = optimizer_step_ns(shard, t, sc.hardware, sc.cluster.gpus_per_node)
    opt_ns += grad_passes_ns(sc, step, s0.trainable, shard)
    # Muon's Newton-Schulz iterations, each rank's own: the slowest one's (0 without Muon)
    opt_ns += max(rank_muon_ns(sc, step, r) for r in range(step.pp))
    dp_exposed = _dp_exposed_ns(sc, step, s0, ranks[0], first_chunk)
    offload_ns = _offload_exposed_ns(sc, step, s0, ranks[0], step_ns, shard)
    tied = tied_embedding_sync(sc, step)  # between the reduction and the optimizer step
    tied_ns = tied[2] if tied else 0
    return (step_ns + dp_exposed + tied_ns + opt_ns + offload_ns) / 1e9


def _with_copy_out(sc: Scenario, step: ResolvedStep, stages: tuple[StageMemory, ...], r: int,
                   costs: _Rank) -> _Rank:  # fmt: skip
    """FSDP2's copy-out of each layer's gathered parameters before its forward and its backward
    (``costs.workload.gather_copy_out_ns``, as ``passes.zero3_pass`` lowers it), on rank r: the
    rank's parameters over its layers, as the simulation spreads them (``stages``: the planner
    checks the first and the last stage; a rank between them gets the smaller of their
    per-layer figures, the one nearer a block without the embedding or the head)."""
    if r == 0 or r == stages[-1].stage:
        layer_bytes = zero3_layer_bytes(step, stages[0] if r == 0 else stages[-1])
    else:
        layer_bytes = min(zero3_layer_bytes(step, s) for s in stages)
    copy = max(step.rank_layers(r), 1) * gather_copy_out_ns(sc, layer_bytes)
    return _Rank(costs.forward_ns + copy, costs.input_ns + (copy if costs.input_ns else 0),
                 costs.weight_ns)  # fmt: skip


def _offload_exposed_ns(sc: Scenario, step: ResolvedStep, s0: StageMemory, r0: _Rank,
                        step_ns: float, shard: int) -> float:  # fmt: skip
    """CPU offload's PCIe copies not hidden (``costs.offload``; lowered by
    ``passes.offload_pass``), each PCIe direction a lane of its own: the gradient copies down
    beyond the backward they overlap (the boundary copies under the last backward, or, ZeRO-3,
    every layer's under every backward), at least the last one; the copies up (parameter
    fetches, accumulators) beyond the step's compute (``step_ns``); then the updated 16-bit
    partition's copy up after the CPU step; with activation offload, every backward's wait for
    its checkpoints; with Megatron-Core's layer offload, each forward's and backward's copy
    beyond its compute."""
    t, p, hw, prec = sc.training, sc.parallelism, sc.hardware, step.precision
    m = step.microbatches
    backward = r0.input_ns + r0.weight_ns
    acc = offload.pcie_ns(shard * prec.grad, hw) if t.offload.optimizer else 0
    down_ns = up_ns = 0.0
    if t.offload.parameters:
        passes = 3 if t.recompute == "full" else 2  # forward, backward (and recompute)
        up_ns += m * passes * offload.pcie_ns(s0.params * prec.param / max(p.dp_cp, 1), hw)
    if t.offload.optimizer and offload.offload_per_layer(sc):
        fp32 = offload.pcie_ns(shard * offload.FP32_GRAD_BYTES, hw)
        last = (acc + fp32) / max(step.rank_layers(0), 1)
        down_ns = max(m * acc + fp32 - m * backward, last)
        up_ns += m * acc
    elif t.offload.optimizer:
        buckets = len(comm.buckets(p.bucket_mb, s0.trainable * prec.grad))
        down = offload.pcie_ns(offload.boundary_grad_bytes(shard, prec.grad, m), hw)
        down_ns = max(down / buckets, down - backward)
        up_ns += (m - 1) * acc if offload.accumulates_through_host(sc) else 0
    out = max(down_ns, up_ns - step_ns, 0.0)
    copy = sum(offload.pcie_ns(b, hw) for _, b in s0.offloaded_activation_bytes)
    if t.offload.activations:  # each backward waits for its checkpoints to come back up
        out += m * copy
    if t.offload.activation_layers:  # Megatron-Core: each copy beside its forward / backward
        out += m * (max(copy - r0.forward_ns, 0.0) + max(copy - backward, 0.0))
    if t.offload.optimizer and offload.updated_params_cross_pcie(sc):
        out += offload.pcie_ns(shard * prec.param, hw)
    return out


def _rank_costs(sc: Scenario, step: ResolvedStep) -> tuple[list[_Rank], _Rank]:
    """Per micro-batch: the costs of each pipeline rank (the sum over the chunks it holds) and
    those of stage 0's first chunk, from the simulation's own per-chunk durations
    (``costs.chunk_time.chunk_duration``) with its TP overlap (:func:`with_tp`) and host bound."""
    split = step.traits.split_backward  # I and W apart: the I action's collectives
    pooled = pooled_tp_overlap(sc, step)
    block = block_comm(sc, step)
    cache: dict[tuple, _Rank] = {}

    def chunk(k: int) -> tuple:
        b = step.chunks[k]
        key = (b.layers, b.embedding, b.head, b.tail, b.loss_apart,
               *sc.model.layer_signature(b.lo, b.lo + b.layers))  # fmt: skip
        if key not in cache:
            cache[key] = _chunk_rank(chunk_duration(sc, step, k, block), pooled, split)
        return key

    rank_cache: dict[tuple, _Rank] = {}

    def rank(r: int) -> _Rank:
        keys = tuple(chunk(k) for k in step.rank_chunk_ids(r))
        if keys not in rank_cache:
            parts = [cache[k] for k in keys]
            rank_cache[keys] = _Rank(*(sum(x[i] for x in parts) for i in range(3)))
        return rank_cache[keys]

    ranks = [rank(r) for r in range(step.pp)]
    return ranks, cache[chunk(0)]


def _chunk_rank(d: ChunkDurations, pooled: bool, split: bool) -> _Rank:
    """One chunk's (forward, input-gradient, weight-gradient) time for one micro-batch: its
    compute with the TP it exposes (or, pooled, the longer of the two: ``passes.tp_pass``), its
    all-to-alls, each action no shorter than the host's time to issue it (the simulation's host
    stream; a split backward's host time shared between I and W as ``ChunkDurations.host_ns``
    shares it). Not here: nanotron's per-tensor gradient adds."""
    forward, backward = chunk_gpu_ns(d, pooled)
    f = max(forward, d.host_ns("F"))
    if split:  # the I action's own collectives, W apart
        grads = d.recompute_ns + d.input_grad_ns
        i = (with_tp(pooled, grads, d.tp_input_grad_ns + d.tp_recompute_ns) + d.ep_backward_ns
             + d.ep_recompute_ns)  # fmt: skip
        return _Rank(f, max(i, d.host_ns("I")), max(d.weight_grad_ns, d.host_ns("W")))
    b = max(backward, d.host_ns("B"))
    return _Rank(f, b - d.weight_grad_ns, d.weight_grad_ns)


def _pipeline_ns(sc: Scenario, step: ResolvedStep, ranks: list[_Rank]) -> float:
    """The pipelined micro-batches: ``m·T_max`` plus the schedule's bubble and the p2p hops of
    filling and draining the pipeline (:func:`closed_form_step_s`)."""
    pp = step.pp
    # DualPipe: each micro-batch runs on one of a rank's two stage copies (half each way)
    t_max = max(r.total for r in ranks) / step.stage_copies
    if pp == 1 or step.traits.asynchronous:
        # PipeDream / PipeDream-2BW report their steady state: the busiest stage, no flush
        bubble_ns = 0.0
    else:
        t_avg = sum(r.total for r in ranks) / pp
        f_avg, i_avg, w_avg = (sum(r[i] for r in ranks) / pp for i in range(3))
        if step.schedule_name == "zb_h1":
            bubble_ns = (pp - 1) * max(f_avg + i_avg - w_avg, 0.0)
        elif step.traits.bidirectional:
            # DualPipe's executed order (each F&B run as F then B, tests/test_dualpipe.py):
            # (p/2-1)(2B-3W) per rank with a stage's B = I + W, half a rank's two chunks;
            # exact at uniform stages
            bubble_ns = (pp // 2 - 1) * max(2 * i_avg - w_avg, 0.0) / 2
        elif step.traits.placement == "v":
            # ZB-V and DualPipeV (executed orders, tests/test_schedules.py): ZB-H1's F + I - W
            # over a rank's two chunks, (p-1)(F+I-W)/2; exact at F = I = W (and for DualPipeV
            # at I = 2W), an estimate otherwise
            bubble_ns = (pp - 1) * max(f_avg + i_avg - w_avg, 0.0) / 2
        elif step.schedule_name == "naive":
            bubble_ns = (pp - 1) * step.microbatches * t_avg
        else:
            bubble_ns = (pp - 1) * t_avg / step.v
        # fill and drain: each hop between consecutive chunks once each way (DualPipe: its
        # two pipelines' at once, one pipeline's)
        hops = sum(
            hop_send_ns(sc, step, k, k + 1)
            for k in range(step.pipeline(0)[-1])
            if step.chunk_rank(k) != step.chunk_rank(k + 1)  # the turn of a V is local
        )
        bubble_ns += 2 * hops
    return step.microbatches * t_max + bubble_ns


def _dp_exposed_ns(sc: Scenario, step: ResolvedStep, s0: StageMemory, r0: _Rank,
                   first_chunk: _Rank) -> float:  # fmt: skip
    """Stage 0's data-parallel communication not hidden behind its compute (0 without DP):
    ZeRO-3's per-layer gathers and reduce-scatters beyond rank 0's compute, else the gradient
    sync (bucketed behind the last backward when the schedule ends on one) and ZeRO-1/2's
    parameter all-gather."""
    t, p = sc.training, sc.parallelism
    prec = step.precision
    share = nccl_sm_share(sc)  # of the SMs the collectives' kernels hold beside the compute
    grad_bytes = s0.trainable * wire_grad_bytes(sc, step)  # in the reduction's dtype
    if not (p.dp_cp > 1 and grad_bytes):  # gradients are reduced over dp x cp
        return 0.0
    deferred = deferred_reduction_ns(sc, step, s0.trainable)  # after the last backward
    if p.zero_stage == 3:
        layers_here = max(step.rank_layers(0), 1)
        gather, reduce_scatter = zero3_layer_comm_ns(sc, step, s0, layers_here)
        # a full recompute's gather serves its backward too under FSDP (runtime
        # fsdp_recompute_reuses_gather, passes.zero3_pass)
        full = t.recompute == "full"
        reuses = full and sc.runtime.fsdp_recompute_reuses_gather
        regathers = full and not reuses
        gathers = 3 if regathers else 2
        if deferred:  # gathered again only after a forward (workload.pipelined_gather_layers)
            n = pipelined_gather_layers(step, 0, regathers)
            gathers = n / (step.microbatches * layers_here)
        gathered = layers_here * gathers * gather
        if accumulation_defers_reduction(sc, step):
            # the reduce-scatters in the last micro-batch's backward only (workload._zero3_chunks):
            # each phase's gathers beside its own compute (the forward's one a layer, the
            # backward's the rest), the reduce-scatters beside the last backward (no pipeline:
            # nothing ``deferred``)
            m, fwd = step.microbatches, layers_here * gather
            back = r0.input_ns + r0.weight_ns
            forward = _beside(r0.forward_ns, fwd, share)
            if reuses:
                # FSDP: the backward's gathers come with the recompute, which replays the
                # forward (passes.zero3_pass), the reduce-scatters with the backward after it
                backward = _beside(r0.forward_ns, gathered - fwd, share)
                last = backward + _beside(back - r0.forward_ns, layers_here * reduce_scatter, share)
            else:
                backward = _beside(back, gathered - fwd, share)
                last = _beside(back, gathered - fwd + layers_here * reduce_scatter, share)
            return m * forward + (m - 1) * backward + last
        comm = gathered + (0 if deferred else layers_here * reduce_scatter)
        return step.microbatches * _beside(r0.total, comm, share) + deferred
    if deferred:
        return deferred + dp_ns(sc, step, "all_gather", s0.params * prec.param)
    if zero2_every_microbatch(sc):  # every backward's reduce-scatter (workload._zero2_chunks)
        m = step.microbatches
        # a micro-batch's backward reduces the gradients of the chunks it passes through: all
        # of the rank's, or under DualPipe's two directions half
        rs = zero2_microbatch_rs_ns(sc, step, s0.trainable) / step.stage_copies
        if not sc.runtime.overlap_grad_reduce:  # in the backward hooks: every piece waits
            exposed = m * rs
        else:  # beside the compute that follows, the last layer's piece after the last backward
            compute = m * r0.total / step.stage_copies  # (a rank's r0.total spans its copies)
            exposed = _beside(compute, m * rs, share) + rs / max(step.rank_layers(0), 1)
        return exposed + dp_ns(sc, step, "all_gather", s0.params * prec.param)
    # stage 0's first chunk: its backward ends the step
    last_backward = first_chunk.input_ns + first_chunk.weight_ns
    # as the simulation reduces (workload.dense_rank_work)
    op = grad_reduction_op(sc)
    if grads_bucketable(sc, step, 0):
        dp_exposed = _bucketed_exposed_ns(sc, step, op, grad_bytes, last_backward)
    else:
        dp_exposed = dp_ns(sc, step, op, grad_bytes)
    if p.zero_stage in (1, 2):
        dp_exposed += dp_ns(sc, step, "all_gather", s0.params * prec.param)
    return dp_exposed
