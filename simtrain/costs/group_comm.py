"""Durations of one collective over a process group of a scenario's cluster (integer ns):
the group's GPUs ``stride`` apart placed on the nodes (``layout.placement``), priced as the
runtime's ``collective_algorithm`` prices it (``collectives.collective_time_s`` /
``collectives.nccl_time_s``). Below ``costs.comm`` and ``costs.cp``, which both use it.
"""

from __future__ import annotations

from simtrain.costs import collectives as coll
from simtrain.layout.step import ResolvedStep
from simtrain.spec.hardware import HardwareProfile
from simtrain.spec.scenario import Scenario


def collective_ns(sc: Scenario, step: ResolvedStep, op: str, size_bytes: float, n: int,
                  stride: int, per_gpu_nic: bool = False) -> int:  # fmt: skip
    """One collective ``op`` of ``size_bytes`` over ``n`` GPUs ``stride`` apart.
    ``per_gpu_nic``: a group that spans nodes moves each GPU's traffic through its own NIC
    (as if one member per node) instead of sharing the node's NICs across channels."""
    if n <= 1 or size_bytes <= 0:
        return 0
    g = step.placement.group_gpus_per_node(n, stride)
    if per_gpu_nic and g < n:
        g = 1
    return _collective_ns(sc, op, size_bytes, n, g)


def pair_all_reduce_ns(sc: Scenario, step: ResolvedStep, size_bytes: float, rank_a: int,
                       rank_b: int) -> int:  # fmt: skip
    """An all-reduce of ``size_bytes`` between each GPU of pipeline rank ``rank_a`` and its
    peer of rank ``rank_b`` (the same TP, CP and DP coordinates): inside a node where every
    such pair is, else over the NIC."""
    pl = step.placement
    a, b = pl.rank_gpu(rank_a), pl.rank_gpu(rank_b)
    together = all(pl.same_node(a + j, b + j) for j in range(step.groups.pp_stride))
    return _collective_ns(sc, "all_reduce", size_bytes, 2, 2 if together else 1)


def _collective_ns(sc: Scenario, op: str, size_bytes: float, n: int, g: int) -> int:
    """:func:`collective_ns` of a group with ``g`` members on each node it spans."""
    return round(1e9 * hardware_collective_s(sc.hardware, sc.runtime.collective_algorithm, op,
                                             size_bytes, n, g))  # fmt: skip


def hardware_collective_s(hw: HardwareProfile, algorithm: str, op: str, size_bytes: float,
                          n: int, g: int) -> float:  # fmt: skip
    """Seconds of one collective ``op`` of ``size_bytes`` over ``n`` GPUs, ``g`` on each node
    they span, on ``hw``'s links: NCCL's pick (``collectives.nccl_time_s`` with the profile's
    algorithms, protocols and NVLS) when ``algorithm`` is ``"nccl"``, else the ring."""
    if n <= 1 or size_bytes <= 0:
        return 0.0
    intra, inter = coll.node_links(hw, g)
    if algorithm == "nccl":
        return coll.nccl_time_s(
            op,
            size_bytes,
            n,
            intra=intra,
            inter=inter,
            gpus_per_node=g,
            nvls=hw.nvls,
            protocols=hw.nccl_protocols or None,
            algorithms=hw.nccl_algorithms or None,
            arch=hw.gpu_arch,
            intra_hw="pci" if hw.intra_node_kind == "pcie" else "nvlink",
            tree_pipelined=hw.nccl_tree_pipelined,
        ).time_s
    return coll.collective_time_s(op, size_bytes, n, algorithm="ring", intra=intra,
                                  inter=inter, gpus_per_node=g)  # fmt: skip
