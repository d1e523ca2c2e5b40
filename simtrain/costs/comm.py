"""Communication durations of one step's collectives and sends, placed on the cluster.

Each collective runs over a process group whose GPU ids are ``stride`` apart
(``layout.placement``): as a ring (runtime ``collective_algorithm: ring``; inside a node over the
intra-node link, across nodes one ring per NIC, bandwidth min(B_intra, g·B_nic);
``collectives.collective_time_s``) or as NCCL would pick it (``nccl``: ring, tree, NVLS with the
protocol of least predicted time, from the hardware profile's ``collectives:`` section;
``collectives.nccl_time_s``). Durations are integer ns.
"""

from __future__ import annotations

import math

from simtrain.costs import collectives as coll
from simtrain.costs.activations import TE_LOSS_ROW_STATS_BYTES
from simtrain.costs.compute import (
    column_gathers,
    column_linears,
    head_edge,
    head_flops,
    matmul_ns,
    recompute_stops_early,
    tp_linear_group_ns,
    tp_pairs_gemms,
    unfused_column_reductions,
)
from simtrain.costs.fp8 import fp8_copy_bytes, tp_gathers_fp8
from simtrain.costs.group_comm import collective_ns
from simtrain.costs.moe import FP8_DISPATCH_BYTES, a2a_bytes, deepep_a2a_bytes, moe_load
from simtrain.costs.params import base_trainable
from simtrain.layout.partition import StageBlocks
from simtrain.layout.step import ResolvedStep
from simtrain.spec.scenario import Scenario, cp_rank_training

#: More DDP buckets than this are merged into groups (see :func:`buckets`).
MAX_BUCKET_GROUPS = 16


def tp_halves_ns(sc: Scenario, step: ResolvedStep, scale: float = 1.0) -> tuple[int, int]:
    """(all-gather, reduce-scatter) of one b·s·h activation (``scale`` of them) over the TP
    group: sequence parallelism's two halves of Megatron's all-reduce (Korthikanti et al. 2022
    §4.2.2)."""
    g, size = step.groups, step.boundary_bytes * scale
    return (collective_ns(sc, step, "all_gather", size, g.tp, g.tp_stride),
            collective_ns(sc, step, "reduce_scatter", size, g.tp, g.tp_stride))  # fmt: skip


def moe_tp_pair_kinds(sc: Scenario) -> tuple[str, ...]:
    """Whose (all-gather, reduce-scatter) pairs an MoE block's FFN runs over the TP group
    (:func:`moe_tp_pairs` prices them, :func:`tp_block_collectives` counts them): the
    dispatcher's at expert-TP = tp > 1, the shared experts' when the model has them."""
    m, p = sc.model, sc.parallelism
    return (("dispatcher",) if p.etp == p.tp > 1 else ()) + (("shared",) if m.shared_experts
                                                            else ())  # fmt: skip


def moe_tp_pairs(sc: Scenario, step: ResolvedStep) -> tuple[tuple[str, int, int], ...]:
    """(whose, all-gather, reduce-scatter) of an MoE block's FFN over the TP group under sequence
    parallelism, in place of the dense MLP's one pair. At expert-TP = tp the alltoall
    dispatcher all-gathers the tokens the EP all-to-all brought (k·load per token of the
    sequence shard) over the expert-TP group before the experts and reduce-scatters their
    output before the combine (Megatron-Core token_dispatcher.py
    ``MoEAlltoAllTokenDispatcher.dispatch_postprocess`` / ``combine_preprocess``:
    ``gather_from_sequence_parallel_region`` / ``reduce_scatter_to_sequence_parallel_region``
    over ``tp_group`` when ``tp_size > 1``, d98e8a64): b·s·h·k·load each; with whole experts
    (etp 1) none ("dispatcher"). Shared experts are a TP-split MLP of their own ("shared"):
    the dense pair (its all-gather in FP8 where the runtime gathers FP8)."""
    m, p = sc.model, sc.parallelism

    def priced(whose: str) -> tuple[str, int, int]:
        if whose == "dispatcher":
            return whose, *tp_halves_ns(sc, step, m.experts_per_token * moe_load(m, p.ep))
        return whose, tp_input_gather_ns(sc, step, mlp=True), tp_halves_ns(sc, step)[1]

    return tuple(priced(k) for k in moe_tp_pair_kinds(sc))


def reduce_scatter_input_bytes(sc: Scenario, step: ResolvedStep, ch: StageBlocks) -> float:
    """The bytes one micro-batch's forward through chunk ``ch`` hands to sequence-parallel
    reduce-scatters, as :func:`tp_halves_ns` and :func:`moe_tp_pairs` price them: each block's
    attention output projection, a full b x s/cp x h (``step.boundary_bytes``); a dense MLP's
    down projection, another; an MoE block's FFN, its pairs of :func:`moe_tp_pair_kinds` (the
    dispatcher's k·load b·s·h at expert-TP = tp, the shared experts' one b·s·h; none with
    whole experts). The memory model's pending outputs
    (``costs.memory.pending_reduce_scatter_bytes``)."""
    m, p = sc.model, sc.parallelism
    dense = m.dense_layers_in(ch.lo, ch.hi)
    ffn = sum(m.experts_per_token * moe_load(m, p.ep) if kind == "dispatcher" else 1
              for kind in moe_tp_pair_kinds(sc)) if m.is_moe else 0  # fmt: skip
    return step.boundary_bytes * (2 * dense + (1 + ffn) * (ch.layers - dense))


def tp_gather_ns(sc: Scenario, step: ResolvedStep, fp8: bool) -> int:
    """The all-gather of one micro-batch's b·s·h values over the TP group: :func:`tp_halves_ns`'
    in the activation dtype, or with ``fp8`` the quantized copy
    (``costs.fp8.fp8_copy_bytes``: 1 B a value, the per-tensor scale ignored)."""
    if not fp8:
        return tp_halves_ns(sc, step)[0]
    g = step.groups
    values = step.boundary_bytes // step.precision.act_mm
    return collective_ns(sc, step, "all_gather", fp8_copy_bytes(values, step.precision), g.tp,
                         g.tp_stride)  # fmt: skip


