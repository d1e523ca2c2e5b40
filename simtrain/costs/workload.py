"""The workload handed to lowering: per-chunk durations (``costs.chunk_time``), per-rank work,
memory deltas and the links transfers share, from the resolved step, the cost model and the
memory model.

Nothing here knows the engine's internals: it fills ``sim.lowering``'s input dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import replace

from simtrain.costs import comm, offload
from simtrain.costs.chunk_time import (
    accumulation_times,
    chunk_durations,
    pipeline_hop,
    pooled_tp_overlap,
)
from simtrain.costs.compute import (
    device_copy_ns,
    memory_bound_ns,
    optimizer_shard,
    optimizer_step_ns,
)
from simtrain.costs.cp import exchange_labels
from simtrain.costs.data_parallel import data_parallel_plan, is_data_parallel
from simtrain.costs.group_comm import pair_all_reduce_ns
from simtrain.costs.memory import (
    MemoryReport,
    StageMemory,
    accumulation_defers_reduction,
    gathered_param_bytes,
    grad_buffer_elem_bytes,
    pipeline_defers_reduction,
    wire_grad_bytes,
)
from simtrain.costs.muon import rank_muon_ns
from simtrain.costs.params import (
    EXPERT_PREFIX,
    base_trainable,
    moe_param_tensors,
    scenario_chunk_groups,
)
from simtrain.layout.step import ResolvedStep
from simtrain.schedules.analysis import sharded_at_start
from simtrain.sim.lowering import ChunkDurations, LoweringInput, NicPlan, RankWork
from simtrain.spec.scenario import Scenario, trained_mtp_modules


def zero3_layer_comm_ns(sc: Scenario, step: ResolvedStep, sm: StageMemory,
                        layers: int) -> tuple[int, int]:  # fmt: skip
    """(all-gather, reduce-scatter) time of one ZeRO-3 layer of the rank ``sm`` over dp x cp:
    the layer's gathered parameters (:func:`zero3_layer_bytes`), and its share of the rank's
    ``layers`` gradients in the reduction's dtype (``memory.wire_grad_bytes``), through each
    GPU's own NIC under ``runtime.zero3_per_gpu_nic``. The simulation's and the planner's."""
    flat = sc.runtime.zero3_per_gpu_nic
    rs_bytes = sm.trainable * wire_grad_bytes(sc, step) // layers
    # hybrid sharding all-reducing at the accumulation boundary only (MiCS): the layer's
    # replica all-reduce, once a step, spread over the step's m reduce-scatters of it
    deferred = accumulation_defers_reduction(sc, step)
    share = 1 / step.microbatches if sc.runtime.replica_reduce_at_boundary and not deferred else 1.0
    # (deferred: the whole, reduced with the replicas' all-reduce in the last micro-batch's
    # backward only: ChunkDurations.reduce_scatter_last_backward_only)
    rs = comm.dp_ns(sc, step, "reduce_scatter", rs_bytes, flat, share)
    return comm.dp_ns(sc, step, "all_gather", zero3_layer_bytes(step, sm), flat), rs


def grad_reduction_op(sc: Scenario) -> str:
    """The gradients' data-parallel collective: ZeRO-1/2's reduce-scatter of each rank's shard
    where the runtime reduces so (``runtime.zero_grad_reduction``: DeepSpeed
    stage_1_and_2.py, Megatron's distributed optimizer), else an all-reduce (DDP, ZeRO-0, and
    nanotron's ZeRO-1, optim/zero.py). ZeRO-3 reduce-scatters per layer instead
    (:func:`zero3_layer_comm_ns`), not through this bucketed reduction."""
    zero12 = sc.parallelism.zero_stage in (1, 2)
    scatter = zero12 and sc.runtime.zero_grad_reduction == "reduce_scatter"
    return "reduce_scatter" if scatter else "all_reduce"


def grads_bucketable(sc: Scenario, step: ResolvedStep, rank: int) -> bool:
    """Whether the rank's gradient buckets are reduced beside its last backward: its action
    list ends on a backward (B or W) before the optimizer step, it steps once a step (not
    every micro-batch), and the runtime overlaps the reduction (``overlap_grad_reduce``)."""
    return (step.schedule[rank][-2].kind in ("B", "W") and sc.runtime.overlap_grad_reduce
            and not step.traits.steps_every_microbatch)  # fmt: skip


def zero2_every_microbatch(sc: Scenario) -> bool:
    """ZeRO-2 keeps only its shard of the gradients, so each micro-batch's gradients are
    reduce-scattered in its own backward, not once at the last (DeepSpeed
    runtime/zero/stage_1_and_2.py reduce_ready_partitions_and_remove_grads: "if
    self.partition_gradients or self.is_gradient_accumulation_boundary()", edaa7221 l.1767-1769;
    ZeRO-1 reduces at the boundary only; FSDP's SHARD_GRAD_OP likewise reduces every backward).
    Dense models over a reduce-scattering runtime (MoE's expert-data-parallel buckets and
    nanotron's all-reduce keep the bucketed reduction at the end), without CPU offload (whose
    buckets go down to the host every micro-batch: ``costs.offload``)."""
    p = sc.parallelism
    return (p.zero_stage == 2 and p.dp_cp > 1 and p.ep == 1 and p.dp_mode == "ddp"
            and sc.runtime.zero_grad_reduction == "reduce_scatter"
            and not sc.training.offload.optimizer
            and not pipeline_defers_reduction(sc, p.pp))  # fmt: skip


