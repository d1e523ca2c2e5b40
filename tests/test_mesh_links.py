"""Intra-node links without a switch: a group of GPUs reaches its own members only.

On a full mesh (an HGX 4-GPU board's NVLink, MI300X's xGMI) each pair of GPUs has its own
links (``intra_node.pair_bandwidth_gb_per_s``): two GPUs talk over one pair's, a group of g
over its g − 1 peers' (:meth:`HardwareProfile.intra_group_bandwidth`). Through an NVSwitch any
group gets the GPU's whole NVLink bandwidth. The expected values are the closed forms of
nccl-tests' ring (``doc/PERFORMANCE.md``: (n − 1)/n · S / B + (n − 1) · α for an all-gather),
computed here, not by the module under test.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simtrain.costs import collectives as coll
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.errors import ConfigError
from simtrain.layout.topology import build_topology
from simtrain.spec.hardware import load_hardware, parse_hardware
from simtrain.spec.yamlfile import load_yaml

GB = 1e9
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "by_members"), [
    # [rocm]: 7 xGMI links a GPU, one to each of 7 peers, 64 GB/s each: 1, 3, 7 links
    ("mi300x_192gb", {2: 64, 4: 192, 8: 448}),
    ("mi325x_256gb", {2: 64, 4: 192, 8: 448}),
    ("mi355x_288gb", {2: 76.8, 4: 230.4, 8: 537.6}),  # [cdna4]: 7 links of 76.8 GB/s
    ("h200_141gb_hgx4", {2: 150, 3: 300, 4: 450}),  # 18 NVLink4 links, 6 (150 GB/s) a peer
])  # fmt: skip
def test_a_group_reaches_its_own_members_only(name: str, by_members: dict[int, float]) -> None:
    """GB/s per GPU per direction for a group of g GPUs of one node: the links to its g − 1
    other members, written out from the profiles' sources."""
    hw = load_hardware(name)
    for members, gb_per_s in by_members.items():
        assert hw.intra_group_bandwidth(members) == pytest.approx(gb_per_s * GB)


def test_a_profile_without_pair_links_serves_every_group_at_the_whole_bandwidth() -> None:
    """The NVSwitch nodes, and the DGX-1's V100 hybrid cube-mesh, which is no full mesh (4 of
    7 peers linked, some pairs by two links): left at the whole rate, as before."""
    for name in ("h200_141gb", "h100_sxm5_80gb", "a100_sxm4_80gb", "v100_sxm2_32gb"):
        hw = load_hardware(name)
        assert hw.intra_node_pair_bandwidth_bytes_per_s == 0
        assert {hw.intra_group_bandwidth(g) for g in (2, 4, 8)} == {
            hw.intra_node_bandwidth_bytes_per_s}  # fmt: skip


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_all_gather_on_the_mi300x_mesh(n: int) -> None:
    """A ring all-gather of 1 GiB over n GPUs of one MI300X platform: (n − 1)/n · S / B +
    (n − 1) · α with B = (n − 1) · 64 GB/s · efficiency.collective (0.80), α = 3 us."""
    hw = load_hardware("mi300x_192gb")
    size = 2**30
    bw = (n - 1) * 64 * GB * 0.80
    want = (n - 1) / n * size / bw + (n - 1) * 3e-6
    assert hardware_collective_s(hw, "ring", "all_gather", size, n, n) == pytest.approx(want)
    switch = replace(hw, intra_node_pair_bandwidth_bytes_per_s=0.0)  # as before: 448 GB/s
    t_switch = hardware_collective_s(switch, "ring", "all_gather", size, n, n)
    assert t_switch == pytest.approx((n - 1) / n * size / (448 * GB * 0.80) + (n - 1) * 3e-6)


def test_nccl_pick_and_point_to_point_use_the_pair_links() -> None:
    """NCCL's choice on the 4-GPU board: TP 2's all-gather about 3 x slower than TP 4's
    per byte on the wire (one pair's 150 GB/s against three pairs'), and a point-to-point
    transfer between two GPUs takes one pair link."""
    hw = load_hardware("h200_141gb_hgx4")
    size = 2**30
    t2 = hardware_collective_s(hw, "nccl", "all_gather", size, 2, 2)
    t4 = hardware_collective_s(hw, "nccl", "all_gather", size, 4, 4)
    per_byte_2, per_byte_4 = t2 / (size / 2), t4 / (size * 3 / 4)
    assert per_byte_2 > 2.9 * per_byte_4
    intra, _ = coll.node_links(hw, 2)
    assert intra.bandwidth_bytes_per_s == pytest.approx(150 * GB * hw.efficiency.collective)
    assert coll.node_links(hw)[0].bandwidth_bytes_per_s == pytest.approx(
        450 * GB * hw.efficiency.collective)  # fmt: skip