def tp_input_gather_ns(sc: Scenario, step: ResolvedStep, mlp: bool = False) -> int:
    """The all-gather of a column-parallel linear group's input under sequence parallelism (the
    attention's, or with ``mlp`` the MLP's), in FP8 where the runtime gathers the quantized
    input (``costs.fp8.tp_gathers_fp8``; the gradients' reduce-scatters stay in the activation
    dtype)."""
    return tp_gather_ns(sc, step, tp_gathers_fp8(sc, mlp))


def tp_grad_gather_ns(sc: Scenario, step: ResolvedStep, mlp: bool = False) -> int:
    """The backward all-gather of a row-parallel linear's output gradient under sequence
    parallelism (the attention's output projection, or with ``mlp`` the MLP's last linear): in
    FP8 under Transformer Engine's per-tensor recipes (``costs.fp8.tp_gathers_fp8``)."""
    return tp_gather_ns(sc, step, tp_gathers_fp8(sc, mlp, grad=True))


def tp_allreduce_ns(sc: Scenario, step: ResolvedStep) -> int:
    """One Megatron TP all-reduce of a b·s·h activation over the TP group (Narayanan §3.2).

    With sequence parallelism the same exchange is a reduce-scatter and an all-gather of the
    b·s·h tensor (Korthikanti et al. 2022 §4.2.2, "g and ḡ"), two collectives NCCL runs as
    rings (or NVLS inside a node: NCCL has no tree all-gather or reduce-scatter), so an
    all-reduce algorithm (tree, NVLS tree) does not apply to them."""
    g = step.groups
    if sc.parallelism.sequence_parallel and g.tp > 1:
        return sum(tp_halves_ns(sc, step))
    return collective_ns(sc, step, "all_reduce", step.boundary_bytes, g.tp, g.tp_stride)


def pipelined_exposed_ns(collective_ns_: float, gemm_ns: float, tp: int) -> int:
    """What a TP collective pipelined with its GEMM in ``tp`` chunks leaves exposed: the chunk
    of the rank's own shard needs no transfer, and each other chunk's transfer runs beside the
    previous chunk's GEMM, so the pair takes max(C + G/tp, G) and exposes
    max(0, C − G·(tp − 1)/tp) beyond the GEMM (C the collective's time, G the GEMM's). The
    reduce-scatter's mirror image (each chunk's GEMM, then its transfer beside the next) is
    priced alike."""
    return math.ceil(max(0.0, collective_ns_ - gemm_ns * (tp - 1) / tp))


def forward_allreduces(sc: Scenario) -> int:
    """TP all-reduces of one block's forward without sequence parallelism: two (after the
    attention's and the MLP's row-parallel linears); one for a parallel-residual block, whose
    attention and MLP outputs are summed before a single reduce (EleutherAI/gpt-neox ce9bee3b
    megatron/model/transformer.py ParallelTransformerLayer.forward, gpt_j_residual: "we can do
    a single allreduce after we add mlp / attn outputs", ``residual + self.reduce(output)``).
    The backward keeps two: each branch's column-parallel input is its own copy to the TP
    region."""
    return 1 if sc.model.parallel_residual else 2


def tp_forward_block(sc: Scenario, step: ResolvedStep, moe: bool = False) -> tuple[int, int]:
    """(exposed, hidden) TP communication of one block's forward: two all-reduces
    (:func:`tp_allreduce_ns`; with sequence parallelism their all-gather and reduce-scatter
    halves, the all-gathers :func:`tp_input_gather_ns`, FP8 where the runtime gathers FP8), all
    exposed (hidden 0; a ``tp_comm_overlap`` runtime that does not pair them with
    their GEMMs overlaps the sum with the whole action: ``sim.lowering.passes.tp_pass``). Where
    :func:`tp_pairs_gemms`: the all-gathers before the attention's and the MLP's input GEMMs and
    the reduce-scatters after their output GEMMs, each :func:`pipelined_exposed_ns` with its
    GEMM group (``costs.compute.tp_linear_group_ns``). An MoE block (``moe``, of a model with
    experts) under sequence parallelism: the attention's pair and :func:`moe_tp_pairs`. Under
    runtime ``tp_input_redistribution: per_linear`` :func:`column_gathers` all-gathers each
    (none without sequence parallelism: the input is already whole)."""
    sp = sc.parallelism.sequence_parallel and step.groups.tp > 1
    if not tp_pairs_gemms(sc) and not sp:
        return forward_allreduces(sc) * tp_allreduce_ns(sc, step), 0
    if moe and sc.model.is_moe and sp:  # (tp_pairs_gemms: never with experts)
        pairs = moe_tp_pairs(sc, step)
        attn = tp_input_gather_ns(sc, step) + tp_halves_ns(sc, step)[1]
        return attn + sum(a + r for _, a, r in pairs), 0
    ag, ag_mlp = tp_input_gather_ns(sc, step), tp_input_gather_ns(sc, step, mlp=True)
    rs = tp_halves_ns(sc, step)[1]
    if not tp_pairs_gemms(sc):
        n_attn, n_mlp = column_gathers(sc)
        return n_attn * ag + n_mlp * ag_mlp + 2 * rs, 0
    pairs = ((ag, "attn_in"), (rs, "attn_out"), (ag_mlp, "mlp_in"), (rs, "mlp_out"))
    return paired_ns(tp_linear_group_ns(sc), step.groups.tp, pairs)


def tp_last_reduction(sc: Scenario, step: ResolvedStep) -> tuple[int, int]:
    """(exposed, hidden) of a dense block's last forward TP collective, after the MLP's
    row-parallel linear (its reduce-scatter under sequence parallelism, its all-reduce
    without; pipelined with that linear's GEMM where :func:`tp_pairs_gemms`), as
    :func:`tp_forward_block` prices it: what an early-stopped full recompute does not replay
    (``costs.compute.recompute_stops_early``); (0, 0) at tp 1."""
    if step.groups.tp <= 1:
        return 0, 0
    if not sc.parallelism.sequence_parallel:
        return tp_allreduce_ns(sc, step), 0
    rs = tp_halves_ns(sc, step)[1]
    if tp_pairs_gemms(sc):
        return paired_ns(tp_linear_group_ns(sc), step.groups.tp, ((rs, "mlp_out"),))
    return rs, 0


