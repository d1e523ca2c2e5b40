"""Where GPU memory goes during training: bytes per GPU by category, per pipeline stage.

Categories (``simtrain.sim.timeline.MEMORY_CATEGORIES``): ``parameters``, ``stashed_weights``
(PipeDream's and PipeDream-2BW's extra weight versions), ``master_weights``, ``gradients``,
``optimizer_states``, ``activations``, ``cuda_context``, ``buffers``; plus host
bytes (and the pinned part of them) when optimizer states or parameters are offloaded
(``costs.offload``). Model states per parameter come from
``costs.params``, ZeRO stage 1/2/3 divides the optimizer states / + gradients / + parameters by
N_d (Rajbhandari et al. 2020 §5.1-5.3); activations come from ``costs.activations``, walked
through the rank's schedule. ``report.explain`` writes the arithmetic out from
:class:`StageBreakdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import pairwise
from math import ceil
from typing import NamedTuple

from simtrain.costs import offload
from simtrain.costs.activations import (
    ActivationStates,
    SavedTensor,
    WalkPeak,
    attention_backward_working_bytes,
    embedding_saved_bytes,
    frozen_input_savings,
    grad_flows_through_blocks,
    head_backward_delta,
    head_saved_bytes,
    layer_activation_bytes,
    layer_input_bytes,
    layer_saved_tensors,
    loss_apart_bytes,
    loss_saved_bytes,
    loss_transient_bytes,
    mlp_backward_working_bytes,
    mlp_half_saved_bytes,
    mtp_saved_bytes,
    rank_activation_states,
    recompute_working_set_bytes,
    rematerialises,
    tp_gathered_input_bytes,
    walk_peak_of_states,
)
from simtrain.costs.caching_allocator import round_size
from simtrain.costs.chunk_time import accumulation_times, forward_issue_shares
from simtrain.costs.comm import column_gathers, ddp_buckets, reduce_scatter_input_bytes
from simtrain.costs.compute import fused_linear_names
from simtrain.costs.cp import cp_ring_buffer_bytes
from simtrain.costs.data_parallel import gpu0_extra_loss_bytes, is_data_parallel
from simtrain.costs.fp8 import (
    TE_PER_TENSOR,
    block_gemms,
    routed_expert_gemm_weights,
    scaling_state_bytes,
    weight_cache_bytes,
)
from simtrain.costs.fragmentation import StageAllocations, replay_stage
from simtrain.costs.moe import a2a_bytes, moe_load
from simtrain.costs.nccl_memory import nccl_buffer_bytes, stage_communicators
from simtrain.costs.params import (
    EXPERT_PREFIX,
    ModelStateBytes,
    ParamTensor,
    adam_temporaries,
    add_states,
    dense_layers_of,
    embedding_param_tensors,
    embedding_tp,
    end_param_tensors,
    head_param_tensors,
    layer_param_tensors,
    model_state_bytes,
    optimizer_working_bytes,
    paged_state_bytes,
    rank_tensor_groups,
    scale_states,
    scenario_chunk_groups,
    total_params,
    trainable_params,
    zero_shard,
)
from simtrain.layout.step import ResolvedStep, rank_schedule, resolve
from simtrain.schedules import microbatches_in_flight, stashed_weight_versions
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.hardware import HardwareProfile
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import MEGATRON_KERNEL_LOSSES, Scenario, TrainingSpec, cp_rank_training


@dataclass(frozen=True, slots=True)
class StageBreakdown:
    """The intermediate figures of one stage's memory, for ``report.explain``."""

    n_layers: int
    first: bool
    last: bool
    states: ModelStateBytes  # before ZeRO sharding and offload
    host_bytes: int
    per_layer_bytes: int  # activations per layer per micro-batch, recompute applied
    saved: tuple[SavedTensor, ...]  # what one layer saves without recompute
    activation_bytes_per_microbatch: int
    in_flight: float
    # what a backward adds to the saved peak (the category): a recompute's re-materialised
    # block and the backward's temporaries, the MLP's or a non-flash attention core's (the
    # name is the JSON's)
    recompute_working_set_bytes: int
    activations: int
    weight_versions: int  # weight versions kept, the live one included (1: no stashing)
    stashed_weight_bytes: int  # the versions beyond the live one (category stashed_weights)
    optimizer_working_bytes: int
    naive_dp_gather_bytes: int
    buffers: int
    loss_before_recompute: bool  # the peak counts the larger of loss memory and a recompute
    gradients_transient: bool
    # 16-bit gradients freed after every micro-batch's backward (runtime
    # grads_freed_per_microbatch with an fp32 accumulation buffer)
    gradients_freed_after_backward: bool = False
    ddp_bucket_bytes: int = 0  # torch DDP's bucket gradients (runtime ddp_grad_buckets)
    tp_gather_bytes: int = 0  # cached full-sequence gather buffers (runtime tp_gather_buffers)
    nccl_bytes: int = 0  # NCCL's connection buffers (device-level memory only; nccl_memory)
    te_dummy_wgrad_bytes: int = 0  # TE's cached dummy weight gradients (runtime te_dummy_wgrad)
    # nanotron's split: the loss's parts this stage runs apart from the LM head (StageBlocks.tail)
    # and whether its LM head's loss runs on a later stage (StageBlocks.loss_apart)
    loss_tail: tuple[str, ...] = ()
    loss_apart: bool = False
    # which backward temporaries set the largest working set: "mlp", "core" or ""
    backward_part: str = ""


@dataclass(frozen=True, slots=True)
class StageMemory:
    stage: int
    gpus: int
    layers: tuple[tuple[int, int], ...]
    memory_bytes: tuple[tuple[str, int], ...]  # category -> bytes, in MEMORY_CATEGORIES order
    host_memory_bytes: int
    peak_memory_bytes: int
    capacity_bytes: int
    activation_bytes_per_microbatch: int
    microbatches_in_flight: float
    params: int  # parameters held by one GPU of this stage (after TP, before ZeRO-3 sharding)
    trainable: int = 0
    loss_bytes: tuple[tuple[int, int], ...] = ()  # virtual stage -> loss working memory
    optimizer_working_bytes: int = 0  # temporaries of the optimizer step
    # gradients that exist only from the backward to the optimizer step (gradients_transient)
    transient_gradient_bytes: int = 0
    # 16-bit gradients that exist from each micro-batch's backward to its end, added then into
    # the fp32 accumulation buffer and freed (runtime grads_freed_per_microbatch)
    freed_gradient_bytes: int = 0
    chunk_activation_bytes: tuple[tuple[int, int], ...] = ()  # virtual stage -> bytes per mb
    recompute_working_set_bytes: tuple[tuple[int, int], ...] = ()
    breakdown: StageBreakdown | None = None
    pinned_host_memory_bytes: int = 0  # of host_memory_bytes, page-locked (costs.offload)
    # activation offload: virtual stage -> checkpoint bytes per micro-batch copied each way
    # (DeepSpeed's), or the offloaded blocks' saved tensors (Megatron-Core's layer offload)
    offloaded_activation_bytes: tuple[tuple[int, int], ...] = ()
    # What the peak is made of, in MEMORY_CATEGORIES order: sums to peak_memory_bytes exactly.
    # ``memory_bytes`` lists every category at its own largest (transients that never coexist,
    # such as the loss working memory, a recompute working set and the optimizer step's working
    # memory, each counted), so its sum can exceed the peak; this is the moment of the peak.
    peak_memory_bytes_by_category: tuple[tuple[str, int], ...] = ()
    # A paged optimizer (``peft.paged_optimizer``; :func:`paged_peak`): the state bytes in
    # unified memory, those evicted to host RAM at the activation peak, and the peak had they
    # all stayed on the GPU (``peak_memory_bytes`` is the peak with paging).
    pageable_bytes: int = 0
    paged_bytes: int = 0
    peak_memory_bytes_unpaged: int = 0
    # Gradients held only while they are reduced onto GPU 0 (torch.nn.DataParallel: GPU 0's own
    # replica's and each replica's, from backward to ``ReduceAddCoalesced``), within
    # ``memory_bytes``' gradients; "gpu0" / "replica" under DataParallel, "" otherwise.
    reduce_gradient_bytes: int = 0
    # What a block's backward holds beyond the walk's chunk and working set where the
    # gradients are transient (transient_backward_moment), as gradients: the trace allocates
    # it with the backward and frees it at its end.
    backward_moment_bytes: int = 0
    # Autocast's 16-bit weight copies within ``memory_bytes``' buffers (autocast_copy_bytes):
    # made by the forward, gone after the backward, so not at the optimizer step (the trace
    # allocates them with the rank's first forward and frees them after its last backward)
    autocast_copy_bytes: int = 0
    role: str = ""
    # A reserved or device-level memory figure (runtime ``memory_reported``) with flat step
    # buffers (:func:`flat_step_buffers`), when its moment is the peak: what the caching
    # allocator holds at the optimizer step beside the step's allocations (reserved = the
    # walk's moment + the flat buffers' new segments, :func:`flat_segment_bytes`, at most the
    # GPU's memory), of which ``allocator_cached_activation_bytes`` are the blocks of the
    # activations the backward freed (under activations at the peak; the rest under buffers);
    # within ``peak_memory_bytes``; 0 for an allocated figure.
    allocator_cached_bytes: int = 0
    allocator_cached_activation_bytes: int = 0
    # FSDP2's all-gather pool in a reserved or device-level figure (:func:`fsdp2_gather_pool_bytes`,
    # at most what the capacity leaves), within buffers and ``peak_memory_bytes``; 0 otherwise.
    gather_pool_bytes: int = 0
    # Row-parallel outputs the allocator holds back behind their pending NCCL reduce-scatter at
    # a forward's end and keeps cached for the rest of the step, in a reserved or device-level
    # figure (:func:`pending_reduce_scatter_bytes`, at most what the capacity leaves), within
    # buffers and ``peak_memory_bytes`` and held by the simulated timeline; 0 otherwise.
    pending_collective_bytes: int = 0
    # What torch's allocator holds at the optimizer step's moment (after the last backward: the
    # model states, the step's working memory or ZeRO's gather copies, what the activation walk
    # keeps), as torch.cuda.max_memory_allocated counts it: without the CUDA context and NCCL's
    # own cudaMalloc'ed buffers. A peak-allocated figure whose counter is reset after the
    # forward / backward sees this (nanotron's sweep: 'Mem Alloc (GB)').
    step_memory_bytes: int = 0
    # What PyTorch's caching allocator reserves beyond the allocated peak in a replay of the
    # rank's allocations (runtime ``allocator_replay``, :func:`stage_allocations`), at most
    # what the capacity leaves, or all of it where the replay runs out of the GPU's memory
    # (the step does not fit): within buffers and ``peak_memory_bytes``; 0 otherwise.
    fragmentation_bytes: int = 0

    @property
    def allocator_buffer_growth_bytes(self) -> int:
        """What the allocator cache adds to the buffers category's own total
        (:func:`cache_buffer_growth`)."""
        return cache_buffer_growth(self.allocator_cached_bytes,
                                   self.allocator_cached_activation_bytes,
                                   sum(b for _, b in self.loss_bytes))  # fmt: skip

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.capacity_bytes

    def category(self, name: str) -> int:
        return dict(self.memory_bytes)[name]


