"""Lowering's input: per-chunk durations, per-rank work and memory, and the NIC plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from simtrain.schedules import Action, Schedule, pipeline_of


@dataclass(frozen=True, slots=True)
class ChunkDurations:
    """Durations of one virtual stage's work for one micro-batch (ns)."""

    forward_ns: int
    input_grad_ns: int
    weight_grad_ns: int
    recompute_ns: int = 0
    tp_forward_ns: int = 0  # exposed TP communication after the forward
    tp_backward_ns: int = 0  # ... after the backward (B: input and weight gradients)
    tp_input_grad_ns: int = 0  # ... after an input-gradient-only backward (I of an I/W split)
    # TP collectives hidden under an action's own GEMMs, drawn on the "tp" stream beside it
    # (``passes.tp_overlap_span_pass``):
    # a B action's (runtime tp_backward_overlap, or a tp_comm_overlap that pairs collectives
    # with their GEMMs: costs.compute.tp_pairs_gemms)
    tp_backward_hidden_ns: int = 0
    tp_forward_hidden_ns: int = 0  # an F action's (the paired tp_comm_overlap)
    tp_input_grad_hidden_ns: int = 0  # an I action's of an I/W split (the paired overlap)
    tp_recompute_hidden_ns: int = 0  # a full recompute's (paired), beside its R slice
    tp_recompute_ns: int = 0
    send_forward_ns: int = 0  # p2p of the output activations to the next stage
    send_backward_ns: int = 0  # p2p of the input gradient to the previous stage
    layers: tuple[int, int] = (0, 0)
    # ZeRO-3 (Rajbhandari et al. 2020 §5.3; FSDP): each layer's parameters are all-gathered
    # before its forward and its backward (prefetched one layer ahead on the "gather" stream)
    # and its gradients reduce-scattered after its backward.
    gather_ns_per_layer: int = 0
    reduce_scatter_ns_per_layer: int = 0
    # ZeRO-2 under a runtime that does not overlap the reduction: the next compute slice
    # waits for each reduce-scatter (costs.workload._zero2_chunks)
    reduce_scatter_blocking: bool = False
    # ZeRO-3 with the gradient sync off but in the last micro-batch (runtime
    # grad_sync_last_microbatch): the per-layer reduce-scatters follow the chunk's last backward
    # only (``passes.zero3_pass``)
    reduce_scatter_last_backward_only: bool = False
    # Pipelining over FSDP2 (costs.workload.deferred_reduction_ns): the chunk's whole gradients
    # reduce-scattered once, after its last backward, the rank's compute waiting for it
    # (``passes.final_reduce_pass``)
    final_reduce_ns: int = 0
    # ... and FSDP2 there leaves the chunk's parameters unsharded after each backward
    # (stage.py backward_maybe_with_nosync: set_reshard_after_backward(False)): an action of the
    # chunk after one of its backwards gathers nothing; a forward reshards them again
    # (reshard_after_forward) (``passes.zero3_pass``)
    unsharded_after_backward: bool = False
    # FSDP2's copy of each gather's output into the unsharded parameters, on the compute stream
    # between the all-gather and the layer's compute (runtime zero3_gather_copy_out)
    gather_copy_ns_per_layer: int = 0
    # Host time of issuing the forward's / the backward's kernels (eager dispatch; costs.host),
    # the backward's including its recompute; 0 = the host always runs ahead of the GPU.
    host_forward_ns: int = 0
    host_backward_ns: int = 0
    # Context parallelism: the ring exchange of K/V (forward, recompute) and of K/V and dK/dV
    # (backward) on the "cp" stream, overlapped with the action's attention; its exposed part
    # is already in the compute durations above.
    cp_forward_ns: int = 0
    cp_backward_ns: int = 0
    cp_recompute_ns: int = 0
    # Expert parallelism (costs.moe): the dispatch and combine all-to-alls of the chunk's MoE
    # layers in the forward, again in the backward (and in a full recompute's forward), on the
    # "collective" stream after the action's compute (``passes.ep_pass``).
    ep_forward_ns: int = 0
    ep_backward_ns: int = 0
    ep_recompute_ns: int = 0
    # CPU offload (costs.offload; ``passes.offload_pass``). Parameter offload (ZeRO-Infinity):
    # each layer's parameter partition copied up on the "h2d" stream before its compute slice
    # (and its all-gather), prefetched one slice ahead. ZeRO-3 with optimizer offload: each
    # layer's reduced gradient partition copied down on the "d2h" stream after every backward
    # (16-bit, accumulated on the host), and at the rank's last backward in fp32 as well.
    param_h2d_ns_per_layer: int = 0
    grad_d2h_ns_per_layer: int = 0
    grad_d2h_last_ns_per_layer: int = 0
    # Activation offload (DeepSpeed cpu_checkpointing): one micro-batch's checkpoints of the
    # chunk copied down after its forward and up before its backward, each way.
    act_copy_ns: int = 0
    act_copy_bytes: int = 0
    # ... or Megatron-Core's layer offload (training.offload.activation_layers): the copies run
    # beside the forward and the backward they belong to, which end when both have; the bytes
    # are not in the chunk's activations at all (costs.memory: TE's schedule keeps L - N
    # blocks' on the GPU)
    act_copy_beside: bool = False
    # 16-bit gradients freed after every backward (runtime grads_freed_per_microbatch): a
    # backward's gradients exist from its end while they are added into the fp32 accumulation
    # buffer (``accum_ns``), then are freed (``pieces.action_pieces``'s "ACC" piece).
    accum_ns: int = 0
    accum_bytes: int = 0
    # ... and the host's dispatch of those adds, one op per trainable tensor (costs.host
    # .accumulation_host_ns), after the backward's last kernels: on B, or on W when split.
    host_accum_ns: int = 0

    def host_ns(self, kind: str) -> int:
        """Host time of action ``kind`` (F, B, I or W); a split backward's host time is shared
        between I and W in proportion to their GPU time, the gradient adds' on W."""
        if kind == "F":
            return self.host_forward_ns
        if kind == "B":
            return self.host_backward_ns + self.host_accum_ns
        total = self.input_grad_ns + self.weight_grad_ns
        i = self.host_backward_ns * self.input_grad_ns // total if total else self.host_backward_ns
        return i if kind == "I" else self.host_backward_ns - i + self.host_accum_ns


