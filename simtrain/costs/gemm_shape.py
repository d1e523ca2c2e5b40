"""The GEMM shape term: the factor it prices a GEMM at, and its fit on measured GEMM rates.

A linear layer's (M x K) @ (K x N) GEMM is priced at 2·M·N·K·(1 + L/M + L/N + L/K) FLOPs at the
large-GEMM rate (``costs.compute.gemm_edge``; L is a profile's ``efficiency.gemm_edge_elements``).
Its efficiency is then e(M, N, K) = e∞ / (1 + L/M + L/N + L/K). :func:`fit_gemm_edge` picks L
on a grid and, for each L, the e∞ that minimises the table's MAPE of GEMM time exactly: with
x_i = e_i·(1 + L/M_i + L/N_i + L/K_i), the error of row i is |x_i/e∞ − 1| = x_i·|1/e∞ − 1/x_i|,
so 1/e∞ is the median of the 1/x_i weighted by x_i. The tables come from published GEMM
profiles (``apps.gemm_tables``, the shipped profiles' L) or from ``simtrain calibrate``'s own
shape sweep on the device it runs on (``torchref.calibrate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simtrain.costs.compute import gemm_edge

#: The grid of L (elements) the fit searches; profiles ship the grid's minimum.
EDGE_GRID = tuple(range(0, 1001, 10))


@dataclass(frozen=True, slots=True)
class EdgeFit:
    """A fitted rate term e_i = e∞ / f_i(edge): the GEMM shape term's L (elements) or one of the
    FlashAttention class's edges (``costs.attention_shape``): R (query rows), S (tokens) or D
    (head-dim elements)."""

    edge: float  # L, R, S or D
    efficiency: float  # e∞, the rate of an unbounded shape at that edge
    mape_pct: float  # the table's MAPE of kernel time with the term
    constant_mape_pct: float  # ... with one efficiency for every shape (edge 0)


def shape_factor(edge: float, m: int, n: int, k: int) -> float:
    """The GEMM's time over that of its FLOPs at the large-GEMM rate, as the cost model prices
    it: 1 + L·gemm_edge / (2·M·N·K) (= 1 + L/M + L/N + L/K)."""
    return 1 + edge * gemm_edge(m, n, k) / (2.0 * m * n * k)


def _best_efficiency(xs: list[float]) -> tuple[float, float]:
    """(e∞, MAPE %) minimising mean |x_i/e∞ − 1|: 1/e∞ = the x-weighted median of 1/x
    (``xs`` non-empty and positive)."""
    if not xs or min(xs) <= 0:
        raise ValueError("the efficiencies must be positive, at least one")
    pts = sorted((1 / x, x) for x in xs)
    half = sum(xs) / 2
    acc = 0.0
    u = pts[-1][0]
    for inv, w in pts:
        acc += w
        if acc >= half:
            u = inv
            break
    return 1 / u, 100 * sum(abs(x * u - 1) for x in xs) / len(xs)


def fit_edge_term(efficiencies: list[float], factors: Callable[[float], list[float]],
                  grid: tuple[int, ...]) -> EdgeFit:  # fmt: skip
    """The :class:`EdgeFit` of a rate term e_i = e∞ / f_i(edge):
    the edge of ``grid`` whose x_i = e_i·f_i(edge) (``factors(edge)``, one per measured
    efficiency) have the smallest :func:`_best_efficiency` MAPE, the first of ties. The search of
    :func:`fit_gemm_edge` and of ``costs.attention_shape.fit_flash_edge``."""
    if len(efficiencies) < 2:
        raise ValueError("an edge term needs at least two measured shapes")
    best = None
    for edge in grid:
        xs = [e * f for e, f in zip(efficiencies, factors(edge), strict=True)]
        eff, mape = _best_efficiency(xs)
        if best is None or mape < best[2] - 1e-12:
            best = (float(edge), eff, mape)
    assert best is not None
    return EdgeFit(*best, _best_efficiency(efficiencies)[1])


def fit_gemm_edge(shapes: tuple[tuple[int, int, int, float], ...],
                  grid: tuple[int, ...] = EDGE_GRID) -> EdgeFit:  # fmt: skip
    """The L of ``grid`` (and its e∞) with the smallest MAPE of GEMM time over ``shapes``."""
    effs = [e for *_, e in shapes]
    return fit_edge_term(
        effs, lambda edge: [shape_factor(edge, m, n, k) for m, n, k, _ in shapes], grid
    )