def deferred_reduction_ns(sc: Scenario, step: ResolvedStep, trainable: int) -> int:
    """Where the pipeline defers the gradient reduction (``memory.pipeline_defers_reduction``:
    PyTorch pipelining over FSDP2), the reduce-scatter of ``trainable`` whole gradients in the
    reduction's dtype after their last backward (torch 2.13.0 pipelining/stage.py
    ``perform_reduce_grad``: every FSDP parameter group of the stage's ``post_backward`` at
    once, none overlapped with that backward; one per chunk, :func:`_deferred_chunks`); 0
    elsewhere."""
    if not pipeline_defers_reduction(sc, step.pp):
        return 0
    return comm.dp_ns(sc, step, "reduce_scatter", trainable * wire_grad_bytes(sc, step))


def pipelined_gather_layers(step: ResolvedStep, rank: int, recompute: bool = False) -> int:
    """Layer gathers of a ZeRO-3 rank under PyTorch pipelining over FSDP2
    (``schedules.analysis.sharded_at_start``, the simulation's rule): the decoder layers of each of the
    rank's forwards and backwards that finds its chunk sharded, twice for such a backward that
    replays its forward and gathers again after the replay (``recompute``: a full recompute
    without runtime ``fsdp_recompute_reuses_gather``). 1F1B: m + 1 per layer, against 2m
    elsewhere."""
    acts = [a for a in step.schedule[rank] if a.kind in ("F", "B", "I", "W")]
    sharded = sharded_at_start([(a.stage, a.kind) for a in acts])
    return sum(step.chunks[a.stage].layers * (2 if recompute and a.kind in ("B", "I") else 1)
               for a, at_start in zip(acts, sharded, strict=True)
               if at_start and a.kind != "W")  # fmt: skip


def chunk_param_count(sc: Scenario, stage: int, step: ResolvedStep) -> int:
    """Trainable parameters one GPU holds of chunk ``stage`` (``params.scenario_chunk_groups``)."""
    groups = scenario_chunk_groups(sc, step.chunks[stage])
    return sum(n * sum(x.numel for x in ts if x.trainable) for n, ts in groups)


def _deferred_chunks(sc: Scenario, step: ResolvedStep, mem: MemoryReport,
                     chunks: dict[int, ChunkDurations]) -> dict[int, ChunkDurations]:  # fmt: skip
    """Pipelining over FSDP2 (:func:`deferred_reduction_ns`): each chunk's REDUCE_GRAD, its
    share of the rank's trainable gradients (by the chunks' parameters:
    :func:`chunk_param_count`), reduce-scattered after its last backward
    (``passes.final_reduce_pass``)."""
    out = dict(chunks)
    for rank in range(step.pp):
        ids = step.rank_chunk_ids(rank)
        counts = {k: chunk_param_count(sc, k, step) for k in ids}
        total = sum(counts.values()) or 1
        trainable = mem.stages[rank].trainable
        for k in ids:
            share = math.ceil(trainable * counts[k] / total)
            out[k] = replace(chunks[k], final_reduce_ns=deferred_reduction_ns(sc, step, share))
    return out


def zero2_microbatch_rs_ns(sc: Scenario, step: ResolvedStep, trainable: int) -> int:
    """One micro-batch's ZeRO-2 reduce-scatter of a rank's ``trainable`` gradients in the
    reduction's dtype, in the runtime's buckets (``parallelism.bucket_mb``, as ZeRO-1's once a
    step: ``comm.bucket_group_ns``; DeepSpeed's reduce_bucket_size)."""
    grad_bytes = trainable * wire_grad_bytes(sc, step)
    return sum(comm.bucket_group_ns(sc, step, "reduce_scatter", grad_bytes))


def _zero2_chunks(sc: Scenario, step: ResolvedStep, mem: MemoryReport,
                  chunks: dict[int, ChunkDurations]) -> dict[int, ChunkDurations]:  # fmt: skip
    """ZeRO-2 (:func:`zero2_every_microbatch`): every backward reduce-scatters the rank's
    gradients (:func:`zero2_microbatch_rs_ns`, spread over its layers: one piece after each
    layer's backward slice on the dp stream, as ZeRO-3's, ``passes.zero3_pass``); where the
    runtime does not overlap the reduction (``overlap_grad_reduce`` false: DeepSpeed without
    overlap_comm reduces inside the backward hooks) the next slice waits for each piece."""
    out = dict(chunks)
    for stage, ch in chunks.items():
        rank = step.chunk_rank(stage)
        rs = zero2_microbatch_rs_ns(sc, step, mem.stages[rank].trainable)
        out[stage] = replace(ch, reduce_scatter_ns_per_layer=math.ceil(rs / _rank_layers(step, rank)),
                             reduce_scatter_blocking=not sc.runtime.overlap_grad_reduce)  # fmt: skip
    return out


def _rank_layers(step: ResolvedStep, rank: int) -> int:
    """The decoder layers over which a rank's per-layer ZeRO traffic is spread (at least 1: an
    embedding- or head-only rank's one slice)."""
    return max(step.rank_layers(rank), 1)


