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

:func:`nccl_time_s` picks among NCCL's algorithms (ring, tree, NVLS, NVLS tree, PAT) and protocols
(LL, LL128, Simple) the fastest, as NCCL's tuning model does (NVIDIA/nccl src/graph/tuning.cc;
constants and sources at the end of this module); :func:`collective_time_s` keeps one fixed
algorithm.

Every ``GroupLink`` bandwidth is what NCCL achieves per GPU per direction (``group_link`` scales
the line rate by ``efficiency.collective``); ``nccl_bus_bandwidth`` turns a time back into the
nccl-tests busBW figure to compare with published measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


def group_link(hw: HardwareProfile, gpus_per_node: int, span: int, members: int = 0) -> GroupLink:
    """A group of ``span`` consecutive GPU ids: inside one node it uses the intra-node link
    (on a full mesh, the pair links among its ``members`` GPUs of the node:
    ``HardwareProfile.intra_group_bandwidth``; 0: the whole node's), otherwise each GPU's NIC is
    the bottleneck (leaf-spine oversubscription divides it). ``efficiency.collective`` scales
    the link to what NCCL achieves."""
    eff = hw.efficiency.collective
    if span <= gpus_per_node:
        bw = hw.intra_group_bandwidth(members or hw.gpus_per_node)
        return GroupLink(bw * eff, hw.intra_node_latency_s, False)
    bw = hw.nic_bandwidth_bytes_per_s * eff / hw.oversubscription
    return GroupLink(bw, hw.inter_node_latency_s, True)


def p2p_time_s(size_bytes: float, link: GroupLink) -> float:
    """One point-to-point transfer: α + S/B."""
    return link.latency_s + size_bytes / link.bandwidth_bytes_per_s


def node_links(hw: HardwareProfile, members: int = 0) -> tuple[GroupLink, GroupLink]:
    """(intra, inter): the per-GPU link inside a node and the per-GPU NIC link across nodes, as
    ``group_link`` gives them (both scaled by ``efficiency.collective``); the intra link of a
    group with ``members`` GPUs on each node (0: the whole node; 2: one pair, a point-to-point
    transfer), which on a full mesh reaches those members only."""
    gpn = hw.gpus_per_node
    return group_link(hw, gpn, 1, members), group_link(hw, gpn, gpn + 1)


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


# ============================================================================ NCCL's choice
#
# NCCL times every (algorithm, protocol) pair of a collective with its tuning model and runs the
# fastest. The constants below are NCCL's, from NVIDIA/nccl src/graph/tuning.cc at commit
# 5067397c2676d5aed50042fc39e5c8ee96eb0027 (master of 2026-06-11, NCCL 2.30.7): the struct
# ``ncclTunerConstantsDefaults`` (baseLatencies, hwLatencies, llMaxBws), ``nvlsEfficiency``,
# the "model refinements" of ``ncclTopoTuneModel`` and ``treeCorrectionFactor`` /
# ``ncclTopoGetAlgoTime``. NCCL's graph bandwidths and channel counts come from its topology
# search, which simtrain does not run; the link bandwidths and per-step latencies come from the
# hardware profile instead (``GroupLink``), and NCCL's constants scale them (see
# :func:`nccl_candidates`).

#: NVIDIA/nccl commit the constants below are read from (src/graph/tuning.cc).
NCCL_TUNING_COMMIT = "5067397c2676d5aed50042fc39e5c8ee96eb0027"
PROTOCOLS = ("ll", "ll128", "simple")  # NCCL_PROTO_LL, NCCL_PROTO_LL128, NCCL_PROTO_SIMPLE
NCCL_ALGORITHMS = ("ring", "tree", "nvls", "nvls_tree", "pat", "pairwise")
NCCL_ARCHS = ("volta", "ampere", "hopper", "blackwell")  # NCCL's compCapIndex rows
NCCL_CPUS = ("intel", "amd")
NCCL_INTRA_HW = ("nvlink", "pci")  # NCCL_HW_NVLINK, NCCL_HW_PCI