@dataclass(frozen=True, slots=True)
class RankWork:
    """Per-rank work outside the micro-batch loop."""

    grad_sync_ns: int = 0  # data-parallel gradient reduction (collective stream)
    grad_sync_name: str = "ALLREDUCE grads"
    # DDP: one all-reduce per gradient bucket, each launched as soon as the last backward has
    # produced it (Li et al. 2020, "PyTorch Distributed", §3.2.3); empty = one sync at the end.
    bucket_ns: tuple[int, ...] = ()
    bucket_name: str = "DP all-reduce"
    post_opt_ns: int = 0
    post_opt_name: str = "AG params"
    # The same all-gather overlapped with the step's forward (Megatron-Core
    # --overlap-param-gather): (first bucket, the rest) at the start of the step on the "dp"
    # stream; the first forward waits for the first bucket only.
    pre_gather_ns: tuple[int, int] = (0, 0)
    optimizer_ns: int = 0
    # memory the optimizer step allocates at its start / frees at its end (category, bytes)
    optimizer_alloc: tuple[tuple[str, int], ...] = ()
    optimizer_free: tuple[tuple[str, int], ...] = ()
    # memory (category, bytes) allocated with the rank's first compute op and freed after its
    # last backward, not held at the optimizer step (autocast's weight copies:
    # costs.workload.held_through_backward)
    step_held: tuple[tuple[str, int], ...] = ()
    # A paged optimizer: ``paged_bytes`` of optimizer states evicted to host memory during the
    # step (``page_out_ns``, from its start) and prefetched back before the optimizer step
    # (``page_in_ns``), on a "paging" stream (``paging_pass``).
    paged_bytes: int = 0
    page_out_ns: int = 0
    page_in_ns: int = 0
    # Optimizer offload (ZeRO-Offload, costs.offload): the optimizer step runs on the rank's
    # "cpu" stream; at the last backward each gradient bucket's partition is copied down on the
    # "d2h" stream after the bucket is reduced (``grad_d2h_ns``, one per bucket; preceded by the
    # accumulator's copy up, ``grad_h2d_ns``, with gradient accumulation); every earlier
    # backward round-trips its 16-bit gradients through the host accumulator
    # (``accum_ns`` each way per backward action); the updated 16-bit parameters go back up
    # after the CPU step (``param_h2d_ns``).
    cpu_optimizer: bool = False
    grad_d2h_ns: tuple[int, ...] = ()
    grad_h2d_ns: tuple[int, ...] = ()
    accum_ns: int = 0
    param_h2d_ns: int = 0


