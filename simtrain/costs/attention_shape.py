"""The FlashAttention kernel class: its rate by shape, and the fit on measured attention tables.

A causal FlashAttention call over b sequences of s queries (attending to s_kv keys) with the GPU's
H heads runs its thread blocks over (batch, head, query block): with few query rows b·H·s the GPU
is under-filled (FlashAttention-2, Dao 2023, §3.2 "parallelism": "in the forward pass we
parallelize over the batch, number of heads and the sequence length dimension"). The cost model
prices it as
    time = F_causal / (peak · e∞) · (1 + R / (b·H·s))
with F_causal the FLOPs a causal kernel does (:func:`costs.compute.flash_kernel_flops`: half of
the full count 4·b·s·s_kv·H·d for the forward without a prefix; the backward 2.5x the forward, for it recomputes the scores: FlashAttention-2 §3.1.2),
e∞ the rate of an unboundedly parallel call and R (rows) the under-fill edge, one pair for the
forward kernel and one for the backward (profiles' ``efficiency.flash_*``; priced by ``costs.compute.flash_core``).
:func:`fit_flash_rows_edge` picks R on a grid and, for each R, the e∞ that minimises the table's
MAPE of kernel time exactly (as :func:`costs.gemm_shape.fit_gemm_edge` does for GEMMs); the
tables are ``measured/attention_tables.yaml`` (``apps.gemm_tables.load_attention_tables``).
"""

from __future__ import annotations

from simtrain.costs.compute import flash_rows_factor
from simtrain.costs.gemm_shape import EdgeFit, fit_edge_term

#: The grid of R (query rows) the fit searches; profiles ship the grid's minimum.
ROWS_GRID = tuple(range(0, 1048577, 1024))


def fit_flash_rows_edge(shapes: tuple[tuple[float, float], ...],
                        grid: tuple[int, ...] = ROWS_GRID) -> EdgeFit:  # fmt: skip
    """The R of ``grid`` (``EdgeFit.edge``) and its e∞ with the smallest MAPE of kernel time
    over ``shapes``: (query rows b·H·s, causal efficiency) pairs
    (``costs.gemm_shape.fit_edge_term``)."""
    effs = [e for _, e in shapes]
    return fit_edge_term(effs, lambda edge: [flash_rows_factor(edge, r) for r, _ in shapes], grid)


def causal_rows(shapes: tuple[tuple[int, int, int, int, int, int, float], ...],
                ) -> tuple[tuple[float, float], ...]:  # fmt: skip
    """A measured table's rows (batch, seq_len, heads, kv_heads, qk_head_dim, v_head_dim,
    efficiency of the full count 4·b·s²·H·d) as the pairs :func:`fit_flash_rows_edge` fits:
    (query rows b·H·s, efficiency of the causal FLOPs). A causal call over s queries and s keys
    does half the full count (``costs.compute.flash_kernel_flops``, no prefix), so its causal
    efficiency is half the table's."""
    return tuple((float(b * h * s), e / 2) for b, s, h, _, _, _, e in shapes)
