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
  ``runtime.fused_gate_up``); Q, K and V three, orthogonalised apart even where
  ``linear_qkv`` holds them (``OptimizerConfig.muon_split_qkv = True``, optimizer_config.py
  l.263); each routed expert's matrices apart (``TEGroupedLinear``'s ``weight{i}``); a LoRA
  adapter's A and B each their own.
- Tensor parallelism: Megatron-Bridge's Muon default ``muon_tp_mode="blockwise"``
  orthogonalises each TP rank's shard as it is, no communication (``orthogonalize``:
  ``partition_dim = None`` for blockwise, l.396-398). ``duplicated`` / ``distributed`` (an
  all-gather of the momentum over TP first) are not modelled.
- Data parallelism: the layer-wise distributed optimizer (``dist_muon``, or ``muon`` with
  ``--use-distributed-optimizer``: ``LayerWiseDistributedOptimizer``) gives each
  data-parallel rank whole parameters to update, largest Newton-Schulz cost first to the
  least loaded rank (``_compute_per_buffer_param_layout``: "Compute-balanced LPT",
  layer_wise_optimizer.py l.196-330), and all-gathers them afterwards. With
  ``parallelism.zero_stage`` 1 simtrain assigns a GPU's matrices so over its S ZeRO ranks
  (the routed experts' over the expert-data-parallel group, as
  ``costs.workload.rank_optimizer_shard`` shards the update) and takes the most loaded
  rank's share: total / S where the matrices are many, the largest matrix where they are
  few. With ZeRO 0 every replica orthogonalises all of its matrices.
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

from simtrain.costs.compute import gemm_edge, matmul_ns
from simtrain.costs.params import (
    EXPERT_PREFIX,
    ParamTensor,
    embedding_tp,
    end_param_tensors,
    layer_param_tensors,
    muon_managed,
)
from simtrain.layout.step import ResolvedStep
from simtrain.spec.scenario import Scenario

#: Newton-Schulz iterations per update (KellerJordan/Muon ``ns_steps=5``; Megatron-Core
#: ``num_ns_steps=5``; Megatron-Bridge ``muon_num_ns_steps=5``).
NS_STEPS = 5


@dataclass(frozen=True, slots=True)
class Matrix:
    """One matrix Muon orthogonalises on one GPU: ``rows`` x ``cols``, a routed expert's or
    not (whose work the expert-data-parallel group shares)."""

    rows: int
    cols: int
    expert: bool


def fused_matrices(sc: Scenario) -> dict[str, str]:
    """The linears Muon orthogonalises as one matrix: gate and up as ``fc1`` where the runtime
    fuses them (Q, K and V stay apart: ``muon_split_qkv``)."""
    return {"gate": "fc1", "up": "fc1"} if sc.runtime.fused_gate_up else {}


def muon_matrices(tensors: Iterable[ParamTensor], fused: dict[str, str]) -> list[Matrix]:
    """The matrices of ``tensors`` Muon orthogonalises (trainable, :func:`muon_managed`), the
    weights of the linears ``fused`` names as one matrix each: their input width (rows, which
    they share) and the sum of their output widths. A name that comes again (an MTP module's
    copy of a block) starts a new matrix."""
    out: list[list] = []
    open_fused: dict[tuple[str, str], int] = {}  # (owner, fused name) -> index in out
    for p in tensors:
        if not p.trainable or not muon_managed(p):
            continue
        *owner, part, kind = ["", *p.name.split(".")]
        who = ".".join(owner).lstrip(".")
        expert = who.startswith(EXPERT_PREFIX)
        if kind == "weight" and part in fused:
            key = (who, fused[part])
            i = open_fused.get(key)
            if i is not None and part not in out[i][3]:
                out[i][1] += p.cols
                out[i][3].add(part)
                continue
            open_fused[key] = len(out)
            out.append([p.rows, p.cols, expert, {part}])
        else:
            out.append([p.rows, p.cols, expert, set()])
    return [Matrix(r, c, e) for r, c, e, _ in out]


