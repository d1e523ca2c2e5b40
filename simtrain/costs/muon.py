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
- Fused linears are one matrix: Q/K/V as ``linear_qkv`` (unless ``split_qkv``), gate and up
  as ``linear_fc1``; each routed expert's matrices apart (``TEGroupedLinear``'s
  ``weight{i}``).
- Tensor parallelism: Megatron-Bridge's Muon default ``muon_tp_mode="blockwise"``
  orthogonalises each TP rank's shard as it is, no communication (``orthogonalize``:
  ``partition_dim = None`` for blockwise, l.396-398). ``duplicated`` / ``distributed`` (an
  all-gather of the momentum over TP first) are not modelled.
- Data parallelism: the layer-wise distributed optimizer (``dist_muon``,
  ``LayerWiseDistributedOptimizer``) gives each data-parallel rank whole parameters to update
  and all-gathers them afterwards: with ``parallelism.zero_stage`` >= 1 a rank
  orthogonalises 1/S of the matrices' work (S the ZeRO group, the routed experts' over the
  expert-data-parallel group, as ``costs.workload.rank_optimizer_shard`` shards the update);
  with ZeRO 0 every replica orthogonalises all of its matrices.

The iterations run as GEMMs in the 16-bit dtype (KellerJordan: ``X = G.bfloat16()``;
Megatron-Core: fp32 operands at ``muon_fp32_matmul_prec="medium"``, PyTorch's bf16-internal
fp32 matmul), priced at the dense GEMM rate with its shape term (``costs.compute.matmul_ns``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from simtrain.costs.compute import fused_linear_names, gemm_edge, matmul_ns
from simtrain.costs.params import EXPERT_PREFIX, ParamTensor, chunk_tensor_groups, muon_managed
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

    @property
    def flops(self) -> float:
        """One update's Newton-Schulz FLOPs: steps x (4·m²·n + 2·m³), m <= n."""
        m, n = sorted((self.rows, self.cols))
        return NS_STEPS * (4.0 * m * m * n + 2.0 * m**3)


def muon_matrices(tensors: Iterable[ParamTensor], fused: dict[str, str]) -> list[Matrix]:
    """The matrices of ``tensors`` Muon orthogonalises (trainable, :func:`muon_managed`), the
    runtime's fused linears (``fused``: :func:`costs.compute.fused_linear_names`) as one
    matrix each: their input width and the sum of their output widths (Q, K and V, or gate
    and up, take the same input)."""
    merged: dict[str, tuple[int, int]] = {}
    for p in tensors:
        if not p.trainable or not muon_managed(p):
            continue
        *owner, part, kind = ["", *p.name.split(".")]
        if part in fused:  # rows: the input width, which the fused linears share
            key = ".".join([*owner, fused[part], kind])
            rows, cols = merged.get(key, (p.rows, 0))
            merged[key] = (rows, cols + p.cols)
        else:
            merged[p.name] = (p.rows, p.cols)
    return [Matrix(r, c, k.lstrip(".").startswith(EXPERT_PREFIX)) for k, (r, c) in merged.items()]


def matrix_ns(x: Matrix, sc: Scenario) -> float:
    """One update's Newton-Schulz time of ``x`` in ns: per iteration the m x n x m, m x m x m
    and m x m x n GEMMs at the dense GEMM rate with their shape terms, in bf16."""
    m, n = sorted((x.rows, x.cols))
    hw = sc.hardware
    one = (matmul_ns(2.0 * m * m * n, hw, "bf16", edge=gemm_edge(m, m, n)) * 2
           + matmul_ns(2.0 * m**3, hw, "bf16", edge=gemm_edge(m, m, m)))  # fmt: skip
    return NS_STEPS * one


def rank_muon_ns(sc: Scenario, step: ResolvedStep, rank: int) -> int:
    """Pipeline rank ``rank``'s GPU's Newton-Schulz time in one optimizer step (0 unless the
    optimizer is Muon): its chunks' matrices (:func:`muon_matrices`), 1/S of the non-expert
    ones' work and 1/expert-dp of the routed experts' under ZeRO >= 1 (the layer-wise
    distributed optimizer: module docstring)."""
    if sc.training.optimizer != "muon":
        return 0
    m, t, p, rt = sc.model, sc.training, sc.parallelism, sc.runtime
    fused = fused_linear_names(rt.fused_qkv, rt.fused_gate_up)
    dense_share = 1 / p.zero_shards if p.zero_stage >= 1 else 1.0
    expert_share = 1 / p.expert_dp if p.zero_stage >= 1 else 1.0
    total = 0.0
    for c in step.rank_chunks(rank):
        groups = chunk_tensor_groups(m, t, p.tp, p.ep, p.pp, c.lo, c.hi, c.embedding, c.head,
                                     p.etp)  # fmt: skip
        for copies, tensors in groups:
            for x in muon_matrices(tensors, fused):
                share = expert_share if x.expert else dense_share
                total += copies * share * matrix_ns(x, sc)
    return round(total)


def rank_muon_elements(sc: Scenario, step: ResolvedStep, rank: int) -> tuple[int, int]:
    """(matrix elements Muon updates, other trainable elements its scalar Adam updates) of
    pipeline rank ``rank``'s GPU, before ZeRO sharding (``simtrain memory --explain``)."""
    m, t, p = sc.model, sc.training, sc.parallelism
    mats = rest = 0
    for c in step.rank_chunks(rank):
        for copies, tensors in chunk_tensor_groups(m, t, p.tp, p.ep, p.pp, c.lo, c.hi,
                                                   c.embedding, c.head, p.etp):  # fmt: skip
            for x in tensors:
                if x.trainable:
                    if muon_managed(x):
                        mats += copies * x.numel
                    else:
                        rest += copies * x.numel
    return mats, rest
