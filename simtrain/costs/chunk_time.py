"""Per-chunk durations of one micro-batch: a chunk's compute, the TP collectives and all-to-alls
it runs, its host dispatch and its pipeline sends (``sim.lowering.ChunkDurations``), and one
block's times as a framework's per-layer timer reads them. The simulation's (through
``costs.workload``), the planner's (``apps.plan.estimate``) and the memory model's where a
reserved figure depends on how far the host runs ahead of the GPU
(``costs.memory.pending_reduce_scatter_bytes``): it reads no memory figure itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from simtrain.costs import comm
from simtrain.costs.compute import (
    chunk_costs,
    memory_bound_ns,
    recompute_stops_early,
    replays_core,
    tp_pairs_gemms,
)
from simtrain.costs.host import accumulation_host_ns, action_host_ns, trainable_tensor_count
from simtrain.layout.step import ResolvedStep, resolve
from simtrain.sim.lowering import ChunkDurations
from simtrain.spec.scenario import Scenario


@dataclass(frozen=True, slots=True)
class BlockComm:
    """One block's communication for one micro-batch, the same for every chunk: (exposed,
    hidden) TP of the forward, the backward and an input-gradient-only backward, of a dense
    block and of an MoE block (``comm.moe_tp_pairs``: the same for a dense model), and an
    MoE layer's all-to-alls (dispatch + combine)."""

    tp_forward: tuple[int, int]
    tp_backward: tuple[int, int]
    tp_input_grad: tuple[int, int]
    alltoall_ns: int
    moe_tp_forward: tuple[int, int]
    moe_tp_backward: tuple[int, int]
    moe_tp_input_grad: tuple[int, int]


def block_comm(sc: Scenario, step: ResolvedStep) -> BlockComm:
    return BlockComm(comm.tp_forward_block(sc, step), comm.tp_backward_block(sc, step),
                     comm.tp_backward_block(sc, step, input_grad_only=True),
                     comm.ep_layer_alltoall_ns(sc, step),
                     comm.tp_forward_block(sc, step, moe=True),
                     comm.tp_backward_block(sc, step, moe=True),
                     comm.tp_backward_block(sc, step, input_grad_only=True, moe=True))  # fmt: skip


@lru_cache(maxsize=64)
def scenario_block_comm(sc: Scenario) -> BlockComm:
    """:func:`block_comm` of ``sc``'s resolved step, once per scenario (the memory model asks for
    it on every pipeline stage)."""
    return block_comm(sc, resolve(sc))


def _per_kind(dense: int, moe: int, d: tuple[int, int], e: tuple[int, int]) -> tuple[int, int]:
    """(exposed, hidden) of ``dense`` dense and ``moe`` MoE blocks."""
    return dense * d[0] + moe * e[0], dense * d[1] + moe * e[1]


def chunk_durations(sc: Scenario, step: ResolvedStep) -> dict[int, ChunkDurations]:
    """Virtual stage -> durations of its work for one micro-batch."""
    block = block_comm(sc, step)
    return {stage: chunk_duration(sc, step, stage, block) for stage in range(len(step.chunks))}