def paired_ns(gemm_ns: dict[str, float], tp: int, pairs: tuple[tuple[int, str], ...]
              ) -> tuple[int, int]:  # fmt: skip
    """(exposed, hidden) of TP collectives each :func:`pipelined_exposed_ns` with a GEMM group:
    ``pairs`` of (collective ns, group name in ``gemm_ns``, ``costs.compute.tp_linear_group_ns``)."""
    exposed = sum(pipelined_exposed_ns(c, gemm_ns[k], tp) for c, k in pairs)
    return exposed, sum(c for c, _ in pairs) - exposed


def column_backward_overlaps(sc: Scenario) -> bool:
    """Does a column-parallel linear's backward run its collectives beside its GEMMs (the
    input gradient's reduction beside the weight gradient, the re-gather beside the input
    gradient)? Under ``tp_backward_overlap`` (not with a ``tp_comm_overlap`` that overlaps
    the whole action instead), or a ``tp_comm_overlap`` that pairs them
    (``costs.compute.tp_pairs_gemms``)."""
    rt = sc.runtime
    return (rt.tp_backward_overlap and not rt.tp_comm_overlap) or tp_pairs_gemms(sc)


def beside_ns(collective_ns_: float, gemm_ns: float) -> int:
    """What a collective run beside a GEMM leaves exposed: max(0, C − G)."""
    return math.ceil(max(0.0, collective_ns_ - gemm_ns))


def tp_backward_block_ns(sc: Scenario, step: ResolvedStep, input_grad_only: bool = False) -> int:
    """Exposed TP communication of one block's backward: :func:`tp_backward_block`'s first
    (its hidden part is drawn on the "tp" stream: ``sim.lowering.passes.tp_overlap_span_pass``)."""
    return tp_backward_block(sc, step, input_grad_only)[0]


def tp_backward_block(sc: Scenario, step: ResolvedStep, input_grad_only: bool = False,
                      moe: bool = False) -> tuple[int, int]:  # fmt: skip
    """(exposed, hidden) TP communication of one block's backward (Megatron-LM
    core/tensor_parallel/layers.py LinearWithGradAccumulationAndAsyncCommunication.backward,
    d98e8a64 l.637-708;
    nanotron tensor_parallel/functional.py at 2411b022, the same design).

    Without sequence parallelism: the two column-parallel linears' input-gradient all-reduces
    (the backward of Megatron's f, §3.2). With it: the two row-parallel linears' output
    gradients all-gathered before their GEMMs, the two column-parallel linears' input
    gradients reduce-scattered and, with runtime ``tp_regather_backward``, their saved input
    shards all-gathered again for the weight gradient. With ``tp_backward_overlap`` a
    column-parallel linear's reduction runs beside its weight-gradient GEMM and its
    re-gather beside its input-gradient GEMM: each exposes max(0, collective − GEMM) and hides
    the rest (the second figure; 0 without the flag).
    ``input_grad_only``: the backward of an I/W split (zero-bubble, DualPipe's I actions): no
    weight-gradient GEMM to hide the reduction behind, and no re-gather (Megatron defers it with
    the weight gradient, ``wgrad_compute=False``; simtrain charges the W action no TP time). With
    ``tp_comm_overlap`` that does not pair collectives with GEMMs the whole sum (overlapped with
    the action's compute downstream); one that does (``costs.compute.tp_pairs_gemms``) as
    ``tp_backward_overlap``, and each row-parallel linear's output-gradient gather
    :func:`pipelined_exposed_ns` with its input-gradient GEMM; an I action (no weight
    gradient) pipelines each column linear's reduce-scatter with the input-gradient GEMM it
    follows, and each row linear's output-gradient gather with the input-gradient GEMM it
    feeds (the forward's GEMM groups: their input gradients have its FLOPs).
    Without either flag this is two all-reduces' worth, 2·:func:`tp_allreduce_ns`. nanotron's
    async row-parallel backward also overlaps its output-gradient gather with 1/tp of a GEMM:
    left exposed here. MLA models keep 2·:func:`tp_allreduce_ns` (their projections are not
    these column-parallel linears). An MoE block (``moe``) under sequence parallelism: the
    attention's as above, then the backward of :func:`moe_tp_pairs` (:func:`moe_ffn_backward_ns`):
    the dispatcher's reduce-scatter and all-gather swapped (no re-gather: fc1
    keeps the gathered tokens), the shared experts' as a dense MLP's. Under runtime
    ``tp_input_redistribution: per_linear`` (and ``per_linear_compiled``) each of a dense
    block's :func:`column_linears` reduces (and re-gathers) on its own, beside its share of the
    group's GEMMs."""
    g, rt = step.groups, sc.runtime
    if g.tp <= 1:
        return 0, 0
    moe_sp = moe and sc.model.is_moe and sc.parallelism.sequence_parallel
    if sc.model.is_mla and not moe_sp:  # its projections are not these column-parallel linears
        return 2 * tp_allreduce_ns(sc, step), 0
    if sc.model.is_mla:  # an MLA MoE block: the attention's all-reduce, then the FFN's
        return tp_allreduce_ns(sc, step) + moe_ffn_backward_ns(sc, step, input_grad_only), 0
    group = tp_linear_group_ns(sc)
    # the column-parallel groups (Q/K/V and the MLP's first linear(s)); each one's input- and
    # weight-gradient GEMMs have its forward FLOPs; with experts the MLP's first linear is the
    # experts': nothing to hide a collective under
    gemms = (group["attn_in"], 0.0 if sc.model.is_moe else group["mlp_in"])
    # Under a tp_comm_overlap that does not pair collectives with GEMMs every TP collective of
    # the action overlaps its whole compute (sim.lowering.passes.tp_pass): the sum is what that
    # overlap hides, not what is exposed. Where it pairs them (tp_pairs_gemms), as the
    # backward overlap does, and each row-parallel linear's output-gradient all-gather is
    # pipelined with its input-gradient GEMM.
    paired = tp_pairs_gemms(sc)
    overlap = column_backward_overlaps(sc)
    wgrad = (0.0,) * len(gemms) if input_grad_only else gemms

    def exposed(collective_ns_: int, gemm_ns: float) -> int:
        return beside_ns(collective_ns_, gemm_ns) if overlap else collective_ns_

    # the column-parallel linears of each group (attention, MLP), each beside its share
    linears = column_linears(sc)
    if not sc.parallelism.sequence_parallel:  # each column linear's input-gradient all-reduce
        ar = tp_allreduce_ns(sc, step)
        shown = sum(n * exposed(ar, w / n) for n, w in zip(linears, wgrad, strict=True))
        return shown, sum(linears) * ar - shown
    rs = tp_halves_ns(sc, step)[1]
    if moe_sp:  # the attention's collectives, then the FFN's, exposed
        regather = rt.tp_regather_backward and not input_grad_only
        again = tp_input_gather_ns(sc, step) if regather else 0
        column = exposed(again, gemms[0]) + exposed(rs, wgrad[0])
        ffn = moe_ffn_backward_ns(sc, step, input_grad_only)
        return (tp_grad_gather_ns(sc, step) + column + ffn, again + rs - column)
    # the row-parallel linears' output gradients, gathered before their input-gradient GEMMs
    grads = (tp_grad_gather_ns(sc, step), tp_grad_gather_ns(sc, step, mlp=True))
    unfused = unfused_column_reductions(sc) if paired else (False, False)
    if paired and input_grad_only:  # no weight gradient: each row linear's gather before its
        # input-gradient GEMM, each column linear's reduce-scatter after its own (a group of
        # separate linears under tp_overlap_symm_mem: a plain reduce-scatter, exposed)
        pairs = (
            (grads[0], "attn_out"),
            (grads[1], "mlp_out"),
            *((rs, k) for k, u in zip(("attn_in", "mlp_in"), unfused, strict=True) if not u),
        )
        shown, hidden = paired_ns(group, g.tp, pairs)
        return shown + rs * sum(unfused), hidden  # fmt: skip
    regather = rt.tp_regather_backward and not input_grad_only
    regathers = tuple(tp_input_gather_ns(sc, step, mlp) if regather else 0
                      for mlp in (False, True))  # fmt: skip
    if paired:
        row_gathers = sum(pipelined_exposed_ns(a, group[k], g.tp)
                          for a, k in zip(grads, ("attn_out", "mlp_out"), strict=True))  # fmt: skip
    else:
        row_gathers = sum(grads)
    column = sum(n * (exposed(r, d / n) + (rs if u else exposed(rs, w / n)))
                 for n, r, d, w, u in zip(linears, regathers, gemms, wgrad, unfused,
                                          strict=True))  # fmt: skip
    issued = sum(n * (r + rs) for n, r in zip(linears, regathers, strict=True))
    return row_gathers + column, issued - column + sum(grads) - row_gathers


