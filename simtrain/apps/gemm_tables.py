"""Measured GEMM tables (measured/gemm_tables.yaml): single-GEMM efficiencies by shape from
published GEMM profiles (SimuMax, Vidur), on which ``costs.gemm_shape.fit_gemm_edge`` fits the
shipped profiles' GEMM shape term (``efficiency.gemm_edge_elements``; tests/test_gemm_tables.py
refits every one). Not training runs: ``simtrain validate`` does not read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simtrain.errors import ConfigError
from simtrain.spec.hardware import FLASH_RATE_MAX
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
ATTENTION_DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True, slots=True)
class AttentionTable:
    id: str
    source: str
    profiles: tuple[str, ...]
    peak_tflops: float  # the dense 16-bit peak the efficiencies are stated against
    direction: str  # forward | backward
    # (batch, seq_len, heads, kv_heads, qk_head_dim, v_head_dim, efficiency of the full count)
    shapes: tuple[tuple[int, int, int, int, int, int, float], ...]


def load_attention_tables(path: Path = ATTENTION_TABLES_PATH) -> list[AttentionTable]:
    """The attention-kernel tables of ``path``; every shape has positive sizes and a
    full-count efficiency in (0, 2] (a causal kernel does half the full count)."""
    tables = []
    for t in load_yaml(path):
        if t["direction"] not in ATTENTION_DIRECTIONS:
            raise ConfigError(str(path), f"{t['id']}.direction", "unknown direction",
                              t["direction"], " | ".join(ATTENTION_DIRECTIONS))  # fmt: skip
        shapes = tuple((*(int(v) for v in row[:6]), float(row[6])) for row in t["shapes"])
        for row in shapes:
            if min(row[:6]) <= 0 or not 0 < row[6] <= TABLE_EFFICIENCY_MAX:
                raise ConfigError(str(path), f"{t['id']}.shapes", "each [batch, seq_len, heads, "
                                  "kv_heads, qk_head_dim, v_head_dim, efficiency] needs sizes "
                                  f"> 0 and 0 < efficiency <= {TABLE_EFFICIENCY_MAX:g}",
                                  list(row))  # fmt: skip
        tables.append(AttentionTable(t["id"], t["source"], tuple(t["profiles"]),
                                     float(t["peak_tflops"]), t["direction"], shapes))  # fmt: skip
    return tables
