"""simtrain/apps/validate/job_network.py: a record simulated on the network its own job measured
(``hardware.network_measured``), checked against the ring's closed form and the sweep's CSV."""

from __future__ import annotations

import math

import pytest

from simtrain.apps.validate.job_network import (
    K_BOUNDS,
    JobNetwork,
    network_slowdown,
    read_job_network,
    with_network_slowdown,
)
from simtrain.apps.validate.records import SkipReason
from simtrain.apps.validate.translate import translate
from simtrain.costs.collectives import nccl_bus_bandwidth
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.spec.hardware import load_hardware

GIB = 2**30


@pytest.fixture(scope="module")
def efa():
    return load_hardware("h100_sxm5_80gb_efa")


def _closed_form_busbw(hw, n: int) -> float:
    """The EFA profile's own statement of its ring ([fit] in hardware/h100_sxm5_80gb_efa.yaml):
    busbw = 1 / (1/B_ring + n·α/S), B_ring = 8 GPUs x NIC x efficiency.collective."""
    b_ring = 8 * hw.nic_bandwidth_bytes_per_s * hw.efficiency.collective
    return 1 / (1 / b_ring + n * hw.inter_node_latency_s / GIB)


@pytest.mark.parametrize("n", [16, 128, 512])
@pytest.mark.parametrize("k", [0.8, 3.0, 7.0])
def test_slowdown_is_the_ratio_to_the_rings_closed_form(efa, n: int, k: float) -> None:
    """A job whose test measured the closed form's bus bandwidth / k is k times slower; the
    scaled profile reproduces the measurement for both ring collectives."""
    measured = _closed_form_busbw(efa, n) / k
    net = JobNetwork({"all_gather": measured, "reduce_scatter": measured}, GIB, n)
    assert network_slowdown(efa, "ring", net) == pytest.approx(k, rel=1e-9)
    # NCCL's model of the same ring adds its own fixed base latencies: k within 0.3 %, refined
    # so that the scaled profile gives the measurement
    got = network_slowdown(efa, "nccl", net)
    assert got == pytest.approx(k, rel=3e-3) and got != pytest.approx(k, rel=1e-9)
    slow = with_network_slowdown(efa, got)
    for op in ("all_gather", "reduce_scatter"):
        t = hardware_collective_s(slow, "nccl", op, GIB, n, 8)
        assert nccl_bus_bandwidth(op, GIB, n, t) == pytest.approx(measured, rel=1e-9)
    # only the inter-node link moves: NVLink, compute and memory are the profile's
    assert slow.intra_node_bandwidth_bytes_per_s == efa.intra_node_bandwidth_bytes_per_s
    assert slow.memory_bytes == efa.memory_bytes and slow.peak_flops_per_s == efa.peak_flops_per_s


def test_a_test_faster_than_the_links_allow_stops_at_the_bound(efa) -> None:
    """A ring through the NICs cannot beat NVLink (B_ring = min(B_intra, 8·NIC)): a measured
    bus bandwidth above that cap would run k to 0; it stops at the lower bound."""
    assert network_slowdown(efa, "ring", JobNetwork({"all_gather": 2e12}, GIB, 16)) == K_BOUNDS[0]
    assert network_slowdown(efa, "nccl", JobNetwork({"all_gather": 1e3}, GIB, 16)) == K_BOUNDS[1]


def test_geometric_mean_of_the_ring_collectives(efa) -> None:
    cf = _closed_form_busbw(efa, 64)
    net = JobNetwork({"all_gather": cf / 2, "reduce_scatter": cf / 8}, GIB, 64)
    assert network_slowdown(efa, "ring", net) == pytest.approx(4.0, rel=1e-9)


def test_a_test_inside_one_node_keeps_the_profile(efa) -> None:
    net = JobNetwork({"all_gather": 50e9}, GIB, 8)
    assert network_slowdown(efa, "nccl", net) is None


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("fast", "a mapping"),
        ({"all_gather_busbw_gb_per_s": -3, "size_bytes": GIB}, "positive number"),
        ({"all_gather_busbw_gb_per_s": True, "size_bytes": GIB}, "positive number"),
        ({"all_gather_busbw_gb_per_s": "13", "size_bytes": GIB}, "positive number"),
        ({"allgather": 13.0, "size_bytes": GIB}, "unknown key; allowed: all_gather_busbw"),
        ({"all_reduce_busbw_gb_per_s": 13.0, "size_bytes": GIB}, "needs all_gather_busbw"),
        ({"all_gather_busbw_gb_per_s": 13.0}, "size_bytes: a positive integer"),
        ({"all_gather_busbw_gb_per_s": 13.0, "size_bytes": 2.5e9}, "size_bytes: a positive"),
    ],
)
def test_bad_sections_name_the_key(section, says: str) -> None:
    with pytest.raises(ValueError, match="hardware.network_measured") as exc:
        read_job_network({"network_measured": section}, 64)
    assert says in str(exc.value)


def test_a_bad_section_is_a_skip_naming_it(published_records: dict) -> None:
    from dataclasses import replace

    rec = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]
    bad = replace(rec, hardware={**rec.hardware, "network_measured": {"allgather": 1}})
    got = translate(bad)
    assert isinstance(got, SkipReason) and "network_measured.allgather" in got.reason


def test_gpus_default_to_the_records(published_records: dict) -> None:
    net = read_job_network({"network_measured": {"reduce_scatter_busbw_gb_per_s": 6.1,
                                                 "size_bytes": GIB}}, 512)  # fmt: skip
    assert net == JobNetwork({"reduce_scatter": 6.1e9}, GIB, 512)
    assert read_job_network({}, 512) is None


def test_the_sweeps_records_run_on_their_jobs_networks(published_records: dict) -> None:
    """Two chart records of the sweep: one whose job measured the profile's network (64 nodes,
    all-gather 44.4 GB/s: k ~ 1) and one whose job measured a network 7x slower (64 nodes,
    6.4 GB/s); the note says so and the simulated step follows."""
    fast = translate(published_records["usp_8B_n64_dp16_tp32_pp1_mbs1_ga16_z0"])
    slow = translate(published_records["usp_8B_n64_dp16_tp32_pp1_mbs1_ga16_z1"])
    for tr in (fast, slow):
        assert sum("own bandwidth test" in a for a in tr.assumptions) == 1
    base = load_hardware("h100_sxm5_80gb_efa")
    k_fast = base.nic_bandwidth_bytes_per_s / fast.scenario.hardware.nic_bandwidth_bytes_per_s
    k_slow = base.nic_bandwidth_bytes_per_s / slow.scenario.hardware.nic_bandwidth_bytes_per_s
    assert 0.9 < k_fast < 1.2 and 6 < k_slow < 8
    assert math.isclose(slow.scenario.hardware.inter_node_latency_s,
                        base.inter_node_latency_s * k_slow)  # fmt: skip
    one_node = translate(published_records["usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"])
    assert one_node.scenario.hardware == base
    assert not any("own bandwidth test" in a for a in one_node.assumptions)