def moe_ffn_backward_ns(sc: Scenario, step: ResolvedStep, input_grad_only: bool = False) -> int:
    """The backward of an MoE block's FFN collectives (:func:`moe_tp_pairs`), all exposed: an
    assumption, not read from a source (the dispatcher's collectives sit between the
    all-to-alls and the experts' GEMMs, which need their output; whether Transformer Engine
    overlaps the shared experts' with a GEMM, as ``tp_backward_overlap`` does for a dense MLP,
    is not modelled): the dispatcher's reduce-scatter and all-gather swapped (no
    re-gather: fc1 keeps the gathered tokens); the shared experts' as a dense MLP's (the
    output-gradient gather, the input-gradient reduce-scatter and, with runtime
    ``tp_regather_backward`` and a weight gradient, the input's re-gather)."""
    regather = sc.runtime.tp_regather_backward and not input_grad_only
    ns = 0
    for whose, a, r in moe_tp_pairs(sc, step):
        if whose == "shared":
            again = tp_input_gather_ns(sc, step, mlp=True) if regather else 0
            ns += tp_grad_gather_ns(sc, step, mlp=True) + r + again
        else:
            ns += a + r
    return ns


#: All-reduces of b·s fp32 values a vocabulary-parallel cross-entropy's forward runs over the TP
#: group: the logits' max, the target's logit and the sum of exponentials (Megatron-LM
#: core/tensor_parallel/cross_entropy.py _VocabParallelCrossEntropy.forward, d98e8a64 l.130,
#: l.146, l.150; nanotron tensor_parallel/functional.py _ShardedCrossEntropy, 2411b022
#: l.41-76; PyTorch's loss_parallel likewise); the fused kernel two (Megatron
#: fusions/fused_cross_entropy.py l.94, l.112). Its backward has none. ``vocab_parallel`` is
#: the unfused kernel's three (the native fusion's two are not told apart); ``te`` none: it
#: all-gathers each rank's 3 fp32 values a row instead (``activations.TE_LOSS_ROW_STATS_BYTES``:
#: ``dist.all_gather_into_tensor(m_d_X_y_gathered, m_d_X_y)``).
VOCAB_PARALLEL_LOSS_ALLREDUCES = {"standard": 3, "loss_parallel": 3, "fused": 2, "gathered": 0,
                                  "vocab_parallel": 3, "te": 0, "sharded": 3}  # fmt: skip


def embedding_backward_gathers(sc: Scenario) -> int:
    """All-gathers of the embedding output's gradient under sequence parallelism: one, the
    backward of the vocab-parallel embedding's reduce-scatter; two for an embedding kept whole
    on every rank (runtime ``tp_replicated_embedding``), whose Replicate output the first block
    takes twice, its norm's input and its residual stream, each a Replicate -> Shard(1)
    redistribution whose backward all-gathers (KempnerForge model/transformer.py l.58
    ``x = x + self.attention(self.attention_norm(x))``; counted by PyTorch in
    tests/test_replicated_embedding.py)."""
    return 2 if sc.runtime.tp_replicated_embedding else 1