def test_tp2_on_the_mesh_is_slower_than_through_a_switch() -> None:
    """The same TP-2 step on the 4-GPU board and on the board with a switch of the same
    aggregate (pair 0): the mesh's step is longer."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.spec.scenario import load_scenario

    sets = ["model.preset=llama3-8b", "hardware=h200_141gb_hgx4", "cluster.gpus_per_node=4", "parallelism.dp=2",
            "parallelism.tp=2", "training.global_batch=8", "training.micro_batch=4"]  # fmt: skip
    sc = load_scenario(ROOT / "scenarios" / "ddp_8gpu.yaml", sets)
    switch_hw = replace(sc.hardware, intra_node_pair_bandwidth_bytes_per_s=0.0)

    def step_s(s: Any) -> float:
        return simulate_scenario(s, detail=False).metrics.step_time_s

    assert step_s(sc) > step_s(replace(sc, hardware=switch_hw))
    # data parallelism over all 4 GPUs (tp 1): every link of each GPU, as through a switch
    dp4 = load_scenario(ROOT / "scenarios" / "ddp_8gpu.yaml",
                        [*sets[:-3], "parallelism.dp=4", "training.global_batch=16",
                         "training.micro_batch=4"])  # fmt: skip
    assert step_s(dp4) == step_s(replace(dp4, hardware=switch_hw))


def test_topology_mesh_edges_carry_the_pair_bandwidth() -> None:
    """A mesh with more pair links than the whole's even split (4 GPUs, 300 GB/s a GPU, 150 a
    pair): each edge carries the pair's rate, not 300 / 3; a group is capped at the GPU's
    300 GB/s (3 pairs would carry 450)."""
    hw = parse_hardware(_profile(bandwidth_gb_per_s=300, pair_bandwidth_gb_per_s=150), "b.yaml")
    assert [hw.intra_group_bandwidth(g) / GB for g in (2, 3, 4)] == [150, 300, 300]
    g = build_topology(hw, 1, 4)
    mesh = [d for a, b, d in g.edges(data=True) if a[0] == b[0] == "gpu"]
    assert len(mesh) == 6  # K4
    assert {d["bandwidth_bytes_per_s"] for d in mesh} == {150 * GB}


def _profile(**intra: Any) -> dict[str, Any]:
    """The board's profile as the loader reads it (YAML 1.2 numbers: ``1.5e9`` a float),
    with ``intra`` changed in its intra_node section."""
    data = copy.deepcopy(load_yaml(ROOT / "hardware" / "h200_141gb_hgx4.yaml"))
    data["intra_node"].update(intra)
    return data


def test_the_board_profile_loads_as_written() -> None:
    assert parse_hardware(_profile(), "board.yaml").intra_node_pair_bandwidth_bytes_per_s == 150e9


@pytest.mark.parametrize(("change", "words"), [
    ({"kind": "nvswitch"}, ["intra_node.pair_bandwidth_gb_per_s", "intra_node.kind nvswitch"]),
    ({"kind": "pcie"}, ["intra_node.pair_bandwidth_gb_per_s", "nvlink, xgmi, infinity_fabric"]),
    ({"pair_bandwidth_gb_per_s": 451}, ["must be at most intra_node.bandwidth_gb_per_s = 450"]),
    ({"pair_bandwidth_gb_per_s": 0}, ["intra_node.pair_bandwidth_gb_per_s"]),
    ({"pair_bandwidth_gb_per_s": "fast"}, ["intra_node.pair_bandwidth_gb_per_s"]),
    # 3 peers x 100 GB/s cannot carry the GPU's 450: the whole node's group would not reach it
    ({"pair_bandwidth_gb_per_s": 100}, ["x (gpus_per_node - 1) = 300 must reach", "= 450"]),
])  # fmt: skip
def test_bad_pair_bandwidth_names_the_key(change: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hardware(_profile(**change), "board.yaml")
    assert str(err.value).startswith("board.yaml: ")
    for w in words:
        assert w in str(err.value)


def test_nvls_needs_an_nvswitch() -> None:
    data = _profile()
    data["collectives"]["nvls"] = True
    with pytest.raises(ConfigError, match=r"collectives\.nvls.*intra_node\.kind nvswitch"):
        parse_hardware(data, "board.yaml")


def test_point_to_point_and_ring_hops_take_one_pair() -> None:
    """A pipeline send inside the board (pp 2, tp 1): alpha + S / (150 GB/s x efficiency); a
    CP ring's hop on MI300X: one 64 GB/s link, PyTorch's K/V all-gather over the CP group of 4:
    3 x 64 = 192 GB/s; the lecture's naive DP over 4 MI300X GPUs: GPU 0 reads the other 3
    over their 3 links, (n - 1)(G + P) / 192 GB/s + 2(n - 1) alpha."""
    from simtrain.costs.comm import naive_dp_ns, p2p_send_ns
    from simtrain.costs.cp import ring_link
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(ROOT / "scenarios" / "gpipe_8gpu.yaml",
                       ["hardware=h200_141gb_hgx4", "cluster.gpus_per_node=4",
                        "parallelism.pp=2", "parallelism.dp=2"])  # fmt: skip
    n = 64 * 2**20
    eff = sc.hardware.efficiency.collective
    assert sc.parallelism.tp == 1
    want = round(1e9 * (3e-6 + n / (150 * GB * eff)))
    assert p2p_send_ns(sc, resolve(sc), 0, 1, n, 1) == want

    cp = load_scenario(ROOT / "scenarios" / "llama3_8b_cp.yaml",
                       ["hardware=mi300x_192gb", "parallelism.cp=4", "parallelism.tp=1",
                        "parallelism.dp=2", "cluster.gpus_per_node=8", "cluster.nodes=1"])  # fmt: skip
    eff = cp.hardware.efficiency.collective
    assert ring_link(cp).bandwidth_bytes_per_s == pytest.approx(64 * GB * eff)
    assert ring_link(cp, 4).bandwidth_bytes_per_s == pytest.approx(192 * GB * eff)

    dp = load_scenario(ROOT / "scenarios" / "dp_naive_4gpu.yaml", ["hardware=mi300x_192gb"])
    eff = dp.hardware.efficiency.collective
    grads, params = 10**9, 5 * 10**8
    want = round(1e9 * (3 * (grads + params) / (192 * GB * eff) + 2 * 3 * 3e-6))
    assert naive_dp_ns(dp, resolve(dp), grads, params)[0] == want


def test_fit_network_scales_the_pair_links_with_the_node() -> None:
    """fit-network on a mesh: one 2-GPU all-reduce at 45 GB/s bus bandwidth on MI300X (the
    profile's pair rate x efficiency: 51.2) scales the pair links with the whole (k 51.2 / 45
    within its latency's 0.2 %, not the collapse of the whole node's rate to the pair's), the fitted profile
    reproduces the test, and the profile written loads."""
    from simtrain.apps.network_fit import LinkFit, profile_text
    from simtrain.costs import link_fit as lf

    hw = load_hardware("mi300x_192gb")
    test = lf.Measured("all_reduce", 2, 2**30, 45e9)
    fitted, ks = lf.fit_links(hw, "nccl", [test])
    assert ks["node"] == pytest.approx(51.2 / 45, rel=2e-3)
    assert fitted.intra_node_pair_bandwidth_bytes_per_s == pytest.approx(64 * GB / ks["node"])
    assert lf.measured_over_simulated(fitted, "nccl", [test]) == pytest.approx(1.0, rel=1e-3)
    text = profile_text(ROOT / "hardware" / "mi300x_192gb.yaml", fitted,
                        [LinkFit("node", ks["node"], ())], "mi300x_fitted")  # fmt: skip
    again = parse_hardware(load_yaml_text(text), "fitted.yaml")
    assert again.intra_node_pair_bandwidth_bytes_per_s == pytest.approx(
        fitted.intra_node_pair_bandwidth_bytes_per_s, rel=1e-5)  # fmt: skip


def load_yaml_text(text: str) -> Any:
    from simtrain.spec.yamlfile import parse_yaml

    return parse_yaml(text, "fitted.yaml")


def test_only_an_h200_sxm_on_4_gpu_nodes_takes_the_board(default_records) -> None:
    """validate's board rule: an H200 SXM record on 8-GPU nodes stays on the NVSwitch
    profile; an H200 NVL on 4-GPU nodes (a PCIe card) keeps the SXM profile with its note."""
    from simtrain.apps.validate.translate import translate

    rec = default_records["kempner_mfu_70b_32gpu_tp4_fsdp8"]
    for gpu, per_node, want in (("H200 141GB", 4, "h200_141gb_hgx4"),
                                ("H200 141GB", 8, "h200_141gb"),
                                ("H200 NVL 141GB", 4, "h200_141gb")):  # fmt: skip
        hw = {**rec.hardware, "gpu": gpu, "gpus_per_node": per_node}
        assert translate(replace(rec, hardware=hw)).scenario.hardware.name == want
