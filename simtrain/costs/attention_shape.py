"""The FlashAttention kernel class: its rate by shape, and the fit on measured attention tables.

A causal FlashAttention call over b sequences of s queries (attending to s_kv keys) with the GPU's
H heads runs its thread blocks over (batch, head, query block): with few query rows b·H·s the GPU
is under-filled (FlashAttention-2, Dao 2023, §3.2 "parallelism": "in the forward pass we
parallelize over the batch, number of heads and the sequence length dimension"); and each thread
block walks the key blocks its query block sees, so its fixed work (loading Q, writing O, the
causal diagonal block it masks) weighs more in a short sequence, over fewer key blocks. The cost
model prices a call as
    time = F_causal / (peak · e∞) · (1 + R / (b·H·s)) · (1 + S / s)
    · (1 + D / d) / (1 + D / d_ref)   (head dim d < d_ref only)
with F_causal the FLOPs a causal kernel does (:func:`costs.compute.flash_kernel_flops`: half of
the full count 4·b·s·s_kv·H·d for the forward without a prefix; the backward 2.5x the forward,
for it recomputes the scores: FlashAttention-2 §3.1.2), e∞ the rate of an unboundedly parallel,
unboundedly long call, R (rows) the under-fill edge and S (tokens) the short-sequence edge, one
set for the forward kernel and one for the backward, per kernel (hardware profiles'
``attention_kernels.<kernel>``; priced by ``costs.compute.flash_core``). D (head-dim elements) is
the head-dim edge: each score costs the kernel its matmul FLOPs (4·d forward) and a fixed amount
of non-matmul work (the softmax's exponential, max and rescale), which the tensor cores do not
run: "the H100 SXM5 GPU has 989 TFLOPS of FP16 matmul but only 3.9 TFLOPS of special functions"
(Shah et al. 2024, FlashAttention-3, §3.1), so at a smaller head dim the same FLOPs carry more
exponentials. Its share not hidden behind the matmuls is D / d; unhidden entirely,
D = peak / (k · exponential rate), k the matmul FLOPs per score per head-dim element: 4 forward,
10 backward (FlashAttention-2 §3.1.2: 2.5 x the forward's for one exponential again), so at
most 63 forward and 25 backward on an H100. The classes' rates are at the head dim they
were measured at, ``costs.compute.REFERENCE_HEAD_DIM``; above it nothing was measured and the class prices
every head dim as that one (a 192- or 256-wide head is not priced faster).

Each measured table sweeps one of the three: SimuMax's varies the heads at one length (its R is
fitted, S = 0), the FlashAttention-3 paper's the length at one b·s and H (its S is fitted,
R = 0); its head-dim-64 charts set D against the head-dim-128 class
(:func:`fit_head_dim_edge`). :func:`fit_flash_edge` picks the edge on a grid and, for each, the e∞ that minimises the
table's MAPE of kernel time exactly (as :func:`costs.gemm_shape.fit_gemm_edge` does for GEMMs);
the tables are ``measured/attention_tables.yaml`` (``apps.gemm_tables.load_attention_tables``;
``AttentionTable.rates`` reads their rows, ``AttentionTable.fit`` fits them).
"""

from __future__ import annotations

from simtrain.costs.compute import REFERENCE_HEAD_DIM, edge_factor, head_dim_factor
from simtrain.costs.gemm_shape import EdgeFit, fit_edge_term

#: The grids the fit searches, by the table's swept variable: R in query rows (1,024 apart), S in
#: tokens (8 apart), D in head-dim elements (1 apart); profiles ship the grid's minimum. D stops at
#: 2 x REFERENCE_HEAD_DIM = 256, the largest head dim FlashAttention-2 takes (its flash_api.cpp
#: check: "FlashAttention forward only supports head dimension at most 256"): there a head dim of 64 runs at 3/5 of the reference
#: rate per FLOP (:func:`costs.compute.head_dim_factor` = 5/3), against the 1/2 of D -> infinity
#: (a call's time independent of its head dim); a fit at the end says the sweep does not have this
#: term's shape (``simtrain calibrate`` flags it, ``torchref.profile_writer``), not a larger D.
ROWS_GRID = tuple(range(0, 1048577, 1024))
SEQ_GRID = tuple(range(0, 8193, 8))
HEAD_DIM_GRID = tuple(range(0, 257))
EDGE_GRIDS = {"rows": ROWS_GRID, "seq": SEQ_GRID, "head_dim": HEAD_DIM_GRID}


def fit_flash_edge(pairs: tuple[tuple[float, float], ...], grid: tuple[int, ...] = ROWS_GRID
                   ) -> EdgeFit:  # fmt: skip
    """The edge of ``grid`` (``EdgeFit.edge``) and its e∞ with the smallest MAPE of kernel time
    over ``pairs``: (x, causal efficiency) with x the swept variable (query rows b·H·s for R, the
    query length s for S), the time factor 1 + edge / x (``costs.gemm_shape.fit_edge_term``)."""
    effs = [e for _, e in pairs]
    return fit_edge_term(effs, lambda edge: [edge_factor(edge, x) for x, _ in pairs], grid)


def fit_head_dim_edge(pairs: tuple[tuple[float, float], ...], head_dim: int,
                      efficiency: float) -> EdgeFit:  # fmt: skip
    """D on :data:`HEAD_DIM_GRID` with the smallest MAPE of kernel time over ``pairs`` (the
    row's time factor from the class's other edges, causal rate) measured at ``head_dim``, for
    the class measured at the reference head dim: its ``efficiency`` (e∞) and edges held (the
    paper's charts: 1 + S / s; ``simtrain calibrate``'s sweep: 1 + R / (b·H·s)), each row's time
    factor that x ``costs.compute.head_dim_factor``. A sweep at one head dim cannot tell D from
    e∞, so e∞ stays the reference's (``EdgeFit.efficiency`` echoes it; ``constant_mape_pct`` is
    the MAPE at D = 0: the reference class unchanged)."""
    if len(pairs) < 2:
        raise ValueError("a head-dim fit needs at least two shapes")
    if not 0 < head_dim < REFERENCE_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is not below the reference {REFERENCE_HEAD_DIM}")

    def mape(edge: int) -> float:
        f = head_dim_factor(edge, head_dim)
        return 100 * sum(abs(r * base * f / efficiency - 1) for base, r in pairs) / len(pairs)

    best = min(HEAD_DIM_GRID, key=lambda d: (mape(d), d))
    return EdgeFit(float(best), efficiency, mape(best), mape(0))
