"""Where each rank runs: process groups, GPU ids, and which transfers leave a node.

Placement (Megatron order, Narayanan et al. 2021 §3; Megatron-Core ``parallel_state.py``
``order="tp-cp-ep-dp-pp"``): global GPU id = pp_rank·(dp·cp·tp) + dp_rank·(cp·tp) +
cp_rank·tp + tp_rank, so a TP group is consecutive GPUs (inside a node when tp <= GPUs per node),
a CP group strides by tp (inside a node when tp·cp <= GPUs per node), a DP group by cp·tp, the
gradient-reduction group (dp x cp) by tp, and pipeline neighbours are dp·cp·tp GPUs apart. Only
one GPU per pipeline rank is simulated: its TP, CP and DP peers do identical work.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.spec.scenario import group_span


@dataclass(frozen=True, slots=True)
class Groups:
    """Process-group sizes. Strides are the GPU-id distance between members of a group."""

    dp: int
    tp: int
    pp: int
    cp: int = 1

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def tp_stride(self) -> int:
        return 1

    @property
    def cp_stride(self) -> int:
        return self.tp

    @property
    def dp_stride(self) -> int:
        return self.tp * self.cp

    @property
    def pp_stride(self) -> int:
        return self.dp * self.cp * self.tp

    @property
    def dp_cp(self) -> int:
        """GPUs of the gradient-reduction group: dp x cp, ``tp`` apart (the CP ranks sit
        between the DP ranks, so together they are every tp-th GPU of a pipeline stage)."""
        return self.dp * self.cp


@dataclass(frozen=True, slots=True)
class Placement:
    groups: Groups
    gpus_per_node: int

    def rank_gpu(self, rank: int) -> int:
        """First GPU of pipeline rank ``rank`` (its TP and DP peers follow)."""
        return rank * self.groups.pp_stride

    def same_node(self, gpu_a: int, gpu_b: int) -> bool:
        return gpu_a // self.gpus_per_node == gpu_b // self.gpus_per_node

    def hop_crosses_nodes(self, rank: int, step: int = 1) -> bool:
        """Does the p2p hop from ``rank`` to rank ``(rank + step) % pp`` leave the node?"""
        other = (rank + step) % self.groups.pp
        return not self.same_node(self.rank_gpu(rank), self.rank_gpu(other))

    def group_crosses_nodes(self, n: int, stride: int) -> bool:
        """Does any group of ``n`` GPUs ``stride`` apart span more than one node? (Every
        such group of the grid, :func:`group_span`: a pipeline stage of dp·cp·tp GPUs that is
        not a whole number of nodes puts some stages' groups across a node boundary.)"""
        return group_span(n, stride, self.groups.pp_stride, self.groups.pp,
                          self.gpus_per_node)[0]  # fmt: skip

    def group_gpus_per_node(self, n: int, stride: int) -> int:
        """Members of such a group that share a node (the ``g`` of ``collectives``: a
        cross-node ring runs one ring per NIC, g of them per node): the fewest on any node
        any of the grid's groups spans (:func:`group_span`), where the ring's NICs bottleneck;
        spec.scenario's rule where the groups are node-aligned. One figure for every pipeline
        rank: where only some stages' groups straddle a node boundary, the others are priced
        as they are (an upper bound for those; the collectives of the slowest group end the
        step)."""
        return group_span(n, stride, self.groups.pp_stride, self.groups.pp,
                          self.gpus_per_node)[1]  # fmt: skip

    @property
    def tp_crosses_nodes(self) -> bool:
        return self.group_crosses_nodes(self.groups.tp, self.groups.tp_stride)

    @property
    def dp_crosses_nodes(self) -> bool:
        return self.group_crosses_nodes(self.groups.dp, self.groups.dp_stride)

    @property
    def cp_crosses_nodes(self) -> bool:
        """Does the CP ring leave the node (tp·cp > GPUs per node)?"""
        return self.group_crosses_nodes(self.groups.cp, self.groups.cp_stride)

    def rank_label(self, rank: int) -> str:
        """``stage r: GPU g`` or ``stage r: GPUs g-h`` (the rank and its TP x CP x DP peers)."""
        g, peers = self.rank_gpu(rank), self.groups.pp_stride
        who = f"GPU {g}" if peers == 1 else f"GPUs {g}-{g + peers - 1}"
        return f"stage {rank}: {who}"