def tp_edges_ns(sc: Scenario, step: ResolvedStep, embedding: bool, head: bool,
                input_grad_only: bool = False, loss: bool | None = None) -> tuple[int, int]:  # fmt: skip
    """(forward, backward) exposed TP communication of a chunk's embedding and output layer,
    outside its blocks (0 at tp 1); ``loss``: whether the chunk runs the loss, whose
    collectives are priced there (default: where it holds the head; nanotron's split may put
    it on a later chunk, ``StageBlocks.loss_parts``); ``input_grad_only``: the backward of an I/W split's I
    action (no weight-gradient GEMM to hide the reduction behind; the re-gather waits for W,
    as a block's, :func:`tp_backward_block`):

    - the vocabulary-parallel embedding's output: an all-reduce of b·s·h in the forward, or with
      sequence parallelism a reduce-scatter, whose backward is an all-gather of the gradient
      where the embedding trains (Megatron-LM core/tensor_parallel/layers.py
      VocabParallelEmbedding.forward, d98e8a64 l.378-383; mappings.py l.372-380; nanotron
      src/nanotron/parallel/tensor_parallel/nn.py TensorParallelEmbedding.forward, 2411b022
      l.301-306); none forward for an embedding kept whole on every rank (runtime
      ``tp_replicated_embedding``);
    - the column-parallel output layer: its input gradient's all-reduce in the backward, or with
      sequence parallelism its input's all-gather in the forward and its input gradient's
      reduce-scatter in the backward (plus the re-gather for its weight gradient under
      ``tp_regather_backward``), each only where it runs and, under
      :func:`column_backward_overlaps`, beside the head's other GEMM, as a block's
      column-parallel linears (:func:`tp_backward_block`);
    - the loss: :data:`VOCAB_PARALLEL_LOSS_ALLREDUCES` all-reduces of b·s fp32 values, or under
      ``cross_entropy: gathered`` the all-gather of the b·s·V logits to every TP rank, under
      ``te`` the all-gather of each rank's 12 B a row
      (``activations.TE_LOSS_ROW_STATS_BYTES``)
      (torchtitan without loss parallel: the output layer's ``Replicate()`` output,
      torchtitan a33d0e36 llama3/infra/parallelize.py apply_tp l.182-186)."""
    g, m = step.groups, sc.model
    loss = head if loss is None else loss  # the loss's collectives: where it runs
    if g.tp <= 1 or not (embedding or head or loss):
        return 0, 0
    t = cp_rank_training(sc.training, sc.parallelism.cp)  # the rank's s/cp tokens
    sp = sc.parallelism.sequence_parallel
    ag, rs = tp_halves_ns(sc, step)
    ar = 0 if sp else tp_allreduce_ns(sc, step)
    fwd = bwd = 0
    if embedding:
        # (none for an embedding kept whole on every rank: runtime tp_replicated_embedding,
        # whose backward all-gathers two gradients, :func:`embedding_backward_gathers`)
        fwd += 0 if sc.runtime.tp_replicated_embedding else rs if sp else ar
        trains = base_trainable(t.peft.method, t.peft.phase)
        bwd += embedding_backward_gathers(sc) * ag if sp and trains else 0
    if head:
        # the output layer's backward: its input gradient's reduction where the gradient goes
        # on into the blocks, its input's re-gather where its weight trains; with the
        # backward overlap each beside the head's other GEMM (the reduction beside the weight
        # gradient, the re-gather beside the input gradient), as a block's column linears
        _, input_grad, weight_grad = head_flops(m, t, g.tp)
        weight_grad = 0.0 if input_grad_only else weight_grad
        reduction = (rs if sp else ar) if input_grad else 0
        regather = ag if sp and sc.runtime.tp_regather_backward and weight_grad else 0
        if column_backward_overlaps(sc):  # its GEMMs as chunk_costs prices them
            dtype, hw, edge = step.precision.compute_dtype, sc.hardware, head_edge(m, t, g.tp)
            if weight_grad:
                reduction = beside_ns(reduction, matmul_ns(weight_grad, hw, dtype, edge=edge))
            if input_grad:
                regather = beside_ns(regather, matmul_ns(input_grad, hw, dtype, edge=edge))
        fwd += ag if sp else 0
        bwd += reduction + regather
    if loss:  # (nanotron's loss block on a later stage: StageBlocks.loss_parts)
        tokens = t.micro_batch * t.seq_len_effective
        if t.cross_entropy == "gathered":
            fwd += collective_ns(sc, step, "all_gather", step.logits_bytes, g.tp, g.tp_stride)
        if t.cross_entropy == "te":
            rows = TE_LOSS_ROW_STATS_BYTES * tokens * g.tp
            fwd += collective_ns(sc, step, "all_gather", rows, g.tp, g.tp_stride)
        reduces = VOCAB_PARALLEL_LOSS_ALLREDUCES[t.cross_entropy]
        fwd += reduces * collective_ns(sc, step, "all_reduce", 4 * tokens, g.tp, g.tp_stride)
    return fwd, bwd


def tp_block_collectives(sc: Scenario, moe: bool = False) -> tuple[int, int]:
    """(forward, backward) TP collectives one block issues per micro-batch, as
    the pricers beside it count them (:func:`tp_forward_block`, :func:`tp_backward_block`, ``costs.chunk_time.tp_recompute_block``: tests/test_collective_issue.py checks the count against them, each collective priced at one unit): without sequence
    parallelism the forward's all-reduces (:func:`forward_allreduces`: 2, or 1 for a
    parallel-residual block) and the backward's two; with it the forward's two all-gathers and
    two reduce-scatters, the backward's two output-gradient all-gathers, two input-gradient
    reduce-scatters and, with runtime ``tp_regather_backward``, two re-gathers (nanotron
    tensor_parallel/functional.py at 2411b022: 4 + 6 a block); an MLA block's backward two
    all-reduces (each an all-gather and a reduce-scatter under sequence parallelism). A full
    recompute replays the forward's; a selective_op one the two all-reduces, or under
    sequence parallelism the two input all-gathers (``costs.chunk_time.tp_recompute_block``).
    (0, 0) at tp 1. A split backward's host time counts the whole backward's, shared between
    its I and W actions by GPU time (``ChunkDurations.host_ns``), re-gathers included. An MoE
    block (``moe``) under sequence parallelism: the attention's (an MLA block's one all-reduce
    in backward) and its FFN's (:func:`moe_tp_pairs`: the dispatcher's pair each way, the
    shared experts' as a dense MLP's). Under runtime ``tp_input_redistribution`` per linear a
    dense block's forward all-gathers :func:`column_gathers`, and its backward reduces (and
    re-gathers) for each of :func:`column_linears`."""
    p, rt = sc.parallelism, sc.runtime
    if p.tp <= 1:
        return 0, 0
    sp = p.sequence_parallel
    linears, gathers = sum(column_linears(sc)), sum(column_gathers(sc))
    forward = 2 + gathers if sp else forward_allreduces(sc)
    if moe and sc.model.is_moe and sp:
        kinds = moe_tp_pair_kinds(sc)
        regather = 1 if rt.tp_regather_backward else 0
        forward = 2 + 2 * len(kinds)
        backward = 2 if sc.model.is_mla else 2 + regather
        backward += sum(2 + (regather if k == "shared" else 0) for k in kinds)
    elif sc.model.is_mla:
        backward = 4 if sp else 2
    elif sp:
        backward = 2 + linears * (2 if rt.tp_regather_backward else 1)
    else:
        backward = linears
    if sc.training.recompute == "full":  # (an early stop leaves the block's last one out)
        backward += forward - (1 if recompute_stops_early(sc) else 0)
    elif sc.training.recompute == "selective_op":
        backward += gathers if sp else 2
    return forward, backward


