"""How a GEMM's rate falls as its reduction width K shrinks, measured, and the per-output-element
cost that explains it.

The cost model prices each linear layer's GEMM at 2·M·N·K·(1 + L/M + L/N + L/K) FLOPs at
``efficiency.matmul`` (L = ``efficiency.gemm_edge_elements``, fitted on measured GEMM tables:
measured/gemm_tables.yaml); this sweep measures the K part of it on the GPU at hand. This script times ``(mn x K) @ (K x mn)`` for a sweep of K
(``simtrain.torchref.microbench.measure_gemm_k_sweep``), fits t = 2·mn²·(K + K0)/R by least squares
(``fit_k_overhead``), and prints R, K0 and K0 as bytes of HBM traffic per output element: the
fixed time per output element, 2·K0/R, at the measured bandwidth (the memory-bound form of the
same cost).

Run (on the GPU of a device session; a CPU gives CPU numbers, a smoke test):
  python benchmarks/gemm_k_sweep.py --device cuda --dtype bf16 --mn 8192
  python benchmarks/gemm_k_sweep.py --mn 512 --ks 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.torchref.microbench import (  # noqa: E402
    bytes_per_output_element,
    fit_k_overhead,
    measure_bandwidth,
    measure_gemm_k_sweep,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    ap.add_argument("--mn", type=int, default=1024, help="M = N of the swept GEMMs")
    ap.add_argument("--ks", type=int, nargs="+",
                    default=[128, 256, 384, 512, 768, 1024, 2048, 4096, 8192])  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    rates = measure_gemm_k_sweep(a.dtype, a.device, a.mn, tuple(a.ks), a.repeats)
    if len(rates) < 2:
        sys.exit(f"{a.dtype} on {a.device}: fewer than two widths ran")
    r_inf, k0 = fit_k_overhead(rates)
    bw = max(measure_bandwidth(a.device, repeats=a.repeats).values())
    out = {"device": a.device, "dtype": a.dtype, "mn": a.mn,
           "tflops_by_k": {k: v / 1e12 for k, v in rates.items()},
           "rate_unbounded_tflops": r_inf / 1e12, "k0": k0,
           "bytes_per_output_element": bytes_per_output_element(k0, r_inf, bw),
           "bandwidth_gb_per_s": bw / 1e9}  # fmt: skip
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{a.dtype} on {a.device}, M = N = {a.mn}:")
    for k, v in rates.items():
        fit = r_inf * k / (k + k0)
        print(f"  K {k:>6}: {v / 1e12:9.3f} TFLOP/s   fit {fit / 1e12:9.3f}")
    print(f"R = {r_inf / 1e12:.3f} TFLOP/s, K0 = {k0:.0f}; at {bw / 1e9:.0f} GB/s: "
          f"{bytes_per_output_element(k0, r_inf, bw):.1f} B of traffic per output element")  # fmt: skip


if __name__ == "__main__":
    main()
