"""NCCL's device buffers: memory nvidia-smi shows beyond what PyTorch allocates.

Every NCCL communicator connects, when it is created, each GPU to its ring and tree neighbours
on every channel (NVIDIA/nccl v2.10.3-1, the NCCL of PyTorch 1.10 wheels, NVIDIA/nccl issue
#1068: "pytorch version is 1.10.0 ... NCCL version 2.10.3"; src/init.cc l.770-787: "Connect
with prev/next for each ring", then "Connect Trees", both before the first collective). A
connection (one channel, one peer, one direction) holds one buffer per protocol
(src/include/comm.h and src/init.cc l.464-482 at v2.10.3-1):

* LL: NCCL_LL_LINES_PER_THREAD x NCCL_LL_MAX_NTHREADS x NCCL_STEPS x sizeof(ncclLLFifoLine)
  = 8 x 512 x 8 x 16 B = 512 KiB;
* LL128: NCCL_LL128_ELEMS_PER_THREAD x NCCL_LL128_MAX_NTHREADS x NCCL_STEPS x 8 B
  = 120 x 640 x 8 x 8 B = 4,915,200 B;
* Simple: NCCL_BUFFSIZE, DEFAULT_BUFFSIZE = 1 << 22 = 4 MiB.

Where they live (device memory counted here):

* P2P transport (GPUs of one node over NVLink; src/transport/p2p.cc l.148-220): with P2P read
  (Ampere over NVLink, "via P2P/IPC/read" in the logs) the sender holds the Simple buffer and the
  receiver LL and LL128, each allocation with its small header rounded up to CUDA_IPC_MIN = 2 MiB
  (``ALIGN_SIZE(sendSize, CUDA_IPC_MIN)``): 6 MiB a side, 12 MiB a connection (without read:
  2 MiB + 10 MiB, the same 12).
* NET transport (across nodes, GPUDirect RDMA; src/transport/net.cc l.93-108, 168-184): the
  sender keeps LL128 and Simple on the GPU (LL in host memory), the receiver all three.

Channels: on one node, the hardware profile's ``nccl_channels_one_node`` (a logged count).
Across nodes NCCL's search finds one ring per NIC its GPUs reach at the NIC's speed and doubles
them (src/graph/connect.cc l.293, ``nChannels*2``): 2 x min(g, NICs per node) for g GPUs of the
communicator per node, one NIC per GPU as on the DGX A100 (NVIDIA/nccl-tests issue #133, NCCL
2.10.3, one RoCE NIC for 8 GPUs: "Channel 00/02"; 8 NICs: 16 channels, NVIDIA/nccl issue #1538).

The rings and trees are those of NCCL 2.10: a ring through each node's GPUs in order and on to
the next node; per channel a chain through each node's GPUs (up towards local GPU 0) and across
nodes the double binary tree of src/graph/trees.cc (``ncclGetDtree``; the first half of the
channels on tree 0, the duplicated half on tree 1), a node's GPU 0 linked to its parent and its
children linked to its GPU 1 (first child) and GPU 0 (second; NCCL_TOPO_PATTERN_BALANCED_TREE,
src/graph/connect.cc l.40-46 and ``connectTrees``). A connection serves the ring and the tree
when both link the same two GPUs in the same direction (src/transport.cc l.47-52:
``connected``). The figure per GPU is the communicator's mean.

Not modelled: NCCL's host-memory buffers and its work FIFO (host-mapped), the proxy's shared
p2p buffers, and NCCL >= 2.22, which connects each algorithm only when first used
(NCCL_RUNTIME_CONNECT).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import ceil

from simtrain.spec.scenario import group_gpus_per_node as per_node
from simtrain.units import MIB

#: NVIDIA/nccl tag the mechanism and constants are read from.
NCCL_VERSION = "v2.10.3-1"
LL_BUFF_BYTES = 8 * 512 * 8 * 16  # DEFAULT_LL_BUFFSIZE
LL128_BUFF_BYTES = 120 * 640 * 8 * 8  # DEFAULT_LL128_BUFFSIZE
SIMPLE_BUFF_BYTES = 1 << 22  # DEFAULT_BUFFSIZE (NCCL_BUFFSIZE)
CUDA_IPC_MIN_BYTES = 2 * MIB  # src/include/comm.h: CUDA_IPC_MIN 2097152UL


def _align_ipc(n: int) -> int:
    return -(-n // CUDA_IPC_MIN_BYTES) * CUDA_IPC_MIN_BYTES


#: Device bytes of one connection's send and receive side. P2P: the header (ncclSendMem,
#: ncclRecvMem up to ``buff``: a few KiB, more than 0 B and less than 2 MiB) is taken as 1 B,
#: which the 2 MiB rounding makes exact.
P2P_SEND_BYTES = _align_ipc(1 + SIMPLE_BUFF_BYTES)
P2P_RECV_BYTES = _align_ipc(1 + LL_BUFF_BYTES + LL128_BUFF_BYTES)
NET_SEND_BYTES = LL128_BUFF_BYTES + SIMPLE_BUFF_BYTES
NET_RECV_BYTES = LL_BUFF_BYTES + LL128_BUFF_BYTES + SIMPLE_BUFF_BYTES


def btree(nranks: int, rank: int) -> tuple[int, int, int, int]:
    """NCCL's binary tree (src/graph/trees.cc ``ncclGetBtree``): (up, down0, down1, parent
    child type), -1 for none; the type is 0 when ``rank`` is below its parent."""
    bit = 1
    while bit < nranks and not bit & rank:
        bit <<= 1
    if rank == 0:
        return -1, -1, (bit >> 1 if nranks > 1 else -1), 0
    up = (rank ^ bit) | (bit << 1)
    if up >= nranks:
        up = rank ^ bit
    kind = 0 if rank < up else 1
    lowbit = bit >> 1
    down0 = -1 if lowbit == 0 else rank - lowbit
    down1 = -1 if lowbit == 0 else rank + lowbit
    while down1 >= nranks:
        down1 = -1 if lowbit == 0 else rank + lowbit
        lowbit >>= 1
    return up, down0, down1, kind


def dtree(nranks: int, rank: int, tree: int) -> tuple[int, int, int, int]:
    """Tree ``tree`` (0 or 1) of NCCL's double binary tree (``ncclGetDtree``): the second is
    the first mirrored (even ``nranks``) or shifted by one rank (odd)."""
    if tree == 0:
        return btree(nranks, rank)
    if nranks % 2:
        u, d0, d1, kind = btree(nranks, (rank - 1 + nranks) % nranks)
        return tuple(-1 if x == -1 else (x + 1) % nranks for x in (u, d0, d1)) + (kind,)  # type: ignore[return-value]
    u, d0, d1, kind = btree(nranks, nranks - 1 - rank)
    return tuple(-1 if x == -1 else nranks - 1 - x for x in (u, d0, d1)) + (kind,)  # type: ignore[return-value]


def channel_links(n: int, g: int, tree: int) -> set[tuple[int, int]]:
    """Directed connections (sender, receiver) of one channel of a communicator of ``n`` ranks,
    ``g`` per node (rank r on node r // g): its ring and tree ``tree``, each connection once."""
    if n < 2:
        return set()
    links = {(r, (r + 1) % n) for r in range(n)}
    nodes = ceil(n / g)
    for j in range(nodes):
        members = list(range(j * g, min(n, (j + 1) * g)))
        for a, b in zip(members, members[1:], strict=False):  # the chain, both ways
            links |= {(a, b), (b, a)}
    for j in range(nodes):
        up, _, _, kind = dtree(nodes, j, tree)
        if up == -1:
            continue
        size_up = min(n, (up + 1) * g) - up * g
        connector = up * g + (min(1, size_up - 1) if kind == 0 else 0)
        links |= {(j * g, connector), (connector, j * g)}
    return links


@cache
def communicator_bytes(n: int, g: int, channels_one_node: int) -> float:
    """Mean device bytes per GPU of one communicator of ``n`` ranks, ``g`` per node."""
    if n < 2 or channels_one_node <= 0:
        return 0.0
    g = max(1, min(g, n))
    if g >= n:
        channels = channels_one_node
    else:  # one ring per NIC (one NIC per GPU), doubled; never more than on one node
        channels = min(2 * g, channels_one_node)
    connection = {True: NET_SEND_BYTES + NET_RECV_BYTES, False: P2P_SEND_BYTES + P2P_RECV_BYTES}
    total = 0
    for tree in (0, 1):  # each tree serves half of the channels
        total += sum(connection[a // g != b // g] for a, b in channel_links(n, g, tree))
    return total * (channels / 2) / n


@dataclass(frozen=True, slots=True)
class Communicator:
    """One NCCL communicator a GPU belongs to: its process group, ranks and ranks per node."""

    group: str
    ranks: int
    gpus_per_node: int
    count: int = 1  # communicators of this shape (pp_pairs: one per neighbouring stage)


def stage_communicators(groups: tuple[str, ...], tp: int, cp: int, dp: int, pp: int,
                        stage: int, gpus_per_node: int,
                        tied_embeddings: bool) -> list[Communicator]:  # fmt: skip
    """The communicators a GPU of pipeline stage ``stage`` belongs to, for the runtime's
    ``nccl_communicators``, under Megatron's placement (layout.placement: tp consecutive, dp
    every tp·cp-th GPU, pipeline neighbours dp·cp·tp apart)."""
    pp_stride = tp * cp * dp
    tp_node = per_node(tp, 1, gpus_per_node)
    stages_node = per_node(pp, pp_stride, gpus_per_node)
    out: list[Communicator] = []
    for name in groups:
        if name == "tp" and tp > 1:
            out.append(Communicator(name, tp, tp_node))
        elif name == "dp" and dp * cp > 1:
            out.append(Communicator(name, dp * cp, per_node(dp * cp, tp, gpus_per_node)))
        elif name == "model_parallel" and tp * pp > 1:
            out.append(Communicator(name, tp * pp, tp_node * stages_node))
        elif name == "pipeline" and pp > 1:
            out.append(Communicator(name, pp, stages_node))
        elif name == "pp_pairs" and pp > 1:
            neighbours = len({s for s in (stage - 1, stage + 1) if 0 <= s < pp})
            out.append(Communicator(name, 2, per_node(2, pp_stride, gpus_per_node), neighbours))
        elif name == "embedding" and pp > 1 and tied_embeddings and stage in (0, pp - 1):
            out.append(Communicator(name, 2, per_node(2, (pp - 1) * pp_stride, gpus_per_node)))
        elif name == "world" and tp * cp * dp * pp > 1:
            out.append(Communicator(name, tp * cp * dp * pp, gpus_per_node))
    return out


def nccl_buffer_bytes(comms: list[Communicator], channels_one_node: int) -> int:
    """Device bytes of NCCL's connection buffers on one GPU (:func:`communicator_bytes` of each
    communicator)."""
    return round(sum(c.count * communicator_bytes(c.ranks, c.gpus_per_node, channels_one_node)
                     for c in comms))  # fmt: skip
