"""What switching simtrain's DP all-reduce from the ring to NCCL's choice would change.

simtrain.costs.comm times every collective as a ring (``collective_time_s(algorithm="ring")``);
``collectives.nccl_time_s`` picks NCCL's algorithm and protocol instead (NVIDIA/nccl
src/graph/tuning.cc). This script prints, for a hardware profile (default: the Ultra-Scale
Playbook's EFA cluster, hardware/h100_sxm5_80gb_efa.yaml), the all-reduce time of one DDP bucket
(default 25 MB, PyTorch's ``bucket_cap_mb``) at dp 8..256 with 8 GPUs per node (tp = pp = 1):
today's ring, and NCCL's choice without NVLink SHARP, with it, and with it on Simple only (what
aws-ofi-nccl forces on EFA endpoints without in-order 128-byte delivery).

Run:
  python benchmarks/nccl_choice.py [--profile h100_sxm5_80gb_efa] [--bucket-mb 25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.costs import collectives as c  # noqa: E402
from simtrain.spec.hardware import load_hardware  # noqa: E402

DP = (8, 16, 32, 64, 128, 256)
VARIANTS = (  # (label, nvls, protocols)
    ("no NVLS", False, None),
    ("NVLS", True, None),
    ("NVLS, Simple", True, ("simple",)),
)


def rows(profile: str, bucket_bytes: float) -> list[dict[str, object]]:
    """One row per dp: ring time, the ring's latency share, and each variant's choice."""
    hw = load_hardware(profile)
    intra, inter = c.node_links(hw)
    gpn = hw.gpus_per_node
    out = []
    for dp in DP:
        ring = c.collective_time_s("all_reduce", bucket_bytes, dp, intra=intra, inter=inter,
                                   gpus_per_node=gpn)  # fmt: skip
        link = inter if dp > gpn else intra
        row: dict[str, object] = {
            "dp": dp,
            "ring_ms": 1e3 * ring,
            "ring_latency_share": c.steps("all_reduce", dp) * link.latency_s / ring,
        }
        for label, nvls, protocols in VARIANTS:
            ch = c.nccl_time_s("all_reduce", bucket_bytes, dp, intra=intra, inter=inter,
                               gpus_per_node=gpn, nvls=nvls, protocols=protocols)  # fmt: skip
            row[label] = ch
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="h100_sxm5_80gb_efa")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    args = ap.parse_args(argv)
    size = args.bucket_mb * 1e6
    print(f"all_reduce of one {args.bucket_mb:g} MB bucket, {args.profile}, "
          f"8 GPUs per node; times in ms (speed-up vs ring)")  # fmt: skip
    head = f"{'dp':>4} {'ring':>8} {'lat %':>6}"
    for label, _, _ in VARIANTS:
        head += f" | {label + ': choice':<24} {'ms':>7} {'x':>6}"
    print(head)
    for r in rows(args.profile, size):
        ring = float(r["ring_ms"])  # type: ignore[arg-type]
        line = f"{r['dp']:>4} {ring:8.3f} {100 * float(r['ring_latency_share']):6.1f}"  # type: ignore[arg-type]
        for label, _, _ in VARIANTS:
            ch = r[label]
            assert isinstance(ch, c.NcclChoice)
            ms = 1e3 * ch.time_s
            line += f" | {ch.algorithm + '/' + ch.protocol:<24} {ms:7.3f} {ring / ms:6.1f}"
        print(line)


if __name__ == "__main__":
    main()