@dataclass(frozen=True, slots=True)
class MemoryReport:
    scenario: str
    params: int
    trainable_params: int
    stages: tuple[StageMemory, ...]
    # torch.nn.DataParallel: one replica GPU (GPUs 1..n−1); ``stages`` holds GPU 0.
    replica: StageMemory | None = None

    @property
    def gpus(self) -> tuple[StageMemory, ...]:
        """Every distinct GPU: the stages, and a DataParallel replica."""
        return self.stages + ((self.replica,) if self.replica is not None else ())

    @property
    def peak_memory_bytes(self) -> int:
        return max(s.peak_memory_bytes for s in self.gpus)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.gpus)

    @property
    def paged(self) -> bool:
        """A paged optimizer holds states in unified memory on some stage."""
        return any(s.pageable_bytes for s in self.stages)

    def to_json(self) -> dict:
        doc = self._json()
        if self.paged:  # keys only for a paged optimizer: other documents stay as they were
            for st, s in zip(doc["stages"], self.stages, strict=True):
                st["pageable_bytes"] = s.pageable_bytes
                st["paged_bytes"] = s.paged_bytes
                st["peak_memory_bytes_unpaged"] = s.peak_memory_bytes_unpaged
                st["fits_unpaged"] = s.peak_memory_bytes_unpaged <= s.capacity_bytes
            doc["paged_bytes"] = max(s.paged_bytes for s in self.stages)
            doc["peak_memory_bytes_unpaged"] = max(s.peak_memory_bytes_unpaged for s in self.stages)
            doc["fits_unpaged"] = all(st["fits_unpaged"] for st in doc["stages"])
        if self.replica is not None:
            r = self.replica
            doc["data_parallel_replica"] = {
                "gpus": r.gpus,
                "memory_bytes": dict(r.memory_bytes),
                "peak_memory_bytes": r.peak_memory_bytes,
                "peak_memory_bytes_by_category": dict(r.peak_memory_bytes_by_category),
                "capacity_bytes": r.capacity_bytes,
                "fits": r.fits,
            }
        return doc

    def _json(self) -> dict:
        return {
            "schema_version": 1,
            "scenario": self.scenario,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "stages": [
                {
                    "stage": s.stage,
                    "gpus": s.gpus,
                    "memory_bytes": dict(s.memory_bytes),
                    "host_memory_bytes": s.host_memory_bytes,
                    # only with offload: the files of every other scenario keep their bytes
                    **(
                        {"pinned_host_memory_bytes": s.pinned_host_memory_bytes}
                        if s.pinned_host_memory_bytes
                        else {}
                    ),  # fmt: skip
                    "peak_memory_bytes": s.peak_memory_bytes,
                    "peak_memory_bytes_by_category": dict(s.peak_memory_bytes_by_category),
                    # only with the allocator replay: what of the buffers is its fragmentation
                    **(
                        {"fragmentation_bytes": s.fragmentation_bytes}
                        if s.fragmentation_bytes
                        else {}
                    ),  # fmt: skip
                    "capacity_bytes": s.capacity_bytes,
                    "fits": s.fits,
                }
                for s in self.stages
            ],
            "peak_memory_bytes": self.peak_memory_bytes,
            "fits": self.fits,
        }


@dataclass(frozen=True, slots=True)
class _Activations:
    chunk_bytes: dict[int, int]  # virtual stage -> bytes per micro-batch
    # virtual stage -> backward working set: a re-materialised block and the backward's
    # temporaries (the MLP's or a non-flash core's), floored at 0 (backward_delta unfloored)
    working_set: dict[int, int]
    loss_bytes: dict[int, int]  # virtual stage -> loss working memory during its forward
    per_layer: int
    saved: tuple[SavedTensor, ...]
    recompute_ws: int  # the largest backward working set of the rank's chunks
    walk: WalkPeak
    # virtual stage -> the decoder blocks' part of chunk_bytes (with full recompute: the
    # checkpointed block inputs, what activation offload moves)
    block_bytes: dict[int, int] = field(default_factory=dict)
    states: ActivationStates | None = None
    # virtual stage -> the blocks' bytes Megatron-Core's layer offload sends to the host per
    # micro-batch (training.offload.activation_layers; not in chunk_bytes)
    layer_offload_bytes: dict[int, int] = field(default_factory=dict)
    # virtual stage -> what its last block's backward holds beside the chunk's saved bytes,
    # before the walk's floor at 0 (working_set): negative where the head's freed saved
    # tensors outweigh the backward's temporaries (:func:`transient_backward_moment`)
    backward_delta: dict[int, int] = field(default_factory=dict)
    # bytes a dense block saves per micro-batch (per_layer is an MoE block's in a model with
    # routed experts)
    per_dense_layer: int = 0
    # virtual stage -> which backward temporaries set its working set: "mlp", "core" (a
    # non-flash attention core's) or "" (none)
    backward_part: dict[int, str] = field(default_factory=dict)


#: A fitting peak at or above this share of the GPU's memory is near it: PyTorch's caching
#: allocator needs room beyond what is allocated (fragmentation, not modelled). Evidence, not a
#: fit: of the Ultra-Scale Playbook sweep's 3,445 runs (benchmarks/playbook_csv_rows.py prints
#: them), 136 of the 137 whose verdict simtrain gets wrong ran out of memory where it predicted
#: a peak of 85 / 92 / 97 % of the GPU (quartiles). Read by ``simtrain memory`` / ``run``'s
#: verdict and the planner's table (report.tables.NEAR_CAPACITY_NOTE).
NEAR_CAPACITY = 0.85


def near_capacity(peak_bytes: int, capacity_bytes: int) -> bool:
    """Whether a peak is at or above :data:`NEAR_CAPACITY` of the GPU's memory."""
    return peak_bytes >= NEAR_CAPACITY * capacity_bytes


@dataclass(frozen=True, slots=True)
class SaveFlags:
    """What a scenario's runtime and layout tell ``costs.activations.layer_saved_tensors``
    beyond the model and batch: the routed experts' load per rank (``costs.moe.moe_load``), the
    bytes per value of a saved all-gathered input (``tp_gathered_input_bytes``; 0: Megatron's
    rule), K and V repeated to the query heads before SDPA, and context parallelism's
    all-to-all. One reading, for every caller that sizes one block's saved tensors."""

    load: float
    gathered_input: int
    repeat_kv: bool
    cp_a2a: bool
    etp: int = 0  # the expert-TP size (ParallelSpec.etp; 0: tp)
    fused_swiglu: bool = False  # runtime fused_swiglu: the SwiGLU saves its input only
    # runtime tp_input_redistribution per_linear (eager): each linear's own gathered copy
    gathered_per_linear: bool = False

    def kwargs(self) -> dict[str, float | int | bool]:
        """The flags as keyword arguments of ``layer_saved_tensors``, ``layer_activation_bytes``
        and ``recompute_working_set_bytes``."""
        return {"load": self.load, "gathered_input": self.gathered_input,
                "repeat_kv": self.repeat_kv, "cp_a2a": self.cp_a2a, "etp": self.etp,
                "fused_swiglu": self.fused_swiglu,
                "gathered_per_linear": self.gathered_per_linear}  # fmt: skip


def save_flags(sc: Scenario) -> SaveFlags:
    """:class:`SaveFlags` of ``sc`` (the precision's: the per-rank training spec has the same)."""
    return SaveFlags(
        load=moe_load(sc.model, sc.parallelism.ep),
        gathered_input=tp_gathered_input_bytes(sc.training.precision,
                                               sc.runtime.tp_saves_gathered_input),
        repeat_kv=sc.runtime.attention_repeat_kv,
        cp_a2a=sc.cp_all_to_all,
        etp=sc.parallelism.etp,
        fused_swiglu=sc.runtime.fused_swiglu,
        gathered_per_linear=column_gathers(sc) != (1, 1),  # each linear gathers its own
    )  # fmt: skip


def _stage_activations(sc: Scenario, step: ResolvedStep, rank: int,
                       loss_override: int | None = None) -> _Activations:  # fmt: skip
    """Bytes per chunk and micro-batch, walked through the rank's schedule; with context
    parallelism those of the GPU's s/cp tokens (TE saves the local q, one K/V chunk, the local
    output and log-sum-exp: ``AttnFuncWithCPAndKVP2P.forward``'s ``save_for_backward``; the
    all-to-all as many bytes of heads/cp over s, and its output twice: costs.cp)."""
    m, p = sc.model, sc.parallelism
    t = cp_rank_training(sc.training, p.cp)
    tp, sp = p.tp, p.sequence_parallel
    f = save_flags(sc)
    per_layer = layer_activation_bytes(m, t, tp, sp, **f.kwargs())
    saved = tuple(layer_saved_tensors(m, t, tp=tp, sequence_parallel=sp, **f.kwargs()))
    per_dense = (layer_activation_bytes(m, t, tp, sp, moe=False, **f.kwargs())
                 if m.is_moe else per_layer)  # fmt: skip
    chunk_bytes: dict[int, int] = {}
    working_set: dict[int, int] = {}
    delta: dict[int, int] = {}
    part: dict[int, str] = {}  # which backward temporaries set the working set
    loss_bytes: dict[int, int] = {}
    blocks: dict[int, int] = {}
    offloaded: dict[int, int] = {}
    n_off = sc.training.offload.activation_layers
    for stage in step.rank_chunk_ids(rank):
        ch = step.chunks[stage]
        c = per_layer * ch.layers
        if m.is_moe:  # MoE blocks and the first dense ones (ModelSpec.first_dense_layers)
            dense = m.dense_layers_in(ch.lo, ch.hi)
            c = per_layer * (ch.layers - dense) + per_dense * dense
        if n_off:
            # Megatron-Core's layer offload (pp 1: the one chunk holds blocks 0 .. L-1): TE's
            # DefaultOffloadSynchronizer offloads blocks 0 .. N-1 and frees each on the GPU
            # before block L-N+i runs, reloading it after block L-1-N+i's backward starts, so
            # that "peak memory usage of saving activations is (num_layers -
            # num_offloaded_layers) * T" (transformer_engine/pytorch/cpu_offload.py
            # l.602-626 at d0067d0d): the first N blocks' bytes leave the chunk's
            dense_off = m.dense_layers_in(0, n_off)
            offloaded[stage] = per_layer * (n_off - dense_off) + per_dense * dense_off
            if ch.embedding:  # block 0 (offloaded) without what a frozen embedding spares it
                offloaded[stage] -= frozen_input_savings(m, t, tp, sp)
            c -= offloaded[stage]
        blocks[stage] = c
        if ch.embedding:
            c += embedding_saved_bytes(m, t, tp if sp else 1)
            if ch.layers:  # the first block's norm: none on an embedding-only chunk
                c -= frozen_input_savings(m, t, tp, sp)
        if step.pp > 1 and sc.runtime.pipeline_keeps_stage_outputs and not ch.head:
            # the chunk's output, kept for its backward (runtime pipeline_keeps_stage_outputs)
            c += layer_input_bytes(m, t, tp, sp) if not ch.tail else 0
        if ch.head:
            c += (head_saved_bytes(m, t, tp, sp, f.gathered_input)
                  + mtp_saved_bytes(m, t, tp, sp, f.gathered_input))  # fmt: skip
            if loss_override is not None:  # DataParallel: the loss and what it saves on GPU 0
                c -= loss_saved_bytes(m, t, tp)
            loss_bytes[stage] = loss_transient_bytes(m, t, tp)
            if loss_override is not None:  # DataParallel: GPU 0 the whole batch, replicas none
                loss_bytes[stage] = loss_override
        if ch.loss_apart or ch.tail:
            c, loss_bytes[stage] = loss_apart_bytes(sc, step, ch, c)
        chunk_bytes[stage] = c
        blocks[stage] = min(blocks[stage], c)
        # Only a chunk with decoder layers re-materialises a block (a head-only chunk has
        # nothing to recompute).
        # (DataParallel's GPU 0 holds its rows' loss tensors apart: the head frees less)
        own_loss = loss_override is None
        delta[stage] = recompute_working_set_bytes(m, t, ch.layers, ch.embedding, ch.head, tp, sp,
                                                   **f.kwargs(), loss_apart=ch.loss_apart,
                                                   loss_in_chunk=own_loss)  # fmt: skip
        if ch.layers:
            # The backward's temporaries beside what the block saved, at its fullest: the MLP's
            # (activations.mlp_backward_working_bytes) or a non-flash core's, whichever is
            # more. Without a re-materialised block the MLP's run after the head's backward,
            # which freed the head's saved tensors (the gradient of its input alive). The
            # core's run after the MLP half's tensors are freed: so it is taken in a
            # re-materialised block (full recompute: the non-flash steps measured with
            # simtrain.torchref went +4.2 -> -0.9 / -1.5 % of the peak), but beside everything
            # saved otherwise (the rule before the MLP's were counted), which is what matches
            # PyTorch under Megatron's selective recompute: taking the MLP half or the head
            # off there under-predicts the measured peak by 8-12 %.
            mlp = mlp_backward_working_bytes(m, t, tp)
            core = attention_backward_working_bytes(m, t, tp)
            if ch.head and not rematerialises(t):
                mlp += head_backward_delta(m, t, tp, sp, f.gathered_input, ch.loss_apart,
                                           own_loss)  # fmt: skip
            elif core and rematerialises(t):
                core -= mlp_half_saved_bytes(saved)  # a re-materialised block's, freed by then
            delta[stage] += max(mlp, core)
            part[stage] = "core" if core > mlp else "mlp" if mlp > 0 else ""
        working_set[stage] = max(delta[stage], 0)
    states = rank_activation_states(step.schedule_name, step.pp, step.microbatches, step.v, rank,
                                    step.all_warmup_at_pp, step.microbatch_group)  # fmt: skip
    walk = walk_peak_of_states(states, chunk_bytes, working_set, loss_bytes)
    return _Activations(chunk_bytes, working_set, loss_bytes, per_layer, saved,
                        max(working_set.values(), default=0), walk, blocks, states,
                        offloaded, delta, per_dense, part)  # fmt: skip