def chunk_duration(sc: Scenario, step: ResolvedStep, stage: int, block: BlockComm
                   ) -> ChunkDurations:  # fmt: skip
    """Durations of virtual stage ``stage``'s work for one micro-batch: the simulation's (via
    :func:`chunk_durations`) and the planner's (``apps.plan.estimate``)."""
    t = sc.training
    ch = step.chunks[stage]
    c = chunk_costs(sc, ch.layers, ch.embedding, ch.head, ch.lo, ch.loss_parts)
    n = ch.layers
    n_moe = n - sc.model.dense_layers_in(ch.lo, ch.hi)  # (the dense count of a dense model)
    kinds = (n - n_moe, n_moe)
    tp_fwd, tp_fwd_hidden = _per_kind(*kinds, block.tp_forward, block.moe_tp_forward)
    tp_bwd, tp_bwd_hidden = _per_kind(*kinds, block.tp_backward, block.moe_tp_backward)
    tp_i, tp_i_hidden = _per_kind(*kinds, block.tp_input_grad, block.moe_tp_input_grad)
    tp_r, tp_r_hidden = (tp_recompute_block(sc, step, n, n_moe) if c.recompute_ns
                         else (0, 0))  # fmt: skip
    ep = n_moe * block.alltoall_ns  # dispatch + combine
    loss = "loss" in ch.loss_parts  # the loss's collectives where it runs (nanotron's split)
    host_f, host_b = action_host_ns(sc, n, ch.embedding, ch.head, n_moe, loss)
    edge_f, edge_b = comm.tp_edges_ns(sc, step, ch.embedding, ch.head, loss=loss)
    edge_i = comm.tp_edges_ns(sc, step, ch.embedding, ch.head, True, loss)[1]
    grads = c.input_grad_ns or c.weight_grad_ns
    return ChunkDurations(
        forward_ns=c.forward_ns,
        input_grad_ns=c.input_grad_ns,
        weight_grad_ns=c.weight_grad_ns,
        recompute_ns=c.recompute_ns,
        tp_forward_ns=tp_fwd + edge_f,
        tp_backward_ns=(tp_bwd if c.input_grad_ns else 0) + (edge_b if grads else 0),
        tp_input_grad_ns=(tp_i if c.input_grad_ns else 0) + (edge_i if grads else 0),
        tp_backward_hidden_ns=tp_bwd_hidden if c.input_grad_ns else 0,
        tp_forward_hidden_ns=tp_fwd_hidden,
        tp_input_grad_hidden_ns=tp_i_hidden if c.input_grad_ns else 0,
        tp_recompute_hidden_ns=tp_r_hidden,  # (a recompute only where gradients flow)
        tp_recompute_ns=tp_r,
        send_forward_ns=chunk_send_ns(sc, step, stage, stage + 1),
        send_backward_ns=chunk_send_ns(sc, step, stage, stage - 1),
        layers=(ch.lo, ch.hi),
        host_forward_ns=host_f,
        host_backward_ns=host_b if c.input_grad_ns or c.weight_grad_ns else 0,
        cp_forward_ns=c.ring_forward_ns,
        cp_backward_ns=c.ring_backward_ns,
        # a recompute that runs the attention core again replays its ring (costs.compute
        # .replays_core: not mla_up_proj's, moe_act's or layernorm's, nor selective_op's)
        cp_recompute_ns=c.ring_forward_ns if c.recompute_flops and replays_core(t) else 0,
        ep_forward_ns=ep,
        ep_backward_ns=ep if c.input_grad_ns else 0,
        ep_recompute_ns=ep if t.recompute == "full" else 0,
    )


def chunk_gpu_ns(d: ChunkDurations, pooled: bool) -> tuple[int, int]:
    """(forward, backward) GPU time of one micro-batch through a chunk: its compute with the TP
    it exposes (``pooled``: the longer of the two, ``passes.tp_pass``) and its all-to-alls; the
    backward's recompute, input and weight gradients as one action. The planner's
    (``apps.plan.estimate``) and the memory model's host-ahead lag."""
    forward = with_tp(pooled, d.forward_ns, d.tp_forward_ns) + d.ep_forward_ns
    grads = d.recompute_ns + d.input_grad_ns + d.weight_grad_ns
    backward = (with_tp(pooled, grads, d.tp_backward_ns + d.tp_recompute_ns) + d.ep_backward_ns
                + d.ep_recompute_ns)  # fmt: skip
    return forward, backward


def accumulation_times(sc: Scenario, step: ResolvedStep, rank: int,
                       trainable: int) -> tuple[int, int]:  # fmt: skip
    """(GPU ns, host ns) of the fp32 gradient adds after one micro-batch's backward on ``rank``
    where the runtime frees the 16-bit gradients after every backward
    (``grads_freed_per_microbatch``: nanotron's FP32GradientAccumulator.backward,
    optim/gradient_accumulator.py l.206-226 at 2411b022): a memory-bound pass reading each of the
    rank's ``trainable`` 16-bit gradients and reading and writing its fp32 one, and one
    dispatched add a trainable tensor (``costs.host.accumulation_host_ns``)."""
    prec = step.precision
    moved = trainable * (prec.grad + 2 * prec.grad_accum)
    tensors = sum(trainable_tensor_count(sc, c.lo, c.hi, c.embedding, c.head)
                  for c in step.rank_chunks(rank))  # fmt: skip
    return round(memory_bound_ns(moved, sc.hardware)), accumulation_host_ns(sc, tensors)


def pending_fraction(forward_gpu_ns: int, forward_host_ns: int, lag_ns: int) -> float:
    """Share of a forward's row-parallel outputs whose reduce-scatter the GPU has not run yet
    when the host has issued the whole forward: the host issues the forward's kernels evenly
    over ``forward_host_ns``, the GPU runs them ``lag_ns`` behind and over
    ``forward_gpu_ns``, so those issued after ``(h - lag) / g`` of the forward are pending:
    1 - max(0, h - lag) / g, within [0, 1]; a host that costs nothing (h = 0) leaves all of
    them pending, a forward without GPU time none."""
    if forward_gpu_ns <= 0:
        return 0.0
    if forward_host_ns <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - max(0, forward_host_ns - lag_ns) / forward_gpu_ns))


