"""The GEMM shape term of the GPU at hand, measured: its ``efficiency.gemm_edge_elements`` (L).

The cost model prices each linear layer's GEMM (M x K) @ (K x N) at 2·M·N·K·(1 + L/M + L/N + L/K)
FLOPs at the large-GEMM rate (costs.compute.gemm_edge); the shipped profiles take L from
published GEMM tables (measured/gemm_tables.yaml). This script times a sweep of K at M = N = mn
and a sweep of M at K = N = mn (``simtrain.torchref.microbench.measure_gemm_shapes``), and fits
L with the same fit as those tables (``simtrain.costs.gemm_shape.fit_gemm_edge``, each
rate over the sweep's fastest): it prints L, the unbounded rate, and each shape's measured rate
beside the fitted one.

Run (on the GPU of a device session; a CPU gives CPU numbers, a smoke test):
  python benchmarks/gemm_k_sweep.py --device cuda --dtype bf16 --mn 8192
  python benchmarks/gemm_k_sweep.py --mn 512 --ks 64 128 256 512 --ms 64 128 256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.costs.gemm_shape import fit_gemm_edge, shape_factor  # noqa: E402
from simtrain.torchref.microbench import measure_gemm_shapes  # noqa: E402

#: The tables' grid (costs.gemm_shape.EDGE_GRID, step 10) extended to L = 4,000
#: elements: the tables' fits are 40-150, a CPU may be far from them.
GRID = tuple(range(0, 4001, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    ap.add_argument("--mn", type=int, default=1024, help="the sweeps' fixed width")
    ap.add_argument("--ks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--ms", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    shapes = tuple((a.mn, a.mn, k) for k in a.ks) + tuple((m, a.mn, a.mn) for m in a.ms)
    rates = measure_gemm_shapes(a.dtype, a.device, shapes, a.repeats)
    if len(rates) < 2:
        sys.exit(f"{a.dtype} on {a.device}: fewer than two shapes ran")
    top = max(rates.values())
    fit = fit_gemm_edge(tuple((m, n, k, r / top) for (m, n, k), r in rates.items()), GRID)
    edge, r_inf = fit.edge, fit.efficiency * top
    out = {"device": a.device, "dtype": a.dtype, "gemm_edge_elements": edge,
           "rate_unbounded_tflops": r_inf / 1e12, "mape_pct": fit.mape_pct,
           "constant_mape_pct": fit.constant_mape_pct,
           "tflops": [[m, n, k, r / 1e12] for (m, n, k), r in rates.items()]}  # fmt: skip
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{a.dtype} on {a.device}:")
    for (m, n, k), r in rates.items():
        model = r_inf / shape_factor(edge, m, n, k)
        print(f"  M {m:>6} N {n:>6} K {k:>6}: {r / 1e12:9.3f} TFLOP/s   fit {model / 1e12:9.3f}")
    print(f"L = {edge:.0f} elements (efficiency.gemm_edge_elements), unbounded {r_inf / 1e12:.3f}"
          f" TFLOP/s; MAPE of GEMM time {fit.mape_pct:.2f} % (one rate: "
          f"{fit.constant_mape_pct:.2f} %)")  # fmt: skip


if __name__ == "__main__":
    main()
