"""The cluster as a graph: GPUs, intra-node links, NICs and a two-level fat tree.

:func:`build_topology` turns a :class:`HardwareProfile` and a node count into an undirected
``networkx.Graph``. Links are full duplex: every edge carries ``bandwidth_bytes_per_s`` in *each*
direction, a ``latency_s`` and a ``kind``. Nodes are tuples ``(kind, index)``:

* ``("gpu", i)`` — GPU i (global index; node ``i // gpus_per_node``).
* intra-node fabric, by ``hw.intra_node_kind``:

  - ``nvswitch``: one ``("switch", n)`` per node standing for the node's NVSwitch chips as one
    crossbar; each GPU links to it with the per-GPU NVLink bandwidth (DGX A100: 300 GB/s,
    DGX H100: 450 GB/s per direction). Latency ``intra_node_latency_s / 2`` per hop, so a
    GPU-to-GPU path costs ``intra_node_latency_s``.
  - ``nvlink`` / ``xgmi`` / ``infinity_fabric`` without a switch (``spec.hardware.MESH_KINDS``):
    a full mesh. Each pair link carries the profile's ``intra_node.pair_bandwidth_gb_per_s``
    (MI300X: one xGMI link of 64 GB/s), or without one the GPU's aggregate split over its
    ``hw.gpus_per_node − 1`` peers: the DGX-1 V100 hybrid cube-mesh (4 of 7 peers linked
    directly) is approximated by that full mesh with the aggregate spread evenly.
  - ``pcie``: GPUs hang off one host PCIe switch ``("pcie", n)`` per node, each with the
    profile's intra-node bandwidth (no NVLink; NCCL goes through PCIe or host memory).

* ``("nic", i)`` — one NIC per GPU, linked to its GPU over PCIe (GPUDirect RDMA: bandwidth
  ``pcie_bandwidth``, no latency of its own) and to a leaf switch with ``nic_bandwidth``.
* ``("leaf", k)`` — leaf switches, each serving ``nodes_per_leaf`` consecutive nodes (default:
  32 NICs per leaf, half the ports of a 64-port switch). ``("spine", k)`` — spine switches,
  present when there is more than one leaf; each leaf has one uplink to every spine. The leaf's
  total uplink bandwidth is its total downlink bandwidth divided by ``hw.oversubscription``.
  ``inter_node_latency_s`` is the end-to-end network latency (NIC and software dominate, not
  switch hops): half of it on each NIC–leaf link, 0 on leaf–spine links.

Paths are deterministic: fewest hops, ties broken by the lexicographically smallest node list
(no load balancing over spines — this is a capacity model, not a traffic simulator).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import networkx as nx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from simtrain.spec.hardware import HardwareProfile

Node = tuple[str, int]

GB = 1e9
DEFAULT_NICS_PER_LEAF = 32
MAX_DEFAULT_SPINES = 8


class Edge(NamedTuple):
    """One hop of a path, oriented from ``u`` to ``v``."""

    u: Node
    v: Node
    bandwidth_bytes_per_s: float  # per direction
    latency_s: float
    kind: str  # nvlink | xgmi | pcie | nic | uplink


def _mesh_kind(intra_kind: str) -> str:
    return "xgmi" if intra_kind in ("xgmi", "infinity_fabric") else "nvlink"


def build_topology(hw: HardwareProfile, nodes: int, gpus_per_node: int, *,
                   nodes_per_leaf: int | None = None, spines: int | None = None,
                   last_node_gpus: int = 0) -> nx.Graph:  # fmt: skip
    """Graph of ``nodes`` servers with ``gpus_per_node`` GPUs each, the last with
    ``last_node_gpus`` where given (a scenario's 10 GPUs on 8-GPU servers: 8 + 2;
    ``ClusterSpec``) (module docstring for the structure and the meaning of every attribute).

    ``nodes_per_leaf`` defaults to ``max(1, 32 // gpus_per_node)``; ``spines`` to
    ``min(leaves, 8)`` when there are two or more leaves, else 0."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be >= 1 (got {nodes}, {gpus_per_node})")
    if nodes_per_leaf is None:
        nodes_per_leaf = max(1, DEFAULT_NICS_PER_LEAF // gpus_per_node)
    if nodes_per_leaf < 1:
        raise ValueError(f"nodes_per_leaf must be >= 1 (got {nodes_per_leaf})")
    leaves = -(-nodes // nodes_per_leaf)
    if spines is None:
        spines = min(leaves, MAX_DEFAULT_SPINES) if leaves > 1 else 0
    if leaves > 1 and spines < 1:
        raise ValueError(f"{leaves} leaf switches need at least one spine")

    g = nx.Graph(
        hardware=hw.name,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        last_node_gpus=last_node_gpus,
        nodes_per_leaf=nodes_per_leaf,
        leaves=leaves,
        spines=spines,
        oversubscription=hw.oversubscription,
        intra_node_kind=hw.intra_node_kind,
    )
    intra_bw, intra_lat = hw.intra_node_bandwidth_bytes_per_s, hw.intra_node_latency_s
    nic_bw, net_lat = hw.nic_bandwidth_bytes_per_s, hw.inter_node_latency_s

    def node_gpus(n: int) -> int:
        return last_node_gpus if last_node_gpus and n == nodes - 1 else gpus_per_node

    for n in range(nodes):
        gpus = [n * gpus_per_node + j for j in range(node_gpus(n))]
        for i in gpus:
            g.add_node(("gpu", i), kind="gpu", server=n)
        if hw.intra_node_kind in ("nvswitch", "pcie"):
            hub: Node = ("switch", n) if hw.intra_node_kind == "nvswitch" else ("pcie", n)
            kind = "nvlink" if hw.intra_node_kind == "nvswitch" else "pcie"
            g.add_node(hub, kind="nvswitch" if kind == "nvlink" else "pcie_switch", server=n)
            for i in gpus:
                g.add_edge(("gpu", i), hub, bandwidth_bytes_per_s=intra_bw,
                           latency_s=intra_lat / 2, kind=kind)  # fmt: skip
        else:
            per_link = (hw.intra_node_pair_bandwidth_bytes_per_s
                        or intra_bw / max(1, hw.gpus_per_node - 1))  # fmt: skip
            kind = _mesh_kind(hw.intra_node_kind)
            for a in gpus:
                for b in gpus:
                    if a < b:
                        g.add_edge(("gpu", a), ("gpu", b), bandwidth_bytes_per_s=per_link,
                                   latency_s=intra_lat, kind=kind)  # fmt: skip
        leaf: Node = ("leaf", n // nodes_per_leaf)
        g.add_node(leaf, kind="leaf")
        for i in gpus:
            g.add_node(("nic", i), kind="nic", server=n)
            g.add_edge(("gpu", i), ("nic", i), bandwidth_bytes_per_s=hw.pcie_bandwidth_bytes_per_s,
                       latency_s=0.0, kind="pcie")  # fmt: skip
            g.add_edge(("nic", i), leaf, bandwidth_bytes_per_s=nic_bw, latency_s=net_lat / 2,
                       kind="nic")  # fmt: skip

    for k in range(spines):
        g.add_node(("spine", k), kind="spine")
    for k in range(leaves if spines else 0):
        served = range(k * nodes_per_leaf, min(nodes, (k + 1) * nodes_per_leaf))
        downlink = sum(node_gpus(n) for n in served) * nic_bw
        up_each = downlink / hw.oversubscription / spines
        for s in range(spines):
            g.add_edge(("leaf", k), ("spine", s), bandwidth_bytes_per_s=up_each, latency_s=0.0,
                       kind="uplink")  # fmt: skip
    return g


def gpu_count(G: nx.Graph) -> int:
    return sum(1 for _, d in G.nodes(data=True) if d["kind"] == "gpu")


def _node(x: int | Node) -> Node:
    return ("gpu", x) if isinstance(x, int) else x


def path(G: nx.Graph, src_gpu: int | Node, dst_gpu: int | Node) -> list[Edge]:
    """Deterministic shortest path (fewest hops; ties: smallest node list) as oriented edges."""
    a, b = _node(src_gpu), _node(dst_gpu)
    if a not in G or b not in G:
        raise ValueError(f"no such node: {a if a not in G else b}")
    if a == b:
        return []
    nodes = min(nx.all_shortest_paths(G, a, b))
    out = []
    for u, v in zip(nodes, nodes[1:], strict=False):
        d = G.edges[u, v]
        out.append(Edge(u, v, d["bandwidth_bytes_per_s"], d["latency_s"], d["kind"]))
    return out


def bottleneck_bandwidth(G: nx.Graph, a: int | Node, b: int | Node) -> float:
    """Smallest per-direction bandwidth on :func:`path` (``inf`` from a GPU to itself)."""
    edges = path(G, a, b)
    return min((e.bandwidth_bytes_per_s for e in edges), default=math.inf)


def path_latency_s(G: nx.Graph, a: int | Node, b: int | Node) -> float:
    return sum(e.latency_s for e in path(G, a, b))


def path_time_s(G: nx.Graph, a: int | Node, b: int | Node, size_bytes: float) -> float:
    """Point-to-point time along :func:`path`, cut-through: ``Σ latency + S / bottleneck``."""
    edges = path(G, a, b)
    if not edges or size_bytes <= 0:
        return sum(e.latency_s for e in edges)
    return sum(e.latency_s for e in edges) + size_bytes / min(
        e.bandwidth_bytes_per_s for e in edges
    )


def injection_bandwidth_bytes_per_s(G: nx.Graph, gpu: int | Node) -> float:
    """What a GPU can push out of its node through its own NIC: the bottleneck of
    GPU → NIC → leaf (``min(pcie, nic)``; the NIC on every shipped profile). Routing through a
    peer's NIC over NVLink (NCCL PXN) is not counted."""
    gn = _node(gpu)
    nic = ("nic", gn[1])
    leaf = next(v for v in G.neighbors(nic) if G.nodes[v]["kind"] == "leaf")
    return min(
        G.edges[gn, nic]["bandwidth_bytes_per_s"], G.edges[nic, leaf]["bandwidth_bytes_per_s"]
    )


def bisection_bandwidth_bytes_per_s(G: nx.Graph) -> float:
    """Per-direction max flow between the first and second half of the GPUs (by index, so whole
    nodes and leaves fall on each side when the counts are even): networkx max-flow, every
    undirected edge an arc each way with its per-direction bandwidth as capacity. For a
    non-blocking fat tree of multi-node GPUs this is (GPUs/2)·NIC; oversubscription r divides
    the spine part by r. One node: the NVSwitch (or mesh) and the NIC paths both count.

    The flow runs on the graph reduced to its switches: a server whose GPUs are all on one
    side sends (or takes) at most Σ min(GPU–NIC, NIC–leaf) over its GPUs to its leaf (each NIC
    links only its GPU and the leaf; the server's other links join GPUs of the same side), so
    it becomes one arc from the source (to the sink) to its leaf; a server the halves split
    keeps its links. The same value as on the whole graph (tests/test_topology.py checks it
    against networkx's flow there). ``simtrain topology`` measured (2 cores, 2026-12-07): 8,192
    servers 3.8 s, 32,768 servers 14.5 s (the whole graph's flow alone took 2.3 s at 2,048
    and the command did not end in 120 s at 32,768)."""
    gpus = sorted(v for v, d in G.nodes(data=True) if d["kind"] == "gpu")
    half = len(gpus) // 2
    if half == 0:
        return 0.0
    side = {v: i < half for i, v in enumerate(gpus)}  # True: the source's half
    src, dst = ("source", -1), ("sink", -1)
    D = nx.DiGraph()
    sides_of: dict[int, set[bool]] = {}  # server -> the halves its GPUs fall in
    for v in gpus:
        sides_of.setdefault(G.nodes[v]["server"], set()).add(side[v])
    split = {server for server, sides in sides_of.items() if len(sides) == 2}
    for u, v, d in G.edges(data=True):
        servers = {G.nodes[x].get("server") for x in (u, v)} - {None}
        if servers and not servers & split:
            continue  # a whole server's link: folded into its GPUs' arcs below
        c = d["bandwidth_bytes_per_s"]
        D.add_edge(u, v, capacity=c)
        D.add_edge(v, u, capacity=c)
    for v in gpus:
        if G.nodes[v]["server"] in split:  # unbounded arcs into the split server's GPUs
            if side[v]:
                D.add_edge(src, v)
            else:
                D.add_edge(v, dst)
            continue
        leaf = next(x for x in G.neighbors(("nic", v[1])) if G.nodes[x]["kind"] == "leaf")
        c = injection_bandwidth_bytes_per_s(G, v)
        a, b = (src, leaf) if side[v] else (leaf, dst)
        D.add_edge(a, b, capacity=D.edges[a, b]["capacity"] + c if D.has_edge(a, b) else c)
    return float(nx.maximum_flow_value(D, src, dst, capacity="capacity"))


# ---------------------------------------------------------------------------- drawing

_LAYER_Y = {"spine": 4.0, "leaf": 3.0, "nic": 2.0, "gpu": 1.0, "nvswitch": 0.0, "pcie_switch": 0.0}
_NODE_STYLE = {  # kind -> (face colour, marker, size)
    "spine": ("#7F3C8D", "s", 140),
    "leaf": ("#11A579", "s", 110),
    "nic": ("#F2B701", "D", 40),
    "gpu": ("#3969AC", "o", 70),
    "nvswitch": ("#E73F74", "h", 160),
    "pcie_switch": ("#80BA5A", "h", 160),
}
_EDGE_STYLE = {  # kind -> colour
    "nvlink": "#E73F74",
    "xgmi": "#E73F74",
    "pcie": "#80BA5A",
    "nic": "#F2B701",
    "uplink": "#7F3C8D",
}


# Above this many servers the drawing shows a representative subset (drawn_servers): every
# server has the same structure, and drawing all 504 nodes of a 4,032-GPU cluster took ~25 s
# for a picture no one can read. 8 servers of 8 GPUs keep the labels (up to 64 GPUs).
MAX_DRAWN_SERVERS = 8


def drawn_servers(G: nx.Graph, limit: int = MAX_DRAWN_SERVERS) -> list[int]:
    """The servers :func:`draw_topology` draws: all of them up to ``limit``; beyond, the first
    servers of leaf 0 (at most ``limit`` − 2), the first server of leaf 1 and the last server
    (the last leaf): intra-node links, one leaf's NICs, and paths across the spines."""
    nodes, per_leaf = G.graph["nodes"], G.graph["nodes_per_leaf"]
    if nodes <= limit:
        return list(range(nodes))
    picks = set(range(min(per_leaf, max(limit - 2, 1))))
    if G.graph["leaves"] > 1:
        picks.add(per_leaf)
    picks.add(nodes - 1)
    return sorted(picks)[:limit]


def _drawn_subgraph(G: nx.Graph, servers: list[int]) -> nx.Graph:
    """``G`` restricted to ``servers`` (their GPUs, NICs and node switch), the leaves serving
    them and every spine; attributes (bandwidths) unchanged."""
    keep_servers = set(servers)
    keep = {v for v, d in G.nodes(data=True) if d.get("server") in keep_servers}
    keep |= {u for v in keep if v[0] == "nic" for u in G.neighbors(v) if u[0] == "leaf"}
    keep |= {v for v, d in G.nodes(data=True) if d["kind"] == "spine"}
    return G.subgraph(keep)


def _layout(G: nx.Graph) -> dict[Node, tuple[float, float]]:
    """Positions: GPU and NIC j of the k-th drawn server at x = k·(gpus per node + 1) + j (a
    blank slot between servers), switches above or below the middle of what they serve."""
    gpn = G.graph["gpus_per_node"]
    gap = 1.0  # blank GPU slot between nodes
    slot = {n: k for k, n in enumerate(sorted({d["server"] for _, d in G.nodes(data=True)
                                               if d["kind"] == "gpu"}))}  # fmt: skip
    pos: dict[Node, tuple[float, float]] = {}
    for v, d in G.nodes(data=True):
        if d["kind"] in ("gpu", "nic"):
            i = v[1]
            pos[v] = (slot[d["server"]] * (gpn + gap) + i % gpn, _LAYER_Y[d["kind"]])
    for v, d in G.nodes(data=True):
        if d["kind"] in ("nvswitch", "pcie_switch"):
            xs = [
                x
                for j in range(gpn)  # (the last node may hold fewer: last_node_gpus)
                if (x := pos.get(("gpu", d["server"] * gpn + j), (None,))[0]) is not None
            ]
            pos[v] = (sum(xs) / len(xs), _LAYER_Y[d["kind"]])
        elif d["kind"] == "leaf":
            xs = [pos[u][0] for u in G.neighbors(v) if G.nodes[u]["kind"] == "nic"]
            pos[v] = (sum(xs) / len(xs), _LAYER_Y["leaf"])
    width = max((x for x, _ in pos.values()), default=0.0)
    spines = sorted(v for v, d in G.nodes(data=True) if d["kind"] == "spine")
    for k, v in enumerate(spines):
        pos[v] = ((k + 0.5) * width / len(spines), _LAYER_Y["spine"])
    return pos


def draw_topology(G: nx.Graph, path_png: str | Path, max_servers: int = MAX_DRAWN_SERVERS) -> Path:
    """PNG of the graph in layers — spines, leaves, NICs, GPUs, intra-node switch — with edges
    coloured by kind and widened by bandwidth. Readable up to about 64 GPUs (labels are dropped
    beyond that). Above ``max_servers`` servers only :func:`drawn_servers` are drawn (the time
    stays bounded whatever the cluster), and the title and the legend say so. Returns the path
    written."""
    full_kinds = Counter(d["kind"] for _, d in G.nodes(data=True))
    servers = drawn_servers(G, max_servers)
    subset = len(servers) < G.graph["nodes"]
    if subset:
        G = _drawn_subgraph(G, servers)
    pos = _layout(G)
    ngpu = gpu_count(G)
    xs = [x for x, _ in pos.values()]
    fig = Figure(figsize=(min(40.0, max(8.0, 0.32 * (max(xs) + 2))), 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bws = [d["bandwidth_bytes_per_s"] for _, _, d in G.edges(data=True)]
    lo, hi = math.log10(min(bws)), math.log10(max(bws))

    def width(bw: float) -> float:
        return 0.6 + 2.4 * ((math.log10(bw) - lo) / (hi - lo) if hi > lo else 1.0)

    gpn = G.graph["gpus_per_node"]
    # Two collections (arcs, straight links) instead of one artist per edge: a 448-GPU cluster
    # has ~15,000 links, which took 17 s of CPU to add as lines and 10 more to draw.
    arcs: tuple[list, list, list] = ([], [], [])  # segments, colours, widths
    lines: tuple[list, list, list] = ([], [], [])
    for u, v, d in sorted(G.edges(data=True)):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        colour, lw = _EDGE_STYLE.get(d["kind"], "#888888"), width(d["bandwidth_bytes_per_s"])
        if y1 == y2:  # mesh link inside a node: an arc below the GPU row
            steps = 16
            span = abs(x2 - x1) / max(1, gpn - 1)
            arc = [(x1 + (x2 - x1) * t / steps, y1 - 0.35 * span * math.sin(math.pi * t / steps))
                   for t in range(steps + 1)]  # fmt: skip
            for seq, val in zip(arcs, (arc, colour, lw * 0.5), strict=True):
                seq.append(val)
        else:
            for seq, val in zip(lines, ([(x1, y1), (x2, y2)], colour, lw), strict=True):
                seq.append(val)
    for (segs, colours, widths), alpha in ((arcs, 0.6), (lines, 0.7)):
        if segs:
            ax.add_collection(LineCollection(segs, colors=colours, linewidths=widths,
                                             alpha=alpha, zorder=1))  # fmt: skip
    ax.autoscale_view()
    kinds = Counter(d["kind"] for _, d in G.nodes(data=True))
    for kind in _NODE_STYLE:
        vs = sorted(v for v, d in G.nodes(data=True) if d["kind"] == kind)
        if not vs:
            continue
        face, marker, size = _NODE_STYLE[kind]
        count = f"{kinds[kind]} of {full_kinds[kind]}" if subset else kinds[kind]
        ax.scatter([pos[v][0] for v in vs], [pos[v][1] for v in vs], s=size, c=face,
                   marker=marker, edgecolors="black", linewidths=0.5, zorder=3,
                   label=f"{kind} ({count})")  # fmt: skip
        if ngpu <= 64 and kind in ("gpu", "leaf", "spine"):
            for v in vs:
                ax.annotate(str(v[1]), pos[v], textcoords="offset points", xytext=(0, 7),
                            ha="center", fontsize=6, zorder=4)  # fmt: skip
    seen = {}
    for _, _, d in sorted(G.edges(data=True)):
        seen.setdefault(d["kind"], d["bandwidth_bytes_per_s"])
    handles = [
        Line2D(
            [],
            [],
            color=_EDGE_STYLE.get(k, "#888888"),
            lw=width(bw),
            label=f"{k} link ({bw / GB:g} GB/s)",
        )  # fmt: skip
        for k, bw in seen.items()
    ]
    node_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=node_handles + handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=7, frameon=False)  # fmt: skip
    ax.set_yticks([0, 1, 2, 3, 4], ["node switch", "GPU", "NIC", "leaf", "spine"])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_ylim(-0.8, 4.6)
    last = G.graph.get("last_node_gpus", 0)
    title = (f"{G.graph['hardware']}: {G.graph['nodes']} nodes x {gpn} GPUs"
             f"{f' (the last {last})' if last else ''}, "
             f"{G.graph['leaves']} leaf / {G.graph['spines']} spine, "
             f"oversubscription {G.graph['oversubscription']:g}:1")  # fmt: skip
    if subset:
        title += _mark_left_out(ax, servers, gpn, G.graph["nodes"])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(path_png)
    for text in fig.findobj(Text):  # a profile's name is never mathtext (as report.mpl's
        text.set_parse_math(False)  # plain_text; this figure has no formatter that writes it)
    fig.savefig(out, dpi=110)
    return out


def _mark_left_out(ax: Any, servers: list[int], gpn: int, nodes: int) -> str:
    """Put "..." in the gaps where servers were left out; return the title's extra line."""
    for k, (a, b) in enumerate(zip(servers, servers[1:], strict=False)):
        if b > a + 1:
            x = (k + 1) * (gpn + 1.0) - 1.0  # the blank slot after the k-th drawn server
            ax.text(x, 1.5, "...", ha="center", va="center", fontsize=12, zorder=4)
    drawn = ", ".join(str(n) for n in servers)
    return f"\ndrawn: {len(servers)} of {nodes} nodes ({drawn}); every node is alike"


# ---------------------------------------------------------------------------- summary

_LINK_NAMES = {
    "nvlink": "GPU-NVSwitch/NVLink",
    "xgmi": "GPU-GPU xGMI",
    "pcie": "PCIe (GPU-NIC, GPU-host switch)",
    "nic": "NIC-leaf",
    "uplink": "leaf-spine",
}


def topology_summary(hw: HardwareProfile, nodes: int, gpus_per_node: int,
                     G: nx.Graph | None = None, last_node_gpus: int = 0) -> str:  # fmt: skip
    """Text for ``simtrain topology``: sizes, per-GPU injection and bisection bandwidth (GB/s),
    switch and link counts, and two example paths; ``G``: the graph already built (else
    :func:`build_topology`'s)."""
    if G is None:
        G = build_topology(hw, nodes, gpus_per_node, last_node_gpus=last_node_gpus)
    n = (nodes - 1) * gpus_per_node + last_node_gpus if last_node_gpus else nodes * gpus_per_node
    bis = bisection_bandwidth_bytes_per_s(G)
    inj = injection_bandwidth_bytes_per_s(G, 0)
    kinds = Counter(d["kind"] for _, d in G.nodes(data=True))
    links = Counter(d["kind"] for _, _, d in G.edges(data=True))
    lines = [
        f"{hw.display_name}: {nodes} node(s) x {gpus_per_node} GPUs"
        + (f", the last with {last_node_gpus}" if last_node_gpus else "")
        + f" = {n} GPUs",
        f"  intra-node: {hw.intra_node_kind}, {hw.intra_node_bandwidth_bytes_per_s / GB:g} GB/s "
        f"per GPU per direction"
        + (
            f" ({hw.intra_node_pair_bandwidth_bytes_per_s / GB:g} GB/s between two GPUs: no switch)"
            if hw.intra_node_pair_bandwidth_bytes_per_s
            else ""
        )
        + f", {hw.intra_node_latency_s * 1e6:g} us",
        f"  network: {G.graph['leaves']} leaf + {G.graph['spines']} spine switch(es), "
        f"{G.graph['nodes_per_leaf']} node(s) per leaf, oversubscription "
        f"{hw.oversubscription:g}:1, {hw.inter_node_latency_s * 1e6:g} us",
        f"  injection bandwidth per GPU: {inj / GB:.1f} GB/s "
        f"(NIC {hw.nic_bandwidth_bytes_per_s * 8 / 1e9:g} Gbit/s, PCIe "
        f"{hw.pcie_bandwidth_bytes_per_s / GB:g} GB/s)",
        f"  bisection bandwidth: {bis / GB:.1f} GB/s per direction "
        f"({bis / GB / max(1, n // 2):.1f} GB/s per GPU of a half)",
        "  switches: "
        + ", ".join(
            f"{kinds[k]} {k}" for k in ("nvswitch", "pcie_switch", "leaf", "spine") if kinds[k]
        ),
        "  links: " + ", ".join(f"{c} {_LINK_NAMES.get(k, k)}" for k, c in sorted(links.items())),
    ]
    examples = []
    if gpus_per_node > 1:
        examples.append((0, 1))
    if nodes > 1:
        examples.append((0, n - 1))
    for a, b in examples:
        edges = path(G, a, b)
        hops = " -> ".join(f"{e.v[0]} {e.v[1]}" for e in edges)
        lines.append(
            f"  path gpu {a} -> {hops}: bottleneck "
            f"{min(e.bandwidth_bytes_per_s for e in edges) / GB:.1f} GB/s, "
            f"latency {sum(e.latency_s for e in edges) * 1e6:.1f} us"
        )
    return "\n".join(lines)