def host_lead_ns(microbatches: int, gpu_ns: int, host_ns: int, blocking: bool) -> int:
    """How far the GPU lags behind the host when the last of a step's ``microbatches`` starts:
    each micro-batch whose GPU time ``gpu_ns`` (all the rank's chunks' forwards and backwards)
    exceeds its host time ``host_ns`` lets the host run that much further ahead, so
    (m - 1) x max(0, g - h); none behind a ``blocking`` pipeline p2p, where the host waits for
    the GPU at every transfer. Example: m = 2, g = 10, h = 4: 6."""
    return 0 if blocking else (microbatches - 1) * max(0, gpu_ns - host_ns)


def forward_issue_shares(sc: Scenario, step: ResolvedStep, rank: int,
                         accumulation: tuple[int, int] = (0, 0)) -> list[tuple[int, float]]:  # fmt: skip
    """(chunk id, :func:`pending_fraction`) of each of ``rank``'s chunks: the share of the
    chunk's forward the GPU has not run when the host has issued all of it, at the step's last
    micro-batch. The forward's GPU time is :func:`chunk_gpu_ns`', its host time
    ``ChunkDurations.host_ns``, the lag :func:`host_lead_ns` of the rank's per-micro-batch GPU
    and host time (every chunk's forward and backward, plus ``accumulation``: the gradient
    adds' (GPU, host) ns, :func:`accumulation_times`). The memory model's pending reduce-scatter
    outputs (``costs.memory.pending_reduce_scatter_bytes``)."""
    block, pooled = scenario_block_comm(sc), pooled_tp_overlap(sc, step)
    ids = step.rank_chunk_ids(rank)
    durations = [chunk_duration(sc, step, k, block) for k in ids]
    gpu_mb, host_mb = accumulation
    for d in durations:
        gpu_mb += sum(chunk_gpu_ns(d, pooled))
        host_mb += d.host_ns("F") + d.host_ns("B")
    blocking = step.pp > 1 and sc.runtime.p2p == "blocking"
    lag = host_lead_ns(step.microbatches, gpu_mb, host_mb, blocking)
    return [(k, pending_fraction(chunk_gpu_ns(d, pooled)[0], d.host_ns("F"), lag))
            for k, d in zip(ids, durations, strict=True)]  # fmt: skip


def block_times_ns(sc: Scenario, step: ResolvedStep, layer: int = 0) -> tuple[int, int]:
    """(forward, backward) of transformer block ``layer`` for one micro-batch on one GPU, as a
    framework's per-layer timer reads them (Korthikanti et al. 2022 Table 4: "time per
    transformer layer"): the forward's compute and the TP collectives it exposes (two
    all-reduces, or their reduce-scatter / all-gather halves with sequence parallelism); the
    backward's input and weight gradients with its recompute and the collectives they expose
    (those the runtime overlaps with the weight-gradient GEMMs, ``tp_backward_overlap``, only
    where they outlast it; with a ``tp_comm_overlap`` that pairs them with their GEMMs,
    ``costs.comm.tp_forward_block``'s and ``tp_backward_block``'s exposed parts; with one that
    does not, the longer of compute and collectives, as ``passes.tp_pass`` runs them), and an
    MoE block's all-to-alls. The same terms
    :func:`chunk_durations` gives a chunk of blocks, for one block without the embedding or the
    head."""
    t, m = sc.training, sc.model
    if not 0 <= layer < m.layers:
        raise ValueError(f"layer {layer}: the model has blocks 0 .. {m.layers - 1}")
    c = chunk_costs(sc, 1, False, False, layer)
    moe = m.is_moe_layer(layer)
    tp_f, _ = comm.tp_forward_block(sc, step, moe=moe)
    tp_bwd, _ = comm.tp_backward_block(sc, step, moe=moe)
    a2a = comm.ep_layer_alltoall_ns(sc, step) if moe else 0
    tp_b = tp_bwd if c.input_grad_ns else 0
    tp_r = tp_recompute_block(sc, step, 1, int(moe))[0] if c.recompute_ns else 0
    backward = c.input_grad_ns + c.weight_grad_ns + c.recompute_ns
    pooled = pooled_tp_overlap(sc, step)
    forward, backward = with_tp(pooled, c.forward_ns, tp_f), with_tp(pooled, backward, tp_b + tp_r)
    a2a_r = a2a if c.recompute_ns and t.recompute == "full" else 0
    return forward + a2a, backward + (a2a if c.input_grad_ns else 0) + a2a_r


