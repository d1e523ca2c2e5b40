"""Host (CPU) time of issuing a micro-batch's kernels in eager PyTorch.

In eager mode every ATen op costs host time (Python, the dispatcher, the kernel launch) before
its kernel can run. The GPU runs behind the host; when an action's kernels are shorter than the
host time of issuing them, the GPU waits for the host and the action takes the host's time
(``sim.lowering.passes.host_pass`` runs this on a per-rank "host" stream). A runtime that
replays CUDA graphs pays none of it (``spec.runtime.RuntimeProfile.host_s_per_op``).

Host time of an action = dispatched ops × the runtime's host seconds per op. The op counts are
those of simtrain's reference decoder block (``simtrain.torchref``), counted with
``torch.utils._python_dispatch.TorchDispatchMode`` (``benchmarks/count_ops.py``; every op,
views included: a view costs host time but launches no kernel), per layer and micro-batch, part
by part (:func:`layer_ops`); ``tests/test_host_ops.py`` recounts every part with torch and checks
their sums against whole blocks. An MoE block is the dense block of its MLP kind (its routed
experts dispatch as one MLP: a grouped GEMM pair) plus, under Megatron-Core
(``runtime.moe_implementation``), Megatron's router and token dispatcher, counted on
megatron-core itself (:data:`MEGATRON_MOE_ROUTER_OPS`); the parts of a block a per-layer CUDA
graph captures (``runtime.cuda_graph_scope``) leave the count (:func:`block_ops`). Not counted:
multi-latent attention's extra projections, and the casts of autocast (counted in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.costs.activations import rematerialises
from simtrain.costs.comm import tp_block_collectives, tp_edge_collectives
from simtrain.costs.compute import fused_linear_names
from simtrain.costs.data_parallel import is_data_parallel
from simtrain.costs.params import chunk_tensor_groups
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import Scenario


@dataclass(frozen=True, slots=True)
class LayerOps:
    """Dispatched ATen ops of one decoder block (or of one part of it) for one micro-batch."""

    forward: int
    backward: int  # without recompute
    recompute_full: int  # extra backward ops under full recompute (the replayed forward)

    def __add__(self, other: LayerOps) -> LayerOps:
        return LayerOps(self.forward + other.forward, self.backward + other.backward,
                        self.recompute_full + other.recompute_full)  # fmt: skip

    def __mul__(self, n: int) -> LayerOps:
        return LayerOps(n * self.forward, n * self.backward, n * self.recompute_full)

    def __sub__(self, other: LayerOps) -> LayerOps:
        return LayerOps(self.forward - other.forward, self.backward - other.backward,
                        self.recompute_full - other.recompute_full)  # fmt: skip


NO_OPS = LayerOps(0, 0, 0)


# A block's ops, part by part. Each part was counted on simtrain's reference block
# (``simtrain.torchref``) with ``count_dispatched_ops`` (torch 2.13, CPU, bf16; counts do not
# depend on sizes or device) as the difference between two blocks that differ by that part
# alone: layers 2 minus layers 1 of a narrow model, recompute none and full. The parts add up to
# the reference's count within 2 ops a phase on every block of the tested grid
# (tests/test_host_ops.py recounts each part and checks the sums on a grid of blocks), and
# exactly on the GPT-3 / Llama blocks the host constant was fitted with.

#: (mlp, flash attention) -> a bare block: multi-head attention (K/V heads = heads) with its
#: four bias-free linears and no position op, the MLP, two residual adds, no norm.
BARE_BLOCK_OPS: dict[tuple[str, bool], LayerOps] = {
    ("gelu", True): LayerOps(forward=37, backward=69, recompute_full=66),
    ("gelu", False): LayerOps(forward=53, backward=88, recompute_full=84),
    ("swiglu", True): LayerOps(forward=42, backward=81, recompute_full=79),
    ("swiglu", False): LayerOps(forward=58, backward=100, recompute_full=97),
    ("relu", True): LayerOps(forward=38, backward=70, recompute_full=65),
    ("relu", False): LayerOps(forward=54, backward=89, recompute_full=83),
    ("relu2", True): LayerOps(forward=39, backward=73, recompute_full=68),
    ("relu2", False): LayerOps(forward=55, backward=92, recompute_full=86),
}
#: One norm's ops (its statistics, scale, dtype casts); a q / k norm is an RMSNorm.
NORM_OPS: dict[str, LayerOps] = {
    "rmsnorm": LayerOps(forward=9, backward=15, recompute_full=13),
    "layernorm": LayerOps(forward=12, backward=21, recompute_full=16),
}
#: A norm after a sublayer (``post_norms``) replays one op more than one before it.
POST_NORM_EXTRA_OPS = LayerOps(forward=0, backward=0, recompute_full=1)
#: A per-head q / k norm whose output rotary takes: one backward op fewer (each of q and k).
QK_HEAD_NORM_ROTARY_OPS = LayerOps(forward=0, backward=-1, recompute_full=0)
#: Rotary embedding on q and k (with flash attention; without it, 2 backward ops fewer).
ROTARY_OPS = LayerOps(forward=12, backward=16, recompute_full=12)
ROTARY_EAGER_ATTENTION_OPS = LayerOps(forward=12, backward=14, recompute_full=12)
#: Rotary on a fraction of each head (``rotary_fraction`` < 1: GPT-NeoX / Pythia, Phi, GPT-J):
#: the rotated slice and the pass-through joined again (slices and a cat on q and k).
PARTIAL_ROTARY_OPS = LayerOps(forward=7, backward=10, recompute_full=7)
PARTIAL_ROTARY_EAGER_ATTENTION_OPS = LayerOps(forward=6, backward=10, recompute_full=6)
#: The dropouts on the two residual branches (``dropout`` > 0; a replay draws their masks again).
DROPOUT_OPS = LayerOps(forward=2, backward=2, recompute_full=4)
#: Eager attention's dropout on the probabilities (a flash kernel drops inside the kernel).
ATTENTION_DROPOUT_EAGER_OPS = LayerOps(forward=1, backward=1, recompute_full=1)
#: Eager attention with fewer K/V heads than heads repeats K and V to every head.
REPEAT_KV_OPS = LayerOps(forward=8, backward=7, recompute_full=8)
#: Eager attention's score soft-capping (c·tanh(x/c)); a flash kernel does it in the kernel.
SOFTCAP_EAGER_OPS = LayerOps(forward=4, backward=4, recompute_full=4)
#: The bias gradient of one linear (a sum over tokens and its views).
BIAS_OPS = LayerOps(forward=0, backward=3, recompute_full=0)
#: A parallel block (attention and MLP on the same input) replays one op fewer.
PARALLEL_RESIDUAL_OPS = LayerOps(forward=0, backward=0, recompute_full=-1)
#: The reference block's MLP by kind, its linears and activation alone (``MLP`` of
#: simtrain.torchref.reference_model in bf16, counted with its input's gradient, less the
#: counting harness's 2 forward and 4 backward ops; tests/test_host_ops.py recounts it): the
#: part a CUDA graph of a dense block's MLP takes out of the host's count, and an MoE block's
#: routed experts (one grouped GEMM pair).
MLP_OPS: dict[str, LayerOps] = {
    "swiglu": LayerOps(forward=14, backward=31, recompute_full=14),
    "gelu": LayerOps(forward=9, backward=19, recompute_full=9),
    "relu": LayerOps(forward=10, backward=20, recompute_full=10),
    "relu2": LayerOps(forward=11, backward=23, recompute_full=11),
}
#: The MLP's linears among ``ModelSpec.linear_weight_shapes`` (their biases' backward ops,
#: BIAS_OPS, are the MLP sublayer's).
MLP_LINEAR_NAMES = ("gate", "up", "down")
#: The residual add that closes a sublayer.
RESIDUAL_ADD_OPS = LayerOps(forward=1, backward=0, recompute_full=1)
#: Megatron-Core's MoE layer beyond its experts (``runtime.moe_implementation: megatron_core``),
#: counted on megatron-core 0.16.1 on the CPU (benchmarks/megatron_moe_ops.py: an MoELayer with
#: the alltoall token dispatcher and the aux-loss softmax top-k router, bf16; its SequentialMLP
#: experts at 2 and 4 local experts, taken out by difference, and the harness's ops), by the
#: regions Megatron's CUDA graph scopes name: the router (TopKRouter.forward: the gating GEMM,
#: top-k, softmax, the aux loss and its scatter; backward with the aux loss's), the
#: dispatcher's preprocess (MoELayer.preprocess: the token counts, with expert parallelism or
#: expert TP their all-gather over the EP x TP group and split sizes, the first permutation; no
#: backward) and the rest (the all-to-alls, the split sizes' host reads, the chunk sort, the
#: unpermutation, and their backward). Counted with moe_permute_fusion off (Transformer
#: Engine's fused permute, which Megatron-Bridge's runs use, is not on the CPU: its custom ops
#: and Triton launches replace about 10 of the preprocess's forward ops and 4 of the rest's).
MEGATRON_MOE_ROUTER_OPS = LayerOps(forward=33, backward=26, recompute_full=33)
#: (by whether the EP x expert-TP group has more than one rank)
MEGATRON_MOE_PREPROCESS_OPS = {False: LayerOps(forward=14, backward=0, recompute_full=14),
                               True: LayerOps(forward=25, backward=0, recompute_full=25)}  # fmt: skip
MEGATRON_MOE_DISPATCH_OPS = {False: LayerOps(forward=20, backward=18, recompute_full=20),
                             True: LayerOps(forward=36, backward=33, recompute_full=36)}  # fmt: skip
#: Megatron-Core's fc2 bias of grouped experts (``TEGroupedMLP._apply_bias``, megatron/core/
#: transformer/moe/experts.py, from a329dd6da5 "Enable bias in expert mlp [gpt-oss 5/5]",
#: 2025-09-22, through d98e8a64's eager path): TE's grouped fc2 returns its bias apart
#: (``skip_bias_add=True``) and Python adds it expert by expert, ``torch.cat([t + b * p for t,
#: b, p in zip(torch.split(out, tokens_per_expert), biases, torch.split(probs, ...))])``, then a
#: cast: (fixed, per local expert) dispatched ops, forward and backward, counted with torch
#: 2.13 on the CPU (tests/test_moe_host_ops.py recounts them at 1, 2, 4 and 16 experts) with
#: the routing probabilities in the logits' dtype (moe_utils.py ``probs.type_as(logits)``; bf16
#: without ``moe_router_dtype``, which no GPT-OSS recipe sets): 5 + 2E forward, 8 + 7E
#: backward (fp32 probabilities would add the cast: 6 + 2E, 9 + 9E). (Megatron-Core's packed
#: path, ``_apply_packed_bias`` with TE's single grouped bias, has no per-expert loop: from
#: 883533e049, 2026-08-14, after every container the measured runs used.)
MEGATRON_EXPERT_BIAS_OPS = (LayerOps(forward=5, backward=8, recompute_full=5),
                            LayerOps(forward=2, backward=7, recompute_full=2))  # fmt: skip


#: Megatron-Core's clamped GLU in the experts (GPT-OSS, ``ModelSpec.glu_clamp``):
#: ``weighted_bias_quick_geglu_impl`` (megatron/core/fusions/fused_bias_geglu.py l.410-440 at
#: core_v0.15.0 and d98e8a64) runs ``input.chunk(2, -1)``, two ``clamp`` and a ``torch.cat``
#: before its compiled kernel: 4 dispatched ops forward and 11 backward more than the
#: ``view`` beside them, counted with torch 2.13 on the CPU (tests/test_moe_host_ops.py recounts
#: them on the transcription).
MEGATRON_GLU_CLAMP_OPS = LayerOps(forward=4, backward=11, recompute_full=4)


def expert_bias_ops(local_experts: int) -> LayerOps:
    """:data:`MEGATRON_EXPERT_BIAS_OPS` for ``local_experts`` experts on the rank."""
    fixed, per = MEGATRON_EXPERT_BIAS_OPS
    return fixed + per * local_experts


#: The launch of one captured per-layer CUDA graph, forward and backward (one Python call).
GRAPH_REPLAY_OPS = LayerOps(forward=1, backward=1, recompute_full=1)


def layer_ops(m: ModelSpec) -> LayerOps:
    """Ops of one block of ``m``: the bare block of its MLP kind and attention kernel, plus one
    part for each norm (before / after each sublayer, on q and k), its rotary embedding, each
    biased linear, partial rotary's slices, the dropouts, eager attention's K/V repeat and
    soft-capping, a parallel block's replay.
    ALiBi and learned positions add no per-block op (a bias built once, the embedding)."""
    flash = m.flash_attention
    ops = BARE_BLOCK_OPS[(m.mlp, flash)]
    ops += NORM_OPS[m.norm] * m.norms_per_block
    ops += POST_NORM_EXTRA_OPS * (2 if m.post_norms else 0)
    rotary = m.positions == "rotary"
    if m.qk_norm:
        ops += NORM_OPS["rmsnorm"] * 2
        if rotary and m.qk_norm_width == "head":
            ops += QK_HEAD_NORM_ROTARY_OPS * 2
    if rotary:
        ops += ROTARY_OPS if flash else ROTARY_EAGER_ATTENTION_OPS
        if m.rotary_fraction < 1:
            ops += PARTIAL_ROTARY_OPS if flash else PARTIAL_ROTARY_EAGER_ATTENTION_OPS
    if m.dropout > 0:
        ops += DROPOUT_OPS
        if not flash and m.drops_attention:
            ops += ATTENTION_DROPOUT_EAGER_OPS
    if not flash and m.kv_heads < m.heads:
        ops += REPEAT_KV_OPS
    if not flash and m.attention_softcap:
        ops += SOFTCAP_EAGER_OPS
    if m.parallel_residual:
        ops += PARALLEL_RESIDUAL_OPS
    return ops + BIAS_OPS * sum(m.linear_has_bias(x) for x in m.linear_weight_shapes())


def _pre_mlp_norm_ops(m: ModelSpec) -> LayerOps:
    """The MLP sublayer's own norm (none without pre-norms or with a norm shared by both
    sublayers)."""
    return NORM_OPS[m.norm] if m.pre_norms and not m.shared_norm else NO_OPS


def _mlp_sublayer_ops(m: ModelSpec) -> LayerOps:
    """The MLP sublayer of a block: its pre-MLP norm, the MLP with its linears' biases and the
    residual add (Megatron's TransformerLayer._forward_mlp)."""
    biases = sum(m.linear_has_bias(x) for x in m.linear_weight_shapes() if x in MLP_LINEAR_NAMES)
    return _pre_mlp_norm_ops(m) + MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS + BIAS_OPS * biases


def block_ops(sc: Scenario, moe: bool = False) -> LayerOps:
    """Host ops of one block under the scenario's runtime: the reference block
    (:func:`layer_ops`); an MoE block (``moe``) under ``moe_implementation: megatron_core``
    adds Megatron-Core's router, dispatcher preprocess and the rest of its token dispatch
    (:data:`MEGATRON_MOE_ROUTER_OPS`; the larger preprocess and dispatch where the EP x
    expert-TP group has more than one rank: Megatron's ``if self.ep_size > 1 or self.tp_size >
    1``), and with biased experts (GPT-OSS) their fc2 bias's loop over the rank's experts
    (:func:`expert_bias_ops`) and with a clamped GLU its clamp (:data:`MEGATRON_GLU_CLAMP_OPS`),
    counted with the dispatch: a CUDA graph of the MoE takes them.
    The parts a per-layer CUDA graph captures (``runtime.cuda_graph_scope``; Megatron-Core
    transformer_layer.py _get_submodules_under_cudagraphs at 0.16.1) leave the count: attn the
    block but its MLP sublayer, mlp a dense block's MLP sublayer, moe an MoE block's whole, and
    moe_router the pre-MLP norm and the router (moe_preprocess the preprocess too); one graph
    launch (:data:`GRAPH_REPLAY_OPS`) a block where anything is captured."""
    m, rt, p = sc.model, sc.runtime, sc.parallelism
    ops = layer_ops(m)
    router = preprocess = dispatch = NO_OPS
    if moe and rt.moe_implementation == "megatron_core":
        grouped = p.ep > 1 or p.etp > 1
        router, preprocess = MEGATRON_MOE_ROUTER_OPS, MEGATRON_MOE_PREPROCESS_OPS[grouped]
        dispatch = MEGATRON_MOE_DISPATCH_OPS[grouped]
        if m.linear_has_bias("down"):  # the experts' fc2 bias, added expert by expert
            dispatch += expert_bias_ops(m.num_experts // p.ep)
        if m.glu_clamp:  # the clamp before the experts' compiled activation
            dispatch += MEGATRON_GLU_CLAMP_OPS
    whole = ops + router + preprocess + dispatch
    scope = set(rt.cuda_graph_scope)
    if not scope:
        return whole
    mlp = _mlp_sublayer_ops(m)
    captured = NO_OPS
    if "attn" in scope:
        captured += ops - mlp
    if ("mlp" in scope and not moe) or ("moe" in scope and moe):
        captured += mlp + router + preprocess + dispatch
    elif moe and "moe_router" in scope:
        captured += _pre_mlp_norm_ops(m) + router
        if "moe_preprocess" in scope:
            captured += preprocess
    if captured == NO_OPS:
        return whole
    return whole - captured + GRAPH_REPLAY_OPS


def collective_issue_ns(sc: Scenario, group: int, count: int = 1) -> int:
    """Host ns of issuing ``count`` collectives over a group of ``group`` ranks: count x group x
    the runtime's ``collective_issue_us_per_rank`` (0 when it is 0, with CUDA graphs, or for a
    group of one). A cost linear in the group's size, measured, not derived: the evidence
    (the Ultra-Scale Playbook sweep's slow jobs, their own tests and their blocks' per-layer
    floors) is in runtimes/nanotron.yaml [issue], printed by benchmarks/playbook_csv_rows.py;
    its source in their software is not known."""
    per = sc.runtime.collective_issue_s_per_rank
    if per <= 0 or group <= 1 or count <= 0:
        return 0
    return round(1e9 * per * group * count)


def action_host_ns(sc: Scenario, layers: int, embedding: bool = False,
                   head: bool = False, moe_layers: int = 0,
                   loss: bool | None = None) -> tuple[int, int]:  # fmt: skip
    """(forward, backward) host ns of one micro-batch through ``layers`` blocks (and the
    chunk's embedding and output layer where it holds them): the backward includes the
    replayed forward under full recompute and under selective_op (which replays the whole
    forward op by op, cached outputs included); one interpreter issues every data-parallel
    replica's forward (GIL, ``torch.nn.DataParallel``); the TP collectives of the blocks and
    of the embedding, output layer and loss add their issue cost (:func:`collective_issue_ns`;
    ``comm.tp_block_collectives``, ``comm.tp_edge_collectives``), on a chunk without blocks
    too (``moe_layers`` of the ``layers`` counted as MoE blocks). 0 when the runtime models
    neither. The simulation's and the planner's."""
    per_op = sc.runtime.host_s_per_op
    ops_f = ops_b = 0
    dense = max(layers - moe_layers, 0)
    if per_op > 0 and layers > 0:
        replay = rematerialises(sc.training)
        fwd = bwd = 0.0
        for n, ops in ((dense, block_ops(sc)), (moe_layers, block_ops(sc, moe=True))):
            if n:
                fwd += 1e9 * per_op * n * ops.forward
                bwd += 1e9 * per_op * n * (ops.backward + (ops.recompute_full if replay else 0))
        ops_f = round(fwd)
        if is_data_parallel(sc):
            ops_f *= sc.parallelism.dp
        ops_b = round(bwd)
    block_f, block_b = tp_block_collectives(sc)
    moe_f, moe_b = tp_block_collectives(sc, moe=True) if moe_layers else (0, 0)
    edge_f, edge_b = tp_edge_collectives(sc, embedding, head, loss)
    tp = sc.parallelism.tp
    return (ops_f + collective_issue_ns(sc, tp, dense * block_f + moe_layers * moe_f + edge_f),
            ops_b + collective_issue_ns(sc, tp, dense * block_b + moe_layers * moe_b
                                        + edge_b))  # fmt: skip


def trainable_tensor_count(sc: Scenario, lo: int, hi: int, embedding: bool, head: bool) -> int:
    """Trainable parameter tensors one GPU holds of blocks [lo, hi) (plus the embedding's and the
    head's): one per weight and bias, a fused Q/K/V or gate/up projection one weight and one
    bias (runtime ``fused_qkv`` / ``fused_gate_up``: nanotron's qkv_proj and gate_up_proj); an
    MoE block's experts the rank's E/ep, its dense first blocks dense."""
    m, t, p, rt = sc.model, sc.training, sc.parallelism, sc.runtime
    fused = fused_linear_names(rt.fused_qkv, rt.fused_gate_up)

    def fuse(name: str) -> str:  # "expert3.gate.weight" -> "expert3.fc1.weight"
        *owner, part, kind = ["", *name.split(".")]
        return ".".join([*owner, fused.get(part, part), kind])

    groups = chunk_tensor_groups(m, t, p.tp, p.ep, p.pp, lo, hi, embedding, head, p.etp)
    return sum(n * len({fuse(x.name) for x in ts if x.trainable}) for n, ts in groups)


def accumulation_host_ns(sc: Scenario, tensors: int) -> int:
    """Host time of adding each trainable tensor's 16-bit gradient into its fp32 buffer after a
    backward (nanotron FP32GradientAccumulator.backward, optim/gradient_accumulator.py
    l.206-226 at 2411b022: a Python loop over the parameters, one ``fp32_grad.add_`` each):
    ``tensors`` dispatched ops; 0 when the runtime does not model host time."""
    return round(1e9 * sc.runtime.host_s_per_op * tensors)
