"""Re-fit a hardware profile's ``efficiency.matmul`` on the measured runs its comment names.

The fitted constants of measured/fitted_constants.yaml say which records set them (``records``);
this script is how: it simulates those records (as ``simtrain validate`` translates them) with
the profile's ``efficiency.matmul`` set to each value of a 0.01 grid and prints, per value, the
MAPE of one throughput metric per record (the first it measured of step time, TFLOP/s,
tokens/s: ``simtrain.apps.validate.fitted.matmul_fit_mape``). tests/test_fitted.py checks that
each shipped value is still the grid's minimum.

  python benchmarks/fit_matmul.py a100_sxm4_40gb 0.50 0.75 'mpt_a100_40gb_bf16_*'

With ``--memory-bound LO HI`` it fits ``efficiency.memory_bound`` with it, over both grids: the
records must span models whose element-wise share of the step differs (as simulated, a
forward's element-wise time is 60 % of its GEMM time for Korthikanti's 6,144-wide 22B layer at
tp 8, 12 % for the 25,600-wide 1T one, at the A100 80GB's shipped 0.79 / 0.63), or the two trade
off along a valley. It prints every pair, then the minimum. The A100 80GB's shipped
memory_bound was fitted so, its matmul held at its GEMM table's rate (LO = HI):

  python benchmarks/fit_matmul.py a100_sxm4_80gb 0.79 0.79 --memory-bound 0.55 0.70 \
      megatron_sc21_t1_1.7B megatron_sc21_t1_3.6B megatron_sc21_t1_7.5B megatron_sc21_t1_18.4B \
      'korthikanti22_t5_*' 'megatron_readme2020_dgxa100_*'

A per-layer timing record (Korthikanti's Table 4) counts twice: its forward and its backward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.apps.validate.fitted import fit_records, matmul_fit_mape  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="hardware profile name (e.g. a100_sxm4_80gb)")
    ap.add_argument("low", type=float)
    ap.add_argument("high", type=float)
    ap.add_argument("patterns", nargs="+", help="record id patterns (fnmatch)")
    ap.add_argument("--memory-bound", nargs=2, type=float, metavar=("LO", "HI"),
                    help="fit efficiency.memory_bound too, over this range (grid 0.01)")  # fmt: skip
    args = ap.parse_args()
    trs = fit_records(args.profile, args.patterns)
    print(f"{len(trs)} records on {args.profile}: {', '.join(t.record.id for t in trs)}")
    bounds = [None] if args.memory_bound is None else _grid(*args.memory_bound)
    results = []
    for mb in bounds:
        for v in _grid(args.low, args.high):
            mape, median = matmul_fit_mape(trs, v, memory_bound=mb)
            results.append((mape, v, mb))
            label = "" if mb is None else f"memory_bound {mb:.2f}  "
            print(f"  {label}matmul {v:.2f}: MAPE {mape:5.2f} %  median {median:+6.2f} %  "
                  f"({len(trs)} records; a layer record counts twice)", flush=True)  # fmt: skip
    mape, v, mb = min(results)
    print(f"minimum: matmul {v:.2f}" + ("" if mb is None else f", memory_bound {mb:.2f}")
          + f": MAPE {mape:.2f} %")  # fmt: skip


def _grid(low: float, high: float) -> list[float]:
    return [round(low + 0.01 * k, 2) for k in range(round((high - low) / 0.01) + 1)]


if __name__ == "__main__":
    main()
