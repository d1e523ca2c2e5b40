"""The Muon optimizer: which tensors it orthogonalises and what its Newton-Schulz iterations
cost.

Muon (K. Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks",
github.com/KellerJordan/Muon ``muon.py``; Liu et al. 2025, "Muon is Scalable for LLM
Training", arXiv 2502.16982 §2) keeps one momentum buffer per matrix and replaces each update
by the momentum orthogonalised with ``steps`` Newton-Schulz iterations. For an m x n matrix
X with m <= n (``zeropower_via_newtonschulz5`` transposes a tall one) each iteration is

    A = X·Xᵀ (2·m²·n FLOPs),  B = b·A + c·A·A (2·m³),  X = a·X + B·X (2·m²·n),

so 4·m²·n + 2·m³ FLOPs, 5 iterations by default (the KellerJordan code's ``ns_steps=5``;
Megatron-Core ``TensorParallelMuon(num_ns_steps=5)``, NVIDIA/Megatron-LM d98e8a64
``megatron/core/optimizer/emerging_optimizers.py`` l.180-240).

Megatron-Core's rules, which simtrain follows:

- Which parameters: every 2-D weight but the word and position embeddings and the output
  layer (``_is_nonlinear_or_embedding``: ``is_embedding_or_output_parameter`` or
  ``len(param.shape) != 2``, l.140-147); those and every vector (norms, biases) go to the
  scalar optimizer, Adam by default (Megatron-Bridge ``distributed_muon_with_cosine_annealing``
  ``muon_scalar_optimizer="adam"``, src/megatron/bridge/recipes/utils/optimizer_utils.py at
  067f987d). So a Muon run keeps 1 state per matrix element and Adam's 2 per other element.
- Which matrices: gate and up are one, ``linear_fc1`` (where the runtime fuses them,
  ``runtime.fused_gate_up``); Q, K and V three, orthogonalised apart even where one
  ``linear_qkv`` parameter holds them (``OptimizerConfig.muon_split_qkv = True``,
  optimizer_config.py l.263); each routed expert's matrices apart (``TEGroupedLinear``'s
  ``weight{i}``); a LoRA adapter's A and B each their own.
- Tensor parallelism: Megatron-Bridge's Muon default ``muon_tp_mode="blockwise"``
  orthogonalises each TP rank's shard as it is, no communication (``orthogonalize``:
  ``partition_dim = None`` for blockwise, l.396-398). ``duplicated`` / ``distributed`` (an
  all-gather of the momentum over TP first) are not modelled.
- Data parallelism: the layer-wise distributed optimizer (``dist_muon``, or ``muon`` with
  ``--use-distributed-optimizer``: ``LayerWiseDistributedOptimizer``) gives each
  data-parallel rank whole parameters to update, largest Newton-Schulz cost first to the
  least loaded rank (``_compute_per_buffer_param_layout``: "Compute-balanced LPT",
  layer_wise_optimizer.py l.196-330), per model chunk and buffer (the routed experts' apart),
  and all-gathers them afterwards. With ``parallelism.zero_stage`` 1 simtrain assigns each
  of a GPU's chunks so over its S ZeRO ranks (the routed experts' over the
  expert-data-parallel group, as ``costs.workload.rank_optimizer_shard`` shards the update)
  and adds up the busiest rank's shares: total / S where the parameters are many, the
  largest one where they are few. With ZeRO 0 every replica updates all of them.
- The scalar Adam's second state: the step's memory-bound update is priced at one state per
  parameter (``spec.precision.OPTIMIZER_STATES``); the elements Adam updates read and write
  a second one, added here.

The iterations run as GEMMs in the 16-bit dtype (KellerJordan: ``X = G.bfloat16()``;
Megatron-Core: fp32 operands at ``muon_fp32_matmul_prec="medium"``, PyTorch's bf16-internal
fp32 matmul), priced at the dense GEMM rate with its shape term (``costs.compute.matmul_ns``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from simtrain.costs.compute import (
    fused_linear_names,
    gemm_edge,
    matmul_ns,
    optimizer_traffic_ns,
)
from simtrain.costs.params import (
    EXPERT_PREFIX,
    ParamTensor,
    muon_managed,
    rank_tensor_groups,
    scenario_chunk_groups,
    zero_shard,
)
from simtrain.layout.step import ResolvedStep
from simtrain.spec.scenario import Scenario

#: Newton-Schulz iterations per update (KellerJordan/Muon ``ns_steps=5``; Megatron-Core
#: ``num_ns_steps=5``; Megatron-Bridge ``muon_num_ns_steps=5``).
NS_STEPS = 5


@dataclass(frozen=True, slots=True)
class Matrix:
    """One matrix Muon orthogonalises on one GPU: ``rows`` x ``cols``."""

    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class MuonParam:
    """One parameter Muon updates, whole on one data-parallel rank under the layer-wise
    distributed optimizer: its matrices, orthogonalised apart (a fused ``linear_qkv``'s Q, K
    and V: ``muon_split_qkv``), and whether it is a routed expert's (whose work the
    expert-data-parallel group shares)."""

    matrices: tuple[Matrix, ...]
    expert: bool


#: The fused parameter Muon orthogonalises as one matrix: gate and up's ``linear_fc1``; a
#: fused ``linear_qkv`` is split into Q, K and V (Megatron-Core's ``muon_split_qkv = True``).
ONE_MATRIX = "fc1"


def muon_params(tensors: Iterable[ParamTensor], fused: dict[str, str]) -> list[MuonParam]:
    """The parameters of ``tensors`` Muon updates (trainable, :func:`muon_managed`): the
    weights of the linears ``fused`` maps to one name form one parameter (a module's
    ``linear_qkv`` or ``linear_fc1``), one matrix where its name is :data:`ONE_MATRIX` (their
    input width, rows, which they share, by the sum of their output widths), else one matrix
    each; every other tensor its own parameter. A linear that comes again (a second copy of a
    block's tensors) starts a new parameter."""
    out: list[tuple[list[Matrix], bool, str]] = []
    open_: dict[tuple[str, str], tuple[int, set[str]]] = {}  # (owner, name) -> (index, parts)
    for p in tensors:
        if not p.trainable or not muon_managed(p):
            continue
        *owner, part, kind = ["", *p.name.split(".")]
        who = ".".join(owner).lstrip(".")
        expert = who.startswith(EXPERT_PREFIX)
        if kind == "weight" and part in fused:
            key = (who, fused[part])
            i, parts = open_.get(key, (-1, set()))
            if i >= 0 and part not in parts:
                parts.add(part)
                mats, _, name = out[i]
                if name == ONE_MATRIX:
                    mats[0] = Matrix(mats[0].rows, mats[0].cols + p.cols)
                else:
                    mats.append(Matrix(p.rows, p.cols))
                continue
            open_[key] = (len(out), {part})
            out.append(([Matrix(p.rows, p.cols)], expert, fused[part]))
        else:
            out.append(([Matrix(p.rows, p.cols)], expert, ""))
    return [MuonParam(tuple(mats), expert) for mats, expert, _ in out]


def matrix_ns(x: Matrix, sc: Scenario) -> float:
    """One update's Newton-Schulz time of ``x`` in ns, m <= n its sides: per iteration the
    X·Xᵀ (2·m²·n FLOPs), A·A (2·m³) and B·X (2·m²·n) GEMMs at the dense GEMM rate with their
    shape terms, in bf16; :data:`NS_STEPS` iterations."""
    m, n = sorted((x.rows, x.cols))
    hw = sc.hardware
    one = (matmul_ns(2.0 * m * m * n, hw, "bf16", edge=gemm_edge(m, m, n)) * 2
           + matmul_ns(2.0 * m**3, hw, "bf16", edge=gemm_edge(m, m, m)))  # fmt: skip
    return NS_STEPS * one


def _busiest_share(loads: list[float], shards: int) -> float:
    """The most loaded of ``shards`` ranks' work when the items ``loads`` are handed out
    largest first to the least loaded rank (LPT, Megatron-Core's layer-wise assignment)."""
    if not loads:
        return 0.0
    if shards <= 1:
        return sum(loads)
    if len(loads) <= shards:
        return max(loads)
    bins = [0.0] * shards
    for x in sorted(loads, reverse=True):
        heapq.heapreplace(bins, bins[0] + x)
    return max(bins)


def rank_muon_ns(sc: Scenario, step: ResolvedStep, rank: int) -> int:
    """Pipeline rank ``rank``'s GPU's Muon work in one optimizer step beyond the one-state
    update every optimizer pays (0 unless the optimizer is Muon): the Newton-Schulz iterations
    of its parameters (:func:`muon_params`); under ZeRO >= 1 each model chunk's parameters are
    assigned apart, its dense ones over the ZeRO ranks and its routed experts' over the
    expert-data-parallel group, and the busiest rank's shares add up (Megatron-Core builds the
    layer-wise layout per model chunk and buffer, each assignment from zero loads, ties to the
    first rank: ``_compute_per_buffer_param_layout``); and the scalar Adam's second state read
    and written for the other trainable elements (module docstring)."""
    if sc.training.optimizer != "muon":
        return 0
    t, p = sc.training, sc.parallelism
    sharded = p.zero_stage >= 1
    dense_shards, expert_shards = (p.zero_shards, p.expert_dp) if sharded else (1, 1)
    fused = fused_linear_names(sc.runtime.fused_qkv, sc.runtime.fused_gate_up)
    ns = 0.0
    for c in step.rank_chunks(rank):
        dense: list[float] = []
        experts: list[float] = []
        for copies, tensors in scenario_chunk_groups(sc, c):
            for x in muon_params(tensors, fused):
                cost = sum(matrix_ns(mat, sc) for mat in x.matrices)
                (experts if x.expert else dense).extend([cost] * copies)
        ns += _busiest_share(dense, dense_shards) + _busiest_share(experts, expert_shards)
    rest = expert_rest = 0  # the elements the scalar Adam updates, before sharding
    for copies, tensors in rank_tensor_groups(sc, step.rank_chunks(rank)):
        for x in tensors:
            if x.trainable and not muon_managed(x):
                rest += copies * x.numel
                expert_rest += copies * x.numel if x.name.startswith(EXPERT_PREFIX) else 0
    shard = zero_shard(rest, expert_rest, dense_shards, expert_shards)
    ns += optimizer_traffic_ns(shard * 2 * t.precision_spec.state, sc.hardware)
    return round(ns)


def rank_muon_elements(sc: Scenario, step: ResolvedStep, rank: int) -> tuple[int, int]:
    """(matrix elements Muon updates, other trainable elements its scalar Adam updates) of
    pipeline rank ``rank``'s GPU, before ZeRO sharding (``simtrain memory --explain``)."""
    mats = rest = 0
    for copies, tensors in rank_tensor_groups(sc, step.rank_chunks(rank)):
        for x in tensors:
            if x.trainable:
                if muon_managed(x):
                    mats += copies * x.numel
                else:
                    rest += copies * x.numel
    return mats, rest