def _offloaded_activations(act: _Activations) -> tuple[_Activations, int]:
    """Activation offload (DeepSpeed ``cpu_checkpointing``; ``passes.activation_offload_pass``):
    (the activations the GPU holds, the bytes the host holds). Only the checkpointed block
    inputs move (``block_bytes``); the embedding's and the head's saved tensors stay. A chunk's
    checkpoints leave the GPU during their forward and come back right before their backward,
    so the GPU holds the rest as the schedule walk has it plus one micro-batch's checkpoints of
    one chunk; the host holds what the walk of the checkpoints alone would have held (in
    DeepSpeed's pinned buffer pool). Assumes each copy down keeps pace with its forward (it
    overlaps it): the trace shows the GPU's memory when it does not."""
    assert act.states is not None
    rest = {c: b - act.block_bytes.get(c, 0) for c, b in act.chunk_bytes.items()}
    w = walk_peak_of_states(act.states, rest, act.working_set, act.loss_bytes)
    one = max(act.block_bytes.values(), default=0)
    walk = replace(w, peak=w.peak + one, saved=w.saved + one, saved_peak=w.saved_peak + one,
                   activations=w.activations + one)  # fmt: skip
    zero = dict.fromkeys(act.chunk_bytes, 0)
    host = walk_peak_of_states(act.states, act.block_bytes, zero).saved_peak
    return replace(act, walk=walk), host


def _buffers(sc: Scenario, step: ResolvedStep, tensors: list[ParamTensor], ms: ModelStateBytes,
             n_layers: int, grads_b: int, dense_layers: int,
             copies: int) -> tuple[int, int, int]:  # fmt: skip
    """(buffers without the loss working memory, optimizer working bytes, naive-DP gather):
    working memory of casts, dequantisation, ZeRO-3 gathers and communication (DDP bucket
    gradients and TP gather buffers included); ``dense_layers`` of the rank's ``n_layers``
    blocks are dense (all of a dense model's)."""
    t, p = sc.training, sc.parallelism
    prec, dp, z = step.precision, p.zero_shards, p.zero_stage
    # the routed experts' part of the rank's trainable parameters, sharded over expert-dp
    moe_layers = n_layers - dense_layers
    experts = moe_layers * sum(x.numel for x in tensors
                               if x.trainable and x.name.startswith(EXPERT_PREFIX))  # fmt: skip
    if flat_step_buffers(sc, step):
        opt_ws = sum(flat_step_allocations(sc, step, ms.trainable))
    else:
        opt_ws = optimizer_working_bytes(tensors, t, dp if z >= 1 else 1, trainable=ms.trainable,
                                         fused=sc.runtime.fused_optimizer,
                                         fp32_grad_buffer=buffer_grad_bytes(sc, step) == 4,
                                         expert_trainable=experts,
                                         expert_shards=p.expert_dp if z >= 1 else 1)  # fmt: skip
    # DeepSpeed's reduction copy (after the last backward, freed before the step): the same
    # moment as the step's (activations gone, gradients all there), the larger of the two
    opt_ws = max(opt_ws, reduce_copy_bytes(sc, step, ms.trainable))
    # the post-step parameter all-gather's flat copies: after the step, beside its state
    opt_ws = max(opt_ws, zero_gather_copy_bytes(sc, step, ms.trainable, experts))
    buffers = opt_ws + copies  # autocast's weight copies (autocast_copy_bytes)
    if prec.gemm_dtype and n_layers:
        # FP8 weight workspaces and scaling state, per block for the whole step (costs.fp8);
        # under ZeRO-3 TE caches none (FSDP: quantized per use), one block's at a time. With
        # FP8 primary weights they are the parameters (fp8_weight_storage).
        m, arch = sc.model, sc.hardware.gpu_arch
        moe = n_layers - dense_layers  # the MoE blocks: routed and shared experts' GEMMs
        cache = weight_cache_bytes(m, prec, arch, p.tp) if dense_layers else 0
        cache_moe = weight_cache_bytes(m, prec, arch, p.tp, True, p.ep, p.etp) if moe else 0
        if z >= 3:
            buffers += max(cache, cache_moe)
        elif not t.fp8_params:
            buffers += cache * dense_layers + cache_moe * moe
        buffers += scaling_state_bytes(m, prec) * dense_layers
        buffers += scaling_state_bytes(m, prec, True, p.ep) * moe
    if t.peft.method == "qlora":  # one dequantised 16-bit weight at a time
        buffers += 2 * max((x.numel for x in tensors if x.nf4), default=0)
    if z >= 3:
        # gathered (or, offloaded, fetched) 16-bit parameters of the current and prefetched
        # layer; under PyTorch pipelining all of them, which a backward leaves gathered
        # (pipeline_defers_reduction: stage.py set_reshard_after_backward(False)). A shard
        # group of one GPU too: FSDP2 all-gathers into buffers of its own at world size 1
        # (torch 2.13 _fsdp_param_group.py: init_all_gather_outputs, then copy_)
        live = 2 * (ms.params // max(n_layers, 1))
        if p.zero3_max_live_params:  # DeepSpeed releases parameters beyond its live cap
            live = min(live, p.zero3_max_live_params)
        root = fsdp_root_bytes(sc, tensors, ms, n_layers)
        if pipeline_defers_reduction(sc, step.pp):  # (its gradients: the whole stage's already)
            live = ms.params
        elif root is not None:  # FSDP2: two blocks, and the root group whole
            live, root_grads = root
            if not accumulation_defers_reduction(sc, step):  # (else counted whole already)
                buffers += prec.grad * root_grads
        buffers += prec.param * live
    gather = 0
    if p.dp_mode == "naive" and p.dp > 1:
        # The lecture's data parallelism: GPU 0 gathers the other replicas' gradients.
        gather = (p.dp - 1) * grads_b
        buffers += gather
    if step.pp > 1 and not sc.runtime.pipeline_recv_buffers_per_microbatch:
        # p2p send/receive buffers: one b·s·h activation and one gradient
        buffers += 2 * p2p_buffer_bytes(sc, step)
    buffers += ddp_bucket_bytes(sc, step, ms.trainable) + tp_gather_buffer_bytes(sc, step)
    buffers += te_dummy_wgrad_bytes(sc, step, tensors)
    if p.cp > 1 and n_layers:
        buffers += cp_ring_buffer_bytes(sc)
    if sc.model.is_moe and n_layers:
        # One MoE layer's dispatch at a time: the permuted tokens (all-to-all send buffer)
        # and the received ones (Megatron-Core MoEAlltoAllTokenDispatcher; costs.moe).
        load = moe_load(sc.model, p.ep)
        tokens = t.micro_batch * step.seq_len_effective // p.cp  # one GPU's s/cp of each
        buffers += ceil(2 * a2a_bytes(sc.model, tokens, prec.act_mm, p.tp, load))
    return buffers, opt_ws, gather


#: The module names a linear's weight has where Megatron-Core builds it from Transformer Engine
#: modules (a routed or shared expert's own gate, up and down under its prefix): the decoder's
#: linears, not the embedding or the router (a plain matmul of its own).
_TE_LINEARS = ("q", "k", "v", "o", "q_a", "q_b", "kv_a", "kv_b", "gate", "up", "down")
#: Megatron's own linears whose gradient-accumulation-fused backward returns TE's dummy too
#: (tensor_parallel/layers.py l.733-762 at d98e8a64, since e7c55de99, 2025-08-01, where TE is
#: installed): the output layer (its own weight, the tied copy, or the embedding it shares) and
#: the MTP modules' eh_proj.
_MEGATRON_LINEARS = ("lm_head", "lm_head(tied copy)", "mtp.eh_proj")


def autocast_copy_bytes(sc: Scenario, step: ResolvedStep, stage: int,
                        ms: ModelStateBytes) -> int:  # fmt: skip
    """Autocast's 16-bit copies of the matmul weights a step holds (counted under buffers for
    the step; ``ModelStateBytes.weight_copies`` where every one is kept): the forward's cast
    cache keeps a trainable weight's copy (torch caches only the casts of leaf tensors that
    require a gradient: ``autocast_mode.cpp`` ``cached_cast``), and a linear saves its weight's
    copy for the input's gradient. Under full or per-op selective recompute a frozen weight's
    copy (LoRA's base) is neither: made per use and freed in the forward, made again by its
    block's re-materialisation, so one block's frozen copies at a time (measured with
    simtrain.torchref: Llama, LoRA, autocast, full recompute, 6 blocks: +17.9 % of the peak
    while every block's were counted). Where no gradient flows through the blocks (linear
    probing) no block's copy is kept at all (+39.8 % of the peak of a 6-block probe without
    recompute while they were)."""
    t = sc.training
    if not step.precision.weight_copy:
        return 0
    blocks = rank_tensor_groups(sc, step.rank_chunks(stage))[:-1]  # (count, one block's tensors)
    frozen = [(k, model_state_bytes([x for x in ts if not x.trainable], t).weight_copies)
              for k, ts in blocks if k]  # fmt: skip
    all_frozen = sum(k * c for k, c in frozen)
    if not grad_flows_through_blocks(t):
        return ms.weight_copies - all_frozen
    if not rematerialises(t):
        return ms.weight_copies
    return ms.weight_copies - all_frozen + max((c for _, c in frozen), default=0)


def te_dummy_wgrad_bytes(sc: Scenario, step: ResolvedStep, tensors: list[ParamTensor]) -> int:
    """Transformer Engine's cached dummy weight gradients (runtime ``te_dummy_wgrad``): under
    gradient-accumulation fusion each TE linear's backward returns ``get_dummy_wgrad(weight
    .shape, weight.dtype)`` (transformer_engine/pytorch/module/base.py at d0067d0d), one
    tensor per distinct (shape, dtype) kept for the process's life: Σ rows·cols over the
    rank's distinct trainable TE weight shapes (Q, K, V as one ``linear_qkv`` and gate, up as
    one ``linear_fc1`` where the runtime fuses them; a routed expert's ``GroupedLinear``
    weights one shape each), in the 16-bit dtype the weights report (a Float8Tensor weight's
    nominal one); and Megatron's own linears' where TE is installed (:data:`_MEGATRON_LINEARS`:
    the output layer, also where it uses the tied embedding on its rank, and eh_proj). 0 with
    the runtime flag off."""
    rt = sc.runtime
    if not rt.te_dummy_wgrad:
        return 0
    fused = fused_linear_names(rt.fused_qkv, rt.fused_gate_up)
    # (prefix, module) -> its member linears by name (an MoE rank's dense and MoE blocks list
    # the attention's linears twice: one module each)
    modules: dict[tuple[str, str], dict[str, ParamTensor]] = {}
    names = {x.name for x in tensors}
    for x in tensors:
        parts = x.name.split(".")
        if not x.trainable:
            continue
        if x.name in _MEGATRON_LINEARS or (
            x.name == "wte" and "norm_f.weight" in names and not names & set(_MEGATRON_LINEARS[:2])
        ):
            # (a tied head on the embedding's rank: the output layer's matmul on wte, whose
            # V/t x h table is the head's h -> V/t weight)
            head = x.name in ("wte", "lm_head", "lm_head(tied copy)")
            w = replace(x, rows=x.cols, cols=x.rows) if x.name == "wte" else x
            modules[("", "lm_head" if head else x.name)] = {x.name: w}
            continue
        if not x.matmul or parts[-1] != "weight" or len(parts) > 3:
            continue
        prefix, lin = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])
        if lin not in _TE_LINEARS:
            continue
        modules.setdefault((prefix, fused.get(lin, lin)), {})[lin] = x
    shapes = set()
    for members in modules.values():
        ts = list(members.values())
        shapes.add((ts[0].rows, sum(x.cols for x in ts)))
    return max(step.precision.param, 2) * sum(r * c for r, c in shapes)


def rank_dense_layers(sc: Scenario, step: ResolvedStep, rank: int) -> int:
    """The dense blocks pipeline rank ``rank`` holds (``costs.params.dense_layers_of``)."""
    return dense_layers_of(sc.model, step.rank_chunks(rank))