def tp_edge_collectives(sc: Scenario, embedding: bool, head: bool,
                        loss: bool | None = None) -> tuple[int, int]:  # fmt: skip
    """(forward, backward) TP collectives a chunk's embedding and output layer issue per
    micro-batch, as :func:`tp_edges_ns` prices them (checked against it as the blocks' are): the embedding's all-reduce (with
    sequence parallelism a reduce-scatter, and its gradient's all-gather where the embedding
    trains); the output layer's input all-gather under sequence parallelism, the loss's
    vocabulary-parallel all-reduces (:data:`VOCAB_PARALLEL_LOSS_ALLREDUCES`) or the gathered
    logits' all-gather (Transformer Engine's loss: its rows' all-gather), and in the backward its input gradient's reduction where the gradient
    flows on and, under ``tp_regather_backward``, its input's re-gather where its weight
    trains. ``loss``: whether the chunk runs the loss (default: where it holds the head;
    nanotron's split may put it on a later stage). (0, 0) at tp 1 or on a chunk with none."""
    p, t = sc.parallelism, sc.training
    loss = head if loss is None else loss
    if p.tp <= 1 or not (embedding or head or loss):
        return 0, 0
    sp = p.sequence_parallel
    fwd = bwd = 0
    if embedding:
        fwd += 0 if sc.runtime.tp_replicated_embedding else 1
        trains = base_trainable(t.peft.method, t.peft.phase)
        bwd += embedding_backward_gathers(sc) if sp and trains else 0
    if head:
        _, input_grad, weight_grad = head_flops(sc.model, t, p.tp)
        fwd += 1 if sp else 0
        bwd += 1 if input_grad else 0
        bwd += 1 if sp and sc.runtime.tp_regather_backward and weight_grad else 0
    if loss:
        fwd += 1 if t.cross_entropy in ("gathered", "te") else 0
        fwd += VOCAB_PARALLEL_LOSS_ALLREDUCES[t.cross_entropy]
    return fwd, bwd


def ep_alltoall_ns(sc: Scenario, step: ResolvedStep, combine: bool = False) -> int:
    """One dispatch (or combine) all-to-all of an MoE layer over the expert-parallel group:
    ep GPUs etp ids apart (tp, or 1 with whole experts: ``ParallelSpec.etp``) (Megatron-Core's expert grid orders tp-ep-dp-pp and has no CP
    dimension, ``ParallelSpec.expert_dp``: with cp > 1 the group spans CP ranks too), each
    sending its :func:`costs.moe.a2a_bytes` (the busiest rank's, scaled by
    the imbalance), of which (ep−1)/ep leaves the GPU (nccl-tests all-to-all bus bandwidth
    factor (n−1)/n: ``collectives.bus_factor``). Over NVLink inside a node, each GPU's own NIC
    across nodes (``collectives._all_to_all_multinode_s``). 0 without expert parallelism.
    ``runtime.moe_fp8_dispatch``: the dispatch (not the ``combine``) carries FP8 values;
    ``runtime.moe_dispatcher: deepep``: :func:`deepep_alltoall_ns`."""
    m, p = sc.model, sc.parallelism
    if not m.is_moe or p.ep <= 1:
        return 0
    # one GPU's tokens: with context parallelism its s/cp of each sequence (cp_rank_training)
    tokens = step.micro_batch * step.seq_len_effective // p.cp
    e = step.precision.act_mm
    if sc.runtime.moe_fp8_dispatch and step.precision.gemm_dtype and not combine:
        e = FP8_DISPATCH_BYTES
    if sc.runtime.moe_dispatcher == "deepep":
        return deepep_alltoall_ns(sc, step, tokens, e)
    size = a2a_bytes(m, tokens, e, p.tp, moe_load(m, p.ep))
    return collective_ns(sc, step, "all_to_all", size, p.ep, p.etp)


def ep_layer_alltoall_ns(sc: Scenario, step: ResolvedStep) -> int:
    """One MoE layer's all-to-alls of a forward (or a backward): dispatch and combine
    (:func:`ep_alltoall_ns`)."""
    return ep_alltoall_ns(sc, step) + ep_alltoall_ns(sc, step, combine=True)


def nccl_kernel_sms(sc: Scenario) -> int:
    """SMs one NCCL collective kernel takes from the compute it overlaps: a thread block per
    channel, each on an SM of its own ("Demystifying NCCL", arXiv 2507.04786 §3: a channel is
    a CUDA block on its own SM). The channels: the hardware profile's logged one-node count
    (``collectives.nccl_channels_one_node``: 24 on an HGX A100, NVIDIA/nccl-tests #100), else
    ``collectives.NCCL_CHANNELS`` (24 on 8x H100, NVIDIA/nccl #1367; an nsys trace of FSDP's
    ncclAllGather on an H100 shows the same 24 blocks, NVIDIA developer forum thread 337991,
    2025), applied to every data-parallel collective, inside a node or across; at most the
    GPU's SMs less one. 0 where the profile gives no SM count (``hardware.sm_count``)."""
    sms = sc.hardware.sm_count
    if sms < 2:
        return 0
    channels = sc.hardware.nccl_channels_one_node or coll.NCCL_CHANNELS
    return min(channels, sms - 1)