#: ncclTunerConstantsDefaults.baseLatencies (us) per algorithm, (LL, LL128, Simple).
BASE_LATENCY_US: dict[str, tuple[float, float, float]] = {
    "tree": (6.8, 14.0, 8.4), "ring": (6.6, 14.0, 8.4), "nvls": (0.0, 0.0, 0.0),
    "nvls_tree": (0.0, 0.0, 0.0), "pat": (8.0, 8.0, 8.0),
}  # fmt: skip
#: ncclTunerConstantsDefaults.hwLatencies (us): per-hop latency by link kind (NVLINK, PCI, NET),
#: algorithm and protocol (LL, LL128, Simple).
HW_LATENCY_US: dict[str, dict[str, tuple[float, float, float]]] = {
    "nvlink": {
        "tree": (0.6, 1.25, 4.0),
        "ring": (0.6, 1.9, 3.4),
        "nvls": (0.0, 0.0, 25.0),
        "nvls_tree": (0.0, 0.0, 25.0),
        "pat": (0.0, 0.0, 4.0),
    },
    "pci": {
        "tree": (1.0, 1.9, 4.0),
        "ring": (1.0, 2.5, 5.7),
        "nvls": (0.0, 0.0, 0.0),
        "nvls_tree": (0.0, 0.0, 0.0),
        "pat": (0.0, 0.0, 4.0),
    },
    "net": {
        "tree": (5.0, 8.5, 14.0),
        "ring": (2.7, 4.0, 14.0),
        "nvls": (0.0, 0.0, 18.0),
        "nvls_tree": (0.0, 0.0, 20.9),
        "pat": (0.0, 0.0, 14.0),
    },
}
#: ncclTunerConstantsDefaults.llMaxBws (GB/s, cap on the LL protocol's bus bandwidth). One node:
#: row by GPU architecture, column 0. Several nodes: row 0 (Intel CPU) or 1 (AMD CPU), column 1
#: for 2 nodes and 2 for more ("Volta-N1/Intel-N2/Intel-N4", "Ampere-N1/AMD-N2/AMD-N4", ...).
LL_MAX_BW_GB_PER_S: dict[str, tuple[float, float, float]] = {
    "volta": (39.0, 39.0, 20.4), "ampere": (87.7, 22.5, 19.0), "hopper": (141.0, 45.0, 35.0),
    "blackwell": (2 * 141.0, 2 * 45.0, 2 * 35.0),
}  # fmt: skip
#: nvlsEfficiency: NVLink SHARP bandwidth / NVLink bandwidth (0: no NVLS on that architecture).
NVLS_EFFICIENCY = {"volta": 0.0, "ampere": 0.0, "hopper": 0.85, "blackwell": 0.74}
#: ncclTopoTuneModel refinements: bus-bandwidth fraction of each protocol relative to Simple.
RING_LL_FRACTION = 0.5  # "busBw * .5"
RING_LL128_FRACTION = 0.92  # "busBw * (0.92 /*120.0/128.0*/)"
TREE_ALL_REDUCE_FRACTION = 0.92  # "busBw * .92" for Tree all-reduce, every protocol
TREE_LL_FRACTION = 1.0 / 3.8  # "busBw * 1.0 / 3.8"
TREE_LL128_FRACTION_ONE_NODE = 7.0 / 9.0  # "nNodes == 1 ? 7.0 / 9.0 : 120.0 / 128.0"
TREE_LL128_FRACTION = 120.0 / 128.0
PAT_FRACTION = 0.75  # "if (a == NCCL_ALGO_PAT) busBw *= .75"
#: ncclTopoGetAlgoTime: multi-node ring Simple all-reduce latency "Plateau effect of ring",
#: x1.4 (x1.9 before sm80) once each rank's per-channel chunk reaches 64 B.
RING_PLATEAU_FACTOR = {"volta": 1.9, "ampere": 1.4, "hopper": 1.4, "blackwell": 1.4}
#: NCCL channels for that 64 B test: 24 on 8x H100 (NVIDIA/nccl issue #1367, NCCL 2.19 log:
#: 12 searched ring channels, duplicated to 24).
NCCL_CHANNELS = 24
#: PAT latency (ncclTopoTuneModel): log2i(nNodes) * interLat / 3.5 + nRanks * 2.8 us.
PAT_LOG_LATENCY_DIVISOR = 3.5
PAT_PER_RANK_LATENCY_US = 2.8
#: treeCorrectionFactor[protocol][log2(bytes/64)], 64 B .. 256 MB; NCCL applies it to Tree
#: all-reduce for log2(bytes/64) in 0..22 and uses 1.0 elsewhere.
TREE_CORRECTION: dict[str, tuple[float, ...]] = {
    "ll": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0,
           1.0, 1.0, 1.0, 1.0),
    "ll128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9,
              .9, .9, 1.0, 1.0, 1.0),
    "simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7,
               .8, .9, .9, .9),
}  # fmt: skip
TREE_CORRECTION_SIZES = 23  # NCCL: "logSize >= 0 && logSize < 23"

