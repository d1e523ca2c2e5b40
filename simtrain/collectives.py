"""Collective and point-to-point communication times (alpha-beta model).

Bus-bandwidth factors from NVIDIA nccl-tests ``doc/PERFORMANCE.md`` (formulas.md §5.1): a ring
all-reduce of S bytes over n GPUs moves 2(n−1)/n·S through each GPU's link in 2(n−1) steps, so
``t = 2(n−1)/n · S/B + 2(n−1)·α``; reduce-scatter and all-gather move (n−1)/n·S in n−1 steps;
broadcast and reduce move S.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.hardware import HardwareProfile

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "gather", "all_to_all")


def bus_factor(op: str, n: int) -> float:
    """Bytes each GPU's link carries per byte of the array (nccl-tests busBW factor)."""
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("reduce_scatter", "all_gather", "all_to_all", "gather"):
        return (n - 1) / n
    if op in ("broadcast", "reduce"):
        return 1.0
    raise ValueError(f"unknown collective {op!r}; allowed: {', '.join(OPS)}")


def steps(op: str, n: int) -> int:
    """Latency-bearing steps of the ring algorithm."""
    if n <= 1:
        return 0
    return 2 * (n - 1) if op == "all_reduce" else n - 1


def ring_time_s(op: str, size_bytes: float, n: int, bandwidth_bytes_per_s: float,
                latency_s: float) -> float:  # fmt: skip
    """Ring collective time: bus_factor·S/B + steps·α (exact for a uniform ring)."""
    if n <= 1 or size_bytes <= 0:
        return 0.0
    return bus_factor(op, n) * size_bytes / bandwidth_bytes_per_s + steps(op, n) * latency_s


@dataclass(frozen=True, slots=True)
class GroupLink:
    """The bottleneck a group of GPUs communicates through: per-GPU bandwidth and latency."""

    bandwidth_bytes_per_s: float
    latency_s: float
    crosses_nodes: bool


def group_link(hw: HardwareProfile, gpus_per_node: int, span: int) -> GroupLink:
    """A group of ``span`` consecutive GPU ids: inside one node it uses the intra-node link,
    otherwise each GPU's NIC is the bottleneck (leaf-spine oversubscription divides it).
    ``efficiency.collective`` scales the link to what NCCL achieves."""
    eff = hw.efficiency.collective
    if span <= gpus_per_node:
        return GroupLink(hw.intra_node_bandwidth_bytes_per_s * eff, hw.intra_node_latency_s, False)
    bw = hw.nic_bandwidth_bytes_per_s * eff / hw.oversubscription
    return GroupLink(bw, hw.inter_node_latency_s, True)


def p2p_time_s(size_bytes: float, link: GroupLink) -> float:
    """One point-to-point transfer: α + S/B."""
    return link.latency_s + size_bytes / link.bandwidth_bytes_per_s
