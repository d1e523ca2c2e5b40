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
import yaml

from simtrain.costs import collectives as coll
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.errors import ConfigError
from simtrain.layout.topology import build_topology
from simtrain.spec.hardware import load_hardware, parse_hardware

GB = 1e9
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "pair", "whole"), [
    ("mi300x_192gb", 64, 448),  # [rocm]: 7 xGMI links a GPU, one to each of 7 peers, 64 GB/s each
    ("mi325x_256gb", 64, 448),
    ("mi355x_288gb", 76.8, 537.6),  # [cdna4]: 7 links of 76.8 GB/s
    ("h200_141gb_hgx4", 150, 450),  # 18 NVLink4 links over 3 peers: 6 x 25 GB/s a pair
])  # fmt: skip
def test_a_group_reaches_its_own_members_only(name: str, pair: float, whole: float) -> None:
    hw = load_hardware(name)
    assert hw.intra_node_pair_bandwidth_bytes_per_s == pytest.approx(pair * GB)
    for members in range(2, hw.gpus_per_node + 1):
        assert hw.intra_group_bandwidth(members) == pytest.approx(
            min(whole, (members - 1) * pair) * GB)  # fmt: skip
    assert hw.intra_group_bandwidth(hw.gpus_per_node) == pytest.approx(whole * GB)


def test_a_switch_serves_every_group_at_the_whole_bandwidth() -> None:
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
    """NCCL's choice on the 4-GPU board: TP 2's all-gather is at least 3 x slower than TP 4's
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
    aggregate (pair 0): the mesh's step is longer, by at most its TP collectives' time."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.spec.scenario import load_scenario

    sets = ["model.preset=llama3-8b", "hardware=h200_141gb_hgx4", "cluster.gpus_per_node=4", "parallelism.dp=2",
            "parallelism.tp=2", "training.global_batch=8", "training.micro_batch=4"]  # fmt: skip
    sc = load_scenario(ROOT / "scenarios" / "ddp_8gpu.yaml", sets)
    mesh = simulate_scenario(sc, detail=False).metrics.step_time_s
    switch_hw = replace(sc.hardware, intra_node_pair_bandwidth_bytes_per_s=0.0)
    switch = simulate_scenario(replace(sc, hardware=switch_hw), detail=False).metrics.step_time_s
    assert mesh > switch


def test_topology_mesh_edges_carry_the_pair_bandwidth() -> None:
    g = build_topology(load_hardware("h200_141gb_hgx4"), 1, 4)
    mesh = [d for a, b, d in g.edges(data=True) if a[0] == b[0] == "gpu"]
    assert len(mesh) == 6  # K4
    assert {d["bandwidth_bytes_per_s"] for d in mesh} == {150 * GB}


def _profile(**intra: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "hardware" / "h200_141gb_hgx4.yaml").read_text())
    data = copy.deepcopy(data)
    data["intra_node"].update(intra)
    return data


@pytest.mark.parametrize(("change", "words"), [
    ({"kind": "nvswitch"}, ["intra_node.pair_bandwidth_gb_per_s", "intra_node.kind nvswitch"]),
    ({"kind": "pcie"}, ["intra_node.pair_bandwidth_gb_per_s", "nvlink, xgmi, infinity_fabric"]),
    ({"pair_bandwidth_gb_per_s": 451}, ["must be at most intra_node.bandwidth_gb_per_s = 450"]),
    ({"pair_bandwidth_gb_per_s": 0}, ["intra_node.pair_bandwidth_gb_per_s"]),
    ({"pair_bandwidth_gb_per_s": "fast"}, ["intra_node.pair_bandwidth_gb_per_s"]),
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
