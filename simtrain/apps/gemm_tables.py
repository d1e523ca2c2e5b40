"""Measured GEMM tables (measured/gemm_tables.yaml): single-GEMM efficiencies by shape from
published GEMM profiles (SimuMax, Vidur), on which ``costs.gemm_shape.fit_gemm_edge`` fits the
shipped profiles' GEMM shape term (``efficiency.gemm_edge_elements``; tests/test_gemm_tables.py
refits every one). Not training runs: ``simtrain validate`` does not read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simtrain.costs.attention_shape import EDGE_GRIDS, fit_flash_edge, fit_head_dim_edge
from simtrain.costs.compute import REFERENCE_HEAD_DIM, edge_factor
from simtrain.costs.gemm_shape import EdgeFit
from simtrain.errors import ConfigError, unknown_value
from simtrain.spec.hardware import ATTENTION_KERNELS, FLASH_DIRECTIONS, FLASH_RATE_MAX
from simtrain.spec.yamlfile import load_yaml

#: Largest efficiency a table row may state over its peak: the profiles' own cap on kernel
#: rates (spec.hardware.FLASH_RATE_MAX): a GEMM above a stated peak (a boost clock), an
#: attention row counted in full where a causal kernel does half.
TABLE_EFFICIENCY_MAX = FLASH_RATE_MAX

GEMM_TABLES_PATH = Path(__file__).resolve().parents[2] / "measured" / "gemm_tables.yaml"


@dataclass(frozen=True, slots=True)
class GemmTable:
    id: str
    source: str
    profiles: tuple[str, ...]
    shapes: tuple[tuple[int, int, int, float], ...]  # (M, N, K, efficiency)


def load_gemm_tables(path: Path = GEMM_TABLES_PATH) -> list[GemmTable]:
    """The tables of ``path``; every shape has positive M, N, K and an efficiency in (0, 2]
    (above 1: faster than the table's stated peak, e.g. a boost clock)."""
    tables = []
    for t in load_yaml(path):
        shapes = tuple((int(m), int(n), int(k), float(e)) for m, n, k, e in t["shapes"])
        for m, n, k, e in shapes:
            if min(m, n, k) <= 0 or not 0 < e <= TABLE_EFFICIENCY_MAX:
                raise ConfigError(str(path), f"{t['id']}.shapes", "each [M, N, K, efficiency] "
                                  f"needs M, N, K > 0 and 0 < efficiency <= "
                                  f"{TABLE_EFFICIENCY_MAX:g}", [m, n, k, e])  # fmt: skip
        tables.append(GemmTable(t["id"], t["source"], tuple(t["profiles"]), shapes))
    return tables


ATTENTION_TABLES_PATH = GEMM_TABLES_PATH.with_name("attention_tables.yaml")
#: What a table's values are (:meth:`AttentionTable.rates`).
ATTENTION_VALUES = ("full_count_efficiency", "tflops")


@dataclass(frozen=True, slots=True)
class AttentionTable:
    id: str
    source: str
    profiles: tuple[str, ...]
    peak_tflops: float  # the dense 16-bit peak of the GPU measured
    direction: str  # forward | backward
    kernel: str  # spec.hardware.ATTENTION_KERNELS: the profiles' class it sets
    edge: str  # rows | seq | head_dim: the variable the table sweeps, whose edge term it fits
    value: str  # full_count_efficiency | tflops (:meth:`rates`)
    causal: bool  # measured with the causal mask
    # (batch, seq_len, heads, kv_heads, qk_head_dim, v_head_dim, value)
    shapes: tuple[tuple[int, int, int, int, int, int, float], ...]
    # edge head_dim: the table (same GPU, kernel and direction, at the reference head dim) whose
    # class this one's head dim extends: its e∞ and S hold (costs.attention_shape)
    reference: str = ""

    def rates(self) -> tuple[tuple[float, float], ...]:
        """The rows as the pairs ``costs.attention_shape.fit_flash_edge`` fits: (swept variable,
        rate of the kernel's causal FLOPs over the table's peak). The swept variable is the
        query rows b·H·s (``edge: rows``) or the length s (``edge: seq``). A value is either
        the efficiency of the full count 4·b·s²·H·d (SimuMax: a causal call does half of it,
        so its causal efficiency is half the value) or the TFLOP/s a FlashAttention benchmark
        prints, of the kernel's own FLOPs (halved for a causal call: flash-attention's
        ``benchmarks/benchmark_flash_attention.py`` ``flops``); a table measured without the
        causal mask (``causal: false``) stands for the causal kernel at its rate (its file
        says so)."""
        return tuple(
            (float(b * h * s) if self.edge == "rows" else float(s),  # seq, head_dim: s
             v / 2 if self.value == "full_count_efficiency" else v / self.peak_tflops)
            for b, s, h, _, _, _, v in self.shapes
        )  # fmt: skip

    def fit(self, reference: AttentionTable | None = None) -> EdgeFit:
        """The table's kernel class: its edge on the swept variable's grid and e∞
        (``costs.attention_shape.fit_flash_edge``); a head-dim table's D against its
        ``reference`` table's class (``costs.attention_shape.fit_head_dim_edge``)."""
        if self.edge != "head_dim":
            return fit_flash_edge(self.rates(), EDGE_GRIDS[self.edge])
        if reference is None or reference.id != self.reference:
            raise ValueError(f"{self.id}: a head-dim fit needs its reference table "
                             f"{self.reference!r}")  # fmt: skip
        ref = reference.fit()  # a length sweep: its S (R = 0)
        rows = tuple((edge_factor(ref.edge, s), r) for s, r in self.rates())
        return fit_head_dim_edge(rows, self.shapes[0][4], ref.efficiency)


def _choice(t: dict, key: str, allowed: tuple[str, ...], path: Path) -> str:
    if t.get(key) not in allowed:
        raise unknown_value(str(path), f"{t['id']}.{key}", t.get(key), allowed)
    return t[key]


def load_attention_tables(path: Path = ATTENTION_TABLES_PATH) -> list[AttentionTable]:
    """The attention-kernel tables of ``path``; every shape has positive sizes and a value in
    (0, 2] as an efficiency (a causal kernel does half the full count) or (0, 2 x peak] in
    TFLOP/s."""
    tables = []
    for t in load_yaml(path):
        peak = float(t["peak_tflops"])
        value = _choice(t, "value", ATTENTION_VALUES, path)
        top = TABLE_EFFICIENCY_MAX * (peak if value == "tflops" else 1)
        shapes = tuple((*(int(v) for v in row[:6]), float(row[6])) for row in t["shapes"])
        for row in shapes:
            if min(row[:6]) <= 0 or not 0 < row[6] <= top:
                raise ConfigError(str(path), f"{t['id']}.shapes", "each [batch, seq_len, heads, "
                                  f"kv_heads, qk_head_dim, v_head_dim, {value}] needs sizes > 0 "
                                  f"and 0 < {value} <= {top:g}", list(row))  # fmt: skip
        if not isinstance(t.get("causal"), bool):
            raise ConfigError(str(path), f"{t['id']}.causal", "must be true or false",
                              t.get("causal"))  # fmt: skip
        tables.append(AttentionTable(
            t["id"], t["source"], tuple(t["profiles"]), peak,
            _choice(t, "direction", FLASH_DIRECTIONS, path),
            _choice(t, "kernel", ATTENTION_KERNELS, path),
            _choice(t, "edge", tuple(EDGE_GRIDS), path), value, t["causal"], shapes,
            str(t.get("reference", ""))))  # fmt: skip
    by_id = {t.id: t for t in tables}
    for t in tables:
        if t.edge == "head_dim":
            _check_head_dim_table(t, by_id, path)
        elif t.reference:
            raise ConfigError(str(path), f"{t.id}.reference", "only a table of edge head_dim "
                              "names a reference", t.reference)  # fmt: skip
    return tables


def _head_dims(t: AttentionTable) -> list[int]:
    return sorted({row[4] for row in t.shapes})


def _check_head_dim_table(t: AttentionTable, by_id: dict[str, AttentionTable], path: Path) -> None:
    """A head-dim table names as ``reference`` a table that sweeps the length on the same GPU
    peak, kernel, direction and mask, at the reference head dim; it is at one head dim below."""
    key = ("seq", t.kernel, t.direction, t.peak_tflops, t.causal)
    ref = by_id.get(t.reference)
    if ref is None or (ref.edge, ref.kernel, ref.direction, ref.peak_tflops, ref.causal) != key:
        allowed = [u.id for u in by_id.values()
                   if (u.edge, u.kernel, u.direction, u.peak_tflops, u.causal) == key]  # fmt: skip
        raise ConfigError(str(path), f"{t.id}.reference", "must name a table of edge seq with "
                          "the same kernel, direction, peak and mask", t.reference or None,
                          " | ".join(allowed) or "none in the file")  # fmt: skip
    if _head_dims(ref) != [REFERENCE_HEAD_DIM]:
        raise ConfigError(str(path), f"{ref.id}.shapes", f"the reference of {t.id} must be at "
                          f"head dim {REFERENCE_HEAD_DIM}", _head_dims(ref))  # fmt: skip
    dims = _head_dims(t)
    if len(dims) != 1 or not 0 < dims[0] < REFERENCE_HEAD_DIM:
        raise ConfigError(str(path), f"{t.id}.shapes", f"a head-dim table is at one head dim "
                          f"below {REFERENCE_HEAD_DIM}", dims)  # fmt: skip