def nccl_sm_share(sc: Scenario) -> float:
    """The share of the GPU's SMs a data-parallel collective's kernel holds while it runs:
    :func:`nccl_kernel_sms` over ``hardware.sm_count`` (0 without an SM count)."""
    sms = nccl_kernel_sms(sc)
    return sms / sc.hardware.sm_count if sms else 0.0


def deepep_sm_share(sc: Scenario) -> float:
    """The share of SMs DeepEP's kernels take from the compute they overlap:
    ``moe_dispatch_sms / sm_count`` (DeepEP ``Buffer.num_sms``; spec.runtime); 0 without the
    DeepEP dispatcher or expert parallelism, or when the hardware profile gives no SM count.
    Below 1: spec.scenario.check_deepep."""
    rt, sms = sc.runtime, sc.hardware.sm_count
    if rt.moe_dispatcher != "deepep" or sc.parallelism.ep == 1 or not sms:
        return 0.0
    return rt.moe_dispatch_sms / sms


def deepep_alltoall_ns(sc: Scenario, step: ResolvedStep, tokens: int, value_bytes: float) -> int:
    """One DeepEP dispatch or combine (:func:`costs.moe.deepep_a2a_bytes`): the InfiniBand
    part through the GPU's own NIC and the NVLink forwarding concurrently (DeepEP overlaps
    them), plus a latency per other node and one NVLink latency."""
    m, p = sc.model, sc.parallelism
    g = step.placement.group_gpus_per_node(p.ep, p.etp)  # (the EP group: etp apart)
    intra, inter = coll.node_links(sc.hardware, g)
    nodes = p.ep // g
    ib, nvl = deepep_a2a_bytes(m, tokens, value_bytes, p.ep, nodes, p.tp, moe_load(m, p.ep))
    t = max(ib / inter.bandwidth_bytes_per_s, nvl / intra.bandwidth_bytes_per_s)
    return round(1e9 * (t + (nodes - 1) * inter.latency_s + intra.latency_s))


def dp_ns(sc: Scenario, step: ResolvedStep, op: str, size_bytes: float,
          per_gpu_nic: bool = False, replicas_share: float = 1.0) -> int:  # fmt: skip
    """A collective over the data-parallel group (GPU ids tp apart): dp x cp GPUs with context
    parallelism, which reduces gradients and shards ZeRO over the CP ranks too (Megatron-Core
    ``param_and_grad_buffer.py``: ``dp_cp_group``). With hybrid sharding
    (``ParallelSpec.zero_replicas`` R > 1) ZeRO's collectives run over its groups of
    S = dp·cp / R: a parameter all-gather over the group of S alone, a gradient reduce-scatter
    over the group and then an all-reduce of its 1/S shard across the R replicas, GPU ids
    tp·S apart (FSDP ``_runtime_utils.py`` ``_reduce_grad``: reduce-scatter in the process
    group, all-reduce of the shard in ``_inter_node_pg`` under HYBRID_SHARD; Megatron-Core's
    distributed optimizer instances: the intra-instance reduce-scatter, then the
    inter-instance all-reduce). An all-reduce (DDP's, nanotron's ZeRO-1) spans dp x cp.
    ``replicas_share``: the part of the replicas' all-reduce this reduce-scatter pays (1/m per
    micro-batch where the runtime all-reduces at the accumulation boundary only:
    ``runtime.replica_reduce_at_boundary``; the step's total is then one all-reduce)."""
    g, p = step.groups, sc.parallelism
    if p.zero_replicas == 1 or op == "all_reduce":
        return collective_ns(sc, step, op, size_bytes, g.dp_cp, g.tp, per_gpu_nic)
    s = p.zero_shards
    ns = collective_ns(sc, step, op, size_bytes, s, g.tp, per_gpu_nic)
    if op == "reduce_scatter":
        ns += round(replicas_share * collective_ns(sc, step, "all_reduce", size_bytes / s,
                                                   p.zero_replicas, g.tp * s, per_gpu_nic))  # fmt: skip
    return ns


def hop_messages(counts: tuple[int, int], forward: bool, kind: str) -> int:
    """A runtime's messages (``counts``: its forward and backward transfer's, e.g.
    ``runtime.p2p_messages_forward`` / ``_backward`` or the polled ones) for one micro-batch's
    hop carrying ``kind`` (``ResolvedStep.hop_kind``): the forward count only for a decoder
    block's output ("hidden"); a hop carrying one tensor takes the backward's, as a gradient
    does (nanotron's lm_head -> cast_to_fp32 -> loss blocks take one input each, a decoder
    block two: models/llama.py l.866-867, 899, 1044 at 2411b022)."""
    return counts[0] if forward and kind == "hidden" else counts[1]


def hop_send_ns(sc: Scenario, step: ResolvedStep, stage: int, to_stage: int) -> int:
    """Chunk ``stage``'s send of one micro-batch to the neighbouring chunk ``to_stage`` on
    another rank: what crosses that boundary (``ResolvedStep.hop_bytes``) at the runtime's
    message count for it (:func:`hop_messages`; forward when ``to_stage`` is the later chunk,
    whichever rank holds it)."""
    rank, other = step.chunk_rank(stage), step.chunk_rank(to_stage)
    rt = sc.runtime
    messages = hop_messages((rt.p2p_messages_forward, rt.p2p_messages_backward),
                            to_stage > stage, step.hop_kind(stage, to_stage))  # fmt: skip
    return p2p_send_ns(sc, step, rank, other - rank, step.hop_bytes(stage, to_stage), messages)