def fp8_weight_storage(sc: Scenario, step: ResolvedStep, rank: int) -> tuple[int, int]:
    """(elements, bytes) of the Transformer Engine linears' weights in pipeline rank
    ``rank``'s blocks (:func:`rank_dense_layers` of them dense) stored as FP8 primary weights (training
    ``fp8_params``, Megatron-Core ``--fp8-param-gather``): the GEMM groups' weights
    (``costs.fp8.block_gemms``) and their quantized copies as TE keeps them
    (``costs.fp8.weight_cache_bytes``: row- and column-wise where the GPU needs both, with
    their scales). Megatron-Core builds the model under TE's quantized model init and its DDP
    maps each quantized weight's storage into the parameter buffer
    (distributed/param_and_grad_buffer.py l.1235-1275 at d98e8a64: "remap TE quantized
    storage"; MXFP8 gathers through the gradient buffer and copies back into the quantized
    storage, ``_post_param_sync`` l.301-330): no 16-bit weight exists beside the FP8 one, and TE
    runs the GEMMs on the parameter itself (no workspace). Embeddings, norms, the router and
    the output layer keep their 16-bit parameters. (0, 0) without it."""
    t, p = sc.training, sc.parallelism
    n_layers = step.rank_layers(rank)
    if not t.fp8_params or not n_layers:
        return 0, 0
    m, prec, arch = sc.model, t.precision_spec, sc.hardware.gpu_arch
    dense_layers = rank_dense_layers(sc, step, rank)
    moe = n_layers - dense_layers
    elems = dense_layers * sum(g.weights for g in block_gemms(m, p.tp)) if dense_layers else 0
    stored = weight_cache_bytes(m, prec, arch, p.tp) * dense_layers if dense_layers else 0
    if moe:
        elems += moe * sum(g.weights for g in block_gemms(m, p.tp, True, p.ep, etp=p.etp))
        stored += moe * weight_cache_bytes(m, prec, arch, p.tp, True, p.ep, p.etp)
    return elems, stored


def fp8_gathered_params(sc: Scenario, step: ResolvedStep, rank: int) -> tuple[int, int]:
    """(dense, routed-expert) elements of pipeline rank ``rank``'s FP8 primary weights
    (:func:`fp8_weight_storage`) that the distributed optimizer's all-gather of the updated
    parameters carries in 1 byte: Megatron-Core's DDP gives an FP8 parameter a uint8 buffer
    (distributed/param_and_grad_buffer.py l.921-923 at d98e8a64: "torch.uint8 for FP8/NVFP4
    parameters") and gathers that buffer. Per-tensor recipes only (delayed, current scaling):
    an MXFP8 weight's buffer is the gradient buffer's, gathered in 16 bits and re-quantized
    (l.1160-1178: a shared buffer "for param AG and grad RS", "to store params in bf16"). The routed experts' are apart where expert
    parallelism reduces them over their own group (ep > 1). (0, 0) without FP8 weights."""
    t, p = sc.training, sc.parallelism
    if not t.fp8_params or t.precision_spec.fp8_recipe not in TE_PER_TENSOR:
        return 0, 0
    elems, _ = fp8_weight_storage(sc, step, rank)
    if p.ep <= 1:
        return elems, 0
    moe = step.rank_layers(rank) - rank_dense_layers(sc, step, rank)
    expert = moe * routed_expert_gemm_weights(sc.model, p.tp, p.ep, p.etp)
    return elems - expert, expert


def gathered_param_bytes(sc: Scenario, step: ResolvedStep, rank: int, params: int,
                         experts: bool = False) -> int:  # fmt: skip
    """Bytes of the distributed optimizer's all-gather of pipeline rank ``rank``'s ``params``
    updated parameters (its dense ones, or with ``experts`` its routed experts'): the
    precision's parameter bytes each, 1 B for the FP8 primary weights among them
    (:func:`fp8_gathered_params`)."""
    param = step.precision.param
    fp8 = fp8_gathered_params(sc, step, rank)[1 if experts else 0]
    return params * param - fp8 * (param - 1)


def device_nccl_bytes(sc: Scenario, step: ResolvedStep, stage: int) -> int:
    """NCCL's connection buffers on a GPU of ``stage`` (``costs.nccl_memory``), counted only
    where the memory figure is the device's (runtime ``memory_reported`` "nvidia_smi"): they are
    cudaMalloc'ed by NCCL, outside PyTorch's allocator, so max_memory_allocated / reserved never
    see them. 0 where the runtime lists no communicators or the hardware profile gives no
    channel count."""
    rt, p, hw = sc.runtime, sc.parallelism, sc.hardware
    if rt.memory_reported != "nvidia_smi" or not rt.nccl_communicators:
        return 0
    comms = stage_communicators(rt.nccl_communicators, p.tp, p.cp, p.dp, p.pp, stage,
                                step.placement.gpus_per_node,
                                sc.model.tied_embeddings)  # fmt: skip
    return nccl_buffer_bytes(comms, hw.nccl_channels_one_node)


def p2p_buffer_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """One pipeline transfer buffer: a b·s·h activation (or its gradient), split over TP
    under sequence parallelism."""
    p = sc.parallelism
    return step.boundary_bytes // (p.tp if p.sequence_parallel else 1)


def ddp_bucket_bytes(sc: Scenario, step: ResolvedStep, trainable: int) -> int:
    """torch DDP's bucket gradients (runtime ``ddp_grad_buckets``): when the model is wrapped
    (dp x cp > 1), the Reducer's flat per-bucket gradient tensors cover every trainable
    parameter in the parameters' dtype (pytorch reducer.cpp ``Reducer::initialize_buckets``),
    allocated once and kept beside the ``.grad`` tensors and any fp32 accumulation buffer."""
    if not sc.runtime.ddp_grad_buckets or sc.parallelism.dp_cp <= 1:
        return 0
    return trainable * step.precision.param


def tp_gather_buffer_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """Cached all-gather buffers of a sequence-parallel TP run (runtime ``tp_gather_buffers``):
    each one micro-batch's full-sequence hidden state, b x s/cp x h in the activation dtype
    (``step.boundary_bytes``), allocated at the first use and kept (nanotron's MemoryBuffer)."""
    p = sc.parallelism
    if p.tp <= 1 or not p.sequence_parallel:
        return 0
    return sc.runtime.tp_gather_buffers * step.boundary_bytes


def _model_states(sc: Scenario, step: ResolvedStep, stage: int
                  ) -> tuple[ModelStateBytes, list[ParamTensor], dict[str, int],
                             tuple[int, int]]:  # fmt: skip
    """(model states before sharding, the stage's parameter tensors, bytes per model-state
    category after ZeRO (Rajbhandari et al. 2020 §5) and offload, (host bytes, of which
    pinned))."""
    m, t, p = sc.model, sc.training, sc.parallelism
    # ZeRO shards over dp x cp, or its hybrid-sharding groups (ParallelSpec.zero_shards)
    tp, dp, z = p.tp, p.zero_shards, p.zero_stage
    mine = step.rank_chunks(stage)
    # Every block is identical: count one and multiply (the planner calls this thousands of
    # times); embeddings and head are counted as they are.
    layer = layer_param_tensors(m, t, tp, ep=p.ep, etp=p.etp)
    ends = end_param_tensors(m, t, tp, p.pp, any(c.embedding for c in mine),
                             any(c.head for c in mine),
                             emb_tp=embedding_tp(sc))  # fmt: skip
    n_layers = step.rank_layers(stage)
    gb = buffer_grad_bytes(sc, step)

    def states(ts: list[ParamTensor]) -> ModelStateBytes:
        return model_state_bytes(ts, t, gb)

    experts = states([x for x in layer if x.name.startswith(EXPERT_PREFIX)])
    if m.is_moe:  # the first dense blocks, the MoE ones with their E/ep local experts
        dense = rank_dense_layers(sc, step, stage)
        dense_layer = layer_param_tensors(m, t, tp, moe=False)
        ms = add_states(add_states(scale_states(states(layer), n_layers - dense),
                                   scale_states(states(dense_layer), dense)),
                        states(ends))  # fmt: skip
        experts = scale_states(experts, n_layers - dense)
        layer = layer + (dense_layer if dense else [])
    else:
        ms = add_states(scale_states(states(layer), n_layers),
                        states(ends))  # fmt: skip
    b = _zero_shard(ms, experts, z, dp, p.expert_dp)
    unsharded = deferred_gradient_bytes(sc, step, ms.trainable)
    if unsharded:
        b["gradients"] = unsharded
    host = pinned = 0
    if t.offload.optimizer:
        # ZeRO-Offload (costs.offload): Adam's states (plain host tensors), and pinned: the
        # fp32 master partition (a host copy even when training in fp32), DeepSpeed's fp32
        # gradient buffer, its 16-bit parameter buffer and, with gradient accumulation, its
        # 16-bit gradient accumulator.
        shard = ceil(ms.trainable / (dp if z >= 1 else 1))
        prec = step.precision
        pinned = offload.pinned_host_bytes(shard, prec.param, prec.grad, step.microbatches)
        host = b["optimizer_states"] + pinned
        b["optimizer_states"] = b["master_weights"] = 0
    if t.offload.parameters:  # ZeRO-Infinity: the partition lives on the host (ZeRO-3 only)
        host += b["parameters"]
        pinned += b["parameters"]
        b["parameters"] = 0
    # A stage without decoder layers holds none of their tensors (no optimizer temporaries or
    # QLoRA dequantisation buffer for them).
    return ms, (list(layer) if n_layers else []) + ends, b, (host, pinned)


def _zero_shard(ms: ModelStateBytes, experts: ModelStateBytes, z: int, dp: int,
                edp: int) -> dict[str, int]:  # fmt: skip
    """Bytes per model-state category after ZeRO stage ``z`` (Rajbhandari et al. 2020 §5):
    optimizer states and master weights (1), + gradients (2), + parameters (3) divided over the
    data-parallel group; the routed experts' part (``experts``, within ``ms``) over the
    expert-data-parallel group of ParallelSpec.expert_dp ranks (Megatron-Core's distributed optimizer shards
    expert parameters over ``expert_data_parallel_group``)."""
    out = {}
    for cat, stage in (("parameters", 3), ("master_weights", 1), ("gradients", 2),
                       ("optimizer_states", 1)):  # fmt: skip
        total, exp = getattr(ms, cat), getattr(experts, cat)
        out[cat] = total if z < stage or dp <= 1 else zero_shard(total, exp, dp, edp)
    return out