_P = {p: i for i, p in enumerate(PROTOCOLS)}


class NcclChoice(NamedTuple):
    """One (algorithm, protocol) of a collective and its time; ``nccl_time_s`` returns the
    fastest. Unpacks as ``time_s, algorithm, protocol``."""

    time_s: float
    algorithm: str
    protocol: str


def log2_floor(n: int) -> int:
    """NCCL's ``log2i``: ⌊log2 n⌋ for n >= 1 (exact integer arithmetic)."""
    return n.bit_length() - 1


def tree_correction(size_bytes: float, protocol: str) -> float:
    """NCCL's ``treeCorrectionFactor`` for a Tree all-reduce of ``size_bytes``.

    NCCL indexes the table by ⌊log2(bytes/64)⌋, a step function: a 2 MiB all-reduce would then
    be predicted faster than a 1.99 MiB one. simtrain interpolates linearly in log2(bytes/64)
    between the table's points (equal to NCCL's at every power of two; 1.0 from index 23 on,
    where NCCL stops correcting), which keeps the time increasing in size: an increase of the
    factor by at most 0.1 per doubling against factors >= 0.4 (0.2 against >= 0.6 for LL128)
    stays below f·ln 2 (tests/test_nccl.py checks the table)."""
    table = TREE_CORRECTION[protocol]
    if size_bytes < 64:
        return 1.0
    x = math.log2(size_bytes / 64)
    k = int(x)
    if k >= TREE_CORRECTION_SIZES:
        return 1.0
    lo = table[k]
    hi = table[k + 1] if k + 1 < TREE_CORRECTION_SIZES else 1.0
    return lo + (hi - lo) * (x - k)


def _hop_s(alpha_s: float, hw: str, algorithm: str, protocol: str) -> float:
    """Per-hop latency of ``algorithm``/``protocol`` on a link whose profile latency is
    ``alpha_s``: the profile gives the ring/Simple step (``ring_time_s``'s α), NCCL's
    hwLatencies give the other pairs relative to it on the same link kind."""
    table = HW_LATENCY_US[hw]
    return alpha_s * table[algorithm][_P[protocol]] / table["ring"][_P["simple"]]


def _ll_cap_bytes_per_s(arch: str, cpu: str, nodes: int) -> float:
    if nodes == 1:
        return LL_MAX_BW_GB_PER_S[arch][0] * 1e9
    row = ("volta", "ampere")[NCCL_CPUS.index(cpu)]
    return LL_MAX_BW_GB_PER_S[row][1 if nodes == 2 else 2] * 1e9


def tree_network_s(size_bytes: float, g: int, nodes: int, inter: GroupLink,
                   pipelined: bool = True) -> float:  # fmt: skip
    """Time the node's NICs need for a (double binary) tree all-reduce of S over ``nodes``
    nodes: each node sends 2·S through its g NICs (reduce up, broadcast down; interior in one
    tree, leaf in the other), but only S on 2 nodes, where each node is the other's only
    neighbour. That is why 2-node tree busbw exceeds the NIC rate (NVIDIA/nccl-tests #22, #196;
    NVIDIA/nccl #812: "Tree: S" vs "Ring: (S/N)·2(N−1)").

    ``pipelined=False`` (a hardware profile's ``collectives.tree_pipelined: false``): the
    tree's ⌊log2 N⌋ levels do not overlap, each costs the whole network term again, as on the
    Ultra-Scale Playbook's EFA cluster, whose measured all-reduce time at 1 GiB grows with the
    tree's depth (hardware/h100_sxm5_80gb_efa.yaml [tree])."""
    if nodes == 1:
        return 0.0
    levels = 1 if pipelined else max(1, log2_floor(nodes))
    return levels * (1 if nodes == 2 else 2) * size_bytes / (g * inter.bandwidth_bytes_per_s)


