"""Re-fit a hardware profile's ``efficiency.matmul`` on the measured runs its comment names.

The fitted constants of measured/fitted_constants.yaml say which records set them (``records``);
this script is how: it simulates those records (as ``simtrain validate`` translates them) with
the profile's ``efficiency.matmul`` set to each value of a 0.01 grid and prints, per value, the
MAPE of one throughput metric per record (the first it measured of step time, TFLOP/s,
tokens/s: ``simtrain.apps.validate.fitted.matmul_fit_mape``). tests/test_fitted.py checks that
each shipped value is still the grid's minimum.

  python benchmarks/fit_matmul.py a100_sxm4_40gb 0.50 0.75 'mpt_a100_40gb_bf16_*'
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
    args = ap.parse_args()
    trs = fit_records(args.profile, args.patterns)
    print(f"{len(trs)} records on {args.profile}: {', '.join(t.record.id for t in trs)}")
    for k in range(round((args.high - args.low) / 0.01) + 1):
        v = round(args.low + 0.01 * k, 2)
        mape, median = matmul_fit_mape(trs, v)
        print(f"  matmul {v:.2f}: MAPE {mape:5.2f} %  median {median:+6.2f} %  (n {len(trs)})")


if __name__ == "__main__":
    main()