@dataclass(frozen=True, slots=True)
class DataParallelPlan:
    """``torch.nn.DataParallel`` (``costs.data_parallel``): GPU 0 (rank 0) runs the module and
    drives the replicas; rank 1 stands for each of the dp − 1 other GPUs. Per micro-batch
    (one ``DataParallel.forward`` call and its backward), in GPU 0's stream order: scatter the
    inputs, broadcast the parameters, forward on every GPU, gather the outputs, the loss on
    GPU 0, scatter the output gradient, backward on every GPU, reduce the gradients onto GPU 0;
    after the last micro-batch the optimizer step on GPU 0 alone. Durations in ns, bytes the
    transients GPU 0 (``gpu0_*``) and a replica (``replica_grad_bytes``) allocate."""

    scatter_inputs_ns: int
    broadcast_ns: int
    gather_ns: int
    loss_ns: int  # GPU 0's loss over the other replicas' gathered rows
    scatter_grad_ns: int
    reduce_ns: int
    gathered_bytes: int  # the gathered outputs on GPU 0, from the gather to the scatter
    loss_bytes: int  # the loss's working memory and the outputs' gradient, from the loss on
    gpu0_grad_bytes: int  # GPU 0's own replica's gradients during the reduce (transient)
    replica_grad_bytes: int  # a replica's gradients, from its backward to the reduce


@dataclass(frozen=True, slots=True)
class NicPlan:
    """Which transfers leave the node (and so share their GPU's NIC), per kind, with the part
    of each that is latency: p2p sends per rank and direction, DP/ZeRO and TP collectives."""

    bandwidth_bytes_per_s: float
    # by sending stage (virtual stage): its hop to the next / previous stage's rank, which down
    # a V's second leg (ZB-V, DualPipeV) is the rank before, not after
    send_forward_crosses: tuple[bool, ...]
    send_backward_crosses: tuple[bool, ...]
    p2p_latency_s: float
    dp_crosses: bool
    dp_latency_s: float
    tp_crosses: bool
    tp_latency_s: float
    cp_crosses: bool = False  # the CP ring leaves the node
    cp_latency_s: float = 0.0
    ep_crosses: bool = False  # the expert-parallel all-to-alls leave the node
    ep_latency_s: float = 0.0
    # ZeRO's all-gathers ("AG") and reduce-scatters ("RS"): their own fixed part (dp_latency_s
    # is the "DP" tasks', the gradient reduction's)
    ag_latency_s: float = 0.0
    rs_latency_s: float = 0.0
    # ZeRO's all-gathers leave the node: the sharding group's (dp x cp, or a hybrid-sharding
    # group of ParallelSpec.zero_shards, which may sit inside one node); None: dp_crosses
    ag_crosses: bool | None = None

    def crossing(self, kind: str, stage: int | None) -> tuple[bool, float]:
        """(leaves the node, latency in s) of a communication task of ``kind``; a pipeline
        send's by its sending ``stage``."""
        if kind == "SEND_F":
            return self.send_forward_crosses[stage or 0], self.p2p_latency_s
        if kind == "SEND_B":
            return self.send_backward_crosses[stage or 0], self.p2p_latency_s
        if kind == "AG" and self.ag_crosses is not None:
            return self.ag_crosses, self.ag_latency_s if self.ag_crosses else 0.0
        if kind in ("DP", "AG", "RS") and self.dp_crosses:
            lat = {"AG": self.ag_latency_s, "RS": self.rs_latency_s}.get(kind, self.dp_latency_s)
            return True, lat
        if kind == "TP" and self.tp_crosses:
            return True, self.tp_latency_s
        if kind == "CP" and self.cp_crosses:
            return True, self.cp_latency_s
        if kind == "A2A" and self.ep_crosses:
            return True, self.ep_latency_s
        return False, 0.0