def stage_memory(sc: Scenario, stage: int, role: str = "") -> StageMemory:
    """Memory of one GPU of pipeline stage ``stage`` (all its TP and DP peers are identical).

    ``role`` under torch.nn.DataParallel (``costs.data_parallel``): "gpu0", the module's GPU,
    holds the model states as DDP does, its own replica's gradients again while they are
    reduced, and, instead of one micro-batch's loss memory, the gathered logits, their
    gradient and the whole batch's loss; "replica", another GPU, the broadcast parameters, its
    activations and its gradients until they are reduced: no master weights, optimizer state
    or loss."""
    p, hw = sc.parallelism, sc.hardware
    step = resolve(sc)
    mine = step.rank_chunks(stage)
    n_layers = step.rank_layers(stage)
    ms, tensors, states, (host, pinned) = _model_states(sc, step, stage)
    params_b, master_b = states["parameters"], states["master_weights"]
    grads_b, states_b = states["gradients"], states["optimizer_states"]
    reduce_b = grads_b if role else 0
    loss_override = None
    if role == "gpu0":
        loss_override = gpu0_extra_loss_bytes(sc, step)
        grads_b += reduce_b
    elif role == "replica":
        loss_override, master_b, states_b = 0, 0, 0
    act = _stage_activations(sc, step, stage, loss_override)
    if sc.training.offload.activations:
        act, on_host = _offloaded_activations(act)
        host += on_host
        pinned += on_host
    if act.layer_offload_bytes:
        # TE's offload buffers are pinned (cpu_offload.py OffloadableLayerState.start_offload:
        # torch.empty(..., pin_memory=True)); one micro-batch's at a time without pipelining
        on_host = max(act.layer_offload_bytes.values())
        host += on_host
        pinned += on_host
    # The category is the most activations at any point of the walk: saved, plus a recompute
    # working set during a backward (it used to add the largest working set to the saved peak,
    # two moments that need not coexist); the loss working memory is listed under buffers.
    activations = act.walk.activations
    # Weight versions kept beside the live ones (PipeDream p - s, PipeDream-2BW 2): their own
    # category, each a copy of the stage's parameters in their dtype (Harlap et al. 2018 §3.3;
    # Narayanan et al. 2021 ICML §3.1).
    dense = rank_dense_layers(sc, step, stage)
    fp8_elems, fp8_stored = fp8_weight_storage(sc, step, stage)
    params_b += fp8_stored - fp8_elems * step.precision.param  # FP8 in place of 16-bit
    versions = stashed_weight_versions(step.schedule_name, p.pp, stage)
    extra = (versions - 1) * params_b
    held_copies = autocast_copy_bytes(sc, step, stage, ms)
    buffers, opt_ws, gather = _buffers(sc, step, tensors, ms, n_layers, grads_b, dense,
                                       held_copies)  # fmt: skip
    if role == "replica":  # no optimizer step on a replica
        buffers, opt_ws = buffers - opt_ws, 0
    buffers += pipeline_recv_buffer_bytes(sc, step, stage, dict(act.walk.held_at_saved_peak))
    nccl_b = device_nccl_bytes(sc, step, stage)
    buffers += nccl_b
    buffers += pipeline_output_chunk_bytes(sc, step, stage)
    loss_b = sum(act.loss_bytes.values())
    buffers += loss_b
    cats = {
        "parameters": params_b,
        "stashed_weights": extra,
        "master_weights": master_b,
        "gradients": grads_b,
        "optimizer_states": states_b,
        "activations": activations,
        "cuda_context": hw.cuda_context_bytes,
        "buffers": buffers,
    }
    transient_b = 0
    # (a runtime's persistent gradient buffer is never transient: grads_in_reduce_buffer)
    transient = step.gradients_transient and not sc.runtime.grads_in_reduce_buffer
    coming_and_going = grads_b - persistent_gradient_bytes(step, ms.trainable)
    if transient:
        # One micro-batch, no DP, no PP: gradients are created during backward as the
        # activations are freed (PyTorch zero_grad(set_to_none=True)), so the two never peak
        # together: peak = rest + max(activations, gradients) (measured: simtrain.torchref).
        # An fp32 accumulation buffer (bf16_fp32_grads) is persistent: only the 16-bit gradients
        # come and go.
        transient_b = coming_and_going
    # 16-bit gradients freed after every micro-batch's backward (runtime
    # grads_freed_per_microbatch, with an fp32 accumulation buffer): a third moment, the end of
    # a backward, holds them with the activations still saved then.
    # Only where nanotron does it: one chunk per rank (no interleaving or V), the whole
    # 16-bit gradients on the GPU (ZeRO-0/1: ZeRO-2/3 shard them), not torch.nn.DataParallel.
    freed = sc.runtime.grads_freed_per_microbatch and bool(step.precision.grad_accum)
    freed = (
        freed and not transient and len(mine) == 1 and sc.parallelism.zero_stage <= 1 and not role
    )
    freed_b = max(coming_and_going, 0) if freed else 0
    # autocast's copies, made by each forward and gone after its backward; a schedule that
    # steps after every micro-batch (PipeDream) holds other micro-batches' through its steps
    copies_b = 0 if step.traits.steps_every_microbatch else held_copies
    backward = transient_backward_moment(sc, step, stage, act, transient_b, ms, held_copies)
    moment_b = 0
    if backward is not None:  # (one chunk: its B holds the chunk and its working set)
        (cid,) = step.rank_chunk_ids(stage)
        held = act.chunk_bytes[cid] + act.working_set[cid]
        moment_b = max(0, backward.total - held)
    at_peak = _peak_by_category(cats, act.walk, loss_b, opt_ws, transient_b, reduce_b, freed_b,
                                backward, copies_b)  # fmt: skip
    peak = unpaged = sum(at_peak.values())
    # (walk, optimizer step, reduction) moments; the paged path reads them without the reduction
    moments = _moments(cats, act.walk, loss_b, opt_ws, transient_b, reduce_b, freed_b, backward,
                       copies_b)  # fmt: skip
    at_step = moments[1]
    step_b = sum(at_step.values()) - at_step["cuda_context"] - nccl_b
    pageable = _pageable_bytes(sc, step, stage)
    paged = cached = cached_act = 0
    if pageable:  # (a paged optimizer is refused under torch.nn.DataParallel: no reduce_b)
        at_walk, at_opt, _ = _moments(cats, act.walk, loss_b, opt_ws, transient_b, 0, freed_b,
                                      backward, copies_b)  # fmt: skip
        at_peak, paged = paged_peak(at_walk, at_opt, pageable, hw.memory_bytes)
        peak = sum(at_peak.values())
    elif sc.runtime.memory_reported != "allocated" and (
        flat_step_buffers(sc, step) or bf16_optimizer_reduce(sc, step)
    ):
        # a reserved / device-level figure: the step's flat buffers beside the cached walk
        at_walk, at_opt, _ = moments
        reported = min(hw.memory_bytes, sum(at_walk.values()) + flat_segment_bytes(
            sc, step, act.saved, n_layers, any(c.head for c in mine), ms.trainable))  # fmt: skip
        if reported > peak:  # (peak >= the step's moment: the cache is > 0)
            cache_b = reported - sum(at_opt.values())
            # the freed activations' blocks stay reserved (as activations), the rest: buffers
            cached_act = min(cache_b, max(0, at_walk["activations"] - at_opt["activations"]))
            at_peak = dict(at_opt, activations=at_opt["activations"] + cached_act,
                           buffers=at_opt["buffers"] + cache_b - cached_act)  # fmt: skip
            peak = sum(at_peak.values())
            cached = cache_b
            grow = cache_buffer_growth(cache_b, cached_act, loss_b)
            cats["buffers"] += grow
            buffers += grow
    # Blocks a reserved figure's cache keeps for the whole step, under buffers: FSDP2's
    # all-gather pool, and the row-parallel outputs held back behind their pending NCCL
    # reduce-scatter (freed, they stay cached: reserved never shrinks). Where the GPU runs out
    # the allocator waits for their events, frees its cache and retries, so each is at most
    # what the capacity leaves (the fit verdict is the allocated one's). The pending outputs
    # are not combined with a paged optimizer's or DeepSpeed's flat-buffer cache, neither of
    # which a runtime with nccl_record_streams has.
    pool = _within_capacity(fsdp2_gather_pool_bytes(sc, step, ms, n_layers), hw, peak)
    peak += pool
    pending = 0
    if not (pageable or cached):
        accum = accumulation_times(sc, step, stage, ms.trainable) if freed_b else (0, 0)
        pending = _within_capacity(pending_reduce_scatter_bytes(sc, step, stage, accum), hw, peak)
    peak += pending
    # What the caching allocator fragments, in a reserved figure (runtime allocator_replay)
    frag = 0
    if (
        sc.runtime.allocator_replay
        and sc.runtime.memory_reported != "allocated"
        and not (pageable or cached or role)
    ):
        stored = dict(states, parameters=params_b)  # (FP8 storage in place of 16-bit)
        alloc = stage_allocations(sc, step, stage, tensors, stored, act, opt_ws, freed)
        if alloc is not None:
            room = hw.memory_bytes - hw.cuda_context_bytes - nccl_b
            frag, oom = replay_stage(alloc, peak - pending - pool - hw.cuda_context_bytes - nccl_b,
                                     room)  # fmt: skip
            # a replay that runs out of memory does not fit: all of it, beyond the GPU
            frag = frag if oom else _within_capacity(frag, hw, peak)
    peak += frag
    at_peak["buffers"] += pool + pending + frag
    cats["buffers"] += pool + pending + frag
    buffers += pool + pending + frag
    breakdown = StageBreakdown(
        n_layers=n_layers, first=any(c.embedding for c in mine),
        last=any(c.head for c in mine), states=ms, host_bytes=host,
        per_layer_bytes=act.per_layer, saved=act.saved,
        activation_bytes_per_microbatch=sum(act.chunk_bytes.values()), in_flight=act.walk.in_flight,
        recompute_working_set_bytes=activations - act.walk.saved_peak, activations=activations,
        weight_versions=versions, stashed_weight_bytes=extra, optimizer_working_bytes=opt_ws,
        naive_dp_gather_bytes=gather, buffers=buffers,
        ddp_bucket_bytes=ddp_bucket_bytes(sc, step, ms.trainable),
        tp_gather_bytes=tp_gather_buffer_bytes(sc, step), nccl_bytes=nccl_b,
        te_dummy_wgrad_bytes=te_dummy_wgrad_bytes(sc, step, tensors),
        loss_tail=tuple(part for c in mine for part in c.tail),
        loss_apart=any(c.loss_apart for c in mine),
        loss_before_recompute=bool(loss_b) and act.walk.peak < activations + loss_b,
        gradients_transient=transient, gradients_freed_after_backward=freed,
        backward_part=act.backward_part.get(max(act.working_set, key=act.working_set.get), "")
        if act.working_set else "",
    )  # fmt: skip
    return StageMemory(
        stage=stage,
        gpus={"gpu0": 1, "replica": p.dp - 1}.get(role, p.tp * p.dp * p.cp),
        layers=tuple((c.lo, c.hi) for c in mine),
        memory_bytes=tuple((c, cats[c]) for c in MEMORY_CATEGORIES),
        host_memory_bytes=host,
        pinned_host_memory_bytes=pinned,
        peak_memory_bytes=peak,
        capacity_bytes=hw.memory_bytes,
        activation_bytes_per_microbatch=breakdown.activation_bytes_per_microbatch,
        microbatches_in_flight=act.walk.in_flight,
        params=ms.params,
        trainable=ms.trainable,
        loss_bytes=tuple(sorted(act.loss_bytes.items())),
        optimizer_working_bytes=opt_ws,
        transient_gradient_bytes=transient_b,
        freed_gradient_bytes=freed_b,
        chunk_activation_bytes=tuple(sorted(act.chunk_bytes.items())),
        offloaded_activation_bytes=tuple(sorted(act.block_bytes.items()))
        if sc.training.offload.activations
        else tuple(sorted(act.layer_offload_bytes.items())),
        recompute_working_set_bytes=tuple(sorted(act.working_set.items())),
        breakdown=breakdown,
        peak_memory_bytes_by_category=tuple((c, at_peak[c]) for c in MEMORY_CATEGORIES),
        pageable_bytes=pageable,
        paged_bytes=paged,
        peak_memory_bytes_unpaged=unpaged if pageable else 0,
        reduce_gradient_bytes=reduce_b,
        backward_moment_bytes=moment_b,
        autocast_copy_bytes=copies_b,
        role=role,
        allocator_cached_bytes=cached,
        allocator_cached_activation_bytes=cached_act,
        gather_pool_bytes=pool,
        pending_collective_bytes=pending,
        step_memory_bytes=step_b,
        fragmentation_bytes=frag,
    )


class BackwardMoment(NamedTuple):
    """A block's backward moment where the gradients are transient
    (:func:`transient_backward_moment`)."""

    activations: int
    gradients: int  # the transient gradients already written
    copies_gone: int  # autocast's weight copies of the buffers no longer held

    @property
    def total(self) -> int:
        return self.activations + self.gradients - self.copies_gone


