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
their sums against whole blocks. Not counted: an MoE block's router and per-expert loop and
multi-latent attention's extra projections (charged as the dense block of their MLP kind), and
the casts of autocast (counted in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

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
                   head: bool = False, moe_layers: int = 0) -> tuple[int, int]:  # fmt: skip
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
    if per_op > 0 and layers > 0:
        ops = layer_ops(sc.model)
        replay = sc.training.recompute in ("full", "selective_op")
        ops_f = round(1e9 * per_op * layers * ops.forward)
        if is_data_parallel(sc):
            ops_f *= sc.parallelism.dp
        ops_b = round(
            1e9 * per_op * layers * (ops.backward + (ops.recompute_full if replay else 0))
        )
    dense = max(layers - moe_layers, 0)
    block_f, block_b = tp_block_collectives(sc)
    moe_f, moe_b = tp_block_collectives(sc, moe=True) if moe_layers else (0, 0)
    edge_f, edge_b = tp_edge_collectives(sc, embedding, head)
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