def _ring_candidates(op: str, size: float, n: int, g: int, nodes: int, intra: GroupLink,
                     inter: GroupLink | None, arch: str, cpu: str,
                     intra_hw: str) -> list[NcclChoice]:  # fmt: skip
    if nodes == 1:
        alpha, hw, lat_algo, bw = intra.latency_s, intra_hw, "ring", intra.bandwidth_bytes_per_s
    else:
        assert inter is not None
        # NCCL: "With ppn=1 latencies are fully exposed, use the Tree network latency"
        alpha, hw, lat_algo = inter.latency_s, "net", ("tree" if g == 1 else "ring")
        bw = _ring_bandwidth(intra, inter, g)
    factor, nsteps = bus_factor(op, n), steps(op, n)
    frac = {"ll": RING_LL_FRACTION, "ll128": RING_LL128_FRACTION, "simple": 1.0}
    out = []
    for p in PROTOCOLS:
        lat = BASE_LATENCY_US["ring"][_P[p]] * 1e-6 + nsteps * _hop_s(alpha, hw, lat_algo, p)
        plateau = size / (NCCL_CHANNELS * n) >= 64
        if op == "all_reduce" and nodes > 1 and p == "simple" and plateau:
            lat *= RING_PLATEAU_FACTOR[arch]
        t_bw = factor * size / (bw * frac[p])
        if p == "ll":
            t_bw = max(t_bw, factor * size / _ll_cap_bytes_per_s(arch, cpu, nodes))
        out.append(NcclChoice(lat + t_bw, "ring", p))
    return out


def _tree_candidates(size: float, g: int, nodes: int, intra: GroupLink, inter: GroupLink | None,
                     arch: str, cpu: str, intra_hw: str,
                     tree_pipelined: bool = True) -> list[NcclChoice]:  # fmt: skip
    """Tree all-reduce: a chain inside each node, a double binary tree across nodes."""
    t_chain = 2 * size / intra.bandwidth_bytes_per_s if g > 1 else 0.0
    t_net = tree_network_s(size, g, nodes, inter, tree_pipelined) if inter is not None else 0.0
    depth = log2_floor(nodes)
    frac = {
        "ll": TREE_LL_FRACTION,
        "ll128": TREE_LL128_FRACTION_ONE_NODE if nodes == 1 else TREE_LL128_FRACTION,
        "simple": 1.0,
    }
    out = []
    for p in PROTOCOLS:
        lat = 2 * (g - 1) * _hop_s(intra.latency_s, intra_hw, "tree", p)
        if nodes > 1:
            assert inter is not None
            lat += 2 * depth * _hop_s(inter.latency_s, "net", "tree", p)
        lat += BASE_LATENCY_US["tree"][_P[p]] * 1e-6
        eff = TREE_ALL_REDUCE_FRACTION * frac[p] * tree_correction(size, p)
        t_bw = max(t_chain, t_net) / eff
        if p == "ll":  # NCCL's tree busBw is 2·S/t ("ratio .5")
            t_bw = max(t_bw, 2 * size / _ll_cap_bytes_per_s(arch, cpu, nodes))
        out.append(NcclChoice(lat + t_bw, "tree", p))
    return out


def _nvls_s(op: str, size: float, g: int, intra: GroupLink, arch: str) -> float:
    """NVLink SHARP inside a node (Simple only). All-reduce: each GPU sends its S to the switch,
    which reduces, and receives the reduced S; it also handles its S/g shard once more (ld_reduce
    then multicast store), so ~S·(1 + 1/g) per direction; all-gather / reduce-scatter move
    (g−1)/g·S. Bandwidth: NCCL's nvlsEfficiency times the NVLink bandwidth."""
    bw = NVLS_EFFICIENCY[arch] * intra.bandwidth_bytes_per_s
    moved = size * (1 + 1 / g) if op == "all_reduce" else size * (g - 1) / g
    return moved / bw


def _check_nccl_args(arch: str, cpu: str, intra_hw: str, algorithms: Sequence[str] | None,
                     protocols: Sequence[str] | None) -> None:  # fmt: skip
    for value, allowed, what in ((arch, NCCL_ARCHS, "arch"), (cpu, NCCL_CPUS, "cpu"),
                                 (intra_hw, NCCL_INTRA_HW, "intra_hw")):  # fmt: skip
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    for names, allowed, what in ((algorithms, NCCL_ALGORITHMS, "algorithm"),
                                 (protocols, PROTOCOLS, "protocol")):  # fmt: skip
        for name in names or ():
            if name not in allowed:
                raise ValueError(f"unknown NCCL {what} {name!r}; allowed: {', '.join(allowed)}")