def transient_backward_moment(sc: Scenario, step: ResolvedStep, stage: int, act: _Activations,
                              transient_b: int, ms: ModelStateBytes,
                              held_copies: int = 0) -> BackwardMoment | None:  # fmt: skip
    """Inside a block's backward, at the fuller of its two ends, where the gradients are
    transient (one GPU, one micro-batch: ``transient_b`` > 0; None otherwise).

    The backward runs the blocks last to first; while it runs block i's MLP backward (the
    working set's moment) the gradients of the head, of blocks i+1 .. L-1 and of block i's
    down-projection exist, and the saved tensors (or checkpoints) of blocks 0 .. i. Both sums
    are linear in i, so the fullest moment is at an end: the last block (every block's saved
    tensors; the head's gradients, and the token embedding's when the head's matmul runs on it,
    written first) or the first block (one block's; every gradient but the first block's and
    those of the embeddings, written after it). An MoE model's first dense blocks come first.
    Of autocast's weight copies (``held_copies`` in the buffers) the blocks' backwards still
    hold a re-materialised block's own under recompute, at the first block its own. Under full
    recompute the first block's end holds the step's peak wherever a block's gradients
    outweigh its checkpoint: it made a single-GPU checkpointed step's measured peak
    (simtrain.torchref, tests/test_memory_vs_measure.py) 16-27 % above max(activations,
    gradients), the rule for a step without recompute."""
    ids = step.rank_chunk_ids(stage)
    if not transient_b or len(ids) != 1 or not step.chunks[ids[0]].layers or not ms.trainable:
        return None
    t = sc.training
    cid = ids[0]
    ch = step.chunks[cid]
    *groups, (_, ends) = scenario_chunk_groups(sc, ch)  # dense blocks, MoE blocks, the rest

    def trained(ts: list[ParamTensor]) -> int:
        return sum(x.numel for x in ts if x.trainable)

    def grads(elements: int) -> int:  # transient gradient bytes of that many trainable elements
        return transient_b * max(elements, 0) // ms.trainable

    # per kind of block present (dense first; an MoE block's down projections are its
    # experts' and shared experts', which its grouped backward writes together)
    saved_of = (act.per_dense_layer or act.per_layer, act.per_layer)
    kinds = [_BlockKind(k, trained(ts), trained([x for x in ts if "down" in x.name.split(".")[:-1]]),
                        saved_of[i], model_state_bytes(ts, t).weight_copies)
             for i, (k, ts) in enumerate(groups) if k]  # fmt: skip
    first, last = kinds[0], kinds[-1]
    all_blocks = sum(b.count * b.trainable for b in kinds)
    others_saved = sum(b.count * b.saved for b in kinds) - first.saved
    emb = {x.name for x in embedding_param_tensors(sc.model, t)} if ch.embedding else set()
    late = trained([x for x in ends if x.name in emb and not x.matmul])  # (a head's table: early)
    # the copies the blocks' backwards hold there (none where no gradient flows through them)
    flows = grad_flows_through_blocks(t)
    kept_first = first.copies if flows else 0
    every_copy = sum(b.count * b.copies for b in kinds)
    kept_last = (last.copies if rematerialises(t) else every_copy) if flows else 0
    top = act.chunk_bytes[cid] + act.backward_delta[cid]  # the last block's moment
    at_first = BackwardMoment(max(top - others_saved, 0),
                              grads(ms.trainable - first.trainable + first.down - late),
                              max(held_copies - kept_first, 0))  # fmt: skip
    at_last = BackwardMoment(top, grads(ms.trainable - all_blocks + last.down - late),
                             max(held_copies - kept_last, 0))  # fmt: skip
    return max(at_last, at_first, key=lambda b: b.total)


class _BlockKind(NamedTuple):
    """One kind of decoder block on a rank (dense or MoE), for the backward's moment."""

    count: int  # blocks of the kind
    trainable: int  # trainable elements of one block
    down: int  # of them, the down projections'
    saved: int  # bytes one block saves per micro-batch
    copies: int  # autocast's weight-copy bytes of one block


def _within_capacity(extra: int, hw: HardwareProfile, peak: int) -> int:
    """What of ``extra`` cached bytes a reserved figure can hold beside ``peak``: at most the
    GPU's memory (the allocator frees its cache and retries before it fails)."""
    return min(extra, max(0, hw.memory_bytes - peak))


def cache_buffer_growth(cached: int, cached_activations: int, loss: int) -> int:
    """What a reserved figure's allocator cache adds to the buffers category's own total: the
    category holds the step's working memory and the loss working memory, which the step's
    moment does not hold; the cache's buffer part (``cached`` - ``cached_activations``) beyond
    that ``loss`` grows it."""
    return max(0, cached - cached_activations - loss)


def zero_gather_copy_bytes(sc: Scenario, step: ResolvedStep, trainable: int,
                           experts: int = 0) -> int:  # fmt: skip
    """The flat copies ZeRO-1's post-step all-gather of the updated 16-bit parameters makes
    (runtime ``zero_gather_flat_copies``; nanotron's ``all_gather_coalesced``, whose
    ZeroDistributedOptimizer is its only ZeRO stage): one of the rank's ``trainable`` parameters
    (each data-parallel rank's output slices flattened) and one of its shard, param_bytes x
    (N + ceil((N - E) / dp) + ceil(E / expert_dp)) with ``experts`` E of them routed experts'
    (sharded over the expert-data-parallel group: ``params.zero_shard``), over
    more than one data-parallel rank; 0 otherwise. Live after the step's update, so the step's
    moment holds the larger of the two."""
    p = sc.parallelism
    if not sc.runtime.zero_gather_flat_copies or p.zero_stage != 1 or p.zero_shards <= 1:
        return 0
    shard = zero_shard(trainable, experts, p.zero_shards, p.expert_dp)
    return step.precision.param * (trainable + shard)


def flat_step_buffers(sc: Scenario, step: ResolvedStep) -> bool:
    """Whether the optimizer step runs on flat gradient buffers (runtime
    ``flat_optimizer_buffers``): DeepSpeed's ZeRO-1/2 optimizer, which steps 16-bit gradients
    through fp32 master weights (not its BF16 optimizer, the fp32-accumulating precisions, nor
    an offloaded step)."""
    p, prec = sc.parallelism, step.precision
    return (sc.runtime.flat_optimizer_buffers and 1 <= p.zero_stage <= 2 and bool(prec.master)
            and not prec.grad_accum and not sc.training.offload.optimizer)  # fmt: skip


def bf16_optimizer_reduce(sc: Scenario, step: ResolvedStep) -> bool:
    """Whether DeepSpeed's BF16 optimizer reduces the gradients (runtime
    ``flat_optimizer_buffers``, an fp32-accumulating precision with fp32 master weights, its own
    data-parallel sharding: ZeRO 0 or 1 here; DeepSpeed runs it at its stage 0, engine.py
    l.1117-1150 at 819abe2a7), over more than one data-parallel rank."""
    p, prec = sc.parallelism, step.precision
    return (sc.runtime.flat_optimizer_buffers and p.zero_stage <= 1 and bool(prec.grad_accum)
            and bool(prec.master) and p.dp_cp > 1
            and not sc.training.offload.optimizer)  # fmt: skip


def reduce_copy_bytes(sc: Scenario, step: ResolvedStep, trainable: int) -> int:
    """The flat copy DeepSpeed's data-parallel reduction makes after the last backward.
    ZeRO-1 (:func:`flat_step_buffers`): one bucket, ``allreduce_bucket``'s ``tensor =
    self.flatten(bucket)`` (stage_1_and_2.py l.1333 at 2151c787a), of the layout's
    ``parallelism.bucket_mb`` (DeepSpeed's reduce_bucket_size), at most the rank's gradients,
    in the reduction's dtype; ZeRO-2 reduces its contiguous gradients from its ``ipg_buffer``
    in place (not modelled). The BF16 optimizer (:func:`bf16_optimizer_reduce`): each parameter
    group's flat fp32 gradient buffer is one bucket, cast to the communication dtype
    (engine.py ``allreduce_no_retain`` l.2137-2148, ``tensor.to(self.communication_data_type)``
    l.2111 at 819abe2a7; bf16 by default, l.733-742): about all the rank's gradients at once
    (the no-weight-decay group, biases and norms, is under 0.1 %). 0 otherwise."""
    if bf16_optimizer_reduce(sc, step):
        return trainable * wire_grad_bytes(sc, step)
    if not flat_step_buffers(sc, step) or sc.parallelism.zero_stage != 1:
        return 0
    grad = trainable * wire_grad_bytes(sc, step)
    return min(ddp_buckets(sc.parallelism.bucket_mb, grad)[1], grad)


def flat_step_allocations(sc: Scenario, step: ResolvedStep, trainable: int) -> tuple[int, ...]:
    """What DeepSpeed's ZeRO-1/2 step (:func:`flat_step_buffers`) allocates, in order, all live
    at once: the flat 16-bit copy of the rank's gradient partition and its fp32 cast
    (stage_1_and_2.py l.1694-1705 at 2151c787a), and, when the optimizer is torch's Adam
    (runtime ``fused_optimizer`` false), its two state-sized temporaries (the single-tensor
    step's ``denom``: ``costs.params.optimizer_working_bytes``) over the flat fp32 partition
    DeepSpeed hands it, one tensor per parameter group; () otherwise."""
    if not flat_step_buffers(sc, step):
        return ()
    t, prec = sc.training, step.precision
    shard = ceil(trainable / sc.parallelism.zero_shards)
    flats = (prec.grad * shard, prec.master * shard)
    if adam_temporaries(t, sc.runtime.fused_optimizer):
        flats += (prec.state * shard,) * 2
    return flats


def flat_segment_bytes(sc: Scenario, step: ResolvedStep, saved: tuple[SavedTensor, ...],
                       layers: int, head: bool, trainable: int) -> int:  # fmt: skip
    """New segments of a stage's flat reduction and step buffers
    (:func:`flat_buffer_segment_bytes`): the reduction's copy (:func:`reduce_copy_bytes`),
    then the step's (:func:`flat_step_allocations`); ``saved``: what one of the stage's layers
    saves (the walk's)."""
    flats = flat_step_allocations(sc, step, trainable)
    blocks = cached_activation_blocks(sc, saved, layers, head, len(flats) + 1)
    return flat_buffer_segment_bytes(blocks, reduce_copy_bytes(sc, step, trainable), flats)


def cached_activation_blocks(
    sc: Scenario, saved: tuple[SavedTensor, ...], layers: int, head: bool, requests: int
) -> tuple[int, ...]:
    """The largest blocks the caching allocator holds once the backward has freed one
    micro-batch's activations: each layer's largest saved tensor (``saved``, what one layer of
    the stage's walk saves: the MLP's inner activation, or the scores without flash attention),
    one block per layer (``requests`` of them stand for the stage's layers, enough for every
    request that follows; none without ``layers``), and on the head's stage what the loss saves
    over one GPU's s/cp tokens (``costs.activations.loss_saved_bytes``: the fp32 logits)."""
    p = sc.parallelism
    largest = max((x.bytes for x in saved), default=0)  # (a frozen probe saves nothing)
    blocks = [largest] * requests if layers and largest else []
    if head:
        blocks.append(loss_saved_bytes(sc.model, cp_rank_training(sc.training, p.cp), p.tp))
    return tuple(blocks)


def flat_buffer_segment_bytes(cached: tuple[int, ...], bucket: int,
                              flats: tuple[int, ...]) -> int:  # fmt: skip
    """New segments PyTorch's caching allocator cudaMallocs for the flat buffers after the last
    backward (:func:`flat_step_buffers`): the bucket copy (freed after its reduction), then the
    step's ``flats``, kept. The allocator serves a request from the smallest cached free block at
    least as large, splitting off the rest, else cudaMallocs a segment of its size, and frees
    cached blocks only when that fails (c10/cuda/CUDACachingAllocator.cpp ``malloc``:
    ``get_free_block`` best fit, ``alloc_block``, ``release_cached_blocks`` and retry); a freed
    block rejoins its split rest. ``cached``: the free blocks the activations left
    (:func:`cached_activation_blocks`)."""
    free = [blk for blk in cached if blk > 0]
    new = 0

    def take(size: int) -> int:
        nonlocal new
        fits = [blk for blk in free if blk >= size]
        if not fits:
            new += size
            return size
        blk = min(fits)
        free.remove(blk)
        if blk > size:
            free.append(blk - size)
        return blk

    if bucket > 0:
        blk = take(bucket)
        if blk > bucket:
            free.remove(blk - bucket)
        free.append(blk)
    for size in flats:
        if size > 0:
            take(size)
    return new


def _pageable_bytes(sc: Scenario, step: ResolvedStep, stage: int) -> int:
    """The stage's optimizer-state bytes in unified memory (``costs.params.paged_state_bytes``
    of its chunks' tensors, ``costs.params.scenario_chunk_groups``: the model states' own; 0
    without a paged optimizer)."""
    t = sc.training
    if not t.peft.paged_optimizer:
        return 0
    return sum(n * paged_state_bytes(ts, t) for c in step.rank_chunks(stage)
               for n, ts in scenario_chunk_groups(sc, c))  # fmt: skip


def paged_peak(at_walk: dict[str, int], at_opt: dict[str, int], pageable: int,
               capacity: int) -> tuple[dict[str, int], int]:  # fmt: skip
    """(the peak by category, the bytes evicted) with a paged optimizer (Dettmers et al. 2023
    §3: the states are "automatically evicted to CPU RAM when the GPU runs out of memory and
    paged back into GPU memory when the memory is needed in the optimizer update step").

    At the activation walk's peak the driver evicts what does not fit, at most the states in
    unified memory: ``paged = min(pageable, max(0, need - capacity))`` with ``need`` the
    walk's moment with every state resident (``at_walk``). The optimizer step needs them all
    back (bitsandbytes prefetches each state before its update, ``prefetch_state``), so its
    moment (``at_opt``) is unchanged. The peak is the larger of the two, ties to the walk."""
    need = sum(at_walk.values())
    paged = min(pageable, max(0, need - capacity))
    walk = dict(at_walk, optimizer_states=at_walk["optimizer_states"] - paged)
    return (walk if sum(walk.values()) >= sum(at_opt.values()) else dict(at_opt)), paged


