"""Cluster graph: structure per intra-node kind, paths, injection and bisection bandwidth,
monotone path times, drawing and the text summary."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.layout.topology import (
    MAX_DRAWN_SERVERS,
    _drawn_subgraph,
    bisection_bandwidth_bytes_per_s,
    bottleneck_bandwidth,
    build_topology,
    draw_topology,
    drawn_servers,
    gpu_count,
    injection_bandwidth_bytes_per_s,
    path,
    path_latency_s,
    path_time_s,
    topology_summary,
)
from simtrain.spec.hardware import available_profiles, load_hardware

GB = 1e9
A100 = load_hardware("a100_sxm4_80gb")


def kinds(G: nx.Graph, edges: list) -> list[str]:
    return [G.nodes[edges[0].u]["kind"]] + [G.nodes[e.v]["kind"] for e in edges]


def test_dgx_a100_two_nodes() -> None:
    G = build_topology(A100, 2, 8)
    assert gpu_count(G) == 16
    count = {k: sum(1 for _, d in G.nodes(data=True) if d["kind"] == k)
             for k in ("gpu", "nvswitch", "nic", "leaf", "spine")}  # fmt: skip
    assert count == {"gpu": 16, "nvswitch": 2, "nic": 16, "leaf": 1, "spine": 0}
    for _, _, d in G.edges(data=True):
        assert d["bandwidth_bytes_per_s"] > 0 and d["latency_s"] >= 0 and d["kind"]


def test_intra_node_path_goes_through_the_nvswitch() -> None:
    G = build_topology(A100, 2, 8)
    edges = path(G, 3, 6)
    assert [e.v for e in edges] == [("switch", 0), ("gpu", 6)]
    assert [e.kind for e in edges] == ["nvlink", "nvlink"]
    assert bottleneck_bandwidth(G, 3, 6) == 300 * GB
    assert path_latency_s(G, 3, 6) == pytest.approx(A100.intra_node_latency_s)
    assert path(G, 9, 15)[0].v == ("switch", 1)


def test_inter_node_path_same_leaf_and_across_the_spine() -> None:
    G = build_topology(A100, 2, 8)  # both nodes on one leaf
    assert kinds(G, path(G, 0, 9)) == ["gpu", "nic", "leaf", "nic", "gpu"]
    G = build_topology(A100, 2, 8, nodes_per_leaf=1)
    edges = path(G, 0, 9)
    assert kinds(G, edges) == ["gpu", "nic", "leaf", "spine", "leaf", "nic", "gpu"]
    assert edges[0].v == ("nic", 0) and edges[-1].u == ("nic", 9)
    assert [e.kind for e in edges] == ["pcie", "nic", "uplink", "uplink", "nic", "pcie"]
    assert bottleneck_bandwidth(G, 0, 9) == 25 * GB
    assert path_latency_s(G, 0, 9) == pytest.approx(A100.inter_node_latency_s)
    assert path(G, 0, 9) == path(build_topology(A100, 2, 8, nodes_per_leaf=1), 0, 9)


@pytest.mark.parametrize("name", available_profiles())
def test_injection_bandwidth_is_the_nic(name: str) -> None:
    hw = load_hardware(name)
    G = build_topology(hw, 4, hw.gpus_per_node)
    for gpu in range(0, 4 * hw.gpus_per_node, 3):
        assert injection_bandwidth_bytes_per_s(G, gpu) == hw.nic_bandwidth_bytes_per_s


@pytest.mark.parametrize("nodes,nodes_per_leaf", [(2, 4), (2, 1), (4, 1), (8, 2), (8, 4), (16, 4)])
def test_bisection_of_a_full_fat_tree(nodes: int, nodes_per_leaf: int) -> None:
    G = build_topology(A100, nodes, 8, nodes_per_leaf=nodes_per_leaf)
    expected = nodes * 8 / 2 * A100.nic_bandwidth_bytes_per_s
    assert bisection_bandwidth_bytes_per_s(G) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("nodes,nodes_per_leaf", [(2, 1), (8, 1), (8, 4), (16, 2)])
def test_oversubscription_two_halves_the_bisection(nodes: int, nodes_per_leaf: int) -> None:
    full = build_topology(A100, nodes, 8, nodes_per_leaf=nodes_per_leaf)
    half = build_topology(replace(A100, oversubscription=2.0), nodes, 8,
                          nodes_per_leaf=nodes_per_leaf)  # fmt: skip
    assert bisection_bandwidth_bytes_per_s(half) == pytest.approx(
        bisection_bandwidth_bytes_per_s(full) / 2, rel=1e-9
    )


def _bisection_full(G: nx.Graph) -> float:
    """The bisection's max flow on the whole graph, every edge an arc each way (the reference
    the switch-reduced flow of bisection_bandwidth_bytes_per_s is checked against)."""
    gpus = sorted(v for v, d in G.nodes(data=True) if d["kind"] == "gpu")
    half = len(gpus) // 2
    if half == 0:
        return 0.0
    D = nx.DiGraph()
    for u, v, d in G.edges(data=True):
        c = d["bandwidth_bytes_per_s"]
        D.add_edge(u, v, capacity=c)
        D.add_edge(v, u, capacity=c)
    src, dst = ("source", -1), ("sink", -1)
    for v in gpus[:half]:
        D.add_edge(src, v)  # no capacity attribute: unbounded
    for v in gpus[half:]:
        D.add_edge(v, dst)
    return float(nx.maximum_flow_value(D, src, dst, capacity="capacity"))


@given(
    hw=st.sampled_from(["a100_sxm4_80gb", "l4_24gb", "mi300x_192gb", "h100_sxm5_80gb_efa"]),
    nodes=st.integers(1, 13),
    gpn=st.integers(1, 8),
    per_leaf=st.integers(1, 5),
    spines=st.integers(1, 3),
    oversub=st.sampled_from([1.0, 1.5, 3.0]),
)
@settings(max_examples=60, deadline=None)
def test_reduced_bisection_equals_the_whole_graphs_flow(
    hw: str, nodes: int, gpn: int, per_leaf: int, spines: int, oversub: float
) -> None:
    """The flow on the graph reduced to its switches and split servers is the whole graph's
    max flow, on NVSwitch, PCIe and xGMI nodes, odd GPU counts (a server split by the halves),
    one or many leaves, any spines and oversubscription."""
    profile = replace(load_hardware(hw), oversubscription=oversub)
    G = build_topology(profile, nodes, gpn, nodes_per_leaf=per_leaf,
                       spines=spines if -(-nodes // per_leaf) > 1 else None)  # fmt: skip
    assert bisection_bandwidth_bytes_per_s(G) == pytest.approx(_bisection_full(G), rel=1e-9)


def test_one_node_bisection_counts_nvswitch_and_nics() -> None:
    G = build_topology(A100, 1, 8)
    assert bisection_bandwidth_bytes_per_s(G) == pytest.approx(4 * (300 + 25) * GB)


def test_megatron_3072_gpu_effective_bisection_fits_under_the_model() -> None:
    """Narayanan et al. 2021 §5.9 (published_runs.yaml megatron_sc21_s5_9_bisection_bw_1T_3072gpu):
    effective bisection 892 GB/s (PP p2p) and 12.9 TB/s (DP all-reduce) on 384 DGX A100 nodes
    with 8x 200 Gbit/s HDR each. A non-blocking fat tree offers (3072/2)·25 GB/s = 38.4 TB/s."""
    G = build_topology(A100, 384, 8)
    bis = bisection_bandwidth_bytes_per_s(G)
    assert bis == pytest.approx(38.4e12, rel=1e-9)
    assert 12.9e12 <= bis and 892e9 <= bis


def test_full_mesh_without_a_switch() -> None:
    hw = load_hardware("mi300x_192gb")
    G = build_topology(hw, 1, 8)
    mesh = [d for _, _, d in G.edges(data=True) if d["kind"] == "xgmi"]
    assert len(mesh) == 8 * 7 // 2
    assert all(d["bandwidth_bytes_per_s"] == 64 * GB for d in mesh)  # 448 GB/s over 7 links
    assert [e.v for e in path(G, 2, 5)] == [("gpu", 5)]
    v100 = build_topology(load_hardware("v100_sxm2_32gb"), 1, 8)
    assert {d["kind"] for _, _, d in v100.edges(data=True)} == {"nvlink", "pcie", "nic"}


def test_pcie_gpus_hang_off_a_host_switch() -> None:
    hw = load_hardware("rtx4090_24gb")
    G = build_topology(hw, 2, 8)
    assert [e.v for e in path(G, 0, 1)] == [("pcie", 0), ("gpu", 1)]
    assert bottleneck_bandwidth(G, 0, 1) == hw.intra_node_bandwidth_bytes_per_s


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError):
        build_topology(A100, 0, 8)
    with pytest.raises(ValueError):
        build_topology(A100, 2, 8, nodes_per_leaf=1, spines=0)
    with pytest.raises(ValueError):
        path(build_topology(A100, 1, 8), 0, 99)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["a100_sxm4_80gb", "mi300x_192gb", "rtx4090_24gb"]),
    nodes=st.integers(1, 4),
    nodes_per_leaf=st.integers(1, 2),
    edge_pick=st.integers(0, 10_000),
    factor=st.floats(0.01, 1.0),
    size=st.floats(1.0, 1e10),
)
def test_slower_link_never_shortens_a_path(name: str, nodes: int, nodes_per_leaf: int,
                                           edge_pick: int, factor: float,
                                           size: float) -> None:  # fmt: skip
    hw = load_hardware(name)
    G = build_topology(hw, nodes, 4, nodes_per_leaf=nodes_per_leaf)
    n = gpu_count(G)
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    before = {p: path_time_s(G, *p, size) for p in pairs}
    u, v = sorted(G.edges())[edge_pick % G.number_of_edges()]
    G.edges[u, v]["bandwidth_bytes_per_s"] *= factor
    for p in pairs:
        assert path_time_s(G, *p, size) >= before[p] * (1 - 1e-12)
    assert bisection_bandwidth_bytes_per_s(G) >= 0


def test_draw_topology_writes_a_png(tmp_path: Path) -> None:
    for hw, nodes, npl in ((A100, 8, 4), (load_hardware("mi300x_192gb"), 2, 1)):
        out = draw_topology(build_topology(hw, nodes, 8, nodes_per_leaf=npl), tmp_path / "t.png")
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_large_cluster_draws_a_bounded_representative_subset(tmp_path: Path) -> None:
    """A 4,032-GPU cluster (504 DGX H100s, 126 leaves, 8 spines) took ~25 s to draw in full;
    above MAX_DRAWN_SERVERS servers the drawing shows leaf 0's first servers, the first of
    leaf 1 and the last one (a path over the spines), whatever the cluster's size, and says so.
    Up to the limit every server is drawn."""
    hw = load_hardware("h100_sxm5_80gb")
    G = build_topology(hw, 504, 8)
    servers = drawn_servers(G)
    assert servers == [0, 1, 2, 3, 4, 503] and len(servers) <= MAX_DRAWN_SERVERS
    assert drawn_servers(build_topology(hw, 8, 8)) == list(range(8))
    assert drawn_servers(build_topology(hw, 9, 8)) == [0, 1, 2, 3, 4, 8]
    assert drawn_servers(build_topology(hw, 100, 1)) == [0, 1, 2, 3, 4, 5, 32, 99]
    out = draw_topology(G, tmp_path / "big.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The subgraph drawn: those servers' GPUs, NICs and switches, their leaves, every spine.
    sub = _drawn_subgraph(G, servers)
    assert gpu_count(sub) == 6 * 8
    assert sorted(v for v in sub if v[0] == "leaf") == [("leaf", 0), ("leaf", 1), ("leaf", 125)]
    assert sum(1 for v in sub if v[0] == "spine") == 8


def test_topology_summary_text() -> None:
    text = topology_summary(A100, 2, 8)
    assert "16 GPUs" in text
    assert "injection bandwidth per GPU: 25.0 GB/s" in text
    assert "bisection bandwidth: 200.0 GB/s" in text
    assert "16 NIC-leaf" in text and "2 nvswitch" in text
    assert "gpu 0 -> switch 0 -> gpu 1" in text
    assert "gpu 0 -> nic 0 -> leaf 0 -> nic 15 -> gpu 15" in text
    one = topology_summary(A100, 1, 8)
    assert "nic 15" not in one and "8 GPUs" in one
