"""Collective and point-to-point communication times (alpha-beta model).

Bus-bandwidth factors from NVIDIA nccl-tests ``doc/PERFORMANCE.md`` (formulas.md §5.1): a ring
all-reduce of S bytes over n GPUs moves 2(n−1)/n·S through each GPU's link in 2(n−1) steps, so
``t = 2(n−1)/n · S/B + 2(n−1)·α``; reduce-scatter and all-gather move (n−1)/n·S in n−1 steps;
broadcast and reduce move S.

:func:`collective_time_s` adds three algorithms over a two-level machine (GPUs inside a node
share an intra-node link, nodes talk through one NIC per GPU):

* ``ring`` — NCCL's ring. Across nodes NCCL runs one ring per NIC (channel), each ring entering
  and leaving every node once, so the network carries 1/g of each GPU's ring traffic per NIC and
  the ring's per-GPU bandwidth is ``min(B_intra, g·B_nic)`` (g = group members per node): the
  node's aggregate NIC bandwidth, not one NIC's (nccl-tests issues #119 and #175: 8× A100 with
  4× 200 Gb/s HDR per node, theoretical 100 GB/s, measured 85-96 GB/s busbw across nodes).
* ``tree`` — NCCL's double binary tree (NCCL 2.4 blog "Massively Scale Your Deep Learning
  Training with NCCL 2.4"; Sanders, Speck, Träff 2009, "Two-tree algorithms for full bandwidth
  broadcast, reduction and scan", Parallel Computing 35(12)). All-reduce = pipelined reduce up
  plus broadcast down; every GPU sends and receives 2·S (S. Jeaugey, NVIDIA/nccl issue #457: "for
  tree it would be 2*S"), so ``t = 2·S/B + 2·⌈log2 n⌉·α``: bus bandwidth (n−1)/n·B ("full
  bandwidth") and logarithmic latency. Broadcast/reduce: ``S/B + ⌈log2 n⌉·α``. NCCL has no
  tree for the other collectives (NVIDIA/nccl issue #545), which fall back to the ring.
* ``hierarchical`` — inside the node, then across nodes, then inside again (Thakur,
  Rabenseifner, Gropp 2005, "Optimization of collective communication operations in MPICH",
  IJHPCA 19(1); Horovod/NCCL hierarchical all-reduce): all-reduce = intra reduce-scatter on S +
  inter all-reduce over the N nodes on S/g (g rails in parallel, one NIC each) + intra all-gather
  on S. Phases run one after another (no pipelining between them), which is conservative against
  NCCL, which overlaps them.

Every ``GroupLink`` bandwidth is what NCCL achieves per GPU per direction (``group_link`` scales
the line rate by ``efficiency.collective``); ``nccl_bus_bandwidth`` turns a time back into the
nccl-tests busBW figure to compare with published measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.spec.hardware import HardwareProfile

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "gather", "all_to_all")
ALGORITHMS = ("ring", "tree", "hierarchical")


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


def node_links(hw: HardwareProfile) -> tuple[GroupLink, GroupLink]:
    """(intra, inter): the per-GPU link inside a node and the per-GPU NIC link across nodes, as
    ``group_link`` gives them (both scaled by ``efficiency.collective``)."""
    gpn = hw.gpus_per_node
    return group_link(hw, gpn, 1), group_link(hw, gpn, gpn + 1)


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; allowed: {', '.join(OPS)}")


def _log2_ceil(n: int) -> int:
    """⌈log2 n⌉ for n >= 1, in exact integer arithmetic."""
    return (n - 1).bit_length() if n > 1 else 0


def tree_time_s(op: str, size_bytes: float, n: int, bandwidth_bytes_per_s: float,
                latency_s: float) -> float:  # fmt: skip
    """Double-binary-tree time on n GPUs sharing one link kind (NCCL 2.4; Sanders et al. 2009).

    all-reduce ``2·S/B + 2·⌈log2 n⌉·α`` (reduce up + broadcast down, pipelined; each GPU sends
    2·S — NVIDIA/nccl issue #457); broadcast and reduce ``S/B + ⌈log2 n⌉·α`` (each GPU is an
    interior node in one tree and a leaf in the other, so it forwards S/2 to each of 2 children:
    S in total). Other collectives have no tree in NCCL and use :func:`ring_time_s`."""
    _check_op(op)
    if n <= 1 or size_bytes <= 0:
        return 0.0
    depth = _log2_ceil(n)
    if op == "all_reduce":
        return 2 * size_bytes / bandwidth_bytes_per_s + 2 * depth * latency_s
    if op in ("broadcast", "reduce"):
        return size_bytes / bandwidth_bytes_per_s + depth * latency_s
    return ring_time_s(op, size_bytes, n, bandwidth_bytes_per_s, latency_s)


def _ring_bandwidth(intra: GroupLink, inter: GroupLink, g: int) -> float:
    """Per-GPU bandwidth of a ring that spans nodes: one ring per NIC, each crossing every node
    boundary once, so the network side offers g·B_nic against the GPU's B_intra."""
    if g == 1:
        return inter.bandwidth_bytes_per_s
    return min(intra.bandwidth_bytes_per_s, g * inter.bandwidth_bytes_per_s)


def _all_to_all_multinode_s(size_bytes: float, n: int, g: int, intra: GroupLink,
                            inter: GroupLink) -> float:  # fmt: skip
    """All-to-all is pairwise send/receive in NCCL (no ring or tree): each GPU sends
    (g−1)/n·S over the intra-node link and (n−g)/n·S through its own NIC, concurrently."""
    t_intra = (g - 1) / n * size_bytes / intra.bandwidth_bytes_per_s if g > 1 else 0.0
    t_inter = (n - g) / n * size_bytes / inter.bandwidth_bytes_per_s
    return max(t_intra, t_inter) + (n - 1) * inter.latency_s