def _peak_by_category(cats: dict[str, int], walk: WalkPeak, loss_b: int, opt_ws: int,
                      transient_b: int, reduce_b: int = 0, freed_b: int = 0,
                      backward: BackwardMoment | None = None,
                      copies_b: int = 0) -> dict[str, int]:  # fmt: skip
    """The stage's memory at its peak, by category; the values sum to the peak.

    Everything static is there all step: model states, the CUDA context and the buffers but
    their two transients. The rest peaks at one of two moments, whichever holds more: the
    activation walk's peak (saved activations, plus the recompute working set before a backward
    or the loss working memory during the head's forward: ``walk``), or an optimizer step: its
    working memory (under buffers), when the 16-bit gradients are transient those gradients
    (``transient_b``), and the activations still saved then (none after a flush; PipeDream
    steps after every backward with other micro-batches stashed). Ties go to the walk.
    Under torch.nn.DataParallel a third moment: a reduction of the gradients onto GPU 0, when
    ``reduce_b`` of them exist only until it ends (after backward, before the optimizer step,
    activations as at the step); ties between the two go to the optimizer step.
    When ``freed_b`` of the gradients (the 16-bit ones, runtime grads_freed_per_microbatch) are
    freed after every backward, they are at neither moment but at the end of a backward, with
    the activations still saved then (``walk.after_backward_saved``); ties go to the walk.
    Where the gradients are transient, a block's backward holds those produced before it
    (``backward``, :func:`transient_backward_moment`): the walk's moment where that holds more.
    Autocast's weight copies (``copies_b`` of the buffers) are gone by the optimizer step and
    a reduction after the backward.
    """
    at_walk, at_opt, at_reduce = _moments(cats, walk, loss_b, opt_ws, transient_b, reduce_b,
                                          freed_b, backward, copies_b)  # fmt: skip
    if freed_b:  # the 16-bit gradients exist only from a backward to its end
        at_bwd = dict(at_opt, activations=walk.after_backward_saved,
                      gradients=cats["gradients"] - transient_b - reduce_b,
                      buffers=cats["buffers"] - loss_b - opt_ws)  # fmt: skip
        return max((at_walk, at_opt, at_bwd), key=lambda d: sum(d.values()))
    walk_b, opt_b, reduce_sum = (sum(d.values()) for d in (at_walk, at_opt, at_reduce))
    if walk_b >= max(opt_b, reduce_sum):
        return at_walk
    return at_opt if opt_b >= reduce_sum else at_reduce


