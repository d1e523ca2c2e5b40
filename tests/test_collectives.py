"""Collective cost model: exact closed forms on a uniform ring, algorithm relations, monotonicity,
and calibration against published nccl-tests / Ultra-Scale Playbook bus bandwidths."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.costs import collectives as c
from simtrain.costs.collectives import ALGORITHMS, OPS, GroupLink, collective_time_s
from simtrain.costs.link_fit import list_collective_copy_s
from simtrain.spec.hardware import load_hardware

GB = 1e9
MIB = 2**20
GIB = 2**30
B = 100e9  # bytes/s
A = 2e-6  # s


def link(bw: float = B, lat: float = A, crosses: bool = False) -> GroupLink:
    return GroupLink(bw, lat, crosses)


def one_node(op: str, size: float, n: int, algorithm: str = "ring") -> float:
    return collective_time_s(op, size, n, algorithm=algorithm, intra=link(), gpus_per_node=n)


# ----------------------------------------------------------------- closed forms on one ring


@pytest.mark.parametrize("n", [2, 3, 4, 7, 8, 16, 64])
@pytest.mark.parametrize("size", [1.0, 1e6, 3.3e9])
def test_ring_all_reduce_exact(n: int, size: float) -> None:
    expected = 2 * (n - 1) * size / (n * B) + 2 * (n - 1) * A
    assert one_node("all_reduce", size, n) == pytest.approx(expected, rel=1e-12)
    assert c.ring_time_s("all_reduce", size, n, B, A) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
@pytest.mark.parametrize("n", [2, 5, 8, 32])
def test_reduce_scatter_all_gather_exact(op: str, n: int) -> None:
    size = 1.5e9
    expected = (n - 1) / n * size / B + (n - 1) * A
    assert one_node(op, size, n) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("op", ["broadcast", "reduce"])
def test_broadcast_reduce_ring_exact(op: str) -> None:
    n, size = 8, 1e9
    assert one_node(op, size, n) == pytest.approx(size / B + (n - 1) * A, rel=1e-12)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_trivial_groups_cost_nothing(op: str, algorithm: str) -> None:
    assert collective_time_s(op, 1e9, 1, algorithm=algorithm, intra=link(), gpus_per_node=8) == 0
    assert collective_time_s(op, 0, 8, algorithm=algorithm, intra=link(), gpus_per_node=8) == 0


@given(
    op=st.sampled_from(OPS),
    n=st.integers(2, 64),
    size=st.floats(1.0, 1e11),
    bw=st.floats(1e8, 1e12),
    lat=st.floats(0.0, 1e-4),
)
def test_hierarchical_on_one_node_is_the_ring(op: str, n: int, size: float, bw: float,
                                              lat: float) -> None:  # fmt: skip
    intra = link(bw, lat)
    ring = collective_time_s(op, size, n, algorithm="ring", intra=intra, gpus_per_node=n)
    hier = collective_time_s(op, size, n, algorithm="hierarchical", intra=intra,
                             inter=link(1e9, 1e-5, True), gpus_per_node=n)  # fmt: skip
    assert hier == pytest.approx(ring, rel=1e-12)
    assert ring == pytest.approx(c.ring_time_s(op, size, n, bw, lat), rel=1e-12)


def test_hierarchical_all_reduce_is_rs_plus_inter_ar_plus_ag() -> None:
    intra, inter = link(300e9, 3e-6), link(25e9, 5e-6, True)
    size, g, nodes = 1e9, 8, 4
    t = collective_time_s("all_reduce", size, g * nodes, algorithm="hierarchical", intra=intra,
                          inter=inter, gpus_per_node=g)  # fmt: skip
    expected = (
        c.ring_time_s("reduce_scatter", size, g, 300e9, 3e-6)
        + c.ring_time_s("all_reduce", size / g, nodes, 25e9, 5e-6)
        + c.ring_time_s("all_gather", size, g, 300e9, 3e-6)
    )
    assert t == pytest.approx(expected, rel=1e-12)


def test_one_gpu_per_node_is_a_ring_over_the_nics() -> None:
    inter = link(25e9, 5e-6, True)
    for algorithm in ("ring", "hierarchical"):
        t = collective_time_s("all_reduce", 1e9, 16, algorithm=algorithm, intra=link(),
                              inter=inter, gpus_per_node=1)  # fmt: skip
        assert t == pytest.approx(c.ring_time_s("all_reduce", 1e9, 16, 25e9, 5e-6), rel=1e-12)


def test_multi_node_ring_uses_one_ring_per_nic() -> None:
    """Across nodes the ring's per-GPU bandwidth is min(B_intra, g·B_nic): large-message busbw
    of 2 DGX-like nodes with 8x 25 GB/s NICs is 200 GB/s, not 25 GB/s (nccl-tests #119, #175
    count the node's aggregate NIC bandwidth as the theoretical peak)."""
    intra, inter = link(300e9, 0.0), link(25e9, 0.0, True)
    t = collective_time_s("all_reduce", 8e9, 16, intra=intra, inter=inter, gpus_per_node=8)
    assert c.nccl_bus_bandwidth("all_reduce", 8e9, 16, t) == pytest.approx(200e9, rel=1e-12)
    # ...and the intra-node link caps it when the network is faster
    t = collective_time_s("all_reduce", 8e9, 16, intra=link(150e9, 0.0),
                          inter=link(50e9, 0.0, True), gpus_per_node=8)  # fmt: skip
    assert c.nccl_bus_bandwidth("all_reduce", 8e9, 16, t) == pytest.approx(150e9, rel=1e-12)


# ----------------------------------------------------------------- tree


@pytest.mark.parametrize("n", [2, 3, 8, 9, 64, 1000])
def test_tree_all_reduce_formula(n: int) -> None:
    size = 4e8
    expected = 2 * size / B + 2 * math.ceil(math.log2(n)) * A
    assert one_node("all_reduce", size, n, "tree") == pytest.approx(expected, rel=1e-12)


@given(n=st.integers(4, 4096), size=st.floats(1.0, 4096.0))
def test_tree_beats_ring_for_small_messages(n: int, size: float) -> None:
    """Latency dominates small messages: 2·⌈log2 n⌉·α < 2(n−1)·α for n >= 4."""
    assert one_node("all_reduce", size, n, "tree") < one_node("all_reduce", size, n, "ring")


@given(n=st.integers(2, 64))
def test_ring_beats_tree_for_large_messages_on_one_node(n: int) -> None:
    """Bandwidth dominates large messages: 2(n−1)/n·S/B < 2·S/B."""
    size = 1e11
    assert one_node("all_reduce", size, n, "ring") < one_node("all_reduce", size, n, "tree")


def test_tree_falls_back_to_ring_where_nccl_has_no_tree() -> None:
    for op in ("reduce_scatter", "all_gather", "gather", "all_to_all"):
        assert one_node(op, 1e8, 8, "tree") == one_node(op, 1e8, 8, "ring")


# ----------------------------------------------------------------- monotonicity


@settings(max_examples=300)
@given(
    op=st.sampled_from(OPS),
    algorithm=st.sampled_from(ALGORITHMS),
    g=st.sampled_from([1, 2, 4, 8]),
    nodes=st.integers(1, 64),
    size=st.floats(1.0, 1e11),
    intra_bw=st.floats(1e9, 1e12),
    inter_bw=st.floats(1e8, 1e11),
    intra_lat=st.floats(0.0, 1e-4),
    inter_lat=st.floats(0.0, 1e-4),
    which=st.sampled_from(["intra_bw", "inter_bw", "intra_lat", "inter_lat"]),
    factor=st.floats(0.01, 1.0),
)
def test_slower_links_never_shorten_a_collective(op: str, algorithm: str, g: int, nodes: int,
                                                 size: float, intra_bw: float, inter_bw: float,
                                                 intra_lat: float, inter_lat: float, which: str,
                                                 factor: float) -> None:  # fmt: skip
    n = g * nodes
    base = {"intra_bw": intra_bw, "inter_bw": inter_bw, "intra_lat": intra_lat,
            "inter_lat": inter_lat}  # fmt: skip
    worse = dict(base)
    if which.endswith("_bw"):
        worse[which] *= factor  # lower bandwidth
    else:
        worse[which] = worse[which] / factor + 1e-9  # higher latency

    def t(p: dict[str, float]) -> float:
        return collective_time_s(op, size, n, algorithm=algorithm,
                                 intra=link(p["intra_bw"], p["intra_lat"]),
                                 inter=link(p["inter_bw"], p["inter_lat"], True),
                                 gpus_per_node=g)  # fmt: skip

    assert t(worse) >= t(base) * (1 - 1e-12)


# ----------------------------------------------------------------- busbw and API guards


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("n", [2, 8, 100])
def test_bus_bandwidth_inverts_the_ring_model(op: str, n: int) -> None:
    t = c.ring_time_s(op, 1e9, n, B, 0.0)
    assert c.nccl_bus_bandwidth(op, 1e9, n, t) == pytest.approx(B, rel=1e-12)
    assert c.nccl_algorithm_bandwidth(1e9, t) == pytest.approx(1e9 / t, rel=1e-12)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown collective"):
        one_node("allreduce", 1e6, 8)
    with pytest.raises(ValueError, match="unknown algorithm"):
        one_node("all_reduce", 1e6, 8, "butterfly")
    with pytest.raises(ValueError, match="inter-node link"):
        collective_time_s("all_reduce", 1e6, 16, intra=link(), gpus_per_node=8)
    with pytest.raises(ValueError, match="whole nodes"):
        collective_time_s("all_reduce", 1e6, 12, algorithm="hierarchical", intra=link(),
                          inter=link(), gpus_per_node=8)  # fmt: skip


def test_group_link_keeps_its_semantics() -> None:
    hw = load_hardware("a100_sxm4_80gb")
    eff = hw.efficiency.collective
    inside = c.group_link(hw, 8, 8)
    assert inside == GroupLink(300e9 * eff, hw.intra_node_latency_s, False)
    across = c.group_link(hw, 8, 9)
    assert across == GroupLink(25e9 * eff / hw.oversubscription, hw.inter_node_latency_s, True)
    assert c.node_links(hw) == (inside, across)


# ----------------------------------------------------------------- calibration


def sim_busbw(hw_name: str, op: str, size: float, nodes: int, algorithm: str = "ring",
              copy: bool = False) -> float:  # fmt: skip
    """Simulated nccl-tests busbw (bytes/s) of ``op`` on ``nodes`` full nodes of a profile;
    ``copy``: the test timed torch's list-form call (an S-byte device copy added)."""
    hw = load_hardware(hw_name)
    intra, inter = c.node_links(hw)
    n = nodes * hw.gpus_per_node
    t = collective_time_s(op, size, n, algorithm=algorithm, intra=intra, inter=inter,
                          gpus_per_node=hw.gpus_per_node)  # fmt: skip
    if copy:
        t += list_collective_copy_s(hw, size)
    return c.nccl_bus_bandwidth(op, size, n, t)


# (profile, message bytes, published all_reduce busbw GB/s, source) -- 8 GPUs in one node
PUBLISHED_ONE_NODE = [
    ("a100_sxm4_80gb", 8 * GIB, 230.0,
     "NVIDIA/nccl-tests issue #149, S. Jeaugey: 8x A100 all_reduce 'should reach 230 GB/s' at 8G"),
    ("a100_sxm4_80gb", 4 * GIB, 232.54,
     "NVIDIA/nccl-tests issue #175: single node 8x A100 all_reduce_perf -e 4G, 232.54 GB/s"),
    ("h100_sxm5_80gb", 8 * GIB, 480.0,
     "NVIDIA/nccl-tests issue #212, S. Jeaugey: 8 GPUs with NVLink SHARP, peak busBw ~480 GB/s"),
    ("h100_sxm5_80gb", 4 * GIB, 370.0,
     "NVIDIA/nccl-tests #212 and NVIDIA/nccl #1455: NCCL_ALGO=RING busbw 365-370 GB/s on 8x H100"),
    ("h100_sxm5_80gb", GIB, 435.97,
     "Ultra-Scale Playbook pp_comm_bandwidth figure: AllReduce 1 node (8x H100), '256MB' = 256 Mi "
     "fp32 elements, 1 GiB (nanotron measure_bandwidth)"),
]  # fmt: skip


@pytest.mark.parametrize("hw_name,size,published_gbps,source", PUBLISHED_ONE_NODE)
def test_one_node_all_reduce_bus_bandwidth_matches_published(hw_name: str, size: float,
                                                             published_gbps: float,
                                                             source: str) -> None:  # fmt: skip
    sim = sim_busbw(hw_name, "all_reduce", size, 1) / GB
    err = sim / published_gbps - 1
    print(f"{hw_name} {size / MIB:.0f} MiB: simulated {sim:.1f} GB/s vs {published_gbps} "
          f"({err:+.1%}) [{source}]")  # fmt: skip
    assert abs(err) <= 0.15, source


# Ultra-Scale Playbook, figure "Communication Bandwidth by Number of Nodes (size=256MB)"
# (assets/data/benchmarks/pp_comm_bandwidth.html, mean line; H100 nodes of 8 GPUs on AWS EFA);
# formulas.md §5.6; the 64-node point is published_runs.yaml usp_collective_AllReduce_64nodes_256MB.
# The figure is the mean of the sweep's jobs' own test, nanotron measure_bandwidth (67c5ebb6
# trainer.py l.1074-1223): 256 Mi fp32 elements, S = 1 GiB; all-gather and reduce-scatter through
# torch's list-form calls, with a 1 GiB device copy in each timing (link_fit.list_collective_copy_s).
USP_ALL_REDUCE = {1: 435.97, 2: 361.75, 4: 160.14, 8: 99.56, 16: 84.74, 32: 64.93, 64: 32.94}
USP_ALL_GATHER = {1: 249.85, 2: 184.61, 4: 118.97, 8: 69.00, 16: 54.97, 32: 27.97, 64: 11.04}
USP_REDUCE_SCATTER = {1: 249.73, 2: 181.55, 4: 115.76, 8: 68.55, 16: 54.52, 32: 27.94, 64: 11.07}


def test_ultrascale_playbook_all_reduce_by_node_count(capsys: pytest.CaptureFixture[str]) -> None:
    """Reports simulated vs measured busbw for 1-64 nodes (h100_sxm5_80gb profile, 1 GiB).

    What the model defends:
    * 1 node: within 15% (the calibration target; ring == hierarchical on one node).
    * 2 nodes: within 15% for the ring: the 8 NICs of a node (8x 400 Gbit/s; AWS p5 has the same
      3200 Gbit/s per node over EFA) bound it, as in the model.
    * 4-64 nodes: OUTSIDE. Measured busbw falls 4.9x from 4 to 64 nodes; the alpha-beta ring
      with 5 us per step falls 1.8x (the shape is right: latency 2(n−1)·α grows with n) but stays
      2.2-6.0x above the measurement (1 GiB) at every size: the EFA fabric (SRD over a multi-tier
      Ethernet fabric, per-step latency well above InfiniBand's) and NCCL's algorithm switches
      are not in the model. Only what an upper-bound model guarantees is asserted: never below
      the measurement, and busbw non-increasing with the node count.
    * The playbook's cluster has its own profile, h100_sxm5_80gb_efa, fitted to these figures
      (test_efa_profile_* below); this test keeps the InfiniBand profile's behaviour.
    * all-gather (reported, not asserted): +66% already on one node (the test's 1 GiB copy, not
      modelled here, is part of it: test_efa_profile_bus_bandwidth_vs_the_playbook). efficiency.collective is set
      by the all-reduce, which NCCL runs with NVLink SHARP on H100; all-gather is ring-only
      (~370 GB/s peak per nccl-tests #212), and the playbook's 1 GiB all-gather reaches 250.
    """
    size = GIB
    rows, ring = [], {}
    for nodes, measured in USP_ALL_REDUCE.items():
        sims = {a: sim_busbw("h100_sxm5_80gb", "all_reduce", size, nodes, a) / GB
                for a in ALGORITHMS}  # fmt: skip
        ring[nodes] = sims["ring"]
        rows.append(f"{nodes:>3} nodes  measured {measured:6.1f}  " + "  ".join(
            f"{a} {v:6.1f} ({v / measured - 1:+6.0%})" for a, v in sims.items()))  # fmt: skip
    for nodes, measured in USP_ALL_GATHER.items():
        v = sim_busbw("h100_sxm5_80gb", "all_gather", size, nodes) / GB
        rows.append(f"{nodes:>3} nodes  all_gather measured {measured:6.1f}  ring {v:6.1f} "
                    f"({v / measured - 1:+6.0%})")  # fmt: skip
    with capsys.disabled():
        print("\nall_reduce busbw GB/s, 1 GiB, h100_sxm5_80gb vs Ultra-Scale Playbook:")
        print("\n".join(rows))
    for nodes in (1, 2):
        assert abs(ring[nodes] / USP_ALL_REDUCE[nodes] - 1) <= 0.15, nodes
    one = sim_busbw("h100_sxm5_80gb", "all_reduce", size, 1, "hierarchical") / GB
    assert abs(one / USP_ALL_REDUCE[1] - 1) <= 0.15
    counts = sorted(USP_ALL_REDUCE)
    for a, b in zip(counts, counts[1:], strict=False):
        assert ring[b] <= ring[a]
    for nodes in counts[1:]:
        assert ring[nodes] >= 0.85 * USP_ALL_REDUCE[nodes], nodes  # upper-bound model


def test_playbook_64_node_figure_matches_the_shared_record() -> None:
    """The hard-coded 64-node value is the one in ../shared/measured/published_runs.yaml (whose
    message_bytes, read from the figure's "size=256MB", is 256 Mi fp32 elements: 1 GiB, as
    measured/published_runs.yaml says since 2026-12-05)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "measured" / "published_runs.yaml"
    if not path.is_file():
        pytest.skip("shared/measured/published_runs.yaml not present")
    text = path.read_text()
    start = text.index("- id: usp_collective_AllReduce_64nodes_256MB")
    block = text[start : text.index("\n- id:", start + 1)]
    assert "message_bytes: 268435456" in block
    assert f"bandwidth_GBps: {USP_ALL_REDUCE[64]}" in block


def test_calibration_lives_in_the_profiles() -> None:
    """Only efficiency.collective was tuned; the link line rates are the datasheet ones."""
    a100, h100 = load_hardware("a100_sxm4_80gb"), load_hardware("h100_sxm5_80gb")
    assert a100.intra_node_bandwidth_bytes_per_s == 300e9
    assert h100.intra_node_bandwidth_bytes_per_s == 450e9
    # a profile with the old default would miss the A100 target by more than 4%
    old = replace(a100, efficiency=replace(a100.efficiency, collective=0.8))
    intra = c.group_link(old, 8, 8)
    t = collective_time_s("all_reduce", 8 * GIB, 8, intra=intra, gpus_per_node=8)
    assert c.nccl_bus_bandwidth("all_reduce", 8 * GIB, 8, t) / GB > 230 * 1.04


# ----------------------------------------------------------------- the playbook's EFA cluster

EFA = "h100_sxm5_80gb_efa"
USP_SIZE = GIB  # 256 Mi fp32 elements (nanotron measure_bandwidth)
USP_MULTI_NODE = (2, 4, 8, 16, 32, 64)


def _ring_fit(points: list[tuple[int, float]], copy_s: float) -> tuple[float, float]:
    """(B_ring bytes/s, alpha s): least squares of the relative residual measured/model − 1 for
    the multi-node ring's busbw with the test's copy time c, 1/(1/B_ring + n·α/S + c·n/((n−1)·S)),
    over (GPUs n, busbw bytes/s) points. y·(x0 + n·x1/S) − (1 − y·c·n/((n−1)·S)) is linear in
    (x0, x1) = (1/B_ring, α): normal equations, closed form."""
    rows = [(y, y * n / USP_SIZE, 1 - y * copy_s * n / ((n - 1) * USP_SIZE)) for n, y in points]
    a11 = sum(u * u for u, _, _ in rows)
    a12 = sum(u * v for u, v, _ in rows)
    a22 = sum(v * v for _, v, _ in rows)
    b1 = sum(u * b for u, _, b in rows)
    b2 = sum(v * b for _, v, b in rows)
    det = a11 * a22 - a12 * a12
    x0, x1 = (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
    return 1 / x0, x1


def test_efa_profile_is_the_least_squares_fit_of_the_playbook_ring_collectives() -> None:
    """The EFA profile's NIC rate and latency are the closed-form fit (hardware comment [fit])
    over the 12 multi-node all-gather and reduce-scatter points, rounded as written."""
    pts = [(8 * k, table[k] * GB) for table in (USP_ALL_GATHER, USP_REDUCE_SCATTER)
           for k in USP_MULTI_NODE]  # fmt: skip
    hw = load_hardware(EFA)
    copy_s = list_collective_copy_s(hw, USP_SIZE)
    b_ring, alpha = _ring_fit(pts, copy_s)
    assert b_ring / GB == pytest.approx(368.05, abs=0.01)
    assert alpha * 1e6 == pytest.approx(148.95, abs=0.01)
    # without the copy the rate is the old fit's (284.96 GB/s; it also read S as 256 MiB,
    # whence its 37.17 us, a quarter of the 148.68 us the same fit gives at 1 GiB)
    b0, a0 = _ring_fit(pts, 0.0)
    assert b0 / GB == pytest.approx(284.96, abs=0.01) and a0 * 1e6 == pytest.approx(
        148.68, abs=0.01
    )
    assert hw.gpus_per_node == 8
    intra, inter = c.node_links(hw)
    profile_ring = min(intra.bandwidth_bytes_per_s, 8 * inter.bandwidth_bytes_per_s)
    assert profile_ring == pytest.approx(b_ring, rel=2e-4)  # 395.75 Gbit/s
    assert hw.inter_node_latency_s == pytest.approx(alpha, abs=0.005e-6)  # 148.95 us


def test_efa_profile_bus_bandwidth_vs_the_playbook(capsys: pytest.CaptureFixture[str]) -> None:
    """Simulated busbw (ring, 1 GiB, h100_sxm5_80gb_efa; all-gather and reduce-scatter with the
    test's 1 GiB copy) vs the Ultra-Scale Playbook's own measurements on that EFA cluster, per
    node count. Reached (simulated/measured − 1): all-gather −14..+22 %, reduce-scatter
    −14..+21 % (the fitted points), all-reduce (simtrain's plain ring) −13..−60 %.

    * all-gather / reduce-scatter, 2-64 nodes: within 25 % (the fit; NCCL runs them as rings).
    * all-reduce, 2-64 nodes: at or below the measurement. NCCL's multi-node all-reduce uses
      tree / NVLS-tree algorithms when they beat the ring; simtrain's ring is a lower bound.
    * 1 node: the NVSwitch node of h100_sxm5_80gb, unchanged (all-reduce within 15 %)."""
    rows, errs = [], {}
    for nodes in sorted(USP_ALL_REDUCE):
        line = f"{nodes:>3} nodes"
        for op, table in (("all_gather", USP_ALL_GATHER), ("reduce_scatter", USP_REDUCE_SCATTER),
                          ("all_reduce", USP_ALL_REDUCE)):  # fmt: skip
            sim = sim_busbw(EFA, op, USP_SIZE, nodes, copy=op != "all_reduce") / GB
            errs[op, nodes] = sim / table[nodes] - 1
            line += f"  {op} {sim:6.1f} vs {table[nodes]:6.1f} ({errs[op, nodes]:+5.0%})"
        rows.append(line)
    with capsys.disabled():
        print(f"\nbusbw GB/s, 1 GiB, {EFA} (simulated vs measured, Ultra-Scale Playbook):")
        print("\n".join(rows))
    for nodes in USP_MULTI_NODE:
        assert abs(errs["all_gather", nodes]) <= 0.25, nodes
        assert abs(errs["reduce_scatter", nodes]) <= 0.25, nodes
        assert -0.75 <= errs["all_reduce", nodes] <= 0.0, nodes
    assert abs(errs["all_reduce", 1]) <= 0.15
    assert max(abs(errs[op, k]) for op in ("all_gather", "reduce_scatter")
               for k in USP_MULTI_NODE) == pytest.approx(0.216, abs=0.005)  # fmt: skip


def test_efa_profile_keeps_the_node_and_slows_only_the_network() -> None:
    """One node is byte-identical to h100_sxm5_80gb; across nodes the EFA ring is slower."""
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        assert sim_busbw(EFA, op, USP_SIZE, 1) == sim_busbw("h100_sxm5_80gb", op, USP_SIZE, 1)
        for nodes in USP_MULTI_NODE:
            efa = sim_busbw(EFA, op, USP_SIZE, nodes)
            assert efa < sim_busbw("h100_sxm5_80gb", op, USP_SIZE, nodes), (op, nodes)