def _nvls_pat_candidates(op: str, size: float, n: int, g: int, nodes: int, intra: GroupLink,
                         inter: GroupLink | None, nvls: bool, arch: str, intra_hw: str,
                         tree_pipelined: bool = True) -> list[NcclChoice]:  # fmt: skip
    """NVLS (one node), NVLS tree (all-reduce, several nodes) and PAT (one GPU per node)."""
    out = []
    has_nvls = nvls and NVLS_EFFICIENCY[arch] > 0 and g >= 2
    nvls_hop = _hop_s(intra.latency_s, intra_hw, "nvls", "simple") if has_nvls else 0.0
    if has_nvls and nodes == 1 and op in ("all_reduce", "all_gather", "reduce_scatter"):
        out.append(NcclChoice(nvls_hop + _nvls_s(op, size, g, intra, arch), "nvls", "simple"))
    if has_nvls and nodes > 1 and op == "all_reduce":
        assert inter is not None
        hop = _hop_s(inter.latency_s, "net", "nvls_tree", "simple")
        lat = nvls_hop + 2 * log2_floor(nodes) * hop
        t_net = tree_network_s(size, g, nodes, inter, tree_pipelined)
        t_bw = max(_nvls_s(op, size, g, intra, arch), t_net)
        out.append(NcclChoice(lat + t_bw, "nvls_tree", "simple"))
    if op in ("all_gather", "reduce_scatter") and g == 1 and nodes > 1:
        assert inter is not None
        # one GPU per node: NCCL's interLat is the Tree's network hop
        hop = _hop_s(inter.latency_s, "net", "tree", "simple")
        lat = (BASE_LATENCY_US["pat"][_P["simple"]] + PAT_PER_RANK_LATENCY_US * n) * 1e-6
        lat += log2_floor(nodes) * hop / PAT_LOG_LATENCY_DIVISOR
        t_bw = size / (PAT_FRACTION * inter.bandwidth_bytes_per_s)
        out.append(NcclChoice(lat + t_bw, "pat", "simple"))
    return out