def _moments(cats: dict[str, int], walk: WalkPeak, loss_b: int, opt_ws: int, transient_b: int,
             reduce_b: int = 0, freed_b: int = 0,
             backward: BackwardMoment | None = None, copies_b: int = 0
             ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:  # fmt: skip
    """The stage's memory by category at the activation walk's peak, at the optimizer step
    and at a DataParallel reduction onto GPU 0 (:func:`_peak_by_category`); ``freed_b``
    gradients, freed after every backward, are at neither of the first two. ``backward``
    (activations, transient gradients, autocast weight copies gone) of a block's backward where
    the gradients are transient (:func:`transient_backward_moment`): the walk's moment where
    it holds more. ``copies_b``: autocast's weight copies, not held at the last two moments
    (measured with simtrain.torchref: an autocast step whose peak is its optimizer step peaks
    at its fp32 twin's, byte for byte; +9.9 % while they were counted there)."""
    base_buffers = cats["buffers"] - loss_b - opt_ws
    at_walk = dict(
        cats,
        gradients=cats["gradients"] - transient_b - reduce_b - freed_b,
        activations=walk.saved + walk.working_set,
        buffers=base_buffers + walk.loss,
    )
    if backward is not None:
        at_bwd = dict(at_walk, activations=backward.activations,
                      gradients=at_walk["gradients"] + backward.gradients,
                      buffers=base_buffers - backward.copies_gone)  # fmt: skip
        if sum(at_bwd.values()) > sum(at_walk.values()):
            at_walk = at_bwd
    at_opt = dict(
        cats,
        gradients=cats["gradients"] - reduce_b - freed_b,
        activations=walk.optimizer_saved,
        buffers=base_buffers - copies_b + opt_ws,
    )
    at_reduce = dict(
        cats,
        gradients=cats["gradients"] - transient_b,
        activations=walk.optimizer_saved,
        buffers=base_buffers - copies_b,
    )
    return at_walk, at_opt, at_reduce


def wire_grad_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """Bytes per gradient element in the data-parallel reduction (and so in its buckets and
    any buffer it reduces from): 4 under a runtime that reduces in fp32
    (``runtime.grad_reduce_dtype``), else the gradients' own dtype."""
    return 4 if sc.runtime.grad_reduce_dtype == "fp32" else step.precision.grad


def grad_buffer_elem_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """Bytes per trainable element of the gradient buffer the step's passes read and write:
    the runtime's reduction buffer (:func:`buffer_grad_bytes`), else the precision's fp32
    accumulation buffer or its gradients."""
    return buffer_grad_bytes(sc, step) or step.precision.optimizer_grad_read


def buffer_grad_bytes(sc: Scenario, step: ResolvedStep) -> int | None:
    """Gradient bytes per trainable element under a runtime that keeps the gradients in its
    reduction buffer (Megatron-Core DDP, ``param_and_grad_buffer.py``: fp32 when
    ``grad_reduce_in_fp32``, else the parameters' dtype); None: the precision's own."""
    rt = sc.runtime
    if not rt.grads_in_reduce_buffer:
        return None
    return wire_grad_bytes(sc, step)


def pipeline_recv_buffer_bytes(sc: Scenario, step: ResolvedStep, rank: int,
                               held: dict[int, int]) -> int:  # fmt: skip
    """A rank's pipeline receive buffers under ``runtime.pipeline_recv_buffers_per_microbatch``
    (torch.distributed.pipelining): each of its chunks but the first stage's holds one
    activation buffer per micro-batch, each but the last stage's one gradient buffer per
    micro-batch, b·s·h (/tp under sequence parallelism) each. A received activation is the
    first block's input while its micro-batch is in flight, counted with the activations: only
    the other micro-batches' buffers are added (``held``: virtual stage -> micro-batches it
    holds at the activation walk's peak; the first stage's held ones have no buffer to
    discount). 0 without the rule or a pipeline."""
    if not sc.runtime.pipeline_recv_buffers_per_microbatch or step.pp == 1:
        return 0
    one = p2p_buffer_bytes(sc, step)
    chunks = step.rank_chunk_ids(rank)
    last = step.last_stage
    m = step.microbatches
    act = sum(m - held.get(c, 0) for c in chunks if c > 0)  # held <= m
    grad = sum(m for c in chunks if c < last)
    return (act + grad) * one


def pipeline_output_chunk_bytes(sc: Scenario, step: ResolvedStep, rank: int) -> int:
    """The last stage's outputs, the logits, of every micro-batch, held to the end of the step
    under ``runtime.pipeline_keeps_last_outputs`` (torch.distributed.pipelining: stage.py
    ``forward_one_chunk`` appends the last stage's output to ``output_chunks``, which
    ``PipelineScheduleSingle/Multi.step`` merge after the last backward): at the last
    micro-batch's loss all m are held, b·(s/cp)·V in the activation dtype each (V/tp under
    loss parallel, the output's Shard(-1)). The merge's concatenation at the step's end (another
    m of them, with the activations gone) is not counted. 0 without the rule, a pipeline, or the
    head on this rank."""
    if not sc.runtime.pipeline_keeps_last_outputs or step.pp == 1:
        return 0
    if not any(c.head for c in step.rank_chunks(rank)):
        return 0
    t = cp_rank_training(sc.training, sc.parallelism.cp)
    vocab_split = t.cross_entropy in ("loss_parallel", "te", *MEGATRON_KERNEL_LOSSES)  # V/tp
    vocab = sc.model.vocab // (sc.parallelism.tp if vocab_split else 1)
    one = step.precision.act_mm * t.micro_batch * t.seq_len_effective * vocab
    return step.microbatches * one


def fsdp_root_bytes(sc: Scenario, tensors: list[ParamTensor], ms: ModelStateBytes,
                    n_layers: int) -> tuple[int, int] | None:  # fmt: skip
    """(parameters whole at once, gradients whole through the backward) of a ZeRO-3 stage
    under FSDP2 (``runtime.fsdp_root_unsharded``): the current and the prefetched block, the
    root group's parameters (those outside the blocks: embedding, final norm, output); the
    output layer's and final norm's gradients, held from their backward to the root's
    reduction at the end of backward. None where the rule does not apply (a dense model's
    stage with decoder blocks, parameters on the GPU)."""
    m, t, p = sc.model, sc.training, sc.parallelism
    if not sc.runtime.fsdp_root_unsharded or m.is_moe or not n_layers or t.offload.parameters:
        return None
    root, block = fsdp_groups(sc, ms, n_layers)
    head = {x.name for x in head_param_tensors(m, t, p.tp, p.pp)}
    grads = sum(x.numel for x in tensors if x.name in head and x.trainable)
    return 2 * block + root, grads


def fsdp_groups(sc: Scenario, ms: ModelStateBytes, n_layers: int) -> tuple[int, int]:
    """(root group, one block) parameters of a stage under FSDP2: a block's
    (:func:`fsdp_block_params`), and the stage's parameters outside its ``n_layers`` blocks
    (embedding, final norm, output: torchtitan's ``fully_shard(model)``)."""
    block = fsdp_block_params(sc)
    return ms.params - n_layers * block, block


def fsdp_block_params(sc: Scenario) -> int:
    """Parameters of one decoder block on a GPU (its TP shard): FSDP2's per-block group."""
    p = sc.parallelism
    return sum(x.numel for x in layer_param_tensors(sc.model, sc.training, p.tp, ep=p.ep,
                                                    etp=p.etp))  # fmt: skip


def fsdp2_gather_pool_bytes(sc: Scenario, step: ResolvedStep, ms: ModelStateBytes,
                            n_layers: int) -> int:  # fmt: skip
    """FSDP2's all-gather pool in a reserved or device-level memory figure: each parameter
    group's gathered (param-dtype) parameters are allocated on its copy-in stream with the
    shard's param-dtype cast staged beside them (torch 2.13 distributed/fsdp/_fully_shard/
    _fsdp_collectives.py l.336-351, 419) and freed there after their copy-out into the
    unsharded parameters (_fsdp_param_group.py l.430-432, 487-489), two groups at most live
    (the next one prefetched); the blocks go back to that stream's pool, which the compute
    stream's allocations cannot reuse, so the reserved peak keeps the pool's own peak beside the
    compute stream's: two consecutive groups' gathered parameters and the first's cast shard,
    the root group (``runtime.fsdp_root_unsharded``: the stage's parameters outside its blocks)
    then the first block, or two blocks. Applies where FSDP2 shards the parameters over
    dp x cp > 1 (``runtime.zero3_gather_copy_out``, its copy-out, under ZeRO-3, or ZeRO-2:
    torchtitan's ``reshard_after_forward=False`` with a pipeline gathers each group once per
    step through the same pool) and the figure is not the allocated one; 0 otherwise, and for
    MoE stages (expert groups not modelled)."""
    m, p, rt = sc.model, sc.parallelism, sc.runtime
    if (rt.memory_reported == "allocated" or not rt.zero3_gather_copy_out or p.zero_stage < 2
            or p.zero_shards <= 1 or m.is_moe or sc.training.offload.parameters):  # fmt: skip
        return 0
    root, block = fsdp_groups(sc, ms, n_layers)
    groups = ([root] if root > 0 and rt.fsdp_root_unsharded else []) + [block] * n_layers
    # the cast shard is staged only where param_dtype differs from the sharded parameters: fp32
    # masters sharded, 16-bit gathered (not under bf16_pure, whose shards are already 16-bit)
    prec = step.precision
    cast = 1 / p.zero_shards if prec.master > prec.param else 0
    return ceil(prec.param * max((a + a * cast + b for a, b in pairwise([*groups, 0])), default=0))


def pending_reduce_scatter_bytes(sc: Scenario, step: ResolvedStep, stage: int,
                                 accumulation: tuple[int, int] = (0, 0)) -> int:  # fmt: skip
    """Row-parallel outputs held back by PyTorch's caching allocator while the NCCL
    reduce-scatter that reads them is still queued (runtime ``nccl_record_streams``), at the
    end of a forward, in a reserved or device-level memory figure (``memory_reported``).

    Sequence-parallel TP (tp > 1) reduce-scatters the attention's output projection and a dense
    MLP's down projection, each a full b x s/cp x h output (``costs.comm.
    reduce_scatter_input_bytes``, an MoE block's FFN as ``costs.comm`` prices it), and frees it
    once the collective is issued. c10d marks a collective's tensors as used on its NCCL stream
    (ProcessGroupNCCL ``recordStream``, unless TORCH_NCCL_AVOID_RECORD_STREAMS=1), so the
    allocator records an event there at the free and reuses the block only once the event has
    completed (c10/cuda/CUDACachingAllocator.cpp ``insert_events`` / ``process_events``): while
    the host runs ahead of the GPU the next layers' allocations cannot use it and take new
    segments, which the cache keeps. Each chunk's pending share is the part of its forward the
    GPU has not run when the host has issued it all, at the step's last micro-batch
    (``costs.chunk_time.forward_issue_shares``: ``pending_fraction`` of the forward's GPU and
    host time, the GPU lagging ``host_lead_ns`` behind; ``accumulation``, the (GPU, host) ns
    of the gradient adds after each backward, ``costs.chunk_time.accumulation_times``, counts
    in the lag). The chunk with the most counts. 0 for an allocated figure, tp 1, no sequence
    parallelism or the key off."""
    p, rt = sc.parallelism, sc.runtime
    if (not rt.nccl_record_streams or rt.memory_reported == "allocated" or p.tp <= 1
            or not p.sequence_parallel):  # fmt: skip
        return 0
    return max(
        (
            int(reduce_scatter_input_bytes(sc, step, step.chunks[k]) * share)
            for k, share in forward_issue_shares(sc, step, stage, accumulation)
        ),
        default=0,
    )


def pipeline_defers_reduction(sc: Scenario, pp: int) -> bool:
    """Whether a pipeline schedule over sharded data parallelism reduces the gradients once,
    after every micro-batch's backward, instead of in each backward
    (``runtime.pipeline_grads_unsharded``: PyTorch pipelining over FSDP2 turns the gradient
    sync off for every backward, ``stage.py backward_maybe_with_nosync``:
    ``set_requires_gradient_sync(False)``, and reduce-scatters in its REDUCE_GRAD action after
    the stage's last backward, ``perform_reduce_grad``, torch 2.13.0): ZeRO-2/3 over more than
    one data-parallel rank, pp > 1."""
    p = sc.parallelism
    return sc.runtime.pipeline_grads_unsharded and pp > 1 and p.zero_stage >= 2 and p.dp_cp > 1


def accumulation_defers_reduction(sc: Scenario, step: ResolvedStep) -> bool:
    """Whether a ZeRO-3 run without a pipeline reduces its gradients only in the last
    micro-batch's backward (``runtime.grad_sync_last_microbatch``: FSDP2's gradient sync off
    for the others), holding them whole until then in the reduction's dtype: more than one
    micro-batch (a shard group of one GPU too: FSDP2 still keeps the upcast accumulated
    gradient, ``_fsdp_param.py to_accumulated_grad_if_needed``)."""
    return (sc.runtime.grad_sync_last_microbatch and step.pp == 1 and step.microbatches > 1
            and sc.parallelism.zero_stage == 3)  # fmt: skip


def deferred_gradient_bytes(sc: Scenario, step: ResolvedStep, trainable: int) -> int:
    """The stage's gradients where the reduction is deferred, by the pipeline
    (:func:`pipeline_defers_reduction`) or to the last micro-batch's backward
    (:func:`accumulation_defers_reduction`): every trainable parameter's whole gradient, in the
    reduction's dtype (4 bytes with ``grad_reduce_dtype: fp32``), held from its first backward
    to the reduction; 0 where neither rule applies (the ZeRO shard stands)."""
    if not (pipeline_defers_reduction(sc, step.pp) or accumulation_defers_reduction(sc, step)):
        return 0
    return trainable * wire_grad_bytes(sc, step)


def persistent_gradient_bytes(step: ResolvedStep, trainable: int) -> int:
    """The part of a stage's gradients that exists for the whole step even when the 16-bit
    gradients are transient: an fp32 accumulation buffer (``bf16_fp32_grads``)."""
    return trainable * step.precision.grad_accum


def stage_allocations_of(sc: Scenario, sm: StageMemory) -> StageAllocations | None:
    """:func:`stage_allocations` of the stage ``sm`` is the estimate of, from the same tensors
    :func:`stage_memory` hands it (its stored parameters, optimizer working set and gradient
    lifetime): what the replay plays, for the checks and benchmarks that replay it apart."""
    step = resolve(sc)
    _, tensors, states, _ = _model_states(sc, step, sm.stage)
    act = _stage_activations(sc, step, sm.stage)
    stored = dict(states, parameters=sm.category("parameters"))
    return stage_allocations(sc, step, sm.stage, tensors, stored, act, sm.optimizer_working_bytes,
                             sm.breakdown.gradients_freed_after_backward)  # fmt: skip


#: DDP buckets the allocator replay makes one by one (a few hundred at the default 25 MB); more
#: (a tiny ``bucket_mb``: up to spec.limits.MAX_DDP_BUCKETS) are made in this many groups.
MAX_REPLAY_BUCKETS = 4096


def replay_buckets(n: int, bucket: int, last: int) -> tuple[int, ...]:
    """DDP's ``n`` gradient buckets (``bucket`` bytes, the last ``last``) as the allocator
    replay makes them: one allocation each, or past :data:`MAX_REPLAY_BUCKETS` the first n - 1
    in that many groups of k, each the allocator's rounded bytes of its k buckets (512 B
    multiples: the allocated total is kept; the small blocks' own pool segments are not), so
    the replay's time and memory stay bounded (4,194,304 one-kilobyte buckets had run the
    replay out of memory)."""
    if n <= MAX_REPLAY_BUCKETS:
        return (bucket,) * (n - 1) + (last,)
    k = -(-(n - 1) // MAX_REPLAY_BUCKETS)
    full, rest = divmod(n - 1, k)
    rounded = round_size(bucket)
    return (k * rounded,) * full + ((rest * rounded,) if rest else ()) + (last,)


def stage_allocations(sc: Scenario, step: ResolvedStep, stage: int, tensors: list[ParamTensor],
                      states: dict[str, int], act: _Activations, opt_ws: int,
                      grads_freed: bool) -> StageAllocations | None:  # fmt: skip
    """The rank's tensors for the allocator replay (:mod:`simtrain.costs.fragmentation`): its
    parameter tensors (each one's share of the stored parameters: 4-bit or FP8 storage
    included); at start-up its persistent gradient buffer (one flat tensor: nanotron's
    contiguous fp32 buffer, or a runtime's reduce buffer), master weights (each trainable
    tensor's share), DDP's buckets and cached gather buffers; per micro-batch each block's
    saved tensors, what the embedding / head save and the loss working memory; the trainable
    tensors' 16-bit gradients; the optimizer's states (each trainable tensor's share, in two
    halves: Adam's exp_avg and exp_avg_sq) and its step working memory. None where the order
    does not hold: more than one chunk on the rank, a schedule with split backward actions or
    an optimizer step per micro-batch, routed experts, ZeRO-2/3 and FSDP (sharded gradients;
    gathers per block), or blocks that keep less than they save (recompute, offload: the
    re-materialisation is not played)."""
    mine = step.rank_chunk_ids(stage)
    p, prec = sc.parallelism, step.precision
    if (len(mine) != 1 or sc.model.is_moe or p.zero_stage >= 2
            or step.traits.steps_every_microbatch):  # fmt: skip
        return None
    (cid,) = mine
    ch = step.chunks[cid]
    per_layer_saved = tuple(t.bytes for t in act.saved)
    if ch.layers and (sum(per_layer_saved) != act.per_layer or act.layer_offload_bytes
                      or sc.training.offload.activations):  # fmt: skip
        return None
    # 2·pp + 2 micro-batches of a 1F1B order: the warm-up, the steady state and the drain (4·pp
    # + 8 or all of them give the same bytes within 0.01 GiB on 147 of 150 Playbook records,
    # benchmarks/replay_sensitivity.py; up to 0.9 GiB on 3 that ran out of memory); the whole
    # step where that holds fewer in flight
    # (GPipe, naive: min(m, p - s) only for 1F1B)
    name, m = step.schedule_name, step.microbatches
    short = min(m, 2 * p.pp + 2)
    if microbatches_in_flight(name, p.pp, short, stage) != microbatches_in_flight(
            name, p.pp, m, stage):  # fmt: skip
        short = m
    actions = rank_schedule(name, p.pp, short, step.v, stage, step.all_warmup_at_pp,
                            step.microbatch_group)  # fmt: skip
    kinds = tuple(a.kind for a in actions if a.kind != "OPT")
    if set(kinds) - {"F", "B"}:
        return None
    n_layers = ch.layers
    layer = layer_param_tensors(sc.model, sc.training, p.tp, ep=p.ep, etp=p.etp) if n_layers else []
    ends = tensors[len(layer) :]
    order = [t for _ in range(n_layers) for t in layer] + list(ends)
    trained = [t for t in order if t.trainable]
    numel = sum(t.numel for t in order)
    trainable = sum(t.numel for t in trained)

    def share(total: int, t: ParamTensor, of: int) -> int:  # a tensor's part of a category
        return total * t.numel // of if of else 0

    grad_b = prec.grad
    in_buffer = buffer_grad_bytes(sc, step)  # a runtime's reduce buffer: its dtype, not .grad's
    flat_grads = persistent_gradient_bytes(step, trainable) + (in_buffer or 0) * trainable
    ddp = ddp_bucket_bytes(sc, step, trainable)
    gathers = tp_gather_buffer_bytes(sc, step) // step.boundary_bytes if step.boundary_bytes else 0
    persistent = (
        flat_grads,
        *(share(states["master_weights"], t, trainable) for t in trained),
        *(replay_buckets(*ddp_buckets(p.bucket_mb, ddp)) if ddp else ()),
        *((step.boundary_bytes,) * gathers),
    )
    end_saved = max(0, act.chunk_bytes[cid] - n_layers * sum(per_layer_saved))
    return StageAllocations(
        parameters=tuple(b for t in order if (b := share(params_bytes, t, numel)) > 0)
        if (params_bytes := states["parameters"]) else (),
        persistent=tuple(b for b in persistent if b > 0),
        layers=n_layers,
        layer_saved=per_layer_saved,
        layer_gradients=() if in_buffer else tuple(t.numel * grad_b for t in layer if t.trainable),
        end_saved=end_saved,
        end_gradients=() if in_buffer else tuple(t.numel * grad_b for t in ends if t.trainable),
        loss=act.loss_bytes.get(cid, 0),
        gradients_per_microbatch=grads_freed,
        optimizer_states=tuple(b for t in trained
                               for b in (share(states["optimizer_states"], t, trainable) // 2,) * 2
                               if b > 0),
        step_working=(opt_ws,) if opt_ws else (),
        actions=kinds,
    )  # fmt: skip


def one_device_stage(model: ModelSpec, training: TrainingSpec) -> StageMemory:
    """simtrain's estimate of ``model`` under ``training`` on one GPU, no parallelism (the A100
    80GB profile's: only the CUDA context depends on it): what ``simtrain measure`` weighs."""
    from simtrain.spec.hardware import load_hardware
    from simtrain.spec.scenario import ClusterSpec, ParallelSpec

    hw = load_hardware("a100_sxm4_80gb")
    sc = Scenario("one_device", model, hw, ClusterSpec(1, 1), training, ParallelSpec())
    return estimate_memory(sc).stages[0]


def estimate_memory(sc: Scenario) -> MemoryReport:
    """Memory per GPU of every pipeline stage of a scenario; under torch.nn.DataParallel
    GPU 0 (the one stage) and a replica apart."""
    dp = is_data_parallel(sc)
    return MemoryReport(
        scenario=sc.name,
        params=total_params(sc.model, sc.training),
        trainable_params=trainable_params(sc.model, sc.training),
        stages=tuple(stage_memory(sc, s, "gpu0" if dp else "") for s in range(sc.parallelism.pp)),
        replica=stage_memory(sc, 0, "replica") if dp else None,
    )