@dataclass(frozen=True, slots=True)
class LoweringInput:
    schedule: Schedule
    pp: int
    v: int
    chunks: dict[int, ChunkDurations]  # virtual stage -> durations
    ranks: dict[int, RankWork]
    activation_bytes: dict[int, int]  # virtual stage -> bytes per micro-batch
    working_set_bytes: dict[int, int]  # virtual stage -> backward working set (memory's)
    loss_bytes: dict[int, int] | None = None  # virtual stage -> loss working memory during F
    # Pipeline receives synchronise the host (the receiver reads the message's metadata on the
    # host before receiving the tensor: spec.runtime "blocking" p2p).
    blocking_p2p: bool = False
    # TP collectives overlapped with all of the action's compute (spec.runtime tp_comm_overlap
    # where it does not pair them with their GEMMs: costs.chunk_time.pooled_tp_overlap).
    pooled_tp_overlap: bool = False
    # Adjacent F/B actions of different micro-batches run as one unit whose expert
    # all-to-alls hide behind each other's compute (ScheduleTraits.overlapped_fb).
    overlapped_fb: bool = False
    # rank -> the forwards that open a pair, when the schedule names its pairs (DualPipe:
    # ScheduleTraits.fb_pairs); None: adjacent F/B of different micro-batches pair greedily
    fb_pairs: dict[int, frozenset[Action]] | None = None
    # Share of the GPU's SMs the overlapped all-to-alls' kernels hold while they run (DeepEP:
    # spec.runtime moe_dispatch_sms / hardware sm_count; 0: communication on copy engines or
    # NCCL, not modelled as taking compute).
    comm_sm_share: float = 0.0
    # torch.nn.DataParallel: GPU 0 and a replica row (``passes.data_parallel_pass``)
    data_parallel: DataParallelPlan | None = None
    # Virtual stages on ranks (schedules.actions.PLACEMENTS): "dual" (DualPipe) runs two
    # pipelines, stages 0..pp-1 and pp..2pp-1, with no hop between them
    placement: str = "loop"
    # Blocking p2p whose host polls each metadata message (spec.runtime p2p_poll_interval_s):
    # the interval, and by sending chunk the polled messages of its forward and of its backward
    # transfer (costs.comm.hop_messages: what the hop carries).
    p2p_poll_ns: int = 0
    p2p_polled: dict[int, tuple[int, int]] = field(default_factory=dict)
    # A recompute slice needs its layer's parameters (ZeRO-3 gathers them again): false for
    # Megatron's selective recompute, which replays only the attention core (no weights)
    recompute_gathers: bool = True
    # ... and the backward of a layer whose recompute gathered (recompute_gathers) uses that
    # gather (FSDP: spec.runtime fsdp_recompute_reuses_gather); false: it gathers again
    backward_reuses_recompute_gather: bool = False
    # (rank, rank, ns): the tied word embedding's gradient all-reduced between the ranks of
    # the embedding and the output layer before their optimizer steps
    # (costs.workload.tied_embedding_sync); None: no such reduction
    tied_embedding_sync: tuple[int, int, int] | None = None
    # The "cp" stream's op names in a forward and in a backward (costs.cp.exchange_labels:
    # the ring's K/V, the all-to-all's Q, K, V, O)
    cp_labels: tuple[str, str] = ("CP ring K/V", "CP ring K/V + dK/dV")
    # virtual stage -> what its B holds beyond its activations and working set, as gradients
    # (one GPU, one micro-batch: the transient gradients produced before a block's backward,
    # costs.memory.transient_backward_moment), allocated with the B and freed at its end
    backward_extra_bytes: dict[int, int] = field(default_factory=dict)

    def pipeline(self, stage: int) -> range:
        """The stages a micro-batch through ``stage`` visits, in order."""
        return pipeline_of(stage, self.pp * self.v, self.placement)

    @property
    def host_modelled(self) -> bool:
        """Whether lowering adds the per-rank host stream (``passes.host_pass``)."""
        return self.blocking_p2p or any(
            c.host_forward_ns or c.host_backward_ns for c in self.chunks.values()
        )