def pipeline_hop(step: ResolvedStep, stage: int, to_stage: int) -> tuple[int, int] | None:
    """(sending rank, rank step) of stage ``stage``'s send to the neighbouring stage
    ``to_stage``: none past either end of its pipeline (DualPipe: of its direction's) or when
    both live on one rank (the turn of ZB-V's V: stages p−1 and p share rank p−1); otherwise a
    hop to the neighbour's rank (+1 or −1: down the V's second leg the next stage sits on the
    rank before)."""
    if to_stage not in step.pipeline(stage):
        return None  # p2p_pass sends nothing from a first stage back or a last stage on
    rank, other = step.chunk_rank(stage), step.chunk_rank(to_stage)
    return None if rank == other else (rank, other - rank)


def chunk_send_ns(sc: Scenario, step: ResolvedStep, stage: int, to_stage: int) -> int:
    """Stage ``stage``'s send to ``to_stage`` (:func:`pipeline_hop`; 0 where nothing is sent) of
    what crosses that boundary (``ResolvedStep.hop_bytes``)."""
    return (
        0
        if pipeline_hop(step, stage, to_stage) is None
        else comm.hop_send_ns(sc, step, stage, to_stage)
    )


def pooled_tp_overlap(sc: Scenario, step: ResolvedStep) -> bool:
    """A ``tp_comm_overlap`` that overlaps an action's TP collectives with all of its compute
    (``passes.tp_pass``: max instead of the sum), where they are not paired GEMM by GEMM
    (``costs.compute.tp_pairs_gemms``: without sequence parallelism, MLA or experts)."""
    return sc.runtime.tp_comm_overlap and step.groups.tp > 1 and not tp_pairs_gemms(sc)


def with_tp(pooled: bool, compute_ns: int, tp_ns: int) -> int:
    """An action's time with the TP collectives it exposes: the longer of the two where the
    runtime runs them beside all of its compute (:func:`pooled_tp_overlap`, as
    ``passes.tp_pass`` does), their sum otherwise (``tp_ns`` then the exposed parts only)."""
    return max(compute_ns, tp_ns) if pooled else compute_ns + tp_ns


def tp_recompute_block(sc: Scenario, step: ResolvedStep, layers: int,
                       moe_layers: int = 0) -> tuple[int, int]:  # fmt: skip
    """(exposed, hidden) TP communication a recompute of ``layers`` blocks replays: a full
    recompute replays the forward's collectives as the forward runs them
    (``comm.tp_forward_block``: paired with the replayed GEMMs where
    ``costs.compute.tp_pairs_gemms``), but for the block's last (``comm.tp_last_reduction``)
    where it stops early (``costs.compute.recompute_stops_early``); a selective_op one (``costs.op_sac``) the block's two
    all-reduces without sequence parallelism (all-reduce is not in torchtitan's
    ``_save_list``), with it only the attention's and the MLP's input all-gathers (the
    reduce-scatters' outputs are saved; ``comm.column_gathers`` of them), exposed (the k, o and up projections it replays are
    not the whole GEMM groups those gathers feed); none other. ``moe_layers`` of the
    ``layers`` are MoE blocks (their forward's: ``comm.tp_forward_block`` with ``moe``)."""
    t = sc.training
    if t.recompute == "full":
        dense = comm.tp_forward_block(sc, step)
        if recompute_stops_early(sc):  # the block's last reduction is not replayed
            dense = tuple(a - b for a, b in zip(dense, comm.tp_last_reduction(sc, step),
                                                strict=True))  # fmt: skip
        return _per_kind(layers - moe_layers, moe_layers, dense,
                         comm.tp_forward_block(sc, step, moe=True))  # fmt: skip
    if t.recompute != "selective_op" or step.groups.tp == 1:
        return 0, 0
    if not sc.parallelism.sequence_parallel:
        return 2 * layers * comm.tp_allreduce_ns(sc, step), 0
    n_attn, n_mlp = comm.column_gathers(sc)
    gathers = (n_attn * comm.tp_input_gather_ns(sc, step)
               + n_mlp * comm.tp_input_gather_ns(sc, step, mlp=True))  # fmt: skip
    return layers * gathers, 0