def _zero3_chunks(sc: Scenario, step: ResolvedStep, mem: MemoryReport,
                  chunks: dict[int, ChunkDurations]) -> dict[int, ChunkDurations]:  # fmt: skip
    """ZeRO-3: each layer's parameters all-gathered before its compute, its gradients
    reduce-scattered after its backward (Rajbhandari et al. 2020 §5.3; FSDP)."""
    out = dict(chunks)
    for stage, ch in chunks.items():
        rank = step.chunk_rank(stage)
        sm = mem.stages[rank]
        gather, reduce_scatter = zero3_layer_comm_ns(sc, step, sm, _rank_layers(step, rank))
        deferred = pipeline_defers_reduction(sc, step.pp)  # _deferred_chunks reduces them
        out[stage] = replace(
            ch,
            gather_ns_per_layer=gather,
            reduce_scatter_ns_per_layer=0 if deferred else reduce_scatter,
            reduce_scatter_last_backward_only=accumulation_defers_reduction(sc, step),
            unsharded_after_backward=deferred,
            gather_copy_ns_per_layer=gather_copy_out_ns(sc, zero3_layer_bytes(step, sm)),
        )
    return out


def zero3_layer_bytes(step: ResolvedStep, sm: StageMemory) -> int:
    """The 16-bit parameter bytes a ZeRO-3 rank gathers per layer: the rank's parameters (its
    embedding or head included) over its decoder layers."""
    return sm.params * step.precision.param // max(step.rank_layers(sm.stage), 1)


def gather_copy_out_ns(sc: Scenario, layer_param_bytes: int) -> int:
    """FSDP2's copy of one layer's gathered 16-bit parameters (``layer_param_bytes``) into the
    unsharded parameters, on the compute stream (runtime ``zero3_gather_copy_out``): a read and a
    write at the memory-bound rate; 0 when the runtime gathers in place."""
    if not sc.runtime.zero3_gather_copy_out:
        return 0
    return math.ceil(device_copy_ns(layer_param_bytes, sc.hardware))


def _accumulation_chunks(sc: Scenario, step: ResolvedStep, mem: MemoryReport,
                         chunks: dict[int, ChunkDurations]) -> dict[int, ChunkDurations]:  # fmt: skip
    """16-bit gradients freed after every micro-batch (nanotron FP32GradientAccumulator.backward,
    optim/gradient_accumulator.py l.206-226 at 2411b022: after ``loss.backward()`` each
    parameter's bf16 ``.grad`` is added into its fp32 buffer, then set to None): each chunk's
    backward is followed by that add, which reads the 16-bit gradient and reads and writes the
    fp32 one and holds the rank's 16-bit gradients meanwhile (``costs.memory``'s third moment;
    only a rank with one chunk frees them, ``StageMemory.freed_gradient_bytes``), its GPU and
    host times from ``costs.chunk_time.accumulation_times`` (the host's on the backward's host
    op)."""
    out = dict(chunks)
    for stage, ch in chunks.items():
        rank = step.chunk_rank(stage)
        sm = mem.stages[rank]
        if not sm.freed_gradient_bytes:
            continue
        gpu, host = accumulation_times(sc, step, rank, sm.trainable)  # (the rank's one chunk)
        out[stage] = replace(ch, accum_bytes=sm.freed_gradient_bytes, accum_ns=gpu,
                             host_accum_ns=host)  # fmt: skip
    return out


def expert_params(sc: Scenario, step: ResolvedStep, rank: int) -> int:
    """Routed-expert parameters one GPU of pipeline rank ``rank`` holds: E/ep experts, split
    over the expert-TP size, in each of its MoE blocks (costs.params.moe_param_tensors)."""
    m, p = sc.model, sc.parallelism
    if not m.is_moe:
        return 0
    per_layer = sum(x.numel for x in moe_param_tensors(m, p.tp, p.ep, True, p.etp)
                    if x.name.startswith(EXPERT_PREFIX))  # fmt: skip
    mine = step.rank_chunks(rank)
    return per_layer * sum(c.layers - m.dense_layers_in(c.lo, c.hi) for c in mine)


def rank_work(sc: Scenario, step: ResolvedStep, rank: int, params: int,
              trainable: int) -> RankWork:  # fmt: skip
    """:func:`dense_rank_work`; with expert parallelism, the routed experts' gradients are
    reduced (and, under ZeRO-1/2, their updated shards gathered) over the expert-data-parallel
    group of ParallelSpec.expert_dp ranks instead (Megatron-Core DDP and distributed optimizer: expert
    parameters in buckets of their own, reduced over ``expert_data_parallel_group``), and the
    optimizer updates their 1/expert-dp shard."""
    p = sc.parallelism
    exp = expert_params(sc, step, rank) if p.ep > 1 else 0
    shard = rank_optimizer_shard(sc, step, rank, trainable)
    if not exp:
        work = dense_rank_work(sc, step, rank, params, trainable, shard)
    else:
        work = _expert_rank_work(sc, step, rank, params, trainable, exp, shard)
    passes = grad_passes_ns(sc, step, trainable, shard) + rank_muon_ns(sc, step, rank)
    if passes:
        work = replace(work, optimizer_ns=work.optimizer_ns + passes)
    return offload_work(sc, step, rank, work, trainable, shard)


def rank_optimizer_shard(sc: Scenario, step: ResolvedStep, rank: int, trainable: int) -> int:
    """Trainable parameters pipeline rank ``rank``'s GPU updates: ``optimizer_shard`` of the
    dense ones (ZeRO-1/2/3 over dp x cp); with expert parallelism its routed experts' over the
    expert-dp ranks that hold the same experts, as ``costs.memory`` shards their states."""
    p = sc.parallelism
    exp = expert_params(sc, step, rank) if p.ep > 1 else 0
    edp = p.expert_dp if p.zero_stage >= 1 else 1
    return optimizer_shard(trainable - exp, p) + exp // edp