# ---------------------------------------------------------------------------------------------
# The lowered step, between passes: per rank, one group of ops per schedule action, then the
# rank's tail (gradient sync, optimizer step). Dependencies stay symbolic until ``resolve``
# numbers the ops: an Op itself; ("prev", rank, i) whatever ends group i − 1 of the
# rank; ("send_f" | "send_b", stage, mb) the p2p send of a neighbouring stage; ("done", stage,
# mb, kind) whatever ends that action; ("meta", send, k) the k-th polled metadata message
# before that send (``send`` one of the "send_f" / "send_b" forms).


@dataclass(eq=False, slots=True)
class Op:
    """One engine task before it has an id."""

    rank: int
    stream: str
    kind: str
    name: str
    duration_ns: int
    deps: list[tuple]
    alloc: tuple = ()
    free: tuple = ()
    microbatch: int | None = None
    stage: int | None = None
    tid: int = -1  # task id, set by ``resolve``
    poll_ns: int = 0  # a host poll loop (engine ``Task.poll_ns``) ...
    polled: list[tuple | Op] = field(default_factory=list)  # ... waiting for these to end


@dataclass(eq=False, slots=True)
class Group:
    """The ops of one schedule action (or of a mid-step optimizer step, ``action`` None), in
    task order; ``done`` ends the action (its last compute op, or its TP all-reduce)."""

    action: object
    ops: list[Op]
    done: Op
    tp_ns: int = 0  # TP all-reduce still to lower after the compute (``tp`` pass)
    bucketed: int = 0  # gradient buckets whose reduction follows this action's slices
    label: str = ""
    last_backward: bool = False  # the rank's last B or W (gradient accumulation boundary)
    host: Op | None = None  # the host op issuing this action's kernels (``host`` pass)
    # the first action of an overlapped F&B pair: where its compute (and TP) ends, which the
    # partner's compute waits for instead of ``done`` (``passes.ep_pass``)
    compute_end: Op | None = None


@dataclass(eq=False, slots=True)
class RankIR:
    rank: int
    groups: list[Group]
    tail: list[Op]
    grads_ready: Op | None = None  # the last gradient reduction launched during backward
    offloaded: list[Op] = field(default_factory=list)  # gradient copies to the host (d2h)
    last_host: Op | None = None  # the rank's last host op (the optimizer step is issued after)


@dataclass(eq=False, slots=True)
class StepIR:
    inp: LoweringInput
    ranks: dict[int, RankIR]
    sends: dict[tuple[str, int, int], Op]
    # (send key as in ``sends``, k) -> the host op issuing that send's k-th metadata message
    metas: dict[tuple[tuple[str, int, int], int], Op] = field(default_factory=dict)
    # draw overlapped communication that delays nothing (hidden TP collectives) as spans
    overlap_spans: bool = False
