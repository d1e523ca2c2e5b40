"""benchmarks/compute_beside_comm.py's overlap count, worked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from compute_beside_comm import overlap_ns  # noqa: E402


def test_overlap_counts_each_compute_ns_once_inside_the_union() -> None:
    # compute 0-100 and 200-300; collectives 50-120, 100-150 (overlapping: one union 50-150)
    # and 250-400: 50 ns of the first compute, 50 of the second
    assert overlap_ns([(0, 100), (200, 300)], [(100, 150), (50, 120), (250, 400)]) == 100
    assert overlap_ns([(0, 100)], []) == 0
    assert overlap_ns([(0, 100)], [(100, 200)]) == 0  # touching is not overlapping