def grad_passes_ns(sc: Scenario, step: ResolvedStep, trainable: int, shard: int) -> int:
    """The runtime's memory-bound passes over the gradients besides the optimizer's update
    (``RuntimeProfile.zero_grad_buffer``, ``check_nan_in_grad``, ``scale_grads_before_reduce``,
    ``clip_grad_norm``): one access per element each (the scale two, with dp x cp > 1 or, under
    ``scale_grads_at_dp1``, always) of the rank's ``trainable`` gradients in the gradient buffer's dtype
    (``memory.grad_buffer_elem_bytes``), and the
    norm of its optimizer ``shard``'s fp32 main gradients (the buffer's dtype without master
    weights) and the copies of :func:`master_copy_bytes_per_param`, at the memory-bound rate;
    counted with the optimizer step (the zeroing opens the next step, the rest precede the
    reduction and the update on the compute stream). None with an offloaded optimizer, whose
    step runs on the host (costs.offload: DeepSpeed's CPU-Adam path; not modelled: a GPU-side
    pass beside a host step)."""
    rt, prec = sc.runtime, step.precision
    if sc.training.offload.optimizer:
        return 0
    scale = rt.scale_grads_before_reduce and (sc.parallelism.dp_cp > 1 or rt.scale_grads_at_dp1)
    full = rt.zero_grad_buffer + rt.check_nan_in_grad + 2 * scale
    copies = master_copy_bytes_per_param(sc, step)
    if not full and not rt.clip_grad_norm and not copies:
        return 0
    elem = grad_buffer_elem_bytes(sc, step)
    # the norm reads the optimizer's main gradients: fp32 under master weights (Megatron's
    # mixed-precision optimizers keep fp32 main grads: a view of an fp32 buffer, else a copy)
    main = 4 if prec.full_master else elem
    n_bytes = full * trainable * elem + (rt.clip_grad_norm * main + copies) * shard
    return math.ceil(memory_bound_ns(n_bytes, sc.hardware))


def master_copy_bytes_per_param(sc: Scenario, step: ResolvedStep) -> int:
    """Bytes per optimizer-shard parameter of Megatron's copies outside the fused update
    (``RuntimeProfile.master_copies``; Megatron-LM e8fb052f8 megatron/optimizer/optimizer.py
    ``Float16OptimizerWithFloat16Params.step``: _copy_model_grads_to_main_grads,
    _unscale_main_grads_and_check_for_nan, _copy_main_params_to_model_params; Megatron-Core
    d98e8a64 distrib_optimizer.py l.2756-2890): ``main_grad.float()`` from a 16-bit gradient
    buffer, 2 + 4 B (a view of an fp32 one: 0); the update then reads those fp32 main grads
    where :func:`costs.compute.optimizer_bytes_per_param` charges the precision's gradient
    bytes: 4 - 2 B more for a 16-bit gradient; the unscale under fp16's loss scaling, 4 + 4 B;
    the master weights' read for the 16-bit copy, 4 B. Without a whole fp32 master (none, or
    kept as remainders: Apex DistributedFusedAdam's or TE FusedAdam's fused kernel steps from
    the gradient buffer and writes the weights itself) only the wider read of an fp32 gradient
    buffer, 4 - 2 B."""
    prec = step.precision
    if not sc.runtime.master_copies:
        return 0
    elem = grad_buffer_elem_bytes(sc, step)
    if not prec.full_master:
        # the step reads the gradient buffer itself: an fp32 one's 4 B where
        # optimizer_bytes_per_param charged a 16-bit gradient
        return max(0, elem - prec.optimizer_grad_read)
    grad_copy = elem + 4 if elem < 4 else 0
    adam_read = max(0, 4 - prec.optimizer_grad_read)
    unscale = 8 if prec.compute_dtype == "fp16" else 0
    return grad_copy + adam_read + unscale + prec.master


def _expert_rank_work(sc: Scenario, step: ResolvedStep, rank: int, params: int, trainable: int,
                      exp: int, shard: int) -> RankWork:  # fmt: skip
    """:func:`rank_work` with ``exp`` routed-expert parameters on the rank."""
    p = sc.parallelism
    work = dense_rank_work(sc, step, rank, params - exp, trainable - exp, shard)
    edp = p.expert_dp  # comm.edp_ns's group
    z = p.zero_stage
    grad = exp * wire_grad_bytes(sc, step)
    if edp == 1 or p.dp_mode == "naive" or z == 3:
        return work
    op = grad_reduction_op(sc)
    if z in (1, 2):
        gathered = gathered_param_bytes(sc, step, rank, exp, experts=True)
        ag = comm.edp_ns(sc, step, "all_gather", gathered)
        if work.pre_gather_ns != (0, 0):
            first, rest = work.pre_gather_ns
            work = replace(work, pre_gather_ns=(first, rest + ag))
        else:
            work = replace(work, post_opt_ns=work.post_opt_ns + ag)
    if work.bucket_ns:
        return replace(work, bucket_ns=work.bucket_ns
                       + comm.expert_bucket_group_ns(sc, step, op, grad))  # fmt: skip
    return replace(work, grad_sync_ns=work.grad_sync_ns + comm.edp_ns(sc, step, op, grad),
                   grad_sync_name=work.grad_sync_name or "EDP grads")  # fmt: skip