def p2p_send_ns(sc: Scenario, step: ResolvedStep, rank: int, direction: int, n_bytes: int,
                messages: int) -> int:  # fmt: skip
    """Rank ``rank``'s send of ``n_bytes`` (all TP ranks together, ``ResolvedStep.hop_bytes``)
    to rank ``rank + direction`` in ``messages`` messages (:func:`hop_send_ns` gives a chunk's):
    Megatron's scatter/gather sends b·s·h/t per TP rank (Narayanan et al. 2021 §4.1; nanotron's
    TP ranks each send their own shard of it), over the intra-node link or the NIC when the hop
    leaves the node; a runtime that sends metadata or more tensors pays the link's latency per
    message beyond the first."""
    intra, inter = coll.node_links(sc.hardware, 2)  # one pair's transfer
    link = inter if step.placement.hop_crosses_nodes(rank, direction) else intra
    extra = (messages - 1) * link.latency_s  # metadata messages and small tensors
    return round(1e9 * (coll.p2p_time_s(n_bytes / step.groups.tp, link) + extra))


def grad_sync_ns(sc: Scenario, step: ResolvedStep, grad_bytes: int) -> tuple[int, str]:
    """Un-bucketed gradient all-reduce after the last backward (PipeDream and split-backward
    schedules, where DDP's bucket hooks do not apply)."""
    if step.groups.dp_cp == 1 or grad_bytes == 0:
        return 0, ""
    return dp_ns(sc, step, "all_reduce", grad_bytes), "DP all-reduce grads"


def ddp_buckets(bucket_mb: float, grad_bytes: int) -> tuple[int, int, int]:
    """(number of buckets, bucket size, last bucket's size) of ``grad_bytes`` of gradients in
    buckets of ``bucket_mb`` MB (10^6 B; PyTorch DDP's ``bucket_cap_mb`` is in MiB:
    ``spec.scenario.TORCH_DDP_BUCKET_MB``; DeepSpeed's ``reduce_bucket_size`` and Megatron's
    ``--ddp-bucket-size`` count elements: the importers convert)."""
    cap = int(bucket_mb * 1e6)
    n = max(1, -(-grad_bytes // cap))
    return n, cap, grad_bytes - cap * (n - 1)


def buckets(bucket_mb: float, grad_bytes: int) -> list[int]:
    """Gradient buckets of ``bucket_mb`` MB; when there are more than 16, the earlier ones are
    merged into 15 equal groups (they all hide under the rest of backward) and the last bucket,
    the one that sets the exposed communication, keeps its size. Each group still pays one
    latency per bucket it stands for (see :func:`bucket_counts`)."""
    n, cap, last = ddp_buckets(bucket_mb, grad_bytes)
    sizes = [cap] * (n - 1) + [last]
    if n <= MAX_BUCKET_GROUPS:
        return sizes
    head = sum(sizes[:-1])
    k = MAX_BUCKET_GROUPS - 1
    return [head // k + (1 if i < head % k else 0) for i in range(k)] + [sizes[-1]]


def bucket_counts(bucket_mb: float, grad_bytes: int) -> list[int]:
    """How many real buckets each entry of :func:`buckets` stands for."""
    n = ddp_buckets(bucket_mb, grad_bytes)[0]
    if n <= MAX_BUCKET_GROUPS:
        return [1] * n
    k = MAX_BUCKET_GROUPS - 1
    return [(n - 1) // k + (1 if i < (n - 1) % k else 0) for i in range(k)] + [1]


def bucket_group_ns(sc: Scenario, step: ResolvedStep, op: str, grad_bytes: int) -> tuple[int, ...]:
    """Time of each bucket group: ``count`` collectives of its average bucket size. DDP
    all-reduces buckets of ``bucket_mb`` MB (PyTorch default 25 MiB, ``bucket_cap_mb``; Li et
    al. 2020 §3.2.3) as backward produces them; ZeRO-1/2 reduce-scatters them (DeepSpeed
    ``overlap_comm``)."""
    mb = sc.parallelism.bucket_mb
    return tuple(
        c * dp_ns(sc, step, op, size / c) if c else 0
        for size, c in zip(buckets(mb, grad_bytes), bucket_counts(mb, grad_bytes), strict=True)
    )


def edp_ns(sc: Scenario, step: ResolvedStep, op: str, size_bytes: float) -> int:
    """A collective over the expert-data-parallel group: the tp·dp·cp / (etp·ep) ranks that
    hold the same experts, GPU ids etp·ep apart (Megatron-Core ``parallel_state``: the expert
    grid has no CP dimension, ``RankGenerator(tp=etp, ep=ep, dp=expert-dp, pp=pp, cp=1,
    order="tp-ep-dp-pp")`` with expert-dp = world / (etp·ep·pp); ``ParallelSpec.expert_dp``;
    expert gradients are reduced there and the distributed optimizer shards expert states over
    it, as ``costs.memory`` does)."""
    p = sc.parallelism
    return collective_ns(sc, step, op, size_bytes, p.expert_dp, p.etp * p.ep)


def expert_bucket_group_ns(sc: Scenario, step: ResolvedStep, op: str,
                           grad_bytes: int) -> tuple[int, ...]:  # fmt: skip
    """:func:`bucket_group_ns` of the experts' gradients, over the expert-data-parallel group
    (Megatron-Core DDP keeps expert parameters in buckets of their own)."""
    mb = sc.parallelism.bucket_mb
    return tuple(
        c * edp_ns(sc, step, op, size / c) if c else 0
        for size, c in zip(buckets(mb, grad_bytes), bucket_counts(mb, grad_bytes), strict=True)
    )


def naive_dp_ns(sc: Scenario, step: ResolvedStep, grad_bytes: int,
                param_bytes: int) -> tuple[int, str]:  # fmt: skip
    """The lecture's data parallelism: GPU 0 receives every other GPU's gradients through its
    own link ((n−1)·S), averages them, steps, and sends the parameters back to each ((n−1)·P)."""
    g = step.groups
    link = coll.group_link(sc.hardware, step.placement.gpus_per_node, g.dp * g.tp, g.dp)
    n = g.dp
    t = (n - 1) * (grad_bytes + param_bytes) / link.bandwidth_bytes_per_s
    t += 2 * (n - 1) * link.latency_s
    return round(1e9 * t), "gather grads on GPU 0 + broadcast params"