def matrix_ns(x: Matrix, sc: Scenario) -> float:
    """One update's Newton-Schulz time of ``x`` in ns, m <= n its sides: per iteration the
    X·Xᵀ (2·m²·n FLOPs), A·A (2·m³) and B·X (2·m²·n) GEMMs at the dense GEMM rate with their
    shape terms, in bf16; :data:`NS_STEPS` iterations."""
    m, n = sorted((x.rows, x.cols))
    hw = sc.hardware
    one = (matmul_ns(2.0 * m * m * n, hw, "bf16", edge=gemm_edge(m, m, n)) * 2
           + matmul_ns(2.0 * m**3, hw, "bf16", edge=gemm_edge(m, m, m)))  # fmt: skip
    return NS_STEPS * one


def rank_tensor_groups(sc: Scenario, step: ResolvedStep, rank: int
                       ) -> list[tuple[int, list[ParamTensor]]]:  # fmt: skip
    """Pipeline rank ``rank``'s GPU's parameter tensors as (copies, tensors), as
    ``costs.memory`` counts its model states: its MoE blocks, its dense blocks, and once the
    embedding's (over ``embedding_tp``), head's and MTP modules' tensors of its chunks."""
    m, t, p = sc.model, sc.training, sc.parallelism
    mine = step.rank_chunks(rank)
    dense = sum(m.dense_layers_in(c.lo, c.hi) for c in mine) if m.is_moe else step.rank_layers(rank)
    moe = step.rank_layers(rank) - dense
    groups = [(dense, layer_param_tensors(m, t, p.tp, moe=False, ep=p.ep))]
    if moe:
        groups.append((moe, layer_param_tensors(m, t, p.tp, moe=True, ep=p.ep, etp=p.etp)))
    ends = end_param_tensors(m, t, p.tp, p.pp, any(c.embedding for c in mine),
                             any(c.head for c in mine), emb_tp=embedding_tp(sc))  # fmt: skip
    return [*groups, (1, ends)]


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
    of its matrices (:func:`muon_matrices`), under ZeRO >= 1 the busiest of its ZeRO ranks'
    shares (the routed experts' over the expert-data-parallel group), and the scalar Adam's
    second state read and written for the other trainable elements (module docstring)."""
    if sc.training.optimizer != "muon":
        return 0
    p, prec = sc.parallelism, sc.training.precision_spec
    sharded = p.zero_stage >= 1
    fused = fused_matrices(sc)
    dense: list[float] = []
    experts: list[float] = []
    rest = 0.0
    for copies, tensors in rank_tensor_groups(sc, step, rank):
        for x in muon_matrices(tensors, fused):
            (experts if x.expert else dense).extend([matrix_ns(x, sc)] * copies)
        for t in tensors:
            if t.trainable and not muon_managed(t):
                share = p.expert_dp if t.name.startswith(EXPERT_PREFIX) else p.zero_shards
                rest += copies * t.numel / (share if sharded else 1)
    ns = (_busiest_share(dense, p.zero_shards if sharded else 1)
          + _busiest_share(experts, p.expert_dp if sharded else 1))  # fmt: skip
    eff = sc.hardware.efficiency.optimizer or sc.hardware.efficiency.memory_bound  # the step's
    ns += 1e9 * rest * 2 * prec.state / (sc.hardware.hbm_bandwidth_bytes_per_s * eff)
    return round(ns)


def rank_muon_elements(sc: Scenario, step: ResolvedStep, rank: int) -> tuple[int, int]:
    """(matrix elements Muon updates, other trainable elements its scalar Adam updates) of
    pipeline rank ``rank``'s GPU, before ZeRO sharding (``simtrain memory --explain``)."""
    mats = rest = 0
    for copies, tensors in rank_tensor_groups(sc, step, rank):
        for x in tensors:
            if x.trainable:
                if muon_managed(x):
                    mats += copies * x.numel
                else:
                    rest += copies * x.numel
    return mats, rest