def offload_work(sc: Scenario, step: ResolvedStep, rank: int, work: RankWork, trainable: int,
                 shard: int) -> RankWork:  # fmt: skip
    """Optimizer offload on the rank (``costs.offload``): the CPU step, the updated 16-bit
    partition of ``shard`` parameters back up, and (outside ZeRO-3's per-layer copies) the
    gradient copies: at the boundary one per bucket, in proportion to the buckets' sizes (the
    bucket reductions', or DeepSpeed's ``reduce_bucket_size`` buckets when nothing is reduced),
    and the 16-bit round trip of every earlier backward, each action its chunk's 1/v share."""
    t, p, hw, prec = sc.training, sc.parallelism, sc.hardware, step.precision
    if not t.offload.optimizer:
        return work
    up_params = shard * prec.param if offload.updated_params_cross_pcie(sc) else 0
    work = replace(work, cpu_optimizer=True, param_h2d_ns=offload.pcie_ns(up_params, hw))
    if offload.offload_per_layer(sc) or not shard:
        return work
    m = step.microbatches
    grad_b = trainable * wire_grad_bytes(sc, step)  # the buckets dense_rank_work reduces
    sizes = comm.buckets(p.bucket_mb, grad_b) if grad_b else [1]
    acts = step.schedule[rank]
    bucketable = (len(acts) > 1 and acts[-2].kind in ("B", "W")
                  and not step.traits.steps_every_microbatch)  # fmt: skip
    if work.bucket_ns and len(sizes) != len(work.bucket_ns):
        sizes = [1] * len(work.bucket_ns)  # expert bucket groups: an even split
    elif work.grad_sync_ns or not (work.bucket_ns or bucketable):
        sizes = [1]  # one copy, after the one reduction (or the last backward)
    total = sum(sizes)
    down = offload.boundary_grad_bytes(shard, prec.grad, m)
    up = shard * prec.grad if m > 1 else 0
    chunks = len(step.rank_chunk_ids(rank))
    return replace(
        work,
        grad_d2h_ns=tuple(offload.pcie_ns(down * x / total, hw) for x in sizes),
        grad_h2d_ns=tuple(offload.pcie_ns(up * x / total, hw) for x in sizes) if up else (),
        accum_ns=(
            offload.pcie_ns(shard * prec.grad / chunks, hw)
            if m > 1 and offload.accumulates_through_host(sc)
            else 0
        ),  # fmt: skip
    )


def _offload_chunks(sc: Scenario, step: ResolvedStep, mem: MemoryReport,
                    chunks: dict[int, ChunkDurations]) -> dict[int, ChunkDurations]:  # fmt: skip
    """ZeRO-3 offload per layer: the layer's parameter partition up before its gather
    (parameter offload), its gradient partition down after its reduce-scatter, 16-bit every
    backward and fp32 at the last (optimizer offload); a layer's share of the rank's
    partition, 1/(dp x cp) of its parameters (``costs.offload``)."""
    t, prec, hw = sc.training, step.precision, sc.hardware
    dp = max(sc.parallelism.dp_cp, 1)
    out = dict(chunks)
    for stage, ch in chunks.items():
        sm = mem.stages[step.chunk_rank(stage)]
        layers = max(step.rank_layers(sm.stage), 1)
        params, grads = sm.params / layers / dp, sm.trainable / layers / dp
        out[stage] = replace(
            ch,
            param_h2d_ns_per_layer=offload.pcie_ns(params * prec.param, hw)
            if t.offload.parameters else 0,
            grad_d2h_ns_per_layer=offload.pcie_ns(grads * prec.grad, hw)
            if t.offload.optimizer else 0,
            grad_d2h_last_ns_per_layer=offload.pcie_ns(grads * offload.FP32_GRAD_BYTES, hw)
            if t.offload.optimizer else 0,
        )  # fmt: skip
    return out