def collective_time_s(op: str, size_bytes: float, n: int, *, algorithm: str = "ring",
                      intra: GroupLink, inter: GroupLink | None = None,
                      gpus_per_node: int) -> float:  # fmt: skip
    """Time of one collective of ``size_bytes`` (nccl-tests convention: S is the whole array,
    ``count·sizeof(type)·n`` for reduce-scatter/all-gather) over ``n`` GPUs.

    ``gpus_per_node`` is the number of the group's GPUs that share a node (g = min(it, n));
    the group spans N = ⌈n/g⌉ nodes. ``intra`` is the per-GPU link inside a node, ``inter`` the
    per-GPU NIC link (required when N > 1). Algorithms (module docstring for sources):

    * one node (N = 1): ``ring`` and ``hierarchical`` are the ring,
      ``bus_factor·S/B + steps·α``; ``tree`` is :func:`tree_time_s`.
    * ring, N > 1: ``bus_factor·S/B_ring + steps·α_inter`` with ``B_ring = min(B_intra,
      g·B_nic)`` (one ring per NIC).
    * tree, N > 1: all-reduce ``2·S/B_ring + 2·(⌈log2 N⌉·α_inter + ⌈log2 g⌉·α_intra)``;
      broadcast/reduce ``S/B_ring + ⌈log2 N⌉·α_inter + ⌈log2 g⌉·α_intra``; others as the ring.
    * hierarchical, N > 1 (n must be N·g): all-reduce = RS_intra(S, g) + AR_inter(S/g, N) +
      AG_intra(S, g); reduce-scatter = RS_intra(S, g) + RS_inter(S/g, N); all-gather =
      AG_inter(S/g, N) + AG_intra(S, g); broadcast = scatter_intra(S, g) + BC_inter(S/g, N) +
      AG_intra(S, g); reduce = RS_intra(S, g) + R_inter(S/g, N) + gather_intra(S, g); gather
      and all-to-all have no hierarchical form here and use the flat model. Each phase is a ring
      (:func:`ring_time_s`) on its own link; the phases add.
    * all-to-all, N > 1, any algorithm: ``max((g−1)/n·S/B_intra, (n−g)/n·S/B_nic) +
      (n−1)·α_inter`` (pairwise exchange, each GPU through its own NIC).

    Lowering any bandwidth or raising any latency never shortens the result.
    """
    _check_op(op)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if n < 1 or gpus_per_node < 1:
        raise ValueError(
            f"n and gpus_per_node must be >= 1 (got n={n}, gpus_per_node={gpus_per_node})"
        )
    if n == 1 or size_bytes <= 0:
        return 0.0
    g = min(gpus_per_node, n)
    nodes = -(-n // g)
    bw, lat = intra.bandwidth_bytes_per_s, intra.latency_s
    if nodes == 1:
        if algorithm == "tree":
            return tree_time_s(op, size_bytes, n, bw, lat)
        return ring_time_s(op, size_bytes, n, bw, lat)
    if inter is None:
        raise ValueError(
            f"{n} GPUs at {g} per node span {nodes} nodes: an inter-node link is needed"
        )
    if op == "all_to_all":
        return _all_to_all_multinode_s(size_bytes, n, g, intra, inter)
    b_ring = _ring_bandwidth(intra, inter, g)
    if algorithm == "tree" and op in ("all_reduce", "broadcast", "reduce"):
        depth_lat = _log2_ceil(nodes) * inter.latency_s + _log2_ceil(g) * lat
        if op == "all_reduce":
            return 2 * size_bytes / b_ring + 2 * depth_lat
        return size_bytes / b_ring + depth_lat
    if algorithm != "hierarchical" or op == "gather":
        return bus_factor(op, n) * size_bytes / b_ring + steps(op, n) * inter.latency_s
    if n != nodes * g:
        raise ValueError(f"hierarchical needs whole nodes: n={n} is not a multiple of {g} per node")
    ibw, ilat = inter.bandwidth_bytes_per_s, inter.latency_s
    shard = size_bytes / g

    def local(o: str) -> float:
        return ring_time_s(o, size_bytes, g, bw, lat)

    def net(o: str) -> float:
        return ring_time_s(o, shard, nodes, ibw, ilat)

    if op == "all_reduce":
        return local("reduce_scatter") + net("all_reduce") + local("all_gather")
    if op == "reduce_scatter":
        return local("reduce_scatter") + net("reduce_scatter")
    if op == "all_gather":
        return net("all_gather") + local("all_gather")
    if op == "broadcast":  # scatter moves the same bytes as a reduce-scatter
        return local("reduce_scatter") + net("broadcast") + local("all_gather")
    # reduce: the gather to the root moves the same bytes as an all-gather
    return local("reduce_scatter") + net("reduce") + local("all_gather")


def nccl_algorithm_bandwidth(size_bytes: float, time_s: float) -> float:
    """nccl-tests ``algbw = S/t`` (bytes/s)."""
    return size_bytes / time_s if time_s > 0 else 0.0


def nccl_bus_bandwidth(op: str, size_bytes: float, n: int, time_s: float) -> float:
    """nccl-tests ``busbw = algbw · factor`` (bytes/s), the factor being :func:`bus_factor`
    (2(n−1)/n for all-reduce, (n−1)/n for reduce-scatter/all-gather/all-to-all, 1 for broadcast
    and reduce; nccl-tests ``doc/PERFORMANCE.md``). The inverse of the ring model: a ring
    collective on a uniform link of bandwidth B with α = 0 gives busbw = B exactly."""
    return nccl_algorithm_bandwidth(size_bytes, time_s) * bus_factor(op, n)