def nccl_candidates(op: str, size_bytes: float, n: int, *, intra: GroupLink,
                    inter: GroupLink | None = None, gpus_per_node: int, nvls: bool = False,
                    algorithms: Sequence[str] | None = None,
                    protocols: Sequence[str] | None = None, arch: str = "hopper",
                    cpu: str = "intel", intra_hw: str = "nvlink",
                    tree_pipelined: bool = True) -> tuple[NcclChoice, ...]:  # fmt: skip
    """Every (algorithm, protocol) NCCL would consider for this collective, with its time.

    Candidates (NVIDIA/nccl src/graph/tuning.cc, ncclTopoTuneModel and the enable rules after
    it): all-reduce: ring, tree, nvls (one node) or nvls_tree (several nodes) when ``nvls``;
    all-gather / reduce-scatter: ring, nvls (one node, with ``nvls``), pat (one GPU per node,
    NCCL >= 2.23); broadcast / reduce: ring; all-to-all and gather: ``pairwise`` (NCCL's
    send/recv, :func:`collective_time_s`). Ring and tree come in LL, LL128 and Simple; the
    others in Simple only. CollNet (SHARP switches) is not modelled.

    Each time is latency + bytes/bandwidth:

    * latency: NCCL's baseLatencies plus per-hop latencies. A hop's latency is the profile's
      latency of that link (``intra`` / ``inter``: the ring/Simple step, as in
      :func:`ring_time_s`) times NCCL's hwLatencies ratio (this algorithm/protocol over
      ring/Simple on the same link kind). Ring: every one of its ``steps`` pays the slowest
      link's hop, as in :func:`collective_time_s` (NCCL charges the network hop only on the
      2(N−1) node crossings; simtrain keeps its ring so that a profile's fitted per-step
      latency, e.g. h100_sxm5_80gb_efa's, keeps its meaning), ×1.4 for a multi-node Simple
      all-reduce (NCCL's "plateau"). Tree: 2·((g−1)·hop_intra + ⌊log2 N⌋·hop_net) (NCCL's
      formula: a chain in the node, a tree of depth log N across). NVLS: one NVLS hop; NVLS
      tree: that plus 2·⌊log2 N⌋ network hops; PAT: 8 us + ⌊log2 N⌋·hop_net/3.5 + 2.8 us·n.
    * bandwidth: the ring's ``bus_factor·S/B_ring`` (B_ring as :func:`collective_time_s`); tree
      all-reduce max(2·S/B_intra, 2·S/(g·B_nic)) (S/(g·B_nic) on 2 nodes); NVLS
      S·(1 + 1/g)/(η·B_intra), η = nvlsEfficiency; NVLS tree the max of that and the tree's
      network term; PAT S/(0.75·B_nic). NCCL's protocol fractions divide the bandwidth (ring
      LL 0.5, LL128 0.92; tree 0.92, times 1/3.8 for LL and 7/9 (one node) or 120/128 for
      LL128, times :func:`tree_correction`); LL is capped at llMaxBws.

    ``arch`` (volta | ampere | hopper | blackwell) picks llMaxBws' one-node row, nvlsEfficiency
    (0 before Hopper: no NVLS whatever ``nvls`` says) and the plateau factor; ``cpu`` (intel |
    amd) the multi-node llMaxBws row; ``intra_hw`` (nvlink | pci) the hwLatencies row of the
    intra-node link; ``tree_pipelined=False`` makes each level of a tree across nodes cost the
    network term again (:func:`tree_network_s`). NCCL's per-channel caps (perChMax*Bws) need its channel count and are left
    out, as is the Tree ×0.85 for one-NIC-per-node trees. NCCL adds the network plugin's latency
    (graph latencyInter: 0 for InfiniBand, 75 us on AWS p4d/p5 from aws-ofi-nccl
    src/platform-aws.cpp) to every network hop; here it is part of the profile's ``inter``
    latency."""
    _check_op(op)
    _check_nccl_args(arch, cpu, intra_hw, algorithms, protocols)
    if n < 1 or gpus_per_node < 1:
        raise ValueError(
            f"n and gpus_per_node must be >= 1 (got n={n}, gpus_per_node={gpus_per_node})"
        )
    if n == 1 or size_bytes <= 0:
        return ()
    g = min(gpus_per_node, n)
    nodes = -(-n // g)
    if nodes > 1 and inter is None:
        raise ValueError(
            f"{n} GPUs at {g} per node span {nodes} nodes: an inter-node link is needed"
        )
    out: list[NcclChoice] = []
    if op in ("all_to_all", "gather"):
        t = collective_time_s(op, size_bytes, n, intra=intra, inter=inter, gpus_per_node=g)
        out.append(NcclChoice(t, "pairwise", "simple"))
    else:
        out += _ring_candidates(op, size_bytes, n, g, nodes, intra, inter, arch, cpu, intra_hw)
        if op == "all_reduce":
            out += _tree_candidates(size_bytes, g, nodes, intra, inter, arch, cpu, intra_hw,
                                    tree_pipelined)  # fmt: skip
        out += _nvls_pat_candidates(op, size_bytes, n, g, nodes, intra, inter, nvls, arch,
                                    intra_hw, tree_pipelined)  # fmt: skip
    keep = [
        c
        for c in out
        if (algorithms is None or c.algorithm in algorithms)
        and (protocols is None or c.protocol in protocols)
    ]
    if not keep:
        raise ValueError(
            f"no NCCL algorithm left for {op} on {n} GPUs ({g} per node, nvls={nvls}, "
            f"arch={arch}); it has: {', '.join(sorted({f'{c.algorithm}/{c.protocol}' for c in out}))}"
        )
    return tuple(keep)


def nccl_time_s(op: str, size_bytes: float, n: int, *, intra: GroupLink,
                inter: GroupLink | None = None, gpus_per_node: int, nvls: bool = False,
                algorithms: Sequence[str] | None = None, protocols: Sequence[str] | None = None,
                arch: str = "hopper", cpu: str = "intel", intra_hw: str = "nvlink",
                tree_pipelined: bool = True) -> NcclChoice:  # fmt: skip
    """NCCL's pick: the fastest of :func:`nccl_candidates` (ties: the first in the order
    ring, tree, nvls, nvls_tree, pat; protocols LL, LL128, Simple), as ``(time_s, algorithm,
    protocol)``. A trivial collective (n = 1 or no bytes) is ``(0.0, "none", "none")``.
    ``algorithms`` / ``protocols`` restrict the choice like NCCL_ALGO / NCCL_PROTO."""
    cands = nccl_candidates(op, size_bytes, n, intra=intra, inter=inter,
                            gpus_per_node=gpus_per_node, nvls=nvls, algorithms=algorithms,
                            protocols=protocols, arch=arch, cpu=cpu, intra_hw=intra_hw,
                            tree_pipelined=tree_pipelined)  # fmt: skip
    if not cands:
        return NcclChoice(0.0, "none", "none")
    return min(cands, key=lambda c: c.time_s)