def dense_rank_work(sc: Scenario, step: ResolvedStep, rank: int, params: int, trainable: int,
                    shard: int) -> RankWork:  # fmt: skip
    """The rank's optimizer step over ``shard`` parameters (:func:`rank_optimizer_shard`) and
    its data-parallel gradient reduction of ``trainable`` ones: naive DP through GPU 0,
    ZeRO-1/2 bucketed reduce-scatter + all-gather of the updated shards, DDP buckets
    overlapped with the last backward, or one all-reduce at the end (PipeDream, split backward,
    or a runtime that does not overlap the reduction: ``runtime.overlap_grad_reduce`` false).
    ZeRO-3's per-layer traffic lives on the chunks (:func:`_zero3_chunks`), and so does
    ZeRO-2's reduce-scatter where it runs every micro-batch (:func:`_zero2_chunks`); here only
    its all-gather of the updated shards. Where the pipeline defers the reduction
    (:func:`deferred_reduction_ns`) ZeRO-2/3 reduce-scatter once, after the last backward."""
    p, t, prec, rt = sc.parallelism, sc.training, step.precision, sc.runtime
    grad_bytes = trainable * wire_grad_bytes(sc, step)
    work = RankWork(optimizer_ns=optimizer_step_ns(shard, t, sc.hardware, sc.cluster.gpus_per_node))
    if p.dp_cp == 1 or not grad_bytes or p.dp_mode == "data_parallel":
        return work  # gradients are reduced over dp x cp; DataParallel's: data_parallel_pass
    if p.dp_mode == "naive":
        ns, name = comm.naive_dp_ns(sc, step, grad_bytes, params * prec.param)
        return replace(work, grad_sync_ns=ns, grad_sync_name=name)
    deferred = pipeline_defers_reduction(sc, step.pp)  # reduced per chunk: _deferred_chunks
    if p.zero_stage == 3:
        return work
    op = grad_reduction_op(sc)
    if p.zero_stage in (1, 2):
        # ZeRO-1/2: the updated shards are all-gathered after the step, or (overlapped) during
        # the next forward; nanotron reduces with an all-reduce (optim/zero.py). FP8 primary
        # weights travel in their byte (memory.gathered_param_bytes).
        gathered = gathered_param_bytes(sc, step, rank, params)
        ag = comm.dp_ns(sc, step, "all_gather", gathered)
        work = replace(work, post_opt_ns=ag, post_opt_name="AG updated params")
        if rt.overlap_param_gather:
            # the buckets split the parameters at the same elements whatever their dtype
            # (param_and_grad_buffer.py: one bucketing for the param and grad buffers)
            n = comm.ddp_buckets(p.bucket_mb, params * prec.param)[0]
            first = comm.dp_ns(sc, step, "all_gather", gathered / n)
            work = replace(work, post_opt_ns=0, pre_gather_ns=(first, max(ag - first, 0)))
        if zero2_every_microbatch(sc) or deferred:  # _zero2_chunks, or _deferred_chunks
            return work
        if op == "reduce_scatter" and rt.overlap_grad_reduce:  # DeepSpeed overlap_comm
            return replace(work, bucket_ns=comm.bucket_group_ns(sc, step, op, grad_bytes),
                           bucket_name=f"ZeRO-{p.zero_stage} reduce-scatter")  # fmt: skip
    if grads_bucketable(sc, step, rank):
        return replace(work, bucket_ns=comm.bucket_group_ns(sc, step, op, grad_bytes))
    if op == "reduce_scatter":
        ns = comm.dp_ns(sc, step, op, grad_bytes)
        return replace(work, grad_sync_ns=ns, grad_sync_name=f"ZeRO-{p.zero_stage} reduce-scatter")
    ns, name = comm.grad_sync_ns(sc, step, grad_bytes)
    return replace(work, grad_sync_ns=ns, grad_sync_name=name)


def tied_embedding_sync(sc: Scenario, step: ResolvedStep) -> tuple[int, int, int] | None:
    """(rank, rank, ns) of the all-reduce of the word embedding's gradient between the two
    pipeline ranks that hold a copy, the embedding's and the output layer's (tied embeddings,
    or the multi-token-prediction modules' own embedding, which Megatron-Core reduces with the
    first stage's: ``if model_module.share_embeddings_and_output_weights or
    getattr(config, 'mtp_num_layers', 0)``): V/t x h elements in the data-parallel
    reduction's dtype (``memory.wire_grad_bytes``, one rule for both; DeepSpeed's
    BF16_Optimizer reduces its fp32 buffers in both, 38327e07f runtime/bf16_optimizer.py l.167
    and l.371-374 and engine.py ``_exec_reduce_tied_grads``, which neither prices: that
    reduction's fp32 bytes and its flattening copy are not modelled), after that
    reduction and before the optimizer step (under an
    offloaded optimizer, before the gradients' copies are awaited; the copies are not ordered
    after it); None where one rank holds both (pp 1, the V of ZB-V and DualPipeV), the
    embedding is untied without MTP or frozen. DualPipe's two copies of every stage also sum
    their gradients, which is not modelled: this is only the embedding's share. Megatron-LM
    (2e90a342f5 training.py l.431-450: after ``allreduce_gradients``; Megatron-Core d98e8a64
    finalize_model_grads.py l.676, ``_allreduce_word_embedding_grads`` after
    ``finish_grad_sync``), nanotron (2411b022 trainer.py l.656-661,
    ``sync_tied_weights_gradients`` after the DP sync) and DeepSpeed's pipeline engine
    (38327e07f pipe/schedule.py l.239: ``ReduceTiedGrads`` just before ``ReduceGrads``, the
    same sum of two collectives before the step) all run it. Priced as a two-GPU all-reduce
    (``group_comm.pair_all_reduce_ns``), not on the shared NIC."""
    m, t = sc.model, sc.training
    shared = m.tied_embeddings or trained_mtp_modules(m, t) > 0
    if step.pp == 1 or not shared or not base_trainable(t.peft.method, t.peft.phase):
        return None
    if step.traits.steps_every_microbatch:  # (PipeDream's per-micro-batch updates: not this)
        return None
    ends = sorted({step.chunk_rank(k) for k, c in enumerate(step.chunks) if c.embedding or c.head})
    if len(ends) != 2:
        return None
    first, last = ends
    size = m.vocab // step.groups.tp * m.hidden * wire_grad_bytes(sc, step)
    ns = pair_all_reduce_ns(sc, step, size, first, last)
    return (first, last, ns) if ns else None


def _hop_crosses(step: ResolvedStep, stage: int, to_stage: int) -> bool:
    """Does stage ``stage``'s send to ``to_stage`` (``costs.chunk_time.pipeline_hop``, the one ``chunk_send_ns``
    prices) leave the node? False where nothing is sent."""
    hop = pipeline_hop(step, stage, to_stage)
    return hop is not None and step.placement.hop_crosses_nodes(*hop)


