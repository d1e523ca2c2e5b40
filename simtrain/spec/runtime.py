"""Runtime profiles: the training framework that runs the step, read from ``runtimes/*.yaml``.

The same model, hardware and layout run at different speeds under Megatron-LM, DeepSpeed,
nanotron or torchtitan because the frameworks issue the same work differently: blocking or
asynchronous pipeline sends, which collectives hide under compute, which NCCL algorithm a
collective gets, and how much host time each kernel costs. A :class:`RuntimeProfile` says how
one framework does each, every number with its source in the profile's comments.

A scenario picks one with ``runtime: NAME`` or ``runtime: {name: NAME, KEY: VALUE, ...}``
(per-scenario overrides of the profile's keys); without the key, :data:`DEFAULT_RUNTIME`,
the model simtrain had before profiles existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from simtrain.errors import ConfigError, unknown_key, unknown_value
from simtrain.spec.hardware import ATTENTION_KERNELS
from simtrain.spec.limits import as_float, check_range
from simtrain.spec.yamlfile import is_file, load_yaml

RUNTIMES_DIR = Path(__file__).resolve().parents[2] / "runtimes"
#: The profile of a scenario without ``runtime:``: Megatron-LM as of Narayanan et al. 2021, the
#: runtime simtrain's step model was built and validated on (SC'21 within 2 %).
DEFAULT_RUNTIME = "megatron_lm_2021"

P2P_MODES = ("async", "blocking")
ALGORITHMS = ("ring", "nccl")
DISPATCH_MODES = ("eager", "cuda_graphs")
MEMORY_REPORTED = ("allocated", "reserved", "nvidia_smi")
GRAD_REDUCE_DTYPES = ("grad", "fp32")
ZERO_GRAD_REDUCTIONS = ("reduce_scatter", "all_reduce")
MOE_DISPATCHERS = ("alltoall", "deepep")
#: Process groups whose NCCL communicators a framework creates on every GPU (costs.nccl_memory):
#: tp, dp, model_parallel (tp x pp), pipeline (pp), pp_pairs (one two-rank communicator per
#: neighbouring stage), embedding (first and last stage, tied embeddings), world.
NCCL_COMMUNICATORS = ("tp", "dp", "model_parallel", "pipeline", "pp_pairs", "embedding", "world")
CP_ATTENTIONS = ("te_p2p", "torch_allgather", "a2a")
#: Whose MoE layer runs (its host ops, costs.host.block_ops): "reference" (the experts as one
#: dense MLP, nothing more) or "megatron_core" (Megatron-Core's MoELayer: its router, the
#: alltoall dispatcher's preprocess, all-to-alls and unpermutation besides the experts).
MOE_IMPLEMENTATIONS = ("reference", "megatron_core")
#: Where a column-parallel linear's input changes TP layout (``tp_input_redistribution``).
TP_INPUT_REDISTRIBUTIONS = ("per_block", "per_linear", "per_linear_compiled")
#: The parts of a block Megatron-Core captures in per-layer CUDA graphs (--cuda-graph-scope,
#: later --cuda-graph-modules; transformer/enums.py CudaGraphScope at megatron-core 0.16.1):
#: attn (the input norm and attention), mlp (a dense block's MLP), moe (an MoE block's whole
#: MoE), moe_router (the pre-MLP norm and the router), moe_preprocess (the token dispatcher's
#: preprocess; needs moe_router). transformer_layer.py _get_submodules_under_cudagraphs.
CUDA_GRAPH_SCOPES = ("attn", "mlp", "moe", "moe_router", "moe_preprocess")


@dataclass(frozen=True, slots=True)
class RuntimeProfile:
    """How one framework runs a training step (the profile's YAML keys, same names)."""

    name: str
    display_name: str
    # Pipeline point-to-point: "async" (batched isend/irecv on their own stream; Megatron's
    # p2p_communication) or "blocking" (the host waits: each received activation's metadata is
    # read on the host before the tensor is received, so the receiving GPU's queue drains and
    # its host cannot issue the next kernels until the data has arrived).
    p2p: str = "async"
    # Messages of one micro-batch's pipeline transfer, forward (activations) and backward
    # (their gradient): metadata messages and tensors, each paying the link's latency.
    p2p_messages_forward: int = 1
    p2p_messages_backward: int = 1
    # Blocking p2p whose host polls: each metadata message is issued, then the host sleeps
    # this many seconds between looks at its completion (``while not work.is_completed():
    # time.sleep(0.1)``, nanotron's bench branch that ran the Ultra-Scale Playbook's sweep);
    # 0: the host waits on the message itself. The messages polled per transfer, forward and
    # backward, are metadata messages, at most p2p_messages_* - 1 (the tensor is not polled).
    p2p_poll_interval_s: float = 0.0
    p2p_polled_messages_forward: int = 0
    p2p_polled_messages_backward: int = 0
    # Collective algorithm: "ring" (every collective a ring) or "nccl" (NCCL's choice of ring
    # or tree by message size and GPU count, costs.collectives).
    collective_algorithm: str = "ring"
    # Tensor-parallel collectives overlapped with the GEMMs they feed (Megatron-Core
    # --tp-comm-overlap, Transformer Engine userbuffers): off the critical path.
    tp_comm_overlap: bool = False
    # The TP overlap is PyTorch's async TP (Inductor's micro_pipeline_tp pass over symmetric
    # memory: torch/_inductor/fx_passes/micro_pipeline_tp.py, torch/distributed/
    # _symmetric_memory/__init__.py), not Transformer Engine's userbuffers:
    # - a reduce-scatter fuses only with the one matmul that produces its input
    #   (fuse_matmul_reduce_scatter: "no producer matmul found for reduce scatter"): in the
    #   backward a column-parallel group of separate linears (q, k, v; gate, up: runtime
    #   ``fused_qkv`` / ``fused_gate_up`` false) sums its input gradients first, and its
    #   reduce-scatter stays a plain collective issued after the group's weight gradients,
    #   exposed; an all-gather fuses with every GEMM that takes it (fuse_all_gather_matmul);
    # - each fused all-gather-matmul first copies the rank's shard into its symmetric-memory
    #   buffer and waits on a barrier (_pipelined_multi_all_gather_and_consume), and each fused
    #   matmul-reduce-scatter ends by summing the tp partial products it received
    #   (_fused_matmul_reduce_scatter_impl, reduce_fn over stacked_partials): memory-bound work
    #   on the compute stream (``costs.compute.symm_mem_tp_bytes``).
    tp_overlap_symm_mem: bool = False
    # In a block's backward, the collective of each column-parallel linear's input gradient
    # (all-reduce, or reduce-scatter with sequence parallelism) runs asynchronously beside that
    # linear's weight-gradient GEMM, and the re-gather of its input (``tp_regather_backward``)
    # beside its input-gradient GEMM (Megatron-LM since 2021-09, "overlapping allreduce and
    # gemm", merged in 6e1bde1e0f; core/tensor_parallel/layers.py LinearWithGradAccumulationAndAsync
    # Communication.backward at d98e8a64 l.667-708; nanotron's async column linear,
    # tensor_parallel/functional.py l.391-420 at 2411b022): only what each GEMM does not cover
    # is exposed.
    tp_backward_overlap: bool = False
    # With sequence parallelism a column-parallel linear saves its input shard and all-gathers
    # it again in the backward for its weight gradient (Megatron-LM layers.py l.667-680 at
    # d98e8a64; nanotron tp_recompute_allgather, default true, functional.py l.394-410): two
    # more all-gathers per block's backward (attention and MLP inputs).
    tp_regather_backward: bool = False
    # Where the TP plan moves a column-parallel linear's input between layouts (tp > 1, dense
    # non-MLA blocks): "per_block", once per column-parallel group (Megatron's f / g of §3.2,
    # torchtitan's PrepareModuleInput on attention and feed_forward: one all-gather of the
    # attention's and of the MLP's input in forward, one reduction of each one's gradient in
    # backward); "per_linear", each projection its own DTensor ColwiseParallel (KempnerForge
    # distributed/tensor_parallel.py l.59-78 at 01b461a7: q, k, v, gate and up each with
    # input_layouts Shard(1), no PrepareModuleInput): under sequence parallelism each
    # all-gathers the input in forward, and each reduce-scatters its own input gradient in
    # backward (without sequence parallelism each all-reduces it); "per_linear_compiled", as
    # per_linear under torch.compile, whose AOT autograd CSE merges the forward's identical
    # functional all-gathers of one input into one (torch/_functorch/partitioners.py
    # min_cut_rematerialization_partition -> compile_utils.py fx_graph_cse, torch 2.13.0) but
    # not the backward's reductions of different gradients (costs.compute.column_linears).
    tp_input_redistribution: str = "per_block"
    # Sequence-parallel TP through DTensor's functional collectives, whose NCCL calls gather and
    # scatter along dim 0 while the activations are sharded on the sequence, dim 1 of
    # [b, s, h]: each reduce-scatter to Shard(1) first copies its whole input into rank order
    # (torch 2.13.0 distributed/_functional_collectives.py reduce_scatter_single l.276-277 ->
    # torch/_utils.py _chunk_or_narrow_cat: ``torch.cat(torch.chunk(x, tp, dim=1), dim=0)``),
    # and each all-gather from Shard(1) copies its whole output back (all_gather_single
    # l.213-223 -> _maybe_view_chunk_cat: a view where the gathered dim 0 is the group, i.e. a
    # micro-batch of one sequence, else the same chunk and cat); the backward's collectives
    # (an all-gather's is a reduce-scatter, and the reverse) copy alike
    # (costs.compute.tp_shard_copy_bytes). Megatron's and nanotron's collectives gather along
    # their own first dimension, the sequence of [s, b, h]: no copy.
    tp_shard_copies: bool = False
    # A full recompute stops once it has re-saved the block's last saved tensor (PyTorch's
    # non-reentrant torch.utils.checkpoint with early stop: ``_enable_checkpoint_early_stop =
    # True`` in torch 2.13 utils/checkpoint.py, the default since pytorch/pytorch#96866,
    # 2023-03; a compiled graph likewise recomputes only what the backward reads): the input of
    # the MLP's last linear is that tensor, so the TP reduction after it is not replayed, nor
    # its GEMM where autograd saves the input before running it (costs.compute
    # .recompute_stops_early, recompute_skips_last_gemm).
    # torchtitan's checkpoint_wrapper before 25413d22 (2025-08-29; early_stop=False since),
    # KempnerForge's and fms-fsdp's NO_REENTRANT wrappers; Megatron's and DeepSpeed's own
    # checkpointing replay the whole forward (false).
    recompute_early_stop: bool = False
    # The token embedding stays whole on every TP rank (KempnerForge distributed/
    # tensor_parallel.py l.99-132 at 01b461a7: "Token embedding stays replicated", only its
    # output wrapped as a Replicate DTensor): its weights, gradients and optimizer states are
    # not split by tp (ZeRO still shards them over the data-parallel group), and the forward
    # has no collective for it (the first block's SequenceParallel norm takes its sequence
    # shard of the whole output; under sequence parallelism the backward all-gathers the
    # gradient, as a vocab-parallel embedding's) (costs.params.embedding_tp, costs.comm.tp_edges_ns).
    tp_replicated_embedding: bool = False
    # Data-parallel gradient reduction in buckets during the last backward (PyTorch DDP,
    # Megatron-Core --overlap-grad-reduce, DeepSpeed overlap_comm), or one reduction after it.
    overlap_grad_reduce: bool = True
    # ZeRO-1/2 (distributed optimizer) parameter all-gather after the optimizer step overlapped
    # with the next step's forward (Megatron-Core --overlap-param-gather): off the step's tail.
    overlap_param_gather: bool = False
    # Bytes on the wire of each gradient element in the data-parallel reduction: "grad" (the
    # gradients' own dtype) or "fp32" (reduced from an fp32 accumulation buffer or upcast).
    grad_reduce_dtype: str = "grad"
    # The gradients live in one persistent buffer of the reduction's dtype, allocated when the
    # model is wrapped (Megatron-Core DDP: core/distributed/param_and_grad_buffer.py, grad_dtype =
    # torch.float if grad_reduce_in_fp32 else the parameters' dtype; gradient-accumulation fusion
    # writes each weight gradient straight into it, no 16-bit ``.grad`` is kept): with
    # ``grad_reduce_dtype: fp32`` 4 bytes per trainable parameter, never freed between steps.
    grads_in_reduce_buffer: bool = False
    # torch DistributedDataParallel wraps the model when it is data-parallel (dp x cp > 1): its
    # Reducer allocates one flat gradient tensor per bucket, in the parameters' dtype, for every
    # trainable parameter when the model is wrapped (pytorch torch/csrc/distributed/c10d/
    # reducer.cpp, Reducer::initialize_buckets: ``bucket.gradients = at::empty({bucketSize},
    # options)``), kept for the whole run beside the parameters' own ``.grad`` (DDP's default
    # gradient_as_bucket_view=False) and any accumulation buffer: a buffer of parameter-dtype
    # bytes per trainable parameter, not sharded by ZeRO.
    ddp_grad_buckets: bool = False
    # The 16-bit gradients are added into the fp32 accumulation buffer and freed at the end of
    # every micro-batch's backward (nanotron FP32GradientAccumulator: ``fp32_grad.add_(...)``,
    # then ``half_param.grad = None``): with an fp32 accumulation buffer they exist only from a
    # backward to the end of that add, never at a forward's peak nor at the optimizer step, and
    # the add costs each backward 10 B per parameter at the memory-bound rate ("ACC").
    grads_freed_per_microbatch: bool = False
    # ZeRO-1's all-gather of the updated 16-bit parameters after the optimizer step goes
    # through flat copies (nanotron ZeroDistributedOptimizer._all_gather_params ->
    # distributed.all_gather_coalesced, optim/zero.py l.217-251 and distributed.py l.201-203 at
    # 67c5ebb6: ``_flatten_dense_tensors`` of the rank's input shards and of each rank's output
    # slices): a flat copy of the rank's trainable parameters and of its shard, in the
    # parameters' dtype, live together at the step's end (beside the step's state, not the
    # activations). Megatron-Core and DeepSpeed gather into their persistent buffers in place.
    zero_gather_flat_copies: bool = False
    # Memory-bound passes the framework's step makes over the gradients besides the optimizer's
    # update (Megatron-Core: training.py zero_grad_buffer() each iteration, ``grad_data.zero_()``;
    # start_grad_sync's NaN check, a norm of each bucket, and its ``grad_data *= 1/dp``;
    # the optimizer's gradient norm for clipping): each over the rank's whole gradient buffer
    # (zero: a write; NaN check: a read; scale: a read and a write, only when dp x cp > 1), in
    # the buffer's dtype, or, the norm, over its optimizer shard's main gradients (a read, fp32
    # under master weights) (costs.workload.grad_passes_ns).
    zero_grad_buffer: bool = False
    check_nan_in_grad: bool = False
    scale_grads_before_reduce: bool = False
    # ... and the 1/dp scale runs even at dp 1 (Megatron-LM 2021/2022's local DDP:
    # allreduce_gradients divides its buffer every step; Megatron-Core skips a factor of 1,
    # core/distributed/param_and_grad_buffer.py l.666 at d98e8a64)
    scale_grads_at_dp1: bool = False
    clip_grad_norm: bool = False
    # Megatron's mixed-precision optimizers (Float16OptimizerWithFloat16Params, the distributed
    # optimizer) copy outside their fused update: the fp32 main gradients from a 16-bit gradient
    # buffer (``main_grad.float()``: a read of 2 B and a write of 4 B per optimizer-shard
    # parameter; a view of an fp32 buffer), under fp16's loss scaling the unscale and inf check
    # of those main gradients (a read and a write of 4 B), and after the update the fp32 master
    # weights into the 16-bit model weights (``copy_``: the master's 4 B read; the 16-bit write is
    # the update's, costs.compute.optimizer_bytes_per_param) (costs.workload.grad_passes_ns).
    master_copies: bool = False
    # The block's element-wise ops run as PyTorch eager decompositions, not fused kernels:
    # torchtitan's own RMSNorm (an fp32 chain of pow, mean, rsqrt and products), its complex
    # fp32 rotary, SwiGLU's silu and product apart (costs.compute.eager_elementwise_bytes_per_token);
    # off under torch.compile, whose inductor fuses them.
    eager_elementwise: bool = False
    # Buffers of one micro-batch's full-sequence hidden state (micro_batch x s x h in the
    # activation dtype) that a sequence-parallel tensor-parallel run keeps allocated across
    # layers and steps for its all-gathers (nanotron's MemoryBuffer, a process-wide cache: the
    # column-parallel linear's gathered input and the async row-parallel linear's gathered output
    # gradient). Counted when tp > 1 with sequence parallelism; 0: none kept.
    tp_gather_buffers: int = 0
    # The framework's collectives run under c10d's recordStream (TORCH_NCCL_AVOID_RECORD_STREAMS
    # unset, its default before it was turned on): a tensor an NCCL collective reads goes back
    # to the caching allocator only once the collective has run, so a reserved or device-level
    # memory figure holds the sequence-parallel reduce-scatters' row-parallel outputs the host
    # freed ahead of the GPU (costs.memory.pending_reduce_scatter_bytes).
    nccl_record_streams: bool = False
    # A reserved or device-level memory figure (``memory_reported``) holds what PyTorch's
    # caching allocator fragments: the rank's allocations and frees, in the framework's order,
    # replayed through the allocator's rules (costs.fragmentation, costs.caching_allocator),
    # add what it reserves beyond their allocated peak. Set for a framework whose order
    # costs.fragmentation.stage_allocation_events follows (one chunk per rank, forward and
    # backward actions); the other cached blocks a runtime models (nccl_record_streams'
    # pending outputs, FSDP2's pool, flat step buffers) are counted apart.
    allocator_replay: bool = False
    # Under a pipeline schedule the sharded data parallelism (ZeRO-2/3, FSDP2) reduces the
    # gradients once, after the last micro-batch, and holds each parameter's whole (unsharded)
    # gradient until then, in the reduction's dtype (``grad_reduce_dtype``):
    # torch.distributed.pipelining's stage turns FSDP2's gradient sync off for each micro-batch's
    # backward (stage.py backward_maybe_with_nosync: set_requires_gradient_sync(False),
    # set_reshard_after_backward(False)), and FSDP2's post-backward then keeps the unsharded
    # gradient upcast to reduce_dtype (_fsdp_param_group.py post_backward: "if not
    # self.reduce_grads ... to_accumulated_grad_if_needed()"; _fsdp_param.py
    # to_accumulated_grad_if_needed: ``unsharded_grad.to(self.reduce_dtype)``).
    pipeline_grads_unsharded: bool = False
    # Without a pipeline, the training loop turns FSDP2's gradient sync off for every
    # micro-batch but the last (``model.set_requires_gradient_sync(is_last)``), so under ZeRO-3
    # with gradient accumulation each GPU keeps its whole unsharded gradient in reduce_dtype
    # (FSDP2 post_backward's to_accumulated_grad_if_needed, as above) from the first backward
    # to the last micro-batch's, which reduce-scatters the blocks as it goes: one reduction a
    # step (KempnerForge scripts/train.py l.293 and training/grad.py l.30-40 at 01b461a7).
    # torchtitan reduces every micro-batch (False).
    grad_sync_last_microbatch: bool = False
    # ZeRO-3 as FSDP2 wraps it (fully_shard on each block, then on the root): the root's group,
    # the parameters outside the blocks (embedding, final norm, output), is not resharded after
    # forward (fsdp/_fully_shard/_fsdp_state.py _lazy_init: "For the root, do not reshard after
    # forward ... post_forward_mesh_info = None") and reduces its gradients once, in the
    # end-of-backward callback (its input, the token ids, needs no gradient): its 16-bit
    # parameters are whole from the forward to the end of backward, and so are the output
    # layer's gradients from the start of backward.
    fsdp_root_unsharded: bool = False
    # Pipeline receive buffers, one per micro-batch and direction, allocated once and kept
    # (torch.distributed.pipelining stage.py: _prepare_forward_infra fills args_recv_info and
    # _prepare_backward_infra grad_recv_info "for mb_index in range(num_microbatches)", each a
    # tensor irecv writes into); false: one activation and one gradient buffer per stage.
    pipeline_recv_buffers_per_microbatch: bool = False
    # The optimizer is a multi-tensor fused Adam updating in place (TE / apex FusedAdam): no
    # per-tensor temporaries in the step (costs.params.optimizer_working_bytes).
    fused_optimizer: bool = False
    # ZeRO-1/2's gradient reduction: "reduce_scatter" (each rank receives its shard; DeepSpeed,
    # Megatron's distributed optimizer) or "all_reduce" (every rank receives every gradient).
    zero_grad_reduction: str = "reduce_scatter"
    # ZeRO-3's parameter all-gathers and gradient reduce-scatters across nodes move each GPU's
    # traffic through its own NIC (as a flat ring would), not through all of the node's NICs.
    zero3_per_gpu_nic: bool = False
    # Each ZeRO-3 all-gather's output is copied into the unsharded parameters on the compute
    # stream before the layer runs (FSDP2: FSDPParamGroup.wait_for_unshard ->
    # foreach_all_gather_copy_out -> torch.ops.fsdp.split_with_sizes_copy, torch 2.13
    # distributed/fsdp/_fully_shard/_fsdp_param_group.py l.417-466, _fsdp_collectives.py
    # l.431-490): a read and a write of the layer's 16-bit parameters per gather, at the
    # memory-bound rate. FSDP1's flat parameter and DeepSpeed gather into the parameters'
    # own storage (no copy).
    zero3_gather_copy_out: bool = False
    # Under a full recompute, FSDP gathers a layer's parameters once for its recompute and its
    # backward: the pre-backward hook unshards them, and the recompute's forward skips its own
    # unshard (torch 2.13.0 distributed/fsdp/_runtime_utils.py l.374-375 "recomputed
    # forward": BACKWARD_PRE; FSDP2 _fully_shard/_fsdp_state.py l.293-301: PRE_BACKWARD, the
    # parameters already unsharded). False: the recompute gathers and the backward gathers
    # again, as the deepspeed profile keeps it: DeepSpeed ZeRO-3's module hooks re-fetch for
    # the recompute, and whether its backward then reuses the parameters depends on its
    # prefetch trace and stage3_max_reuse_distance (default 1e9, runtime/zero/config.py; 0
    # releases after each use), not read here.
    fsdp_recompute_reuses_gather: bool = False
    # Under hybrid sharding (parallelism.zero_replicas) the gradient shards are all-reduced
    # across the replicas only at the gradient-accumulation boundary, not after every
    # micro-batch's reduce-scatter (DeepSpeed MiCS: MiCS_Optimizer.allreduce_mics_shard_grads
    # returns unless is_gradient_accumulation_boundary, runtime/zero/mics.py); False: after
    # every reduce-scatter (FSDP's HYBRID_SHARD _reduce_grad, FSDP2 HSDP).
    replica_reduce_at_boundary: bool = False
    # Host time per dispatched op (Python, ATen dispatcher, kernel launch), microseconds; 0 = not
    # modelled (the host always runs ahead of the GPU).
    host_us_per_op: float = 0.0
    # Host time to issue one TP collective, per rank of its group, microseconds (0: none beyond
    # host_us_per_op): a host-side cost linear in the group's size, which the GPU hides when it
    # is the slower side (the host runs ahead) and which sets the pace when it is not
    # (costs.host.collective_issue_ns), charged on the TP collectives of the blocks, the
    # embedding, the output layer and the loss (the evidence is of those), not on pipeline
    # sends, DDP's buckets (issued by torch's C++ reducer: charged, the sweep's slow tp-1
    # pipelines went -0.4 -> -48 %), ZeRO's once-a-step gathers or all-to-alls (no evidence).
    # The environment's, not the framework's: runtimes/nanotron.yaml [issue] gives the
    # Ultra-Scale Playbook sweep's figures; validate sets it from a record's own test
    # (apps/validate/job_network.py); a planner sets it for a cluster whose launcher is slow.
    collective_issue_us_per_rank: float = 0.0
    # "eager": every op dispatched from Python each step; "cuda_graphs": the step is replayed
    # from a captured graph, one launch per graph (host cost per op not paid).
    dispatch: str = "eager"
    # Parts of each block replayed from per-layer CUDA graphs under eager dispatch (one of
    # CUDA_GRAPH_SCOPES each; Megatron-Core --cuda-graph-impl transformer_engine with
    # --cuda-graph-scope): their ops leave the host's count, one graph launch in their place
    # (costs.host.block_ops).
    cuda_graph_scope: tuple[str, ...] = ()
    # The MoE layer's implementation, for its host ops (one of MOE_IMPLEMENTATIONS).
    moe_implementation: str = "reference"
    # The memory figure the framework's logs report: torch.cuda.max_memory_allocated
    # ("allocated"), max_memory_reserved ("reserved") or the device total ("nvidia_smi").
    memory_reported: str = "allocated"
    # MoE token dispatch over expert parallelism: "alltoall" (NCCL all-to-all, each token once
    # per routed expert: Megatron-Core MoEAlltoAllTokenDispatcher) or "deepep" (DeepEP's
    # dispatch and combine: a token crosses InfiniBand once per destination node, to the GPU
    # of its own in-node index, and is forwarded to its experts over NVLink; Megatron-Core
    # --moe-token-dispatcher-type flex, transformer_config.py l.891-898 at d98e8a64;
    # DeepSeek-V3 §3.2.2). costs.moe.deepep_a2a_bytes.
    moe_dispatcher: str = "alltoall"
    # The dispatch carries FP8 activations (1 B and one fp32 scale per 128 values; the combine
    # stays 16-bit): DeepSeek-V3 §3.3.2; needs an FP8 precision.
    moe_fp8_dispatch: bool = False
    # SMs DeepEP's dispatch and combine kernels occupy while they run (DeepEP
    # ``Buffer.num_sms`` = 20; Megatron-Core moe_deepep_num_sms, "historical default 20",
    # transformer_config.py l.969-971; DeepSeek-V3 §3.2.2: "only 20 SMs are sufficient"):
    # compute overlapping them runs on the rest (hardware ``sm_count``).
    moe_dispatch_sms: int = 20
    # The process groups whose NCCL communicators the framework creates (one of
    # NCCL_COMMUNICATORS each; empty: not modelled). Their device buffers count in a device-level
    # memory figure (memory_reported "nvidia_smi"; costs.nccl_memory).
    nccl_communicators: tuple[str, ...] = ()
    # Context-parallel attention (costs.cp): "te_p2p" (Transformer Engine's K/V ring,
    # Megatron-Core's default --cp-comm-type p2p) or "torch_allgather" (PyTorch's
    # context_parallel with its default _RotateMethod.ALL_GATHER: the K/V all-gathered once per
    # attention call, the fp32 dK/dV passed around the ring) or "a2a" (DeepSpeed-Ulysses'
    # all-to-all of Q, K, V and the output around a head-split attention call: Megatron-Core
    # --cp-comm-type a2a, Transformer Engine's AttnFuncWithCPAndQKVOA2A; DeepSpeed's
    # DistributedAttention).
    cp_attention: str = "te_p2p"
    # The model repeats K and V to every query head before SDPA (torchtitan llama3
    # ``repeat_kv``), so the context-parallel exchange carries heads x head_dim per token, not
    # kv_heads x head_dim.
    attention_repeat_kv: bool = False
    # The attention kernel skips the key blocks outside a sliding window (flash-attn's
    # window_size, Transformer Engine's fused / flash backends, flex attention's block mask);
    # false: the window reaches the kernel as a mask, which computes every block (PyTorch's
    # SDPA: an explicit mask rules out its flash backend).
    sliding_window_kernel: bool = True
    # Sequence-parallel TP as PyTorch DTensor runs it (torchtitan): the column-parallel linears
    # save their all-gathered (Replicate) input, b·s·h on every TP rank, instead of the
    # sequence shard Megatron keeps and all-gathers again in backward
    # (costs.activations.tp_gathered_input_bytes).
    tp_saves_gathered_input: bool = False
    # Each pipeline chunk but the last keeps its output tensor (b·s·h, as a block input) from
    # its forward to its backward, one per micro-batch in flight (torch.distributed.pipelining
    # stage.py forward_one_chunk: ``self.fwd_cache[fwd_chunk_id] = (output_tuple,
    # flatten_input_tensors)``, popped by backward_one_chunk, which backpropagates from that
    # output); Megatron frees the sent output's data instead (deallocate_output_tensor).
    pipeline_keeps_stage_outputs: bool = False
    # The last pipeline stage keeps every micro-batch's output (the logits) until the step ends,
    # to merge them (torch.distributed.pipelining stage.py forward_one_chunk: output_chunks;
    # schedules.py step: _merge_outputs); costs.memory.pipeline_output_chunk_bytes.
    pipeline_keeps_last_outputs: bool = False
    # The interleaved schedule with as many micro-batches as pipeline ranks (m = pp) runs every
    # forward first, then every backward, on every rank (Megatron-LM from its interleaved
    # schedule, dd88906264 2021-02, megatron/schedules.py ``if get_num_microbatches() ==
    # pipeline_parallel_size: ... all_warmup_microbatches = True``, to Megatron-Core 4295be1a6c
    # 2024-11, which dropped the case); false: the usual warm-up of 2(p − r − 1) + (v − 1)·p
    # forwards (schedules.generators.interleaved).
    interleaved_all_warmup_at_pp: bool = False
    # A block's Q, K and V projections run as one GEMM (Megatron's linear_qkv, nanotron's
    # qkv_proj, llm-foundry's Wqkv) and, with a gated MLP, its gate and up projections as one
    # (Megatron's linear_fc1, nanotron's gate_up_proj); false: one GEMM each (torchtitan's wq, wk,
    # wv, w1, w3; Hugging Face Llama's q_proj, k_proj, v_proj, gate_proj, up_proj; llm-foundry's
    # MPTGLU gate_proj, up_proj). The GEMM shape term (hardware ``efficiency.gemm_edge_elements``,
    # costs.compute.dense_linear_gemms) prices each GEMM.
    fused_qkv: bool = True
    fused_gate_up: bool = True
    # A gated (SwiGLU) MLP's activation is one autograd function that saves only its input, the
    # fc1 output (gate and up, 2·f values a token), and recomputes silu in its backward
    # (Megatron-Core megatron/core/fusions/fused_bias_swiglu.py ``SwiGLUFunction.forward``:
    # ``ctx.save_for_backward(input_for_backward)``, called by core/transformer/mlp.py with
    # ``bias_activation_fusion``, which Megatron-LM's ``--no-bias-swiglu-fusion`` turns off and
    # Megatron-Bridge's Llama providers turn on); the down-projection keeps its own input (f):
    # 3·f values a token. False: eager ``silu(gate) * up``, whose autograd saves gate, silu's
    # output, up and the product (4·f; costs.activations).
    fused_swiglu: bool = False
    # Transformer Engine (v2.3 on, with Megatron-Core's gradient-accumulation fusion, whose
    # wgrad GEMM accumulates into the fp32 ``main_grad``) returns autograd a dummy weight
    # gradient from a module-global cache, one tensor per distinct weight shape and dtype,
    # allocated at the first backward and never freed (transformer_engine/pytorch/module/base.py
    # ``get_dummy_wgrad``, called by linear.py, layernorm_linear.py and, from v2.10,
    # grouped_linear.py; TE ba5dc5dde 2025-04, d2945c6a5 2025-10); Megatron's own linears (the
    # output layer, eh_proj) take TE's since e7c55de99 (2025-08-01, tensor_parallel/layers.py):
    # the rank's distinct linear shapes in the parameters' 16-bit dtype, under buffers
    # (costs.memory.te_dummy_wgrad_bytes).
    te_dummy_wgrad: bool = False
    # DeepSpeed's optimizers reduce and step on flat gradient buffers (costs.memory
    # .reduce_copy_bytes, flat_step_buffers): ZeRO-1/2's (DeepSpeedZeroOptimizer, 16-bit
    # gradients) flattens each reduction bucket (parallelism.bucket_mb) into a new copy, then
    # the rank's 16-bit gradient partition, cast to fp32, both live (2 + 4 B per partition
    # parameter); its BF16 optimizer (the fp32-accumulating precision) casts its whole fp32
    # gradient buffer to the communication dtype for the reduction. In a reserved or
    # device-level memory figure (``memory_reported``) PyTorch's caching allocator serves them
    # from the activation blocks it cached where one holds them, else from new segments, which
    # add to the cache (costs.memory.flat_buffer_segment_bytes).
    flat_optimizer_buffers: bool = False
    # The framework's default ZeRO-1/2/3 gradient bucket, in gradient elements, for a scenario
    # that sets no ``parallelism.bucket_mb`` (DeepSpeed's reduce_bucket_size); 0: PyTorch DDP's
    # bucket_cap_mb (25 MiB = 26.2144 MB) as ``parallelism.bucket_mb``'s own default.
    reduce_bucket_elements: int = 0
    # The FlashAttention kernel the framework calls for a flash model's attention (one of
    # spec.hardware.ATTENTION_KERNELS): its class in the hardware profile
    # (``attention_kernels.<kernel>``) prices the core; a profile without that kernel's class
    # prices it as GEMM FLOPs.
    attention_kernel: str = "fa2"
    source_file: str = ""

    @property
    def host_dispatches(self) -> bool:
        """Does the host dispatch the step's kernels and collectives one by one (eager)? Not
        under CUDA graphs, whose replay issues them all from one launch."""
        return self.dispatch != "cuda_graphs"

    @property
    def host_s_per_op(self) -> float:
        """Host seconds per dispatched op on the step's critical path (0 with CUDA graphs)."""
        return self.host_us_per_op * 1e-6 if self.host_dispatches else 0.0

    @property
    def collective_issue_s_per_rank(self) -> float:
        """Host seconds to issue one TP collective, per rank of its group (0 with CUDA graphs)."""
        return self.collective_issue_us_per_rank * 1e-6 if self.host_dispatches else 0.0


#: Profile keys a YAML file or a scenario's ``runtime:`` may set, with their allowed values
#: (a tuple of strings), their type (bool, int) or a float range.
CHOICES: dict[str, tuple[str, ...]] = {
    "p2p": P2P_MODES, "collective_algorithm": ALGORITHMS, "dispatch": DISPATCH_MODES,
    "memory_reported": MEMORY_REPORTED, "grad_reduce_dtype": GRAD_REDUCE_DTYPES,
    "zero_grad_reduction": ZERO_GRAD_REDUCTIONS, "moe_dispatcher": MOE_DISPATCHERS,
    "cp_attention": CP_ATTENTIONS, "attention_kernel": ATTENTION_KERNELS,
    "moe_implementation": MOE_IMPLEMENTATIONS,
    "tp_input_redistribution": TP_INPUT_REDISTRIBUTIONS,
}  # fmt: skip
#: Every true / false key: the profile's bool fields (a new one is a YAML key by being one).
BOOLS = tuple(f.name for f in fields(RuntimeProfile) if f.type == "bool")
#: p2p_messages_*: a transfer of a few metadata messages and tensors; host_us_per_op up to
#: 10 ms (a slow interpreter; eager PyTorch on a server CPU is ~5-30 us).
#: tp_gather_buffers: a few cached gather buffers (nanotron: 1, 2 with async TP).
INTS = {"p2p_messages_forward": (1, 64), "p2p_messages_backward": (1, 64),
        "reduce_bucket_elements": (0, 10**12),
        "p2p_polled_messages_forward": (0, 63), "p2p_polled_messages_backward": (0, 63),
        "moe_dispatch_sms": (1, 1024), "tp_gather_buffers": (0, 8)}  # fmt: skip
#: p2p_poll_interval_s: a sleep between looks, 0 or 1 ms to 10 s (finer is a busy wait, which
#: p2p: blocking without polling already is).
MIN_POLL_INTERVAL_S = 1e-3
#: collective_issue_us_per_rank up to 10 ms a rank (the sweep's slow jobs: 259-378 us).
FLOATS = {
    "host_us_per_op": (0.0, 1e4),
    "p2p_poll_interval_s": (0.0, 10.0),
    "collective_issue_us_per_rank": (0.0, 1e4),
}
#: Keys whose value is a list of distinct allowed strings.
LISTS = {"nccl_communicators": NCCL_COMMUNICATORS, "cuda_graph_scope": CUDA_GRAPH_SCOPES}
KEYS = ("name", "display_name", *CHOICES, *BOOLS, *INTS, *FLOATS, *LISTS)


def _value(key: str, v: Any, file: str, prefix: str) -> Any:
    full = f"{prefix}{key}"
    if key in CHOICES:
        if v not in CHOICES[key]:
            raise unknown_value(file, full, v, CHOICES[key])
        return v
    if key in BOOLS:
        if not isinstance(v, bool):
            raise ConfigError(file, full, "must be true or false", v)
        return v
    if key in INTS:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(file, full, "must be an integer", v)
        lo, hi = INTS[key]
        check_range(v, file, full, lo, hi)
        return v
    if key in LISTS:
        allowed = LISTS[key]
        if not isinstance(v, list) or any(x not in allowed for x in v) or len(set(v)) < len(v):
            raise ConfigError(file, full, "must be a list of distinct names", v,
                              " | ".join(allowed))  # fmt: skip
        return tuple(v)
    if key in FLOATS:
        x = as_float(v, file, full)
        lo, hi = FLOATS[key]
        check_range(x, file, full, lo, hi)
        return x
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(file, full, "must be a non-empty string", v)
    return v


def _settings(data: dict[str, Any], file: str, prefix: str) -> dict[str, Any]:
    for k in data:
        if k not in KEYS:
            raise unknown_key(file, k, prefix, KEYS)
    return {k: _value(k, v, file, prefix) for k, v in data.items()}


def parse_runtime(data: Any, file: str) -> RuntimeProfile:
    """Validate a runtime profile mapping (``runtimes/*.yaml``)."""
    if not isinstance(data, dict):
        raise ConfigError(file, "<root>", "a runtime profile must be a mapping")
    kw = _settings(data, file, "")
    kw.setdefault("name", Path(file).stem)
    kw.setdefault("display_name", kw["name"])
    return _checked(RuntimeProfile(**kw, source_file=file), file, "")


def available_runtimes() -> list[str]:
    """Names of the shipped runtime profiles (files in runtimes/)."""
    return sorted(p.stem for p in RUNTIMES_DIR.glob("*.yaml"))


def load_runtime(name: str, file: str | None = None, key: str = "runtime") -> RuntimeProfile:
    """A shipped runtime profile by name."""
    path = RUNTIMES_DIR / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not is_file(path):
        names = available_runtimes()
        raise unknown_value(file, key, name, names, "runtime")
    return parse_runtime(load_yaml(path), str(path))


@cache
def default_runtime() -> RuntimeProfile:
    """The profile of a scenario without ``runtime:`` (read once)."""
    return load_runtime(DEFAULT_RUNTIME)


def parse_scenario_runtime(data: Any, file: str) -> RuntimeProfile:
    """A scenario's ``runtime:``: a profile name, or ``{name: NAME, KEY: VALUE, ...}`` whose
    keys override the profile's (absent: :data:`DEFAULT_RUNTIME`)."""
    if data is None:
        return default_runtime()
    if isinstance(data, str):
        return load_runtime(data, file)
    if not isinstance(data, dict):
        raise ConfigError(file, "runtime", "must be a runtime name or a mapping with 'name'", data,
                          ", ".join(available_runtimes()))  # fmt: skip
    overrides = _settings(data, file, "runtime.")
    base = load_runtime(overrides.pop("name", DEFAULT_RUNTIME), file, "runtime.name")
    overrides.pop("display_name", None)
    return _checked(replace(base, **overrides), file, "runtime.")


def _checked(rt: RuntimeProfile, file: str, prefix: str) -> RuntimeProfile:
    """Settings that contradict each other: a column-parallel linear either saves its gathered
    input (``tp_saves_gathered_input``) or gathers its shard again (``tp_regather_backward``)."""
    if rt.tp_saves_gathered_input and rt.tp_regather_backward:
        raise ConfigError(file, f"{prefix}tp_regather_backward", "cannot be true with "
                          f"{prefix}tp_saves_gathered_input: true (the gathered input is saved, "
                          "nothing is gathered again)", True)  # fmt: skip
    if rt.tp_input_redistribution != "per_block" and (rt.fused_qkv or rt.fused_gate_up):
        fused = "fused_qkv" if rt.fused_qkv else "fused_gate_up"
        raise ConfigError(file, f"{prefix}tp_input_redistribution", f"cannot be "
                          f"{rt.tp_input_redistribution!r} with {prefix}{fused}: true (one fused "
                          "linear redistributes its input once; per linear is q, k, v, gate "
                          "and up apart)", rt.tp_input_redistribution,
                          f"per_block, or {prefix}fused_qkv and fused_gate_up false")  # fmt: skip
    if rt.tp_input_redistribution != "per_block" and rt.tp_comm_overlap:
        raise ConfigError(file, f"{prefix}tp_input_redistribution", "cannot be "
                          f"{rt.tp_input_redistribution!r} with {prefix}tp_comm_overlap: true "
                          "(the overlap gathers each GEMM group's input once)",
                          rt.tp_input_redistribution, "per_block")  # fmt: skip
    _check_polling(rt, file, prefix)
    _check_graph_scope(rt, file, prefix)
    return rt


def graph_scope_problem(scopes: Sequence[str]) -> str | None:
    """Why Megatron-Core refuses a set of CUDA graph scopes (transformer_config.py l.1743-1750
    at megatron-core 0.16.1), or None: the preprocess is captured with the router, and an MoE
    block is captured either whole (moe) or in part (moe_router), not both. The runtime's
    check and the Megatron importer's (naming its flag) share it."""
    scope = set(scopes)
    if "moe_preprocess" in scope and "moe_router" not in scope:
        return "moe_preprocess is captured with the router: add moe_router"
    if "moe" in scope and scope & {"moe_router", "moe_preprocess"}:
        return "moe captures the whole MoE, moe_router and moe_preprocess a part of it: give one"
    return None


def _check_graph_scope(rt: RuntimeProfile, file: str, prefix: str) -> None:
    why = graph_scope_problem(rt.cuda_graph_scope)
    if why:
        raise ConfigError(file, f"{prefix}cuda_graph_scope", why, list(rt.cuda_graph_scope),
                          " | ".join(CUDA_GRAPH_SCOPES))  # fmt: skip


def _check_polling(rt: RuntimeProfile, file: str, prefix: str) -> None:
    """A polling host needs blocking p2p and something to poll; a transfer polls its
    metadata messages, never more than its messages but the tensor."""
    polled = {"forward": rt.p2p_polled_messages_forward,
              "backward": rt.p2p_polled_messages_backward}  # fmt: skip
    for way, n in polled.items():
        most = getattr(rt, f"p2p_messages_{way}") - 1
        if n > most:
            raise ConfigError(file, f"{prefix}p2p_polled_messages_{way}", "polls more messages "
                              f"than {prefix}p2p_messages_{way} - 1 (the tensor is not polled)",
                              n, f"0..{most}")  # fmt: skip
    interval = rt.p2p_poll_interval_s
    if not interval:
        for way, n in polled.items():
            if n:
                raise ConfigError(file, f"{prefix}p2p_polled_messages_{way}", "polled messages "
                                  f"need {prefix}p2p_poll_interval_s > 0", n, "0")  # fmt: skip
        return
    if interval < MIN_POLL_INTERVAL_S:
        raise ConfigError(file, f"{prefix}p2p_poll_interval_s", "a poll finer than 1 ms is a busy "
                          "wait, which 0 models (the host waits on the message)", interval,
                          f"0 or {MIN_POLL_INTERVAL_S:g}..10")  # fmt: skip
    if rt.p2p != "blocking":
        raise ConfigError(file, f"{prefix}p2p_poll_interval_s", "a polling host needs "
                          f"{prefix}p2p: blocking", rt.p2p_poll_interval_s, "0")  # fmt: skip
    if not any(polled.values()):
        raise ConfigError(file, f"{prefix}p2p_poll_interval_s", "nothing is polled "
                          f"({prefix}p2p_polled_messages_forward and _backward are 0): set one "
                          "to 1 or more, or the interval to 0", rt.p2p_poll_interval_s,
                          "0")  # fmt: skip


def runtime_settings(rt: RuntimeProfile) -> dict[str, Any]:
    """The profile's settings by key (for reports and the JSON summary)."""
    return {f.name: getattr(rt, f.name) for f in fields(rt) if f.name != "source_file"}