def _dp_latency_s(sc: Scenario, step: ResolvedStep, op: str) -> float:
    """The fixed part of a collective ``op`` over the data-parallel group: its time for one byte
    (the runtime's algorithm as ``costs.comm.collective_ns`` prices it: a ring all-reduce's
    2(n − 1) hops, an all-gather's or reduce-scatter's n − 1, NCCL's tree or NVLS choice its
    own), so that the rest of a task's time is bytes on the NIC (``sim.lowering.nics``)."""
    return comm.dp_ns(sc, step, op, 1.0) / 1e9


def nic_plan(sc: Scenario, step: ResolvedStep) -> NicPlan:
    """Which transfers leave the node, and each one's latency: they share their GPU's NIC. The
    data-parallel tasks' latency by kind: "DP" (the gradient buckets or reduction: an
    all-reduce, or ZeRO-1/2's reduce-scatter), "AG" and "RS" (ZeRO's gathers and scatters)."""
    hw, pl, g = sc.hardware, step.placement, step.groups
    lat = hw.inter_node_latency_s
    stages = range(len(step.chunks))
    return NicPlan(
        bandwidth_bytes_per_s=hw.nic_bandwidth_bytes_per_s
        * hw.efficiency.collective
        / hw.oversubscription,
        send_forward_crosses=tuple(_hop_crosses(step, s, s + 1) for s in stages),
        send_backward_crosses=tuple(_hop_crosses(step, s, s - 1) for s in stages),
        p2p_latency_s=lat,
        dp_crosses=pl.group_crosses_nodes(g.dp_cp, g.tp),
        ag_crosses=(
            pl.group_crosses_nodes(sc.parallelism.zero_shards, g.tp)
            if sc.parallelism.zero_replicas > 1
            else None
        ),
        dp_latency_s=_dp_latency_s(sc, step, grad_reduction_op(sc)),
        ag_latency_s=_dp_latency_s(sc, step, "all_gather"),
        rs_latency_s=_dp_latency_s(sc, step, "reduce_scatter"),
        tp_crosses=pl.tp_crosses_nodes,
        tp_latency_s=2 * (g.tp - 1) * lat,
        cp_crosses=pl.cp_crosses_nodes,
        cp_latency_s=(g.cp - 1) * lat,
        ep_crosses=(
            sc.parallelism.ep > 1 and pl.group_crosses_nodes(sc.parallelism.ep, sc.parallelism.etp)
        ),
        ep_latency_s=(sc.parallelism.ep - 1) * lat,
    )


def lowering_input(sc: Scenario, step: ResolvedStep, mem: MemoryReport) -> LoweringInput:
    """Everything lowering needs: schedule, durations, per-rank work and memory deltas."""
    chunks = chunk_durations(sc, step)
    if sc.parallelism.zero_stage == 3 and sc.parallelism.dp_cp > 1:
        chunks = _zero3_chunks(sc, step, mem, chunks)
    elif zero2_every_microbatch(sc):
        chunks = _zero2_chunks(sc, step, mem, chunks)
    if pipeline_defers_reduction(sc, step.pp):
        chunks = _deferred_chunks(sc, step, mem, chunks)
    if offload.offload_per_layer(sc) and (
        sc.training.offload.optimizer or sc.training.offload.parameters
    ):
        chunks = _offload_chunks(sc, step, mem, chunks)
    if sc.runtime.grads_freed_per_microbatch:
        chunks = _accumulation_chunks(sc, step, mem, chunks)
    ranks = {sm.stage: rank_work(sc, step, sm.stage, sm.params, sm.trainable) for sm in mem.stages}
    for sm in mem.stages:
        if sm.paged_bytes:
            ns = offload.pcie_ns(sm.paged_bytes, sc.hardware)  # cudaMemPrefetchAsync over PCIe
            ranks[sm.stage] = replace(ranks[sm.stage], paged_bytes=sm.paged_bytes,
                                      page_out_ns=ns, page_in_ns=ns)  # fmt: skip
    activation = {k: b for sm in mem.stages for k, b in sm.chunk_activation_bytes}
    off_spec = sc.training.offload
    if off_spec.activations or off_spec.activation_layers:
        # each chunk's offloaded bytes, each way: DeepSpeed cpu_checkpointing's checkpoints, or
        # Megatron-Core's first N blocks' saved tensors, copied beside their action
        off = {k: b for sm in mem.stages for k, b in sm.offloaded_activation_bytes}
        chunks = {k: replace(c, act_copy_bytes=off.get(k, 0),
                             act_copy_ns=offload.pcie_ns(off.get(k, 0), sc.hardware),
                             act_copy_beside=bool(off_spec.activation_layers))
                  for k, c in chunks.items()}  # fmt: skip
    working = {k: b for sm in mem.stages for k, b in sm.recompute_working_set_bytes}
    loss = {k: b for sm in mem.stages for k, b in sm.loss_bytes}
    blocking = sc.runtime.p2p == "blocking" and step.pp > 1
    rt = sc.runtime
    poll_ns = round(rt.p2p_poll_interval_s * 1e9) if blocking else 0
    counts = (rt.p2p_polled_messages_forward, rt.p2p_polled_messages_backward)
    # each chunk's polled messages sending forward (what its hop carries) and backward
    polled = {k: tuple(comm.hop_messages(counts, forward, step.hop_kind(k, k + 1))
                       for forward in (True, False))
              for k in range(len(step.chunks))}  # fmt: skip
    # (validated: 0 or >= 1 ms, spec.runtime MIN_POLL_INTERVAL_S, so never rounded to 0 ns)
    plan = None
    if is_data_parallel(sc):  # GPU 0's loss memory is allocated by the pass's gather and loss
        loss = {}
        sm, rep = mem.stages[0], mem.replica
        assert rep is not None
        plan = data_parallel_plan(sc, step, sm.params, sm.trainable, sm.reduce_gradient_bytes,
                                  rep.reduce_gradient_bytes)  # fmt: skip
    return LoweringInput(step.schedule, step.pp, step.v, chunks, ranks, activation, working, loss,
                         blocking, pooled_tp_overlap(sc, step),
                         overlapped_fb=step.traits.overlapped_fb, fb_pairs=_fb_pairs(step),
                         comm_sm_share=comm.deepep_sm_share(sc), data_parallel=plan,
                         placement=step.traits.placement, p2p_poll_ns=poll_ns,
                         p2p_polled=polled,
                         recompute_gathers=sc.training.recompute != "selective",
                         backward_reuses_recompute_gather=sc.runtime.fsdp_recompute_reuses_gather,
                         tied_embedding_sync=tied_embedding_sync(sc, step),
                         cp_labels=exchange_labels(sc),
                         backward_extra_bytes={k: sm.backward_moment_bytes for sm in mem.stages
                                               for k in step.rank_chunk_ids(sm.stage)
                                               if sm.backward_moment_bytes})  # fmt: skip


def _fb_pairs(step: ResolvedStep) -> dict[int, frozenset] | None:
    """The schedule's own overlapped F&B pairs (DualPipe), or None (greedy pairing)."""
    pairs = step.traits.fb_pairs
    return pairs(step.pp, step.microbatches) if pairs is not None else None


def initial_memory(step: ResolvedStep, mem: MemoryReport) -> dict[int, dict[str, int]]:
    """Static memory per rank: every category but activations, which the tasks allocate (and
    autocast's weight copies, which the rank's first forward allocates and its last backward
    frees; and the 16-bit gradients, when they only exist from backward to the optimizer step,
    or from each backward's end through its fp32 add; an fp32 accumulation buffer stays). The loss
    working memory is allocated by the last chunk's forward, the optimizer's working memory by
    the optimizer step, a paged optimizer's evicted
    states by their prefetch. Under torch.nn.DataParallel a replica is rank 1, and the
    gradients held only while reduced onto GPU 0 are allocated by the reduction
    (``passes.data_parallel_pass``)."""
    out = {}
    for rank, sm in enumerate(mem.gpus):
        cats = {k: v for k, v in sm.memory_bytes if k != "activations"}
        cats["gradients"] -= (sm.transient_gradient_bytes + sm.reduce_gradient_bytes
                              + sm.freed_gradient_bytes)  # fmt: skip
        cats["buffers"] -= (sum(b for _, b in sm.loss_bytes) + sm.optimizer_working_bytes
                            + sm.allocator_buffer_growth_bytes
                            + sm.autocast_copy_bytes)  # fmt: skip
        # A paged optimizer's evicted states are in host memory until their prefetch before
        # the optimizer step allocates them again (sim.lowering.passes.paging_pass).
        cats["optimizer_states"] -= sm.paged_bytes
        out[_rank_key(mem, rank, sm)] = cats
    return out


def _rank_key(mem: MemoryReport, rank: int, sm: StageMemory) -> int:
    """The simulated rank a memory row stands for: its stage, or under torch.nn.DataParallel
    its row (GPU 0, a replica)."""
    return sm.stage if mem.replica is None else rank


def held_through_backward(mem: MemoryReport) -> dict[int, tuple[tuple[str, int], ...]]:
    """Rank -> the memory (category, bytes) its first forward allocates and its last backward
    frees (``sim.lowering.RankWork.step_held``; keyed as :func:`initial_memory`): autocast's
    weight copies (``StageMemory.autocast_copy_bytes``), under buffers."""
    return {_rank_key(mem, rank, sm): (("buffers", sm.autocast_copy_bytes),)
            for rank, sm in enumerate(mem.gpus) if sm.autocast_copy_bytes}  # fmt: skip


def optimizer_memory(step: ResolvedStep, mem: MemoryReport) -> dict[int, tuple[tuple, tuple]]:
    """Rank -> (alloc, free) of its optimizer step: the step holds its working memory while it
    runs; with transient gradients the 16-bit gradients are allocated there too (after
    backward has freed the activations). A reserved figure's allocator cache
    (``StageMemory.allocator_cached_bytes``) is taken there too and kept, except under a
    schedule that steps after every micro-batch (PipeDream): there the next micro-batch's
    forward is served from the cached blocks, so the step gives them back (the trace would
    otherwise count them twice, under the next activations)."""
    out = {}
    again = step.traits.steps_every_microbatch
    for sm in mem.stages:
        alloc = []
        if sm.transient_gradient_bytes:
            alloc.append(("gradients", sm.transient_gradient_bytes))
        ws = sm.optimizer_working_bytes
        act = sm.allocator_cached_activation_bytes  # reserved figure: the cached activations
        rest = sm.allocator_cached_bytes - act  # ... and the flat buffers' new segments
        alloc += [("activations", act), ("buffers", ws + rest)]
        free = [("buffers", ws + rest), ("activations", act)] if again else [("buffers", ws)]
        out[sm.stage] = (tuple((k, v) for k, v in alloc if v),
                         tuple((k, v) for k, v in free if v))  # fmt: skip
    return out
